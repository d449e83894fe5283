"""The MLflow side of training and evaluation that is not logging: which run an interrupted training
continues, and the evaluated model's registration and promotion (champion or challenger)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from flows.config import MemlmConfig


def resumable_run(train_dir: Path, key: str, force: bool) -> str | None:
    """The MLflow run of an interrupted training with the same inputs (its checkpoint resumes too);
    otherwise clear what an older training left so that it cannot be resumed by mistake."""
    record_file = train_dir / "inputs.json"
    record = json.loads(record_file.read_text()) if record_file.exists() else None
    if not force and record and record.get("key") == key and (train_dir / "checkpoint").exists():
        return record["mlflow_run_id"]
    shutil.rmtree(train_dir, ignore_errors=True)
    train_dir.mkdir(parents=True)
    return None


def register_and_promote(config: MemlmConfig, checkpoint: Path, report: dict, train_run_id: str) -> dict:
    """Register the evaluated checkpoint (in the active MLflow run), tag the version with its figures, and
    settle the aliases; returns what the evaluate stage's summary records."""
    import mlflow

    from flows.stages import stage_dirs
    from model.pyfunc import log_text_generator

    info = log_text_generator(checkpoint, stage_dirs(config)["tokens"] / "tokenizer.json",
                              config.mlflow.registered_model, config.evaluate.prompts[0])
    version = info.registered_model_version
    client = mlflow.MlflowClient()
    for tag, value in (("val_loss", report["val_loss"]), ("bits_per_byte", report["bits_per_byte"]),
                       ("mlflow_run_id", train_run_id)):
        client.set_model_version_tag(config.mlflow.registered_model, str(version), tag, str(value))
    promotion = promote_version(config, str(version), report["bits_per_byte"])
    mlflow.set_tag("memlm.promotion", promotion.decision)
    return {"model_uri": info.model_uri, "registered_model": config.mlflow.registered_model,
            "registered_version": version, "promotion": promotion.as_dict()}


def promote_version(config: MemlmConfig, version: str, bpb: float):
    """Champion or challenger for the new version, and a Prefect artifact that shows the decision."""
    import mlflow
    from prefect.artifacts import create_markdown_artifact

    from flows.registry import champion_bpb_on, promote
    from flows.stages import stage_dirs
    from flows.tracking import run_link

    from model.hardware import resolve_device
    from model.memory import MemoryTracker

    dirs = stage_dirs(config)
    name = config.mlflow.registered_model
    # The champion's re-score is a stage like the others: measured, inside the budget, micro-batched.
    tracker = MemoryTracker(None, None, resolve_device(config.train.device), budget_mib=config.train.memory_budget_mib)

    def rescore(champion: str) -> float:
        with tracker.stage("rescore"):
            return champion_bpb_on(name, champion, dirs["split"] / "val.jsonl", dirs["eval"] / "champion",
                                   config.train.micro_batch_size, config.train.device, config.evaluate.max_batches,
                                   config.train.memory)

    promotion = promote(name, version, bpb, rescore)
    if "rescore" in tracker.stages:
        mlflow.log_metrics(tracker.stages["rescore"].stage_metrics())
    client = mlflow.MlflowClient()
    rows = ["| version | bits per byte on the current validation split | MLflow run |", "|---|---|---|"]
    for v, figure in ((promotion.new_version, promotion.new_bpb), (promotion.champion_version, promotion.champion_bpb)):
        if v is None:
            continue
        run = client.get_run(client.get_model_version(name, v).run_id)
        link = run_link(config, run.info.experiment_id, run.info.run_id)
        rows.append(f"| v{v}{' (winner)' if v == promotion.winner else ''} | {figure:.4f} | [{run.info.run_id}]({link}) |")
    create_markdown_artifact(key=f"memlm-{config.name}-promotion".lower().replace("_", "-"),
                             markdown=f"# {name}: {promotion.decision}\n\n" + "\n".join(rows),
                             description="champion / challenger decision")
    return promotion
