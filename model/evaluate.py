"""Evaluate stage: validation loss, perplexity, bits per byte, and sample generations from fixed prompts."""
from __future__ import annotations

import gc
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from model.checkpoint import load_lm
from model.config import EvalConfig, MemoryConfig
from model.data import TokenFile
from model.generate import generate_text
from model.gpt import GPT
from model.hardware import resolve_device
from model.memory import MemoryTracker, stage_summary

REPORT_FILE = "report.json"
MEMORY_FILE = "memory.json"
SAMPLES_FILE = "samples.md"


@dataclass
class EvalResult:
    report_file: Path
    samples_file: Path
    report: dict
    memory: dict  # each stage's peak and breakdown (stage_summary)


# Evaluation always uses the chunked loss: the same figure as the full logits' up to rounding, without
# a batch x sequence x vocabulary tensor (training's own chunk size when it has one).
EVAL_LOSS_CHUNK = 512


def with_training_loss(model: GPT, memory: MemoryConfig | None) -> GPT:
    """Score with the loss training used (its chunk and vocabulary tiles), so that evaluation fits where
    training did; without a chunked loss in training, score_batches' own chunk."""
    if memory is not None and memory.loss_chunk_size:
        model.loss_chunk_size, model.loss_vocab_chunk_size = memory.loss_chunk_size, memory.loss_vocab_chunk_size
    return model


def evaluate_loss(model: GPT, tokens: TokenFile, batch_size: int, device: torch.device,
                  max_batches: int | None = None, micro_batch_size: int | None = None) -> tuple[float, int]:
    """Mean cross-entropy per token (nats) over the leading windows of a split, and the tokens scored.
    Each batch goes through the model `micro_batch_size` sequences at a time, as training's do."""
    return score_batches(model, tokens.sequential_batches(batch_size, device, max_batches), micro_batch_size)


@torch.no_grad()
def score_batches(model: GPT, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  micro_batch_size: int | None = None) -> tuple[float, int]:
    """Mean cross-entropy per token over (inputs, targets) batches, in micro-batches, with the chunked loss."""
    was_training, chunk = model.training, model.loss_chunk_size
    model.eval()
    model.loss_chunk_size = chunk if chunk > 0 else EVAL_LOSS_CHUNK
    total, count = 0.0, 0
    try:
        for x, y in batches:
            micro = micro_batch_size or x.size(0)
            for start in range(0, x.size(0), micro):
                xs, ys = x[start:start + micro], y[start:start + micro]
                total += model.loss(model(xs), ys).item() * ys.numel()
                count += ys.numel()
    finally:
        model.loss_chunk_size = chunk
        model.train(was_training)
    return total / count, count


def bits_per_byte(loss_nats: float, split_tokens: int, split_bytes: int) -> float:
    """Loss per token in bits, times tokens per byte of the split's UTF-8 text: comparable across tokenizers."""
    return loss_nats / math.log(2) * split_tokens / split_bytes


def evaluate(checkpoint_dir: Path, tokens_dir: Path, config: EvalConfig, out_dir: Path,
             batch_size: int = 16, device: str = "auto", micro_batch_size: int | None = None,
             budget_mib: float | None = None, memory: MemoryConfig | None = None) -> EvalResult:
    """Each part (loading the checkpoint, scoring, generating) is measured as a stage and checked against
    `budget_mib`; their figures go to memory.json beside the report. `memory`: training's techniques, whose
    loss settings the scoring uses."""
    # Training's model and tracker refer to each other through gradient hooks: collect them now, so that
    # this stage's device memory starts from what evaluation holds.
    gc.collect()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((Path(tokens_dir) / "manifest.json").read_text())
    dev = resolve_device(device)
    tracker = MemoryTracker(None, None, dev, budget_mib=budget_mib)
    with tracker.stage("checkpoint_load"):
        model = tracker.model = with_training_loss(load_lm(checkpoint_dir, dev), memory)
    val = TokenFile(Path(tokens_dir) / "val.bin", model.config.block_size, manifest["dtype"])
    with tracker.stage("evaluate"):
        loss, scored = evaluate_loss(model, val, batch_size, dev, config.max_batches, micro_batch_size)
    split = manifest["splits"]["val"]
    tokenizer = Tokenizer.from_file(str(Path(tokens_dir) / "tokenizer.json"))
    with tracker.stage("generate"):
        samples = [
            {"prompt": p, "text": generate_text(model, tokenizer, p, config.max_new_tokens, config.temperature,
                                                config.top_k, seed=config.seed + i)}
            for i, p in enumerate(config.prompts)
        ]
    memory = stage_summary(tracker)
    (out_dir / MEMORY_FILE).write_text(json.dumps(memory, indent=2))
    report = {
        "val_loss": round(loss, 5),
        "perplexity": round(math.exp(loss), 3),
        "bits_per_byte": round(bits_per_byte(loss, split["tokens"], split["bytes"]), 5),
        "tokens_scored": scored,
        "val_tokens": split["tokens"],
        "samples": samples,
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    samples_md = "\n\n".join(f"### Prompt: {s['prompt']!r}\n\n```\n{s['text']}\n```" for s in samples)
    (out_dir / SAMPLES_FILE).write_text(samples_md + "\n")
    return EvalResult(out_dir / REPORT_FILE, out_dir / SAMPLES_FILE, report, memory)


def bits_per_byte_on_docs(model: GPT, tokenizer: Tokenizer, docs_file: Path, work_dir: Path, batch_size: int = 16,
                          device: str = "auto", max_batches: int | None = None,
                          memory: MemoryConfig | None = None) -> float:
    """Bits per byte of `model` (with its own tokenizer) on a split's documents: how models trained on
    different tokenizers are compared on the same text. `batch_size` sequences go through the model at a
    time (the evaluate stage passes training's micro-batch), with the chunked loss."""
    from corpus.tokenize import TOKEN_DTYPE, encode_split

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    stats = encode_split(tokenizer, docs_file, work_dir / "val.bin")
    dev = resolve_device(device)
    model = with_training_loss(model.to(dev), memory)
    val = TokenFile(work_dir / "val.bin", model.config.block_size, np.dtype(TOKEN_DTYPE).name)
    loss, _ = evaluate_loss(model, val, batch_size, dev, max_batches)
    return bits_per_byte(loss, stats["tokens"], stats["bytes"])
