"""Prefect flows: one per stage, and `pipeline`, which chains them and skips stages whose inputs did
not change. Flows take the path of a config file so that a run is reproducible from the Prefect UI."""
from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.config import MemlmConfig, load_config
from flows.stages import (StageOutcome, clean_task, crawl_task, evaluate_task, split_task, tokenize_task,
                          train_task)


def _config(config_path: str | None, config: MemlmConfig | None) -> MemlmConfig:
    return config if config is not None else load_config(config_path)


@flow(name="crawl")
def crawl_flow(config_path: str | None = None, config: MemlmConfig | None = None) -> StageOutcome:
    return crawl_task(_config(config_path, config))


@flow(name="clean")
def clean_flow(config_path: str | None = None, force: bool = False, config: MemlmConfig | None = None) -> StageOutcome:
    return clean_task(_config(config_path, config), force)


@flow(name="split")
def split_flow(config_path: str | None = None, force: bool = False, config: MemlmConfig | None = None) -> StageOutcome:
    return split_task(_config(config_path, config), force)


@flow(name="tokenize")
def tokenize_flow(config_path: str | None = None, force: bool = False,
                  config: MemlmConfig | None = None) -> StageOutcome:
    return tokenize_task(_config(config_path, config), force)


@flow(name="train")
def train_flow(config_path: str | None = None, force: bool = False, config: MemlmConfig | None = None) -> StageOutcome:
    return train_task(_config(config_path, config), force)


@flow(name="evaluate")
def evaluate_flow(config_path: str | None = None, force: bool = False, register_model: bool = True,
                  config: MemlmConfig | None = None) -> StageOutcome:
    return evaluate_task(_config(config_path, config), force, register_model)


@flow(name="pipeline")
def pipeline_flow(config_path: str | None = None, force: bool = False,
                  config: MemlmConfig | None = None) -> list[StageOutcome]:
    """crawl → clean → split → tokenize → train → evaluate (and register)."""
    config = _config(config_path, config)
    started = time.monotonic()
    outcomes = [crawl_task(config)]
    for stage in (clean_task, split_task, tokenize_task, train_task, evaluate_task):
        outcomes.append(stage(config, force))
    elapsed_s = time.monotonic() - started
    write_summary(config, outcomes, elapsed_s)
    create_markdown_artifact(
        key=f"memlm-{config.name}".lower().replace("_", "-"),
        markdown=summary_markdown(config, outcomes, elapsed_s),
        description="memlm pipeline summary",
    )
    return outcomes


@flow(name="rebuild")
def rebuild_flow(config_path: str | None = None, force: bool = False,
                 config: MemlmConfig | None = None) -> list[StageOutcome]:
    """clean → split → tokenize → train → evaluate → register: what new crawl data starts."""
    config = _config(config_path, config)
    started = time.monotonic()
    outcomes = [stage(config, force) for stage in (clean_task, split_task, tokenize_task, train_task, evaluate_task)]
    create_markdown_artifact(
        key=f"memlm-{config.name}-rebuild".lower().replace("_", "-"),
        markdown=summary_markdown(config, outcomes, time.monotonic() - started),
        description="memlm rebuild summary",
    )
    return outcomes


def headline(outcomes: list[StageOutcome]) -> dict:
    """The figures a person looks for first, gathered from the stage summaries."""
    by = {o.name: o.summary for o in outcomes}
    crawl, clean, tokens = by.get("crawl", {}), by.get("clean", {}), by.get("tokenize", {})
    train, ev = by.get("train", {}), by.get("evaluate", {})
    splits = tokens.get("splits", {})
    return {
        "pages crawled": crawl.get("pages"),
        "documents kept": clean.get("docs_out"),
        "train / val tokens": (f"{splits['train']['tokens']} / {splits['val']['tokens']}" if splits else None),
        "parameters": train.get("n_params"),
        "steps": train.get("steps"),
        "val loss start → end": (f"{train['val_loss_start']:.3f} → {train['val_loss']:.3f}"
                                 if "val_loss" in train else None),
        "bits per byte": ev.get("bits_per_byte"),
        "tokens/s": round(train["tokens_per_s"]) if "tokens_per_s" in train else None,
        "MFU": f"{train['mfu']:.1%}" if "mfu" in train else None,
        "peak memory (MiB)": train.get("peak_memory_mib"),
        "peak breakdown (MiB)": ", ".join(f"{k} {v}" for k, v in train.get("memory_breakdown_mib", {}).items()),
        "registered model": (f"{ev['registered_model']} v{ev['registered_version']}"
                             if ev.get("registered_version") else None),
        "MLflow run": train.get("mlflow_run_url"),
    }


SUMMARY_FILE = "summary.json"


def figures(outcomes: list[StageOutcome]) -> dict:
    """The summary table's figures as numbers, unrounded (what README tables of a run are checked against)."""
    by = {o.name: o.summary for o in outcomes}
    crawl, clean, tokens = by.get("crawl", {}), by.get("clean", {}), by.get("tokenize", {})
    train, ev = by.get("train", {}), by.get("evaluate", {})
    splits = tokens.get("splits", {})
    return {
        "pages_crawled": crawl.get("pages"), "crawl_s": crawl.get("elapsed_s"),
        "docs_kept": clean.get("docs_out"), "clean_s": clean.get("elapsed_s"),
        "train_tokens": splits.get("train", {}).get("tokens"), "val_tokens": splits.get("val", {}).get("tokens"),
        "parameters": train.get("n_params"), "steps": train.get("steps"),
        "val_loss_start": train.get("val_loss_start"), "val_loss": train.get("val_loss"),
        "tokens_per_s": train.get("tokens_per_s"), "mfu": train.get("mfu"),
        "peak_memory_mib": train.get("peak_memory_mib"), "peak_breakdown_mib": train.get("memory_breakdown_mib"),
        "train_s": train.get("elapsed_s"),
        "eval_val_loss": ev.get("val_loss"), "perplexity": ev.get("perplexity"), "bits_per_byte": ev.get("bits_per_byte"),
        "registered_model": ev.get("registered_model"), "registered_version": ev.get("registered_version"),
        "mlflow_run_url": train.get("mlflow_run_url"),
    }


def write_summary(config: MemlmConfig, outcomes: list[StageOutcome], elapsed_s: float) -> Path:
    """RUN_DIR/summary.json: each stage's status, time and summary, and the figures of the summary table."""
    path = Path(config.run_dir) / SUMMARY_FILE
    path.write_text(json.dumps({
        "name": config.name, "elapsed_s": round(elapsed_s, 1),
        "stages": [{"name": o.name, "skipped": o.skipped, "elapsed_s": o.elapsed_s, "summary": o.summary}
                   for o in outcomes],
        "figures": figures(outcomes),
    }, indent=2, default=str))
    return path


def summary_markdown(config: MemlmConfig, outcomes: list[StageOutcome], elapsed_s: float) -> str:
    lines = [f"# memlm pipeline `{config.name}`", "", "| stage | status | time (s) |", "|---|---|---|"]
    lines += [f"| {o.name} | {'skipped (inputs unchanged)' if o.skipped else 'ran'} | {o.elapsed_s} |"
              for o in outcomes]
    lines += ["", "| figure | value |", "|---|---|"]
    for name, value in headline(outcomes).items():
        if value is not None:
            shown = f"[{value}]({value})" if isinstance(value, str) and value.startswith("http") else value
            lines.append(f"| {name} | {shown} |")
    lines.append(f"\nTotal time: {elapsed_s:.0f} s")
    samples = next((o.summary.get("samples") for o in outcomes if o.name == "evaluate"), None)
    for sample in samples or []:
        lines += ["", f"**{sample['prompt']}** → {sample['text']!r}"]
    return "\n".join(lines)
