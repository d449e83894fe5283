"""Prefect flows: one per stage, and `pipeline`, which chains them and skips stages whose inputs did
not change. Flows take the path of a config file so that a run is reproducible from the Prefect UI."""
from __future__ import annotations

import time

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
    create_markdown_artifact(
        key=f"memlm-{config.name}".lower().replace("_", "-"),
        markdown=summary_markdown(config, outcomes, time.monotonic() - started),
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
