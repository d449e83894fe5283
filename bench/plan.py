"""Planner benchmark: each configuration's peak predicted (one step traced under fake tensors) against
the peak measured (steps, a validation batch, a checkpoint's save and a resume under memlm's tracker),
and a prediction for a model this machine cannot hold.

    python bench/plan.py --json bench/results/plan-cpu.json           # the grid, and the 1 B prediction
    python bench/plan.py --models reference --json out.json           # one model only
    python bench/plan.py --big-only --big-first-fit --json out.json   # the 1 B prediction as memlm plan makes it

Grid: activation checkpointing none/selective/full x chunked loss on/off x AdamW/Adafactor x micro-batches,
8 configurations on the reference config (6 layers, width 384, 6 heads, vocabulary 16384, sequence 256,
batch 8), 4 of them on a wider one (8 layers, width 640, 10 heads, vocabulary 24576, sequence 384, batch 4). fp32, 2 threads, random tokens
(memory depends on shapes only). The error is (predicted - measured) / measured of the largest stage's peak.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {
    "reference": {"n_layer": 6, "n_embd": 384, "n_head": 6, "vocab_size": 16384, "block_size": 256, "batch_size": 8},
    "wide": {"n_layer": 8, "n_embd": 640, "n_head": 10, "vocab_size": 24576, "block_size": 384, "batch_size": 4},
}
PLAIN = {"loss_chunk_size": 0}
CHUNKED = {"loss_chunk_size": 256}
# name -> train.memory; micro-batches are a fraction of the model's batch (the batch divided by "split").
GRID: dict[str, dict] = {
    "none, plain loss, AdamW": {**PLAIN},
    "none, chunked loss, AdamW": {**CHUNKED},
    "selective, chunked loss, AdamW": {**CHUNKED, "activation_checkpointing": "selective", "checkpoint_every": 2},
    "full, chunked loss, AdamW": {**CHUNKED, "activation_checkpointing": "full"},
    "full, plain loss, Adafactor": {**PLAIN, "activation_checkpointing": "full", "optimizer": "adafactor"},
    "selective, plain loss, AdamW, 2 micro-batches": {**PLAIN, "activation_checkpointing": "selective", "split": 2},
    "none, chunked loss, Adafactor, 2 micro-batches": {**CHUNKED, "optimizer": "adafactor", "split": 2},
    "full, chunked loss, AdamW, 4 micro-batches": {**CHUNKED, "activation_checkpointing": "full", "split": 4},
}
# The wider model is slower to measure: a cross-section of the grid (8 + 4 = 12 configurations).
WIDE_GRID = ("none, plain loss, AdamW", "selective, chunked loss, AdamW", "full, plain loss, Adafactor",
             "full, chunked loss, AdamW, 4 micro-batches")
# About 1.07 B parameters, for a 24 GiB CUDA device: more than this machine's memory holds with AdamW.
BIG = {"n_layer": 20, "n_embd": 2048, "n_head": 16, "vocab_size": 32768, "block_size": 1024, "batch_size": 8}
BIG_BUDGET_GIB = 24


def configs(shape: dict, memory: dict, **train):
    """The model of `shape` and its TrainConfig with `memory` ("split": N micro-batches) and `train`'s fields."""
    from model.config import TrainConfig
    from model.gpt import GPTConfig

    memory = dict(memory)
    split = memory.pop("split", 1)
    if split > 1:
        memory["micro_batch_size"] = shape["batch_size"] // split
    arch = GPTConfig(vocab_size=shape["vocab_size"], block_size=shape["block_size"], n_layer=shape["n_layer"],
                     n_head=shape["n_head"], n_embd=shape["n_embd"])
    return arch, TrainConfig(batch_size=shape["batch_size"], lr=1e-3, memory=memory, **train)


def grid_row(model: str, name: str) -> dict:
    import torch

    from model.plan import MiB, measure, predict

    arch, cfg = configs(MODELS[model], GRID[name], threads=2)
    started = time.perf_counter()
    predicted = predict(arch, cfg)
    predict_s = time.perf_counter() - started
    started = time.perf_counter()
    measured = measure(arch, cfg, torch.device("cpu"), timed=False)  # memory only: the tracked steps
    measure_s = time.perf_counter() - started
    return {
        "model": model, "config": name, "memory": cfg.memory.model_dump(exclude_defaults=True),
        "measured_mib": round(measured.peak_bytes / MiB, 2), "predicted_mib": round(predicted.peak_bytes / MiB, 2),
        "error_pct": round(100 * (predicted.peak_bytes - measured.peak_bytes) / measured.peak_bytes, 3),
        "measured_stages_mib": {k: round(v / MiB, 2) for k, v in measured.stages.items()},
        "predicted_stages_mib": {k: round(v / MiB, 2) for k, v in predicted.stages.items()},
        "step_error_pct": round(100 * (predicted.stages["train_step"] - measured.stages["train_step"])
                                / measured.stages["train_step"], 3),
        "predict_s": round(predict_s, 2), "measure_s": round(measure_s, 1),
    }


def big_prediction(try_all: bool = True) -> dict:
    import torch

    from model.config import TrainConfig
    from model.gpt import GPTConfig
    from model.plan import PREDICTION_ASSUMES, plan

    arch = GPTConfig(vocab_size=BIG["vocab_size"], block_size=BIG["block_size"], n_layer=BIG["n_layer"],
                     n_head=BIG["n_head"], n_embd=BIG["n_embd"])
    cfg = TrainConfig(batch_size=BIG["batch_size"], device="cuda")
    started = time.perf_counter()
    result = plan(arch, cfg, BIG_BUDGET_GIB * 2**30, torch.device("cuda"), try_all=try_all, predict_only=True)
    elapsed = time.perf_counter() - started
    n_params = 12 * arch.n_layer * arch.n_embd**2 + arch.vocab_size * arch.n_embd
    return {"shape": BIG, "every_candidate": try_all, "parameters_approx": n_params, "device": "cuda (predicted from this CPU machine)",
            "budget_gib": BIG_BUDGET_GIB, "seconds": round(elapsed, 1),
            "chosen": None if result.chosen is None else result.chosen.name,
            "trials": [{"name": t.name, "peak_gib": None if t.peak_bytes is None else round(t.peak_bytes / 2**30, 2),
                        "stages_gib": {k: round(v / 2**30, 2) for k, v in t.stages.items()},
                        "refused": t.refused} for t in result.trials],
            "assumes": PREDICTION_ASSUMES, "machine_memory_gib": round(os.sysconf("SC_PAGE_SIZE")
                                                                     * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--no-big", action="store_true", help="skip the 1 B-parameter prediction")
    parser.add_argument("--big-only", action="store_true", help="only the 1 B-parameter prediction")
    parser.add_argument("--big-first-fit", action="store_true",
                        help="predict the 1 B model's candidates up to the first that fits, as memlm plan does "
                        "(default: every candidate)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    rows = []
    out = {"command": "python bench/plan.py " + " ".join(sys.argv[1:]), "torch": torch.__version__,
           "machine": platform.processor() or platform.machine(), "threads": 2, "rows": rows}
    if not args.no_big:
        out["big"] = big_prediction(not args.big_first_fit)
        print(json.dumps({k: out["big"][k] for k in ("parameters_approx", "seconds", "chosen")}), flush=True)
    for model in [] if args.big_only else args.models.split(","):
        for name in GRID if model == "reference" else WIDE_GRID:
            row = grid_row(model, name)
            rows.append(row)
            if args.json:  # as it goes: a long run cut short keeps its rows
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(out, indent=2) + "\n")
            print(f"{model:9} {name:48} measured {row['measured_mib']:9.2f} MiB  predicted {row['predicted_mib']:9.2f} MiB"
                  f"  error {row['error_pct']:+.3f}%  ({row['predict_s']} s / {row['measure_s']} s)", flush=True)
    if not rows:
        if args.json:
            args.json.write_text(json.dumps(out, indent=2) + "\n")
        return
    errors = [abs(r["error_pct"]) for r in rows]
    summary = {"configs": len(rows), "median_abs_error_pct": round(statistics.median(errors), 3),
               "max_abs_error_pct": round(max(errors), 3),
               "median_predict_s": round(statistics.median(r["predict_s"] for r in rows), 2),
               "median_measure_s": round(statistics.median(r["measure_s"] for r in rows), 1)}
    print(json.dumps(summary))
    out["summary"] = summary
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
