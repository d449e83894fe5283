"""Per-rank planning benchmark: `memlm plan --world-size N`'s two ways of knowing a rank's peak side by side.
At 2 ranks each configuration is measured by 2 torchrun ranks (gloo on CPU, a core each) and predicted
for rank 0 in one process (fsdp through FSDP2 on a fake process group, ddp as one process with its
buckets); at 4 and 8 ranks, more than this machine runs, it is predicted only, beside the shard arithmetic
(16 B a parameter for fp32 AdamW, / N under fsdp). Then a model this machine cannot hold, predicted for
8 CUDA ranks.

    python bench/plan_world.py --json bench/results/plan-world-cpu.json

Reference model (6 layers, width 384, 6 heads, vocabulary 16384, sequence 256, global batch 8), fp32,
random tokens (memory depends on shapes only). The error is (predicted - measured) / measured of the
largest stage's peak; "rank spread" is how far the two measured ranks' peaks differ. Each configuration
is measured --repeats times (default 3): a rank's peak that moved from run to run would show there (it
did under fsdp with the frugal combination while gloo's own reduce-scatter copied each block's gradients and
freed the copy out of the profiler's sight). The error is against the largest measured run, the one a budget
must hold; the range against every run is kept beside it.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.plan import BIG, MODELS  # noqa: E402
from bench.plan import configs as plan_configs  # noqa: E402

MEMORY = {
    "plain loss, AdamW": {"loss_chunk_size": 0},
    "frugal, AdamW": {"activation_checkpointing": "full", "mlp_chunks": 4, "loss_chunk_size": 128},
    "frugal, Adafactor": {"activation_checkpointing": "full", "mlp_chunks": 4, "loss_chunk_size": 128,
                          "optimizer": "adafactor"},
}
STRATEGIES = ("fsdp", "ddp")
MEASURED_WORLD = 2
PREDICTED_WORLDS = (2, 4, 8)


def configs(shape: dict, memory: dict, strategy: str, world: int, device: str = "cpu"):
    return plan_configs(shape, memory, device=device, distributed={"strategy": strategy, "nproc_per_node": world})


def row(strategy: str, name: str, repeats: int) -> dict:
    import torch

    from model.plan import MiB, predict
    from model.plan_ranks import measure_over_ranks

    def mib(stages: dict) -> dict:
        return {k: round(v / MiB, 1) for k, v in stages.items()}

    arch, cfg = configs(MODELS["reference"], MEMORY[name], strategy, MEASURED_WORLD)
    started = time.perf_counter()
    runs = [measure_over_ranks(arch, cfg, torch.device("cpu")) for _ in range(repeats)]
    measure_s = (time.perf_counter() - started) / repeats
    measured = max(runs, key=lambda m: m.peak_bytes)
    out = {"strategy": strategy, "config": name, "memory": MEMORY[name], "measured_world": MEASURED_WORLD,
           "measured_mib": round(measured.peak_bytes / MiB, 1),
           "measured_runs_mib": [round(m.peak_bytes / MiB, 1) for m in runs],
           "measured_rank_peaks_mib": [round(b / MiB, 1) for b in measured.rank_peaks],
           "rank_spread_pct": round(100 * (max(measured.rank_peaks) - min(measured.rank_peaks))
                                    / max(measured.rank_peaks), 2),
           "measured_stages_mib": mib(measured.stages), "measure_s": round(measure_s, 1), "predicted": {}}
    for world in PREDICTED_WORLDS:
        arch, cfg = configs(MODELS["reference"], MEMORY[name], strategy, world)
        started = time.perf_counter()
        predicted = predict(arch, cfg)
        out["predicted"][str(world)] = {"peak_mib": round(predicted.peak_bytes / MiB, 1),
                                        "stages_mib": mib(predicted.stages),
                                        "largest_stage": max(predicted.stages, key=predicted.stages.get),
                                        "predict_s": round(time.perf_counter() - started, 2)}
    at_measured = out["predicted"][str(MEASURED_WORLD)]["peak_mib"]
    out["error_pct"] = round(100 * (at_measured - out["measured_mib"]) / out["measured_mib"], 2)
    out["error_range_pct"] = sorted(round(100 * (at_measured - m) / m, 2) for m in out["measured_runs_mib"])
    with torch.device("meta"):
        from model.arch import build_model

        n = sum(p.numel() for p in build_model(arch).parameters())
    out["parameters"] = n
    if name.endswith("AdamW"):  # 4 B weights + 4 B gradients + 8 B moments, sharded or replicated
        out["shard_arithmetic_mib"] = {str(w): round(16 * n / (w if strategy == "fsdp" else 1) / MiB, 1)
                                       for w in PREDICTED_WORLDS}
    return out


def big_row(world: int = 8) -> dict:
    """About 1.07 B parameters on 8 CUDA ranks, fsdp, frugal: rank 0 predicted from this CPU machine."""
    from model.plan import predict

    arch, cfg = configs(BIG, MEMORY["frugal, AdamW"], "fsdp", world, device="cuda")
    started = time.perf_counter()
    predicted = predict(arch, cfg, "cuda")
    n = 12 * arch.n_layer * arch.n_embd**2 + arch.vocab_size * arch.n_embd
    return {"shape": BIG, "strategy": "fsdp", "world": world, "memory": MEMORY["frugal, AdamW"],
            "parameters_approx": n, "peak_gib": round(predicted.peak_bytes / 2**30, 2),
            "stages_gib": {k: round(v / 2**30, 2) for k, v in predicted.stages.items()},
            "adamw_state_gib_unsharded": round(16 * n / 2**30, 1), "predict_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--no-big", action="store_true", help="skip the 1 B-parameter prediction")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each configuration (default 3)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    import torch

    from rich.console import Console
    from rich.table import Table

    torch.set_num_threads(2)
    rows: list[dict] = []
    out = {"command": "python bench/plan_world.py " + " ".join(sys.argv[1:]), "torch": torch.__version__,
           "machine": platform.processor() or platform.machine(), "backend": "gloo", "rows": rows}

    def write() -> None:  # as it goes: a run cut short keeps its rows
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=2) + "\n")

    from model.techniques import TechniqueError, check

    for strategy in STRATEGIES:
        for name in MEMORY:
            try:
                check(configs(MODELS["reference"], MEMORY[name], strategy, MEASURED_WORLD)[1], torch.device("cpu"))
            except TechniqueError as exc:
                out.setdefault("refused", []).append({"strategy": strategy, "config": name, "why": str(exc)})
                print(f"{strategy} {name}: refused: {exc}", flush=True)
                continue
            rows.append(row(strategy, name, args.repeats))
            write()
            print(json.dumps({k: rows[-1][k] for k in ("strategy", "config", "measured_runs_mib", "error_pct")}),
                  flush=True)
    if not args.no_big:
        out["big"] = big_row()
        write()
    table = Table(title=f"memlm plan per rank: measured by {MEASURED_WORLD} torchrun ranks (gloo) vs predicted, MiB")
    for col in ("strategy", "config", f"measured, {MEASURED_WORLD} ranks", *(f"predicted, {w}" for w in PREDICTED_WORLDS),
                "error (range)", "16 B/param per rank, 2 / 8"):
        table.add_column(col, justify="left" if col in ("strategy", "config") else "right")
    for r in rows:
        shard = r.get("shard_arithmetic_mib")
        table.add_row(r["strategy"], r["config"],
                      f"{r['measured_mib']:.1f} ({' / '.join(f'{p:.0f}' for p in r['measured_rank_peaks_mib'])})",
                      *(f"{r['predicted'][str(w)]['peak_mib']:.1f}" for w in PREDICTED_WORLDS),
                      f"{r['error_pct']:+.1f}% ({' to '.join(f'{e:+.1f}' for e in r['error_range_pct'])})",
                      "" if shard is None else f"{shard['2']:.0f} / {shard['8']:.0f}")
    Console(width=160).print(table)
    errors = [abs(r["error_pct"]) for r in rows]
    out["summary"] = {"configs": len(rows), "median_abs_error_pct": round(statistics.median(errors), 2),
                      "max_abs_error_pct": round(max(errors), 2)}
    print(json.dumps(out["summary"]))
    if "big" in out:
        print(json.dumps(out["big"]))
    write()


if __name__ == "__main__":
    main()
