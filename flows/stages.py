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


class MissingStageError(RuntimeError):
    """A stage's input is not there: the stage before it has not run for this run_dir."""


def stage_dirs(config: MemlmConfig) -> dict[str, Path]:
    root = Path(config.run_dir)
    return {name: root / name for name in ("crawl", "clean", "split", "tokens", "train", "eval")}


def upstream(config: MemlmConfig, stage: str, file: str) -> Path:
    """The path of what STAGE wrote, or a MissingStageError that names the command that writes it."""
    path = stage_dirs(config)[stage] / file
    if not path.exists():
        command = {"tokens": "tokenize"}.get(stage, stage)
        raise MissingStageError(f"{path} does not exist: the {command} stage has not run to its end for run_dir "
                                f"{config.run_dir}; run `memlm {command}` with this config first (or `memlm run` "
                                "for every stage)")
    return path


def read_upstream(config: MemlmConfig, stage: str, file: str) -> dict:
    return json.loads(upstream(config, stage, file).read_text())


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
        manifest["changes"] = announce_changes(config, out_dir, manifest)
        return manifest

    # A site can change at any time, so the crawl always runs; its content digest tells later
    # stages whether anything changed.
    return _run("crawl", out_dir, input_key(config.crawl.model_dump()), True, work)


CORPUS_UPDATED = "memlm.corpus.updated"
PUBLISHED_FILE = "published.npy"


def corpus_resource_id(config: MemlmConfig) -> str:
    return f"memlm.corpus.{config.name}"


def announce_changes(config: MemlmConfig, crawl_dir: Path, manifest: dict) -> dict:
    """Compare the crawl with the corpus last announced; when pages were added, changed or removed, emit
    `memlm.corpus.updated` (what the rebuild deployment waits for) with those counts."""
    from prefect.events import emit_event

    from crawlers.digests import corpus_changes, load_table, save_table

    published = crawl_dir / PUBLISHED_FILE
    pages = load_table(crawl_dir / manifest["page_digests_file"])
    changes = corpus_changes(load_table(published), pages)
    if any(changes.values()):
        emit_event(event=CORPUS_UPDATED,
                   resource={"prefect.resource.id": corpus_resource_id(config), "prefect.resource.name": config.name},
                   payload={**changes, "pages": manifest["pages"], "content_digest": manifest["content_digest"]})
    if any(changes.values()) or not published.exists():
        save_table(published, pages)
        published.with_suffix(".json").unlink(missing_ok=True)  # what memlm before 16-byte rows wrote
    return {**changes, "event": CORPUS_UPDATED if any(changes.values()) else None}


@task(name="clean", cache_policy=NO_CACHE)
def clean_task(config: MemlmConfig, force: bool = False) -> StageOutcome:
    from corpus.clean import clean

    dirs = stage_dirs(config)
    crawl_manifest = read_upstream(config, "crawl", "manifest.json")
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
    clean_summary = read_upstream(config, "clean", STAGE_FILE)["summary"]
    key = input_key(clean_summary["docs_sha256"], config.split.model_dump())
    return _run("split", dirs["split"], key, force,
                lambda: split(dirs["clean"] / "docs.jsonl", dirs["split"], config.split).manifest)


@task(name="tokenize", cache_policy=NO_CACHE)
def tokenize_task(config: MemlmConfig, force: bool = False) -> StageOutcome:
    from corpus.tokenize import tokenize

    dirs = stage_dirs(config)
    split_manifest = read_upstream(config, "split", "manifest.json")
    key = input_key(split_manifest["sha256"], config.tokenize.model_dump())
    files = {name: dirs["split"] / f"{name}.jsonl" for name in ("train", "val")}
    return _run("tokenize", dirs["tokens"], key, force, lambda: tokenize(files, dirs["tokens"], config.tokenize).manifest)


def train_key(config: MemlmConfig) -> str:
    tokens_manifest = read_upstream(config, "tokens", "manifest.json")
    return input_key(tokens_manifest["splits"], tokens_manifest["tokenizer_sha256"],
                     config.model.model_dump(), config.train.model_dump(exclude={"resume", "distributed"}))


@task(name="train", cache_policy=NO_CACHE)
def train_task(config: MemlmConfig, force: bool = False) -> StageOutcome:
    from flows.model_runs import tracked_training

    dirs = stage_dirs(config)
    key = train_key(config)
    if not force and (summary := completed(dirs["train"], key)) is not None:
        return StageOutcome("train", True, summary)
    started = time.monotonic()
    summary, memory = tracked_training(config, key, force)
    mark_completed(dirs["train"], key, summary)
    return StageOutcome("train", False, summary, round(time.monotonic() - started, 1), {"memory": memory})


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(config: MemlmConfig, force: bool = False, register_model: bool = True) -> StageOutcome:
    from corpus.jsonl import file_sha256
    from flows.model_runs import tracked_evaluation
    from model.checkpoint import WEIGHTS_FILE

    dirs = stage_dirs(config)
    read_upstream(config, "train", STAGE_FILE)  # a finished training, not the checkpoint of one cut short
    key = input_key(file_sha256(upstream(config, "train", f"checkpoint/{WEIGHTS_FILE}")), config.evaluate.model_dump(),
                    register_model)
    return _run("evaluate", dirs["eval"], key, force, lambda: tracked_evaluation(config, register_model))
