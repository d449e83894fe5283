"""The MLflow side of training and evaluation: the training inside its MLflow run (which run an
interrupted training continues, what it logs), the evaluation logged to that run, and the evaluated
model's registration and promotion (champion or challenger). Flows call these through their tasks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from flows.config import MemlmConfig
from flows.progress import progress_bar


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


def tracked_training(config: MemlmConfig, key: str, force: bool) -> tuple[dict, dict]:
    """Train (in this process, or over torchrun's ranks) inside the stage's MLflow run, continuing an
    interrupted one with the same inputs `key`; log the config, datasets, metrics, plots and memory report.
    Returns the train stage's summary and the memory report."""
    import mlflow

    from flows.stages import stage_dirs
    from flows.tracking import log_config, log_datasets, run_link, setup_mlflow
    from model.plots import loss_curve, memory_timeline
    from model.train import train

    dirs = stage_dirs(config)
    experiment_id = setup_mlflow(config)
    run_id = resumable_run(dirs["train"], key, force)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else config.name) as run:
        (dirs["train"] / "inputs.json").write_text(json.dumps({"key": key, "mlflow_run_id": run.info.run_id}))
        if run_id is None:
            log_config(config)
            tokens_manifest = json.loads((dirs["tokens"] / "manifest.json").read_text())
            crawl_manifest = json.loads((dirs["crawl"] / "manifest.json").read_text())
            log_datasets(tokens_manifest, dirs["tokens"], crawl_manifest.get("start_urls", []))
            for stage, files in (("crawl", ["manifest.json"]), ("clean", ["report.json"]),
                                 ("split", ["manifest.json"]), ("tokens", ["manifest.json", "tokenizer.json"])):
                for name in files:
                    mlflow.log_artifact(str(dirs[stage] / name), artifact_path=f"data/{stage}")
            mlflow.set_tags({"memlm.config": config.name, "memlm.run_dir": str(config.run_dir)})
        if config.train.distributed.strategy != "none":
            # torchrun's ranks, started from this task; their lines (rank-prefixed) go to the task's log.
            from prefect import get_run_logger

            from model.launch import launch

            result = launch(config.model, config.train, dirs["tokens"], dirs["train"],
                            (mlflow.get_tracking_uri(), run.info.run_id), echo=get_run_logger().info)
        else:
            with progress_bar("train", config.train.max_steps) as update:
                result = train(config.model, config.train, dirs["tokens"], dirs["train"],
                               on_metrics=lambda metrics, step: mlflow.log_metrics(metrics, step=step),
                               on_progress=update)
        memory = result.memory
        if result.warnings:
            mlflow.set_tag("memlm.warnings", " | ".join(result.warnings))
        mlflow.log_metrics({"train/final_loss": result.train_loss, "val/final_loss": result.val_loss,
                            "train/tokens_per_s_final": result.tokens_per_s, "train/mfu_final": result.mfu,
                            **stage_metrics(memory)})
        reports = dirs["train"]
        mlflow.log_artifact(str(loss_curve(result.history_file, reports / "loss_curve.png")), "plots")
        mlflow.log_artifact(str(memory_timeline(memory, reports / "memory_timeline.png")), "plots")
        mlflow.log_dict({k: v for k, v in memory.items() if k != "timeline"}, "memory/report.json")
        mlflow.log_dict({"modules": memory.get("modules", [])}, "memory/modules.json")
        snapshot = reports / "cuda_memory_snapshot.pickle"
        if snapshot.exists():
            mlflow.log_artifact(str(snapshot), "memory")
        summary = {
            "mlflow_run_id": run.info.run_id,
            "mlflow_run_url": run_link(config, experiment_id, run.info.run_id),
            "steps": result.steps, "resumed_from": result.resumed_from, "stopped_early": result.stopped_early,
            "n_params": result.n_params, "train_loss": result.train_loss,
            "val_loss_start": result.val_loss_start, "val_loss": result.val_loss,
            "tokens_per_s": result.tokens_per_s, "mfu": result.mfu, "peak_memory_mib": result.peak_memory_mib,
            "memory_breakdown_mib": {k: round(v / 2**20, 2) for k, v in memory.get("breakdown", {}).items()},
            "peak_phase": memory.get("peak_phase"), "elapsed_s": result.elapsed_s,
        }
        if "ranks" in memory:  # the headline peak is the largest rank's
            summary["peak_memory_per_rank_mib"] = [r["peak_mib"] for r in memory["ranks"]]
    return summary, memory


def tracked_evaluation(config: MemlmConfig, register_model: bool) -> dict:
    """Evaluate the trained checkpoint, log the figures to the training's MLflow run, and register and
    promote the model; returns the evaluate stage's summary."""
    import mlflow

    from flows.stages import STAGE_FILE, stage_dirs
    from flows.tracking import setup_mlflow
    from model.evaluate import evaluate

    dirs = stage_dirs(config)
    train_summary = json.loads((dirs["train"] / STAGE_FILE).read_text())["summary"]
    checkpoint = dirs["train"] / "checkpoint"
    setup_mlflow(config)
    result = evaluate(checkpoint, dirs["tokens"], config.evaluate, dirs["eval"],
                      batch_size=config.train.batch_size, device=config.train.device,
                      micro_batch_size=config.train.micro_batch_size, budget_mib=config.train.memory_budget_mib,
                      memory=config.train.memory)
    report = result.report
    with mlflow.start_run(run_id=train_summary["mlflow_run_id"]):
        mlflow.log_metrics({"eval/val_loss": report["val_loss"], "eval/perplexity": report["perplexity"],
                            "eval/bits_per_byte": report["bits_per_byte"], **stage_metrics(result.memory)})
        mlflow.log_dict(result.memory, "memory/eval_stages.json")
        mlflow.log_artifact(str(result.report_file), "eval")
        mlflow.log_artifact(str(result.samples_file), "eval")
        summary = dict(report)
        if register_model:
            summary.update(register_and_promote(config, checkpoint, report, train_summary["mlflow_run_id"]))
    return summary


def stage_metrics(memory: dict) -> dict[str, float]:
    """memory/stage/<stage>/peak_mib (and its breakdown) for each stage a memory report measured."""
    out = {}
    for stage, entry in memory.get("stages", {}).items():
        out[f"memory/stage/{stage}/peak_mib"] = entry["peak_mib"]
        out.update({f"memory/stage/{stage}/{c}_mib": v for c, v in entry["breakdown_mib"].items()})
        out.update({f"memory/stage/{stage}/{m}_mib": v for m, v in entry["meters_mib"].items()})
    return out


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
