"""Memory benchmark: memlm's techniques against Hugging Face GPT-2 on the same model and data.

Reference config: GPT with 6 layers, width 384, 6 heads, vocabulary 16384, sequence 256, batch 8, AdamW
(lr 1e-3, 3 warm-up steps, no gradient clipping so that every row follows the same recipe), fp32 unless
the row says otherwise, 2 threads. Each row runs in its own process; its peak and breakdown come from
memlm's MemoryTracker over steps 2 and 3 (live tensor bytes), its speed from the untracked steps after.

    python bench/memory.py                      # every default row, table on stdout
    python bench/memory.py --rows memlm-baseline,hf-gpt2 --steps 10 --json out.json
    python bench/memory.py --rows hf-gpt2,memlm-default --rounds 3   # speeds as medians of 3 rotated rounds
    python bench/memory.py --precision bf16-mixed   # on a GPU: every row under bf16 autocast
    python bench/memory.py --world-size 2           # DDP and FSDP rows over 2 ranks (torchrun, gloo on CPU)
                                                    # beside the single-process rows they compare with

A row over N ranks runs under torchrun with --threads / N threads a rank (the same cores in all), takes
the same global batch (each rank its slice of the same draws), and reports the largest rank's peak,
every rank's breakdown, and tokens/s of the whole job.

Data: the demo corpus (runs/demo/split/train.jsonl) re-tokenized to a 16384-token BPE when it exists,
else a synthetic Zipf-Markov token stream (said in the output).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REFERENCE = {"n_layer": 6, "n_embd": 384, "n_head": 6, "vocab_size": 16384, "block_size": 256, "batch_size": 8}
LR, WARMUP = 1e-3, 3
PLAIN = {"loss_chunk_size": 0}
# The least memory with AdamW at (nearly) full speed: every block recomputed, its MLP in tiles, the head's
# weight stepped row by row in backward, every other gradient applied and freed as it is made.
BEST_ADAMW = {"activation_checkpointing": "full", "mlp_chunks": 4, "loss_chunk_size": 128, "split_head_step": True,
              "optimizer_in_backward": True}
# Adafactor's state is tiny, so half the blocks can keep their activations: faster, still under 200 MiB.
BEST_ANY = {"activation_checkpointing": "selective", "checkpoint_every": 2, "mlp_chunks": 4, "loss_chunk_size": 256,
            "optimizer_in_backward": True, "optimizer": "adafactor"}
# Every technique at its most frugal, whatever it costs in speed.
LOWEST = {"activation_checkpointing": "full", "mlp_chunks": 4, "loss_chunk_size": 128, "late_head_grad": True,
          "optimizer_in_backward": True, "optimizer": "adafactor"}

# The best AdamW combination that composes with DDP and FSDP (split_head_step, and optimizer_in_backward
# under DDP, step a gradient before the ranks average it; see model/techniques.py).
BEST_ADAMW_SHARDED = {"activation_checkpointing": "full", "mlp_chunks": 4, "loss_chunk_size": 128}
# Below the fp32 AdamW floor (issue 13): bf16 weights computed in fp32 and stepped with stochastic rounding,
# low-bit AdamW states, the loss's vocabulary in tiles. split_head_step needs fp32 AdamW, so the head's
# gradient comes late instead.
LOW_PRECISION = {"activation_checkpointing": "full", "mlp_chunks": 4, "loss_chunk_size": 128,
                 "loss_vocab_chunk_size": 1024, "late_head_grad": True, "optimizer_in_backward": True,
                 "precision": "bf16-weights", "bf16_rounding": "stochastic"}
# The <= 150 MiB row, where speed counts too: the head's gradient made in the loss (12 MiB in bf16, stepped
# in backward) rather than late, which computes the logits again in backward: 1.27-1.40x the step time here.
LOW_PRECISION_FAST = {k: v for k, v in LOW_PRECISION.items() if k != "late_head_grad"}
# Long sequences at batch 8 as micro-batches of one sequence (activations of one at a time): gradients are
# then kept through the step, so fp32 weights and gradients (accumulated exactly) with fp8 AdamW moments.
LONG_SEQUENCES = {**BEST_ADAMW_SHARDED, "loss_vocab_chunk_size": 1024, "micro_batch_size": 1, "optimizer": "adamw-fp8"}

# name -> what the row changes. "memory" is memlm's train.memory section; "lr" overrides the learning rate;
# "grad_clip" clips (every row runs unclipped otherwise; stepped in backward, the clip comes a step late).
ROWS: dict[str, dict] = {
    "memlm-baseline": {"impl": "memlm", "memory": PLAIN},
    "memlm-ckpt-full": {"impl": "memlm", "memory": {**PLAIN, "activation_checkpointing": "full"}},
    "memlm-ckpt-selective": {"impl": "memlm", "memory": {**PLAIN, "activation_checkpointing": "selective",
                                                         "checkpoint_every": 2}},
    "memlm-chunked-loss": {"impl": "memlm", "memory": {"loss_chunk_size": 512}},
    "memlm-accum-2x4": {"impl": "memlm", "memory": {**PLAIN, "micro_batch_size": 2}},
    "memlm-adafactor": {"impl": "memlm", "memory": {**PLAIN, "optimizer": "adafactor"}, "lr": 3e-2},
    "memlm-opt-in-backward": {"impl": "memlm", "memory": {**PLAIN, "optimizer_in_backward": True}},
    "memlm-bf16-mixed": {"impl": "memlm", "memory": {**PLAIN, "precision": "bf16-mixed"}, "default": False},
    "memlm-adamw8bit": {"impl": "memlm", "memory": {**PLAIN, "optimizer": "adamw8bit"}, "default": False},
    # CUDA only: fp16 needs its gradient scaler, offload moves saved activations to pinned host memory.
    "memlm-fp16-mixed": {"impl": "memlm", "memory": {**PLAIN, "precision": "fp16-mixed"}, "default": False},
    "memlm-offload": {"impl": "memlm", "memory": {**PLAIN, "activation_offload": True}, "default": False},
    "memlm-tiled-mlp": {"impl": "memlm", "memory": {**PLAIN, "mlp_chunks": 4}},
    "memlm-split-head-step": {"impl": "memlm", "memory": {"optimizer_in_backward": True, "split_head_step": True}},
    "memlm-best-adamw": {"impl": "memlm", "memory": BEST_ADAMW},
    "memlm-best-any": {"impl": "memlm", "memory": BEST_ANY, "lr": 3e-2},
    "memlm-lowest-memory": {"impl": "memlm", "memory": LOWEST, "lr": 3e-2},
    "memlm-best-adamw-tiled-loss": {"impl": "memlm", "memory": {**BEST_ADAMW, "loss_vocab_chunk_size": 1024}},
    "memlm-bf16-adamw": {"impl": "memlm", "memory": LOW_PRECISION},
    "memlm-adamw8bit-best": {"impl": "memlm", "memory": {**LOW_PRECISION, "precision": "fp32",
                                                         "optimizer": "adamw8bit"}},
    "memlm-bf16-adamw8bit": {"impl": "memlm", "memory": {**LOW_PRECISION, "optimizer": "adamw8bit"}},
    "memlm-bf16-adamw8bit-fast": {"impl": "memlm", "memory": {**LOW_PRECISION_FAST, "optimizer": "adamw8bit"}},
    "memlm-bf16-adamw4bit": {"impl": "memlm", "memory": {**LOW_PRECISION, "optimizer": "adamw4bit"}},
    "memlm-bf16-adamw-fp8": {"impl": "memlm", "memory": {**LOW_PRECISION, "optimizer": "adamw-fp8"}},
    "memlm-bf16-adamw-fp8-fast": {"impl": "memlm", "memory": {**LOW_PRECISION_FAST, "optimizer": "adamw-fp8"}},
    # ... and the loss's vocabulary whole: the head's products in 128-token chunks, not 128 x 1024 tiles.
    "memlm-bf16-adamw-fp8-whole-vocab": {"impl": "memlm", "memory": {
        **{k: v for k, v in LOW_PRECISION_FAST.items() if k != "loss_vocab_chunk_size"}, "optimizer": "adamw-fp8"}},
    # ... clipped at 1.0 a step late: the <= 150 MiB recipe with a clip.
    "memlm-bf16-adamw-fp8-whole-vocab-late-clip": {"impl": "memlm", "grad_clip": 1.0, "memory": {
        **{k: v for k, v in LOW_PRECISION_FAST.items() if k != "loss_vocab_chunk_size"}, "optimizer": "adamw-fp8"}},
    # The longest sequences at batch 8 (the reference model, its position table lengthened) in the least memory.
    **{f"memlm-seq-{n}": {"impl": "memlm", "memory": {**LOW_PRECISION, "optimizer": "adamw8bit"}, "block_size": n,
                          "default": False} for n in (512, 768, 1024, 2048)},
    **{f"memlm-seq-{n}-micro-1": {"impl": "memlm", "memory": LONG_SEQUENCES, "block_size": n, "default": False}
       for n in (2048, 3072, 4096)},
    # The default's chunked loss, compiled (inductor fuses the elementwise work between the matrix
    # multiplies; compiling takes about a minute, in the untimed first steps). On this 2-core CPU it is no
    # faster than the default within the run-to-run noise; on a GPU it is the candidate for fastest.
    "memlm-fastest": {"impl": "memlm", "memory": {"loss_chunk_size": 512, "compile": True}},
    "memlm-default": {"impl": "memlm", "memory": {}},
    # Over --world-size ranks (train.distributed.strategy); run by default only with --world-size > 1.
    "ddp-baseline": {"impl": "memlm", "memory": PLAIN, "strategy": "ddp"},
    "fsdp-baseline": {"impl": "memlm", "memory": PLAIN, "strategy": "fsdp"},
    "fsdp-best-adamw": {"impl": "memlm", "memory": BEST_ADAMW_SHARDED, "strategy": "fsdp"},
    "ddp-best-adamw": {"impl": "memlm", "memory": BEST_ADAMW_SHARDED, "strategy": "ddp"},
    # FSDP2 runs each shard's post-accumulate-grad hook after its reduce-scatter: stepped and freed there.
    "fsdp-best-adamw-in-backward": {"impl": "memlm", "memory": {**BEST_ADAMW_SHARDED, "optimizer_in_backward": True},
                                    "strategy": "fsdp"},
    # ... and the tied head's gradient made at the end of backward, in the embedding lookup's: not held through it.
    "fsdp-best-adamw-late-head": {"impl": "memlm", "memory": {**BEST_ADAMW_SHARDED, "optimizer_in_backward": True,
                                                              "late_head_grad": True}, "strategy": "fsdp"},
    "memlm-best-adamw-composable": {"impl": "memlm", "memory": BEST_ADAMW_SHARDED, "world": True},
    "hf-gpt2": {"impl": "hf", "checkpointing": False},
    "hf-gpt2-ckpt": {"impl": "hf", "checkpointing": True},
}


def prepare_data(out_dir: Path, source: Path | None) -> tuple[Path, str]:
    """Token file for the benchmark (cached); returns its path and a description of the data."""
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    if source is not None and source.exists():
        bin_file = out_dir / f"corpus-{REFERENCE['vocab_size']}.bin"
        if not bin_file.exists():
            from corpus.config import TokenizeConfig
            from corpus.tokenize import encode_split, train_tokenizer

            tokenizer = train_tokenizer(source, TokenizeConfig(vocab_size=REFERENCE["vocab_size"]))
            encode_split(tokenizer, source, bin_file)
        return bin_file, f"{source} re-tokenized to {REFERENCE['vocab_size']} tokens"
    bin_file = out_dir / "synthetic.bin"
    if not bin_file.exists():
        rng = np.random.default_rng(0)
        vocab = REFERENCE["vocab_size"]
        # Each token's successor is drawn from a few preferred tokens: learnable structure, Zipf frequencies.
        successors = rng.zipf(1.3, size=(vocab, 4)) % vocab
        tokens = np.empty(2_000_000, dtype=np.uint16)
        tokens[0] = 1
        choice = rng.integers(0, 4, size=len(tokens))
        noise = rng.random(len(tokens)) < 0.1
        random_tokens = rng.zipf(1.2, size=len(tokens)) % vocab
        for i in range(1, len(tokens)):
            tokens[i] = random_tokens[i] if noise[i] else successors[tokens[i - 1], choice[i]]
        tokens.tofile(bin_file)
    return bin_file, "synthetic Zipf-Markov tokens (run `make demo` first to benchmark on the real corpus)"


def reference_gpt(block_size: int = REFERENCE["block_size"]):
    """memlm's GPT at the reference config (its position table as long as `block_size`)."""
    from model.gpt import GPT, GPTConfig

    return GPT(GPTConfig(vocab_size=REFERENCE["vocab_size"], block_size=block_size, n_layer=REFERENCE["n_layer"],
                         n_head=REFERENCE["n_head"], n_embd=REFERENCE["n_embd"]))


def hf_model(checkpointing: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=REFERENCE["vocab_size"], n_positions=REFERENCE["block_size"],
                        n_embd=REFERENCE["n_embd"], n_layer=REFERENCE["n_layer"], n_head=REFERENCE["n_head"],
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(config)
    if checkpointing:
        model.gradient_checkpointing_enable()
    return model


WORLD_ROWS = ["memlm-baseline", "ddp-baseline", "fsdp-baseline", "memlm-best-adamw", "memlm-best-adamw-composable",
              "ddp-best-adamw", "fsdp-best-adamw", "fsdp-best-adamw-in-backward", "fsdp-best-adamw-late-head"]
STATE = ("parameters", "gradients", "optimizer_state")


def run_row(name: str, steps: int, data_file: Path, threads: int, peak_flops: float, precision: str,
            world_size: int = 1) -> dict | None:
    import torch

    from model.config import DistributedConfig, TrainConfig
    from model.distributed import Ranks, gather_objects, start, stop
    from model.data import TokenFile
    from model.memory import MemoryTracker
    from model.step import TrainStep
    from model.train import lr_at

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = ROWS[name]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    strategy = spec.get("strategy", "none")
    distributed = {"strategy": strategy, "nproc_per_node": world_size}
    ranks = Ranks()
    if strategy != "none":
        ranks, device = start(DistributedConfig(**distributed), device)
    block_size = spec.get("block_size", REFERENCE["block_size"])
    tokens = TokenFile(data_file, block_size)
    data_rng = torch.Generator().manual_seed(0)
    batch = REFERENCE["batch_size"]
    lr = spec.get("lr", LR)
    memory = {"precision": precision, **spec.get("memory", {})}
    train_cfg = TrainConfig.model_validate({
        "batch_size": batch, "max_steps": steps, "lr": lr, "min_lr": lr / 10, "warmup_steps": WARMUP,
        # DDP rebuilds its gradient buckets in step 2's forward: its rows are measured from step 3 on.
        "grad_clip": spec.get("grad_clip", 0.0), "memory_sample_steps": [3, 4] if strategy == "ddp" else [2, 3], "memory_sample_every": 10**9,
        "memory": memory, "distributed": distributed,
    })

    def next_batch(n: int):
        return tokens.random_batch(n, data_rng, device)

    def step_batches():
        """The step's global batch drawn whole, this rank's slice of it in micro-batches (as model/train.py)."""
        x, y = tokens.random_batch(batch, data_rng, device, part=(ranks.rank, ranks.world_size))
        micro = zip(x.split(train_cfg.micro_batch_size), y.split(train_cfg.micro_batch_size))
        return lambda n: next(micro)

    if spec["impl"] == "memlm":
        model = reference_gpt(block_size).to(device)
        train_step = TrainStep(model, train_cfg, device, ranks=ranks)
        tracker = train_step.tracker
        flops_per_token = model.flops_per_token()

        def step(i: int) -> float:
            train_step.set_lr(lr_at(i, train_cfg))
            return train_step(i, step_batches())[0]
    else:
        model = hf_model(spec["checkpointing"]).to(device)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
        tracker = MemoryTracker(model, optimizer, device, sample_steps=[2, 3], sample_every=10**9)
        n_params = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
        flops_per_token = 6 * n_params + 12 * REFERENCE["n_layer"] * REFERENCE["n_embd"] * REFERENCE["block_size"]

        if precision not in ("fp32", "bf16-mixed"):
            raise SystemExit(f"the Hugging Face rows run fp32 or bf16-mixed, not {precision}")
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")

        def step(i: int) -> float:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(i, train_cfg)
            with tracker.track(i):
                x, _ = next_batch(batch)
                with tracker.phase("forward"), autocast:
                    loss = model(input_ids=x, labels=x).loss
                with tracker.phase("backward"):
                    loss.backward()
                with tracker.phase("optimizer"):
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            return loss.item()

    losses, step_times = [], []
    for i in range(1, steps + 1):
        start = time.perf_counter()
        losses.append(step(i))
        if device.type == "cuda":
            torch.cuda.synchronize()
        if not tracker.wants(i) and i > 3:
            step_times.append(time.perf_counter() - start)
    # The median step: a shared machine's hiccups move a mean, not a median.
    # With --steps 3 only memory is measured (steps 2 and 3 are tracked, and tracking slows a step).
    tokens_per_s = batch * block_size / statistics.median(step_times) if step_times else None
    peak = tracker.peak
    # Each rank's own figures; parameters + gradients + optimizer state where all three are alive (the
    # optimizer phase's peak of the last tracked step, after the first step created the optimizer state).
    last = tracker.reports[-1].phases["optimizer"]["breakdown"]
    mine = {"rank": ranks.rank, "peak_mib": round(peak.peak_mib, 1), "peak_phase": peak.peak_phase,
            "breakdown_mib": {k: round(v / 2**20, 1) for k, v in peak.breakdown.items()},
            "state_mib": round(sum(last[c] for c in STATE) / 2**20, 1)}
    every = gather_objects(mine, ranks)
    if strategy != "none":
        del train_step, model, tracker
        stop(ranks)
    if not ranks.is_main:
        return None
    largest = max(every, key=lambda r: r["peak_mib"])
    return {
        "name": name,
        "impl": spec["impl"],
        "strategy": strategy,
        "world_size": ranks.world_size,
        "threads_per_rank": threads,
        "peak_mib": largest["peak_mib"],
        "breakdown_mib": largest["breakdown_mib"],
        "peak_phase": largest["peak_phase"],
        "state_mib": largest["state_mib"],
        "ranks": every,
        "tokens_per_s": round(tokens_per_s, 1) if tokens_per_s else None,
        "mfu": round(flops_per_token * tokens_per_s / peak_flops, 4) if tokens_per_s else None,
        "final_loss": round(sum(losses[-3:]) / 3, 4),
        "steps": steps,
        "matmul_peak_gflops": round(peak_flops / 1e9, 1),
        "median_step_s": round(statistics.median(step_times), 4) if step_times else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cuda_max_allocated_mib": (round(peak.cuda_max_allocated / 2**20, 1)
                                   if peak.cuda_max_allocated is not None else None),
        "memory": memory if spec["impl"] == "memlm" else None,
        "grad_clip": train_cfg.grad_clip,
        "precision": memory["precision"],
        "lr": lr,
        "block_size": block_size,
    }


def measure_peak_flops(threads: int, precision: str) -> float:
    """Measured once for the whole run, in the precision the rows compute in, so that every row's
    MFU has the same yardstick."""
    import torch

    from model.hardware import matmul_peak_flops

    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16 if "bf16" in precision else torch.float16
    # A GPU reaches its peak only on large products; 1024 is already large for two CPU cores.
    size = 8192 if device.type == "cuda" else 1024
    return matmul_peak_flops(device, dtype=dtype, size=size, seconds=0.5, rounds=6)


def combine(runs: list[dict]) -> dict:
    """One row from its rounds: memory repeats to the byte, speed is the median round's."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    middle = sorted(ok, key=lambda r: r["tokens_per_s"] or 0)[(len(ok) - 1) // 2]
    return {**middle, "tokens_per_s_rounds": [r["tokens_per_s"] for r in ok]}


def print_table(rows: list[dict], data_note: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"memlm memory benchmark ({data_note})")
    for col in ("row", "peak MiB", "params", "grads", "optim", "acts", "temps", "tokens/s", "MFU", "loss"):
        table.add_column(col, justify="left" if col == "row" else "right")
    for r in rows:
        if "error" in r:
            table.add_row(r["name"], f"[red]{r['error'][:60]}[/]", *[""] * 8)
            continue
        b = r["breakdown_mib"]
        table.add_row(r["name"], f"{r['peak_mib']:.1f}", f"{b['parameters']:.0f}", f"{b['gradients']:.0f}",
                      f"{b['optimizer_state']:.0f}", f"{b['activations']:.0f}", f"{b['temporaries']:.0f}",
                      f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else "-",
                      f"{r['mfu']:.1%}" if r["mfu"] else "-", f"{r['final_loss']:.4f}")
    Console(width=140).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", help="comma-separated row names (default: all default rows); "
                        f"known: {', '.join(ROWS)}")
    parser.add_argument("--steps", type=int, default=15,
                        help="optimizer steps per row (>= 6; 3: memory only, no speed)")
    parser.add_argument("--json", type=Path, help="write the rows as a JSON list here")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the rows this many times, in rotated order; each row's speed is its median")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16-mixed", "fp16-mixed", "bf16-true"],
                        help="train.memory.precision for every row that does not set its own")
    parser.add_argument("--data", type=Path, default=ROOT / "runs/demo/split/train.jsonl",
                        help="documents (JSONL with a text field) to tokenize for the benchmark")
    parser.add_argument("--world-size", type=int, default=1,
                        help="ranks for the ddp/fsdp rows (torchrun); > 1 runs those rows beside the single-process "
                        "ones they compare with")
    parser.add_argument("--row-worker", help=argparse.SUPPRESS)
    parser.add_argument("--data-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--peak-flops", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row_worker:
        row = run_row(args.row_worker, args.steps, args.data_file, args.threads, args.peak_flops, args.precision,
                      args.world_size)
        if row is not None:
            print(json.dumps(row))
        return
    names = args.rows.split(",") if args.rows else WORLD_ROWS if args.world_size > 1 else [
        n for n, s in ROWS.items() if s.get("default", True) and "strategy" not in s and "world" not in s]
    unknown = [n for n in names if n not in ROWS]
    if unknown or (args.steps < 6 and args.steps != 3) or args.rounds < 1:
        parser.error(f"unknown rows: {', '.join(unknown)}" if unknown else
                     "--rounds must be at least 1" if args.rounds < 1 else "--steps must be 3 or at least 6")
    data_file, data_note = prepare_data(ROOT / "runs/bench", args.data)
    peak_flops = measure_peak_flops(args.threads, args.precision)
    print(f"{args.precision} matrix-multiply peak: {peak_flops / 1e9:.1f} GFLOP/s (the MFU yardstick for every row)", file=sys.stderr)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    results: dict[str, list[dict]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        # Each round starts one row later, so that the machine's drift over minutes favours no row.
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            world = args.world_size if "strategy" in ROWS[name] else 1
            threads = max(1, args.threads // world)  # the same cores for every row
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}"] \
                if world > 1 or "strategy" in ROWS[name] else [sys.executable]
            cmd = [*launcher, __file__, "--row-worker", name, "--steps", str(args.steps),
                   "--data-file", str(data_file), "--threads", str(threads), "--peak-flops", str(peak_flops),
                   "--precision", args.precision, "--world-size", str(world)]
            done = subprocess.run(cmd, capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": str(threads)},
                                  cwd=ROOT)
            if done.returncode != 0:
                result = {"name": name, "impl": ROWS[name]["impl"], "error": done.stderr.strip().splitlines()[-1]}
            else:
                result = json.loads(next(line for line in reversed(done.stdout.splitlines()) if line.startswith("{")))
            results[name].append(result)
            print(f"{name}: {json.dumps(result)}", file=sys.stderr)
            rows = [combine(results[n]) for n in names if results[n]]
            if args.json:  # after every row, so that a run cut short keeps what it measured
                args.json.write_text(json.dumps(rows, indent=2))
    print_table(rows, data_note)


if __name__ == "__main__":
    main()
