"""The model registry's champion: each new version is compared with the one holding the `champion`
alias on the current validation split, by bits per byte (comparable across tokenizers). The better
one holds `champion`, the other `challenger`; the decision and both figures are tags."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass
class Promotion:
    model: str
    new_version: str
    new_bpb: float
    champion_version: str | None  # the champion before this decision
    champion_bpb: float | None  # the old champion's bits per byte on the current validation split
    winner: str
    decision: str

    def as_dict(self) -> dict:
        return asdict(self)


def champion_bpb_on(name: str, version: str, val_docs: Path, work_dir: Path, batch_size: int, device: str,
                    max_batches: int | None, memory=None) -> float:
    """Bits per byte of a registered version on the current validation documents, with its own tokenizer;
    `memory`, training's MemoryConfig, sets the loss's chunk and vocabulary tiles."""
    from model.evaluate import bits_per_byte_on_docs
    from model.pyfunc import load_registered

    # As data only: the registry may be writable by others, so no code or pickle of it runs here.
    model, tokenizer = load_registered(f"models:/{name}/{version}")
    return bits_per_byte_on_docs(model, tokenizer, val_docs, work_dir, batch_size, device, max_batches, memory)


def promote(name: str, new_version: str, new_bpb: float, measure_champion) -> Promotion:
    """Settle the aliases for a newly registered version; `measure_champion(version)` gives the
    current champion's bits per byte on the current validation split."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION).version
    except mlflow.exceptions.MlflowException:
        champion = None
    if champion is None or str(champion) == str(new_version):
        client.set_registered_model_alias(name, CHAMPION, new_version)
        result = Promotion(name, str(new_version), new_bpb, None, None, str(new_version),
                           "first version: champion by default")
    else:
        old_bpb = measure_champion(str(champion))
        if new_bpb < old_bpb:
            client.set_registered_model_alias(name, CHAMPION, new_version)
            client.set_registered_model_alias(name, CHALLENGER, str(champion))
            decision = f"v{new_version} becomes champion: {new_bpb:.4f} < {old_bpb:.4f} bits per byte (v{champion})"
            winner = str(new_version)
        else:
            client.set_registered_model_alias(name, CHALLENGER, new_version)
            decision = f"v{champion} stays champion: {old_bpb:.4f} <= {new_bpb:.4f} bits per byte (v{new_version})"
            winner = str(champion)
        client.set_model_version_tag(name, str(champion), "bits_per_byte_current_val", f"{old_bpb:.5f}")
        result = Promotion(name, str(new_version), new_bpb, str(champion), old_bpb, winner, decision)
    client.set_model_version_tag(name, str(new_version), "bits_per_byte_current_val", f"{new_bpb:.5f}")
    client.set_model_version_tag(name, str(new_version), "promotion", result.decision)
    return result


def list_versions(name: str) -> list[dict]:
    """Every version of a registered model with its aliases and figures, newest first."""
    import mlflow

    client = mlflow.MlflowClient()
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for v in client.search_model_versions(f"name = '{name}'"):
        rows.append({"version": str(v.version), "aliases": sorted(aliases.get(str(v.version), [])),
                     "bits_per_byte": v.tags.get("bits_per_byte"),
                     "bits_per_byte_current_val": v.tags.get("bits_per_byte_current_val"),
                     "val_loss": v.tags.get("val_loss"), "promotion": v.tags.get("promotion", ""),
                     "run_id": v.run_id, "created": v.creation_timestamp})
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)
