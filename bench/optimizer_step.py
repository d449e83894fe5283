"""One optimizer step over the reference config's weights (bench/memory.py's model: 6 layers, width 384,
vocabulary 16384; 17 M weights in 39 tensors), each weight stepped by an optimizer of its own as
`optimizer_in_backward` does.

    python bench/optimizer_step.py --rounds 3 --json bench/results/optimizer-step-cpu.json

Rows: fused fp32 AdamW, memlm's AdamW over bf16 weights (fp32 moments), memlm's fp8 AdamW over fp32 and
bf16 weights, and torchao's 8-bit AdamW over bf16 weights (sliced as memlm steps it; `memlm[lowbit]`,
skipped without torchao). Each round steps every row `--steps` times in rotated order after two untimed
steps (torchao compiles its step in the first); a row's figure per round is its median step.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.fp8_adamw import AdamWFp8, new_random_pool  # noqa: E402
from model.lowbit import AdamWBF16, sliced_low_bit_adamw  # noqa: E402
from model.memory import _plain_tensors  # noqa: E402



def reference_shapes() -> list[tuple[int, ...]]:
    """The reference config's weights, as the memory benchmark builds its model (on the meta device: shapes
    only)."""
    from bench.memory import reference_gpt

    with torch.device("meta"):
        return [tuple(p.shape) for p in reference_gpt().parameters()]


HYPER = {"betas": (0.9, 0.95), "weight_decay": 0.1}


def rows() -> dict[str, tuple[torch.dtype, Callable[[list], torch.optim.Optimizer]]]:
    pool = new_random_pool("cpu")
    out = {
        "adamw-fused-fp32": (torch.float32, lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True, **HYPER)),
        "adamw-bf16-weights": (torch.bfloat16, lambda ps: AdamWBF16(ps, lr=1e-3, **HYPER)),
        "adamw-fp8-fp32-weights": (torch.float32, lambda ps: AdamWFp8(ps, lr=1e-3, random_pool=pool, **HYPER)),
        "adamw-fp8-bf16-weights": (torch.bfloat16, lambda ps: AdamWFp8(ps, lr=1e-3, random_pool=pool, **HYPER)),
    }
    try:
        eight_bit = sliced_low_bit_adamw("AdamW8bit")
    except ImportError:
        return out
    out["torchao-adamw8bit-bf16-weights"] = (
        torch.bfloat16, lambda ps: eight_bit(ps, lr=torch.tensor(1e-3), bf16_stochastic_round=True, **HYPER))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    shapes = reference_shapes()
    torch.manual_seed(0)
    setups = {}
    for name, (dtype, make) in rows().items():
        params = [torch.nn.Parameter((torch.randn(*shape) * 0.02).to(dtype)) for shape in shapes]
        setups[name] = (params, [make([p]) for p in params])

    def step(name: str) -> float:
        params, optimizers = setups[name]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-2
        start = time.perf_counter()
        for opt in optimizers:
            opt.step()
        return time.perf_counter() - start

    for name in setups:
        step(name), step(name)  # untimed: state created, torchao's step compiled
    names = list(setups)
    medians: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            medians[name].append(round(statistics.median(step(name) for _ in range(args.steps)), 4))
    weights = sum(p.numel() for p in setups[names[0]][0])
    result = {"weights": weights, "threads": torch.get_num_threads(), "rows": [
        {"name": name, "step_s_rounds": medians[name], "state_bytes_per_weight": round(sum(
            inner.untyped_storage().nbytes() for opt in setups[name][1] for s in opt.state.values()
            for t in s.values() if isinstance(t, torch.Tensor) for inner in _plain_tensors(t)) / weights, 3)}
        for name in names]}
    for row in result["rows"]:
        print(f"{row['name']:32s} step s per round {row['step_s_rounds']}  state bytes/weight "
              f"{row['state_bytes_per_weight']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
