"""The chunked loss's own memory and time at the reference config (8 x 256 tokens, width 384, vocabulary
16384), with and without the vocabulary in tiles.

    python bench/loss_memory.py --json bench/results/loss-memory-cpu.json

Memory: the peak of live CPU tensor bytes (the profiler's allocation events) during one forward and
backward of the loss, less its inputs and the two fp32 gradients it makes (hidden states 3 MiB, head
weight 24 MiB): what the loss needs beyond its inputs and outputs. Time: the median of `--rounds`
forward+backward passes, the settings in rotated order.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch._C._profiler import _EventType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.losses import linear_cross_entropy  # noqa: E402
from model.memory import _walk  # noqa: E402

TOKENS, WIDTH, VOCAB = 8 * 256, 384, 16384
SETTINGS = [(512, 0), (128, 0), (128, 1024), (256, 1024), (128, 2048)]  # (token chunk, vocabulary tile)


def transient_bytes(h, w, t, chunk: int, vocab_chunk: int) -> int:
    h.grad = w.grad = None
    with torch.profiler.profile(profile_memory=True) as prof:
        linear_cross_entropy(h, w, t, chunk, vocab_chunk=vocab_chunk).backward()
    events = sorted(_walk(prof.profiler.kineto_results.experimental_event_tree()), key=lambda e: e.start_time_ns)
    live = peak = 0
    for event in events:
        if event.typed[0] == _EventType.Allocation:
            live += event.typed[1].alloc_size
            peak = max(peak, live)
    return peak - (h.numel() + w.numel()) * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h = torch.randn(TOKENS, WIDTH, requires_grad=True)
    w = (torch.randn(VOCAB, WIDTH) * 0.02).requires_grad_()
    t = torch.randint(0, VOCAB, (TOKENS,))
    times: dict[tuple[int, int], list[float]] = {s: [] for s in SETTINGS}
    for r in range(args.rounds):
        for s in SETTINGS[r % len(SETTINGS):] + SETTINGS[:r % len(SETTINGS)]:
            h.grad = w.grad = None
            start = time.perf_counter()
            linear_cross_entropy(h, w, t, s[0], vocab_chunk=s[1]).backward()
            times[s].append(time.perf_counter() - start)
    rows = [{"loss_chunk_size": c, "loss_vocab_chunk_size": v,
             "transient_mib": round(transient_bytes(h, w, t, c, v) / 2**20, 3),
             "median_s": round(statistics.median(times[(c, v)]), 3), "times_s": [round(x, 3) for x in times[(c, v)]]}
            for c, v in SETTINGS]
    for row in rows:
        print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps({"tokens": TOKENS, "width": WIDTH, "vocab": VOCAB, "threads": args.threads,
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
