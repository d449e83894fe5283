"""Generation benchmark: tokens/s and peak memory for 256 new tokens, with and without the KV cache, in
fp32, fp16 and int8 weights (with their validation bits per byte beside fp32's), and for the recurrent model.

    python bench/generate.py [--checkpoint runs/demo/train/checkpoint] [--new-tokens 256] [--json out.json]

Uses the demo's trained checkpoint when it exists, else a freshly initialised model of the demo's shape
(speed and memory do not depend on the weights). Greedy decoding, batch 1, 2 threads; tokens/s is the fastest of three
timed generations (this machine's speed drifts by 10-20%); peak memory is memlm's tracker over the whole
generation (live tensor bytes, weights included).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(model, prompt, new_tokens: int, use_cache: bool, repeats: int = 3) -> dict:
    import torch

    from model.generate import generate
    from model.memory import MemoryTracker
    from model.quantize import weight_bytes

    generate(model, prompt, 4, temperature=0, use_cache=use_cache)  # warm-up
    tracker = MemoryTracker(model, None, torch.device("cpu"), sample_steps=[1])
    with tracker.track(1):
        out = generate(model, prompt, new_tokens, temperature=0, use_cache=use_cache)
    elapsed = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        timed = generate(model, prompt, new_tokens, temperature=0, use_cache=use_cache)
        elapsed = min(elapsed, time.perf_counter() - start)
        assert torch.equal(out, timed)
    return {"tokens_per_s": round(new_tokens / elapsed, 1), "peak_mib": round(tracker.last.peak_mib, 2),
            "weights_mib": round(weight_bytes(model) / 2**20, 2), "tokens": out[0].tolist()}


def validation_bpb(model, checkpoint: Path) -> float | None:
    """Bits per byte on the demo's whole validation split, when the checkpoint came with one."""
    import torch

    from model.data import TokenFile
    from model.evaluate import bits_per_byte, evaluate_loss

    tokens_dir = checkpoint.parent.parent / "tokens"
    if not (tokens_dir / "manifest.json").exists():
        return None
    manifest = json.loads((tokens_dir / "manifest.json").read_text())
    val = TokenFile(tokens_dir / "val.bin", model.config.block_size, manifest["dtype"])
    loss, _ = evaluate_loss(model, val, 16, torch.device("cpu"))
    split = manifest["splits"]["val"]
    return round(bits_per_byte(loss, split["tokens"], split["bytes"]), 5)


def main() -> None:
    import torch

    from model.checkpoint import has_checkpoint, load_lm
    from model.gpt import GPT, GPTConfig
    from model.quantize import inference_weights
    from model.rnn import RNNAttentionLM, RNNConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs/demo/train/checkpoint")
    parser.add_argument("--rnn-checkpoint", type=Path, default=ROOT / "runs/demo-rnn/train/checkpoint",
                        help="a trained rnn-attention checkpoint (default: an untrained one of the GPT's size)")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    if has_checkpoint(args.checkpoint):
        model, source = load_lm(args.checkpoint), str(args.checkpoint)
    else:
        model = GPT(GPTConfig(vocab_size=8192, block_size=128, n_layer=4, n_head=4, n_embd=256))
        source = "untrained model of the demo's shape (no checkpoint found)"
    model.eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    rows = []
    for name, use_cache in (("gpt-kv-cache", True), ("gpt-recompute", False)):
        rows.append({"name": name, **measure(model, prompt, args.new_tokens, use_cache)})
    fp32_bpb = validation_bpb(model, args.checkpoint)
    half = inference_weights(copy.deepcopy(model), "fp16")
    for name, use_cache in (("gpt-kv-cache-fp16", True), ("gpt-recompute-fp16", False)):
        rows.append({"name": name, **measure(half, prompt, args.new_tokens, use_cache)})
    fp16_bpb = validation_bpb(half, args.checkpoint)
    quantized = inference_weights(copy.deepcopy(model), "int8")
    rows.append({"name": "gpt-kv-cache-int8", **measure(quantized, prompt, args.new_tokens, True)})
    int8_bpb = validation_bpb(quantized, args.checkpoint)
    if has_checkpoint(args.rnn_checkpoint):
        rnn, rnn_source = load_lm(args.rnn_checkpoint), str(args.rnn_checkpoint)
    else:
        # Speed and memory do not depend on the weights: an untrained model of about the GPT's size.
        rnn = RNNAttentionLM(RNNConfig(vocab_size=model.config.vocab_size, n_layer=2, n_embd=456))
        rnn_source = "untrained model of about the GPT's size (no checkpoint found)"
    rnn.eval()
    rows.append({"name": "rnn-attention-state", **measure(rnn, prompt, args.new_tokens, True)})
    rnn_int8 = inference_weights(copy.deepcopy(rnn), "int8")
    rows.append({"name": "rnn-attention-state-int8", **measure(rnn_int8, prompt, args.new_tokens, True)})
    # Within the context both decode the same tokens; past it the cache restarts over half a block
    # while recomputation slides the window, so the sequences may part there.
    block = model.config.block_size
    tokens = {r["name"]: r.pop("tokens")[:block] for r in rows}
    same = tokens["gpt-kv-cache"] == tokens["gpt-recompute"]
    fp16_same = tokens["gpt-kv-cache-fp16"] == tokens["gpt-kv-cache"]
    by_name = {r["name"]: r for r in rows}
    speed = {name: r["tokens_per_s"] for name, r in by_name.items()}
    speedup = speed["gpt-kv-cache"] / speed["gpt-recompute"]
    speedup_fp16 = speed["gpt-kv-cache-fp16"] / speed["gpt-recompute-fp16"]
    # Each way of decoding at its fastest weights on this machine: the cache is bound by reading the
    # weights (fp16 halves that), recomputation by arithmetic (fp32 is the fast one on a CPU).
    speedup_best = max(speed["gpt-kv-cache"], speed["gpt-kv-cache-fp16"]) / \
        max(speed["gpt-recompute"], speed["gpt-recompute-fp16"])
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"generation, {args.new_tokens} new tokens ({source})")
    for col in ("row", "tokens/s", "peak MiB", "weights MiB"):
        table.add_column(col, justify="left" if col == "row" else "right")
    for r in rows:
        table.add_row(r["name"], f"{r['tokens_per_s']:.0f}", f"{r['peak_mib']:.1f}", f"{r['weights_mib']:.1f}")
    Console().print(table)
    weight_ratio = by_name["gpt-kv-cache-int8"]["weights_mib"] / by_name["gpt-kv-cache"]["weights_mib"]
    print(f"int8 weights: {weight_ratio:.2f}x the fp32 weight memory", end="")
    if fp32_bpb is not None:
        print(f"; validation bits per byte {fp32_bpb:.4f} (fp32) -> {int8_bpb:.4f} (int8), "
              f"{(int8_bpb / fp32_bpb - 1):+.2%}; {fp16_bpb:.4f} (fp16)")
    else:
        print()
    print(f"KV cache speed-up: {speedup:.1f}x in fp32, {speedup_fp16:.1f}x in fp16, {speedup_best:.1f}x each at its "
          f"fastest weights; identical greedy tokens within the {block}-token context: {same} "
          f"(fp16 vs fp32: {fp16_same})")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "kv_cache_speedup": round(speedup, 2),
                                         "kv_cache_speedup_fp16": round(speedup_fp16, 2),
                                         "kv_cache_speedup_each_at_fastest": round(speedup_best, 2),
                                         "int8_weight_ratio": round(weight_ratio, 3), "fp32_val_bpb": fp32_bpb,
                                         "int8_val_bpb": int8_bpb, "fp16_val_bpb": fp16_bpb,
                                         "fp16_identical_tokens_within_context": fp16_same,
                                         "identical_tokens_within_context": same, "model": source,
                                         "rnn_model": rnn_source}, indent=2))


if __name__ == "__main__":
    main()
