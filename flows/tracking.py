"""MLflow side of a pipeline run: the store, params, datasets, artifacts, plots and the registered model."""
from __future__ import annotations

import json
import os
from pathlib import Path

from flows.config import DEFAULT_TRACKING_URI, MemlmConfig


def use_store(config: MemlmConfig) -> None:
    """Point this process's MLflow client at the config's store. mlflow.set_tracking_uri also exports
    MLFLOW_TRACKING_URI, which memlm reads as the user's override of every config: left there, the first
    config's store would replace the next config's in the same process (a worker serving several)."""
    import mlflow

    user = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(config.mlflow.resolved_tracking_uri())
    if user is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user


def setup_mlflow(config: MemlmConfig) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    import mlflow

    uri = config.mlflow.resolved_tracking_uri()
    if uri == DEFAULT_TRACKING_URI:
        Path("mlflow").mkdir(exist_ok=True)
    use_store(config)
    experiment = mlflow.get_experiment_by_name(config.mlflow.experiment)
    if experiment is not None:
        mlflow.set_experiment(config.mlflow.experiment)
        return experiment.experiment_id
    location = _artifacts_beside(uri)
    experiment_id = mlflow.create_experiment(config.mlflow.experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _artifacts_beside(uri: str) -> str | None:
    """With a SQLite store, artifacts go in an `artifacts` folder beside the database (for the default
    store: mlflow/artifacts), not in ./mlruns of whatever folder the command ran in."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "artifacts").as_uri()


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def log_config(config: MemlmConfig) -> None:
    import mlflow

    mlflow.log_params(flatten(config.model_dump(mode="json")))
    mlflow.log_dict(config.model_dump(mode="json"), "config.json")


def log_datasets(tokens_manifest: dict, tokens_dir: Path, start_urls: list[str]) -> None:
    """The token files as MLflow dataset inputs, with their content digests."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    for split, context in (("train", "training"), ("val", "validation")):
        info = tokens_manifest["splits"][split]
        dataset = MetaDataset(
            source=LocalArtifactDatasetSource(str(Path(tokens_dir, f"{split}.bin").resolve())),
            name=f"{split}.bin",
            digest=info["sha256"][:16],
        )
        mlflow.log_input(dataset, context=context, tags={
            "docs": str(info["docs"]), "tokens": str(info["tokens"]), "bytes": str(info["bytes"]),
            "sha256": info["sha256"], "crawled_from": crawled_from(start_urls),
        })


def crawled_from(start_urls: list[str]) -> str:
    """The start URLs in a tag's 500 characters: a served folder's crawl starts at each of its files."""
    shown = ", ".join(start_urls)
    return shown if len(shown) <= 200 else f"{start_urls[0]} and {len(start_urls) - 1} more start URLs"


def run_link(config: MemlmConfig, experiment_id: str, run_id: str) -> str:
    return f"{config.mlflow.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
