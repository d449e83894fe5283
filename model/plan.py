"""Memory planning: the fastest memory techniques that fit a training run into a memory budget, measured
on the run's own device before the run starts.

Each candidate is the run's `train` section with some memory switches changed. A candidate is tried for
four optimizer steps on random tokens of the run's shapes: steps 1 and 2 under memlm's memory tracker
(their larger peak: step 1 creates the optimizer state, as the real run's first step will), steps 3 and 4
timed. Measuring rather than modelling makes the figure the one the run's own memory report will show.

The candidates form a ladder from the least recomputation to the most frugal; they are tried in order
until one fits (or all of them). By default only exact techniques are tried (the run computes the same
losses up to floating-point rounding; the loss's vocabulary in tiles is one); `lossy` adds candidates that
change the training itself: no gradient clipping (which lets the optimizer step during backward), bf16
weights with stochastic rounding, 8- and 4-bit AdamW states, and Adafactor, each shown with its quality
cost as the convergence benchmark measured it.
"""
from __future__ import annotations

import gc
import re
import time
from dataclasses import dataclass, field

import torch

from model.arch import build_model
from model.config import TrainConfig
from model.gpt import GPTConfig
from model.rnn import RNNConfig
from model.step import TrainStep
from model.techniques import TechniqueError

MiB = 2**20
_UNITS = {"": MiB, "b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": MiB, "gb": 10**9, "gib": 2**30}
TRACKED_STEPS = (1, 2)
VOCAB_TILE = 1024  # vocabulary rows per tile of the loss: 128 tokens x 1024 is 512 KiB of fp32 logits

# Final validation loss relative to fp32 AdamW's in the convergence benchmark (`python bench/convergence.py`,
# bench/results/convergence-cpu.json: the demo model, 500 steps), by (precision, optimizer); a test keeps
# these equal to that file. Missing: not measured.
QUALITY_COST: dict[tuple[str, str], float] = {}
TIMED_STEPS = (3, 4)


def parse_size(text: str) -> int:
    """Bytes in '300MiB', '1.5 GiB', '512MB' or '300' (MiB)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"a memory budget looks like 300MiB, 1.5GiB or 512MB (a bare number is MiB), got {text!r}")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass
class Trial:
    name: str
    changes: dict  # dotted keys of the train section -> value
    lossy: bool
    peak_bytes: int | None = None
    breakdown: dict[str, int] = field(default_factory=dict)
    tokens_per_s: float | None = None
    refused: str | None = None  # why the candidate could not run (a refused combination, out of memory)
    quality_cost: float | None = None  # lossy: validation loss relative to fp32 AdamW's, when measured

    def fits(self, budget_bytes: int) -> bool:
        return self.peak_bytes is not None and self.peak_bytes <= budget_bytes

    def to_dict(self) -> dict:
        return {"name": self.name, "changes": self.changes, "lossy": self.lossy,
                "peak_mib": None if self.peak_bytes is None else round(self.peak_bytes / MiB, 1),
                "breakdown_mib": {k: round(v / MiB, 1) for k, v in self.breakdown.items()},
                "tokens_per_s": None if self.tokens_per_s is None else round(self.tokens_per_s, 1),
                "refused": self.refused, "val_loss_vs_fp32_adamw": self.quality_cost}


@dataclass
class Plan:
    budget_bytes: int
    device: str
    trials: list[Trial]
    chosen: Trial | None
    train: TrainConfig | None  # the chosen candidate's train section

    def to_dict(self) -> dict:
        return {"budget_mib": round(self.budget_bytes / MiB, 1), "device": self.device,
                "chosen": None if self.chosen is None else self.chosen.name,
                "trials": [t.to_dict() for t in self.trials]}


def candidates(cfg: TrainConfig, arch: str, lossy: bool = False) -> list[tuple[str, dict, bool]]:
    """(name, changes to the train section as dotted keys, lossy) from the fastest to the most frugal."""
    gpt = arch == "gpt"
    adamw = cfg.memory.optimizer == "adamw" and cfg.memory.precision != "bf16-true"
    chunk = cfg.memory.loss_chunk_size or 256

    def head(in_backward: bool, split: bool) -> dict:
        """The chunked loss, and the tied head's gradient kept short-lived the best way allowed."""
        split = in_backward and split
        return {"memory.loss_chunk_size": chunk, "memory.optimizer_in_backward": in_backward,
                "memory.split_head_step": split, "memory.late_head_grad": not split}

    def ladder(in_backward: bool, split: bool, extra: dict) -> list[tuple[str, dict]]:
        base = {**head(in_backward, split), **extra}
        if in_backward:
            first = "head stepped in backward" if split else "stepped in backward, head gradient late"
        else:
            first = "head gradient late"
        rungs = [(first, base)]
        if gpt:
            rungs.append(("+ every 2nd block recomputed",
                          {**base, "memory.activation_checkpointing": "selective", "memory.checkpoint_every": 2}))
        full = {**base, "memory.activation_checkpointing": "full"}
        rungs.append(("+ every block recomputed", full))
        if gpt:
            rungs.append(("+ tiled MLP", {**full, "memory.mlp_chunks": 4}))
        rungs.append(("+ loss vocabulary in tiles", {**rungs[-1][1], "memory.loss_vocab_chunk_size": VOCAB_TILE}))
        return rungs

    exact_in_backward = cfg.grad_clip == 0 and cfg.grad_accum_steps == 1
    out: list[tuple[str, dict, bool]] = [("as configured", {}, False)]
    out += [(name, changes, False) for name, changes in ladder(exact_in_backward, adamw, {})]
    # Smaller micro-batches, the gradients accumulated: activations shrink with them.
    frugal = ladder(False, adamw, {})[-1][1]
    micro = cfg.micro_batch_size
    while micro > 1:  # about halving each time, to a size that divides the batch
        micro = max(d for d in range(1, micro // 2 + 1) if cfg.batch_size % d == 0)
        out.append((f"+ micro-batches of {micro}", {**frugal, "memory.micro_batch_size": micro}, False))
    if lossy:
        whole_batch = {"grad_clip": 0.0, "memory.micro_batch_size": None}
        if not exact_in_backward:
            out += [(f"{name}, no clipping", changes, True) for name, changes in ladder(True, adamw, whole_batch)]
        # Less than fp32 AdamW's 12 bytes a weight, the closest to AdamW's losses first.
        bf16 = {**whole_batch, "memory.precision": "bf16-weights", "memory.bf16_rounding": "stochastic"}
        below_fp32 = [("8-bit AdamW", {**whole_batch, "memory.optimizer": "adamw8bit"})]
        if gpt:
            below_fp32 = [("bf16 weights", bf16), *below_fp32,
                          ("bf16 weights, 8-bit AdamW", {**bf16, "memory.optimizer": "adamw8bit"}),
                          ("bf16 weights, 4-bit AdamW", {**bf16, "memory.optimizer": "adamw4bit"})]
        for label, extra in below_fp32:
            out += [(f"{name}, {label}", changes, True) for name, changes in ladder(True, False, extra)]
        adafactor = {**whole_batch, "memory.optimizer": "adafactor"}
        out += [(f"{name}, Adafactor", changes, True) for name, changes in ladder(True, False, adafactor)]
    seen, unique = set(), []
    for name, changes, is_lossy in out:
        key = apply_changes(cfg, changes).model_dump_json()
        if key not in seen:
            seen.add(key)
            unique.append((name, changes, is_lossy))
    return unique


def apply_changes(cfg: TrainConfig, changes: dict) -> TrainConfig:
    data = cfg.model_dump()
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        target = data
        for parent in parents:
            target = target[parent]
        target[key] = value
    return TrainConfig.model_validate(data)


def measure(arch_cfg: GPTConfig | RNNConfig, cfg: TrainConfig, device: torch.device) -> tuple[int, dict, float]:
    """(peak bytes, breakdown at the peak, fastest step in seconds) of a few steps on random tokens."""
    cfg = cfg.model_copy(update={"memory_sample_steps": list(TRACKED_STEPS), "memory_sample_every": 10**9})
    torch.manual_seed(cfg.seed)
    data_rng = torch.Generator().manual_seed(cfg.seed)
    model = build_model(arch_cfg).to(device)
    train_step = TrainStep(model, cfg, device)

    def next_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.randint(0, arch_cfg.vocab_size, (n, arch_cfg.block_size + 1), generator=data_rng)
        tokens = tokens.to(device)
        return tokens[:, :-1], tokens[:, 1:]

    times = []
    try:
        for step in (*TRACKED_STEPS, *TIMED_STEPS):
            start = time.perf_counter()
            train_step(step, next_batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step in TIMED_STEPS:
                times.append(time.perf_counter() - start)
        reports = train_step.tracker.reports
        # On CUDA the allocator's own peak is what must fit; on CPU the tracker's live tensor bytes.
        peak = max(r.cuda_max_allocated if r.cuda_max_allocated is not None else r.peak_bytes for r in reports)
        return peak, dict(train_step.tracker.peak.breakdown), min(times)
    finally:
        del train_step, model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


# A later candidate (more recomputation, or a lossy change) replaces an earlier one that fits only when it
# measured this much faster: step times on a shared machine move by 10-20% from run to run.
CLEARLY_FASTER = 1.2


def choose(trials: list[Trial], budget_bytes: int) -> Trial | None:
    """The first candidate that fits, unless a later one that fits is clearly faster."""
    best = None
    for trial in trials:
        if trial.fits(budget_bytes) and (best is None or trial.tokens_per_s > CLEARLY_FASTER * best.tokens_per_s):
            best = trial
    return best


def plan(arch_cfg: GPTConfig | RNNConfig, cfg: TrainConfig, budget_bytes: int, device: torch.device,
         lossy: bool = False, try_all: bool = False, on_trial=None) -> Plan:
    """Try the candidates in order, the exact ones up to the first that fits (every one with `try_all`),
    then likewise the lossy ones; choose with `choose`."""
    trials = []
    fitted = {False: False, True: False}  # lossy -> a candidate of that kind fits
    for name, changes, is_lossy in candidates(cfg, arch_cfg.arch, lossy):
        if fitted[is_lossy] and not try_all:
            continue
        candidate = apply_changes(cfg, changes)
        trial = Trial(name, changes, is_lossy,
                      quality_cost=QUALITY_COST.get((candidate.memory.precision, candidate.memory.optimizer))
                      if is_lossy else None)
        try:
            trial.peak_bytes, trial.breakdown, step_s = measure(arch_cfg, candidate, device)
            trial.tokens_per_s = candidate.batch_size * arch_cfg.block_size / step_s
        except TechniqueError as exc:
            trial.refused = str(exc)
        except torch.OutOfMemoryError:
            trial.refused = "out of device memory"
        fitted[is_lossy] |= trial.fits(budget_bytes)
        trials.append(trial)
        if on_trial:
            on_trial(trial)
    chosen = choose(trials, budget_bytes)
    return Plan(budget_bytes, device.type, trials, chosen,
                None if chosen is None else apply_changes(cfg, chosen.changes))
