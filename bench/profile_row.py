"""Where a `bench/memory.py` row's training step spends its time: torch.profiler over two steps after
warm-up, the operators' own CPU time grouped (matrix multiplies, compiled graphs such as torchao's
optimizer step, dtype casts, attention, the rest), and the top operators.

    python bench/profile_row.py --rows memlm-best-adamw,memlm-bf16-adamw8bit --json bench/results/profile-cpu.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GROUPS = {"matrix multiplies": ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm"),
          "dtype casts": ("aten::copy_",),
          "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                        "aten::_scaled_dot_product_flash_attention_for_cpu_backward")}
PROFILED_STEPS = (5, 6)


def group_of(name: str) -> str:
    if name.startswith("## Call CompiledFxGraph"):
        return "compiled graphs"
    return next((group for group, names in GROUPS.items() if name in names), "the rest")


def profile_row(name: str, data_file: Path, threads: int) -> dict:
    import memory as bench
    from torch.profiler import ProfilerActivity, profile

    import model.step

    profiler = profile(activities=[ProfilerActivity.CPU])
    step_s: dict[int, float] = {}
    call = model.step.TrainStep.__call__

    def timed(self, i, batches):
        if i == PROFILED_STEPS[0]:
            profiler.__enter__()
        started = time.perf_counter()
        out = call(self, i, batches)
        step_s[i] = round(time.perf_counter() - started, 3)
        if i == PROFILED_STEPS[-1]:
            profiler.__exit__(None, None, None)
        return out

    model.step.TrainStep.__call__ = timed
    try:
        bench.run_row(name, PROFILED_STEPS[-1], data_file, threads, 1e11, "fp32")
    finally:
        model.step.TrainStep.__call__ = call
    events = [e for e in profiler.key_averages() if e.self_cpu_time_total > 0]
    total_s = sum(e.self_cpu_time_total for e in events) / 1e6
    groups: dict[str, float] = {}
    for e in events:
        groups[group_of(e.key)] = groups.get(group_of(e.key), 0.0) + e.self_cpu_time_total / 1e6
    per_step = len(PROFILED_STEPS)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
    return {"name": name, "threads": threads, "profiled_steps": list(PROFILED_STEPS),
            "step_s": step_s, "profiled_s_per_step": round(total_s / per_step, 3),
            "groups_s_per_step": {g: round(s / per_step, 3) for g, s in sorted(groups.items(), key=lambda x: -x[1])},
            "top_ops": [{"name": e.key[:80], "self_s_per_step": round(e.self_cpu_time_total / 1e6 / per_step, 3),
                         "calls_per_step": e.count // per_step} for e in top]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", required=True, help="comma-separated bench/memory.py row names")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import memory as bench

    data_file, _ = bench.prepare_data(Path("runs/bench/profile-data"), None)
    results = [profile_row(name, data_file, args.threads) for name in args.rows.split(",")]
    for r in results:
        print(f"{r['name']}: {r['profiled_s_per_step']} s a profiled step; " +
              ", ".join(f"{g} {s} s" for g, s in r["groups_s_per_step"].items()))
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
