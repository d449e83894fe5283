"""One Prefect task per stage. Each calls the stage function and skips it when the digest of its
inputs (upstream content digests plus its own config section) matches the last completed run."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.config import MemlmConfig
from flows.progress import progress_bar

STAGE_FILE = "stage.json"


@dataclass
class StageOutcome:
    name: str
    skipped: bool
    summary: dict
    elapsed_s: float = 0.0
    details: dict = field(default_factory=dict)


def stage_dirs(config: MemlmConfig) -> dict[str, Path]:
    root = Path(config.run_dir)
    return {name: root / name for name in ("crawl", "clean", "split", "tokens", "train", "eval")}


def input_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def completed(out_dir: Path, key: str) -> dict | None:
    """The recorded summary when the stage last completed with these inputs, else None."""
    path = out_dir / STAGE_FILE
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record["summary"] if record.get("key") == key else None


def mark_completed(out_dir: Path, key: str, summary: dict) -> None:
    (out_dir / STAGE_FILE).write_text(json.dumps({"key": key, "summary": summary}, indent=2, default=str))


def _run(name: str, out_dir: Path, key: str, force: bool, work) -> StageOutcome:
    if not force and (summary := completed(out_dir, key)) is not None:
        return StageOutcome(name, True, summary)
    started = time.monotonic()
    (out_dir / STAGE_FILE).unlink(missing_ok=True)
    summary = work()
    mark_completed(out_dir, key, summary)
    return StageOutcome(name, False, summary, round(time.monotonic() - started, 1))


@task(name="crawl", cache_policy=NO_CACHE)
def crawl_task(config: MemlmConfig) -> StageOutcome:
    from crawlers.run import crawl

    out_dir = stage_dirs(config)["crawl"]

    def work() -> dict:
        with progress_bar("crawl", config.crawl.max_pages) as update:
            result = crawl(config.crawl, out_dir, update)
        manifest = dict(result.manifest)
        pages = manifest.pop("page_digests")
        manifest["changes"] = announce_changes(config, out_dir, pages, manifest)
        return manifest

    # A site can change at any time, so the crawl always runs; its content digest tells later
    # stages whether anything changed.
    return _run("crawl", out_dir, input_key(config.crawl.model_dump()), True, work)


CORPUS_UPDATED = "memlm.corpus.updated"
PUBLISHED_FILE = "published.json"


def corpus_resource_id(config: MemlmConfig) -> str:
    return f"memlm.corpus.{config.name}"


def announce_changes(config: MemlmConfig, crawl_dir: Path, pages: dict[str, str], manifest: dict) -> dict:
    """Compare the crawl with the corpus last announced; when pages were added, changed or removed, emit
    `memlm.corpus.updated` (what the rebuild deployment waits for) with those counts."""
    from prefect.events import emit_event

    from crawlers.store import corpus_changes

    published = crawl_dir / PUBLISHED_FILE
    before = json.loads(published.read_text()) if published.exists() else {}
    changes = corpus_changes(before, pages)
    if any(changes.values()):
        emit_event(event=CORPUS_UPDATED,
                   resource={"prefect.resource.id": corpus_resource_id(config), "prefect.resource.name": config.name},
                   payload={**changes, "pages": manifest["pages"], "content_digest": manifest["content_digest"]})
        published.write_text(json.dumps(pages))
    return {**changes, "event": CORPUS_UPDATED if any(changes.values()) else None}


@task(name="clean", cache_policy=NO_CACHE)
def clean_task(config: MemlmConfig, force: bool = False) -> StageOutcome:
    from corpus.clean import clean

    dirs = stage_dirs(config)
    crawl_manifest = json.loads((dirs["crawl"] / "manifest.json").read_text())
    key = input_key(crawl_manifest["content_digest"], config.clean.model_dump())

    def work() -> dict:
        with progress_bar("clean", 2 * crawl_manifest["pages"]) as update:
            result = clean(dirs["crawl"] / "pages.jsonl", dirs["clean"], config.clean, update)
        from prefect.artifacts import create_table_artifact

        from corpus.clean import report_rows
        from corpus.jsonl import file_sha256

        create_table_artifact(key=f"memlm-{config.name}-clean".lower().replace("_", "-"),
                              table=report_rows(result.report),
                              description=f"What each cleaning step removed: {result.report['pages_in']} pages in, "
                                          f"{result.report['docs_out']} documents out")

        return {**result.report, "docs_sha256": file_sha256(result.docs_file)}

    return _run("clean", dirs["clean"], key, force, work)


@task(name="split", cache_policy=NO_CACHE)
def split_task(config: MemlmConfig, force: bool = False) -> StageOutcome:
    from corpus.split import split

    dirs = stage_dirs(config)
    clean_summary = json.loads((dirs["clean"] / STAGE_FILE).read_text())["summary"]
    key = input_key(clean_summary["docs_sha256"], config.split.model_dump())
    return _run("split", dirs["split"], key, force,
                lambda: split(dirs["clean"] / "docs.jsonl", dirs["split"], config.split).manifest)


@task(name="tokenize", cache_policy=NO_CACHE)
def tokenize_task(config: MemlmConfig, force: bool = False) -> StageOutcome:
    from corpus.tokenize import tokenize

    dirs = stage_dirs(config)
    split_manifest = json.loads((dirs["split"] / "manifest.json").read_text())
    key = input_key(split_manifest["sha256"], config.tokenize.model_dump())
    files = {name: dirs["split"] / f"{name}.jsonl" for name in ("train", "val")}
    return _run("tokenize", dirs["tokens"], key, force, lambda: tokenize(files, dirs["tokens"], config.tokenize).manifest)


def train_key(config: MemlmConfig) -> str:
    dirs = stage_dirs(config)
    tokens_manifest = json.loads((dirs["tokens"] / "manifest.json").read_text())
    return input_key(tokens_manifest["splits"], tokens_manifest["tokenizer_sha256"],
                     config.model.model_dump(), config.train.model_dump(exclude={"resume", "distributed"}))


@task(name="train", cache_policy=NO_CACHE)
def train_task(config: MemlmConfig, force: bool = False) -> StageOutcome:
    from flows.model_runs import resumable_run
    from flows.tracking import log_config, log_datasets, run_link, setup_mlflow

    dirs = stage_dirs(config)
    key = train_key(config)
    if not force and (summary := completed(dirs["train"], key)) is not None:
        return StageOutcome("train", True, summary)
    import mlflow

    from model.plots import loss_curve, memory_timeline
    from model.train import train

    experiment_id = setup_mlflow(config)
    run_id = resumable_run(dirs["train"], key, force)
    started = time.monotonic()
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
                            **_stage_metrics(memory)})
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
    mark_completed(dirs["train"], key, summary)
    return StageOutcome("train", False, summary, round(time.monotonic() - started, 1), {"memory": memory})


def _stage_metrics(memory: dict) -> dict[str, float]:
    """memory/stage/<stage>/peak_mib (and its breakdown) for each stage a memory report measured."""
    out = {}
    for stage, entry in memory.get("stages", {}).items():
        out[f"memory/stage/{stage}/peak_mib"] = entry["peak_mib"]
        out.update({f"memory/stage/{stage}/{c}_mib": v for c, v in entry["breakdown_mib"].items()})
        out.update({f"memory/stage/{stage}/{m}_mib": v for m, v in entry["meters_mib"].items()})
    return out


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(config: MemlmConfig, force: bool = False, register_model: bool = True) -> StageOutcome:
    import mlflow

    from flows.tracking import setup_mlflow
    from corpus.jsonl import file_sha256
    from model.checkpoint import WEIGHTS_FILE
    from model.evaluate import evaluate

    dirs = stage_dirs(config)
    train_summary = json.loads((dirs["train"] / STAGE_FILE).read_text())["summary"]
    checkpoint = dirs["train"] / "checkpoint"
    key = input_key(file_sha256(checkpoint / WEIGHTS_FILE), config.evaluate.model_dump(), register_model)

    def work() -> dict:
        setup_mlflow(config)
        result = evaluate(checkpoint, dirs["tokens"], config.evaluate, dirs["eval"],
                          batch_size=config.train.batch_size, device=config.train.device,
                          micro_batch_size=config.train.micro_batch_size, budget_mib=config.train.memory_budget_mib,
                          memory=config.train.memory)
        report = result.report
        with mlflow.start_run(run_id=train_summary["mlflow_run_id"]):
            mlflow.log_metrics({"eval/val_loss": report["val_loss"], "eval/perplexity": report["perplexity"],
                                "eval/bits_per_byte": report["bits_per_byte"], **_stage_metrics(result.memory)})
            mlflow.log_dict(result.memory, "memory/eval_stages.json")
            mlflow.log_artifact(str(result.report_file), "eval")
            mlflow.log_artifact(str(result.samples_file), "eval")
            summary = dict(report)
            if register_model:
                from flows.model_runs import register_and_promote

                summary.update(register_and_promote(config, checkpoint, report, train_summary["mlflow_run_id"]))
        return summary

    return _run("evaluate", dirs["eval"], key, force, work)
