"""Memory planning: the fastest memory techniques that fit a training run into a memory budget, measured
on the run's own device before the run starts.

Each candidate is the run's `train` section with some memory switches changed. A candidate is tried for
four optimizer steps on random tokens of the run's shapes: steps 1 and 2 under memlm's memory tracker
(their larger peak: step 1 creates the optimizer state, as the real run's first step will), steps 3 and 4
timed; then the run's other stages (a validation batch, a checkpoint's save, a resume, the evaluate
stage's load, scoring and generation, the champion's re-score), and the candidate's figure is its largest
stage. Measuring rather than modelling makes the figure the one the
run's own memory report will show. `predict` gives the same figures without running anything real: the
same steps traced under fake tensors, for models larger than this machine and devices it does not have.

The candidates form a ladder from the least recomputation to the most frugal; they are tried in order
until one fits (or all of them). By default only exact techniques are tried (the run computes the same
losses up to floating-point rounding; the loss's vocabulary in tiles is one); `lossy` adds candidates that
change the training itself: no gradient clipping (so the optimizer steps during backward exactly), bf16
weights with stochastic rounding, fp8, 8- and 4-bit AdamW states, and Adafactor, each shown with its quality
cost as the convergence benchmark measured it.
"""
from __future__ import annotations

import contextlib
import gc
import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from model.arch import build_model
from model.checkpoint import load_lm, load_train_state, load_weights, save_checkpoint
from model.config import DistributedConfig, TrainConfig
from model.distributed import Ranks, backend_for, ddp_bucket_bytes, gather_objects, max_over_ranks, reshard
from model.evaluate import score_batches, with_training_loss
from model.gpt import GPTConfig
from model.rnn import RNNConfig
from model.step import TrainStep
from model.generate import next_token_logits
from model.memory import AllocationRecorder, MemoryTracker, attribute_tensors, storage_bytes
from model.techniques import BF16_WEIGHTS, TechniqueError, check

MiB = 2**20
_UNITS = {"": MiB, "b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": MiB, "gb": 10**9, "gib": 2**30}
TRACKED_STEPS = (1, 2)
VOCAB_TILE = 1024  # vocabulary rows per tile of the loss: 128 tokens x 1024 is 512 KiB of fp32 logits

# The convergence benchmark's files (convergence-cpu*.json): one per run of it, each row compared with its own
# file's fp32 AdamW.
BENCH_RESULTS = Path(__file__).resolve().parents[1] / "bench/results"
TIMED_STEPS = (3, 4)


def quality_costs(results: list[Path] | None = None) -> dict[tuple[str, str], float]:
    """(precision, optimizer) -> final validation loss relative to fp32 AdamW's of the same seed and file,
    the mean over the seeds measured, from the convergence benchmark's committed results (`python
    bench/convergence.py`: the demo model, 500 steps, clipping on), for the rows that change nothing but the
    precision and the optimizer (the unclipped rows left out). Empty where it was not run."""
    from model.config import MemoryConfig

    files = sorted(BENCH_RESULTS.glob("convergence-cpu*.json")) if results is None else results
    rows = [row for file in files if file.exists() for row in json.loads(file.read_text())]
    measured: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        # fp32 AdamW is the reference (its seed rows measure chance, not a technique); an unclipped row's
        # cost includes the clipping it lacks, not only its technique's.
        if "val_loss_vs_fp32_adamw" not in row or not row["memory"] or row.get("grad_clip", 1.0) == 0 \
                or not set(row["memory"]) <= {"precision", "bf16_rounding", "optimizer"}:
            continue
        if row["memory"].get("bf16_rounding", "stochastic") != "stochastic":
            continue  # the planner's bf16 candidates round stochastically
        memory = MemoryConfig(**row["memory"])
        measured.setdefault((memory.precision, memory.optimizer), []).append(row["val_loss_vs_fp32_adamw"])
    return {key: sum(costs) / len(costs) for key, costs in measured.items()}


class PlanRequestError(ValueError):
    """A plan asked for what cannot be planned (a meter or device a prediction does not have)."""


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
    stages: dict[str, int] = field(default_factory=dict)  # stage -> peak bytes; peak_bytes is the largest
    refused: str | None = None  # why the candidate could not run (a refused combination, out of memory)
    quality_cost: float | None = None  # lossy: validation loss relative to fp32 AdamW's, when measured
    rank_peaks: list[int] = field(default_factory=list)  # measured over N ranks: each rank's peak

    def fits(self, budget_bytes: int) -> bool:
        return self.peak_bytes is not None and self.peak_bytes <= budget_bytes

    @property
    def largest_stage(self) -> str | None:
        return max(self.stages, key=self.stages.get, default=None)

    def to_dict(self) -> dict:
        return {"name": self.name, "changes": self.changes, "lossy": self.lossy,
                "peak_mib": None if self.peak_bytes is None else round(self.peak_bytes / MiB, 1),
                "breakdown_mib": {k: round(v / MiB, 1) for k, v in self.breakdown.items()},
                "tokens_per_s": None if self.tokens_per_s is None else round(self.tokens_per_s, 1),
                "stages_mib": {k: round(v / MiB, 1) for k, v in self.stages.items()}, "largest_stage": self.largest_stage,
                "refused": self.refused, "val_loss_vs_fp32_adamw": self.quality_cost,
                "rank_peaks_mib": [round(b / MiB, 1) for b in self.rank_peaks]}


@dataclass
class Plan:
    budget_bytes: int
    device: str
    trials: list[Trial]
    chosen: Trial | None
    train: TrainConfig | None  # the chosen candidate's train section
    world_size: int = 1  # ranks; every figure is per rank, the largest rank's
    predicted: bool = False

    def to_dict(self) -> dict:
        return {"budget_mib": round(self.budget_bytes / MiB, 1), "device": self.device,
                "world_size": self.world_size, "predicted": self.predicted,
                "chosen": None if self.chosen is None else self.chosen.name,
                "trials": [t.to_dict() for t in self.trials]}


def candidates(cfg: TrainConfig, arch: str, lossy: bool = False) -> list[tuple[str, dict, bool]]:
    """(name, changes to the train section as dotted keys, lossy) from the fastest to the most frugal."""
    gpt = arch == "gpt"
    # Over several ranks, no head stepped in backward (and no optimizer step in backward under ddp), no bf16
    # weights, and no optimizers other than AdamW (and Adafactor under ddp): train.distributed refuses them
    # (model/techniques.py).
    ranks = cfg.distributed.strategy != "none"
    adamw = cfg.memory.optimizer == "adamw" and cfg.memory.precision not in BF16_WEIGHTS and not ranks
    chunk = cfg.memory.loss_chunk_size or 256

    def head(in_backward: bool, split: bool) -> dict:
        """The chunked loss, the tied head stepped in backward where AdamW allows (else its gradient is
        made in the loss: `late_head_grad` is the ladder's last rung, as it makes the logits again)."""
        split = in_backward and split
        return {"memory.loss_chunk_size": chunk, "memory.optimizer_in_backward": in_backward,
                "memory.split_head_step": split, "memory.late_head_grad": False}

    def ladder(in_backward: bool, split: bool, extra: dict) -> list[tuple[str, dict]]:
        base = {**head(in_backward, split), **extra}
        if in_backward:
            first = "head stepped in backward" if split else "stepped in backward"
        else:
            first = "chunked loss"
        rungs = [(first, base)]
        if gpt:
            rungs.append(("+ every 2nd block recomputed",
                          {**base, "memory.activation_checkpointing": "selective", "memory.checkpoint_every": 2}))
        full = {**base, "memory.activation_checkpointing": "full"}
        rungs.append(("+ every block recomputed", full))
        if gpt:
            rungs.append(("+ tiled MLP", {**full, "memory.mlp_chunks": 4}))
        rungs.append(("+ loss vocabulary in tiles", {**rungs[-1][1], "memory.loss_vocab_chunk_size": VOCAB_TILE}))
        if not base["memory.split_head_step"]:
            # The head's gradient at the end of backward instead of through it: one more pass over the
            # logits: a 3.9 s step against 3.1 s without it at the reference config
            # (bench/results/profile-cpu.json).
            rungs.append(("+ head gradient late", {**rungs[-1][1], "memory.late_head_grad": True}))
        return rungs

    exact_in_backward = cfg.grad_clip == 0 and cfg.grad_accum_steps == 1 and cfg.distributed.strategy != "ddp"
    out: list[tuple[str, dict, bool]] = [("as configured", {}, False)]
    out += [(name, changes, False) for name, changes in ladder(exact_in_backward, adamw, {})]
    # Smaller micro-batches, the gradients accumulated: activations shrink with them.
    frugal = ladder(False, adamw, {})[-1][1]
    micro = cfg.micro_batch_size
    while micro > 1:  # about halving each time, to a size that divides the batch (each rank's share of it)
        micro = max(d for d in range(1, micro // 2 + 1) if cfg.rank_batch_size % d == 0)
        out.append((f"+ micro-batches of {micro}", {**frugal, "memory.micro_batch_size": micro}, False))
    if lossy and cfg.distributed.strategy == "ddp":  # fsdp refuses every optimizer but AdamW
        adafactor = {"memory.optimizer": "adafactor"}
        out += [(f"{name}, Adafactor", changes, True) for name, changes in ladder(False, False, adafactor)]
    elif lossy and not ranks:
        whole_batch = {"grad_clip": 0.0, "memory.micro_batch_size": None}
        if not exact_in_backward:
            out += [(f"{name}, no clipping", changes, True) for name, changes in ladder(True, adamw, whole_batch)]
        # Less than fp32 AdamW's 12 bytes a weight, the least state last.
        bf16 = {**whole_batch, "memory.precision": "bf16-weights", "memory.bf16_rounding": "stochastic",
                "memory.optimizer": "adamw"}
        # memlm's fp8 AdamW before torchao's 8-bit one of the same size: no compiling, faster on CPU.
        below_fp32 = [("fp8 AdamW", {**whole_batch, "memory.optimizer": "adamw-fp8"}),
                      ("8-bit AdamW", {**whole_batch, "memory.optimizer": "adamw8bit"})]
        if gpt:
            below_fp32 = [("bf16 weights", bf16), *below_fp32,
                          ("bf16 weights, fp8 AdamW", {**bf16, "memory.optimizer": "adamw-fp8"}),
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


def shard_arithmetic(arch_cfg: GPTConfig | RNNConfig, cfg: TrainConfig) -> str:
    """What sharding alone predicts a rank holds of the training state, to read the figures against."""
    with torch.device("meta"):
        n = sum(p.numel() for p in build_model(arch_cfg).parameters())
    world, strategy = cfg.distributed.world_size, cfg.distributed.strategy
    if cfg.memory.optimizer != "adamw":
        return (f"shard arithmetic: {n / 1e6:.1f} M parameters x (4 B weights + 4 B gradients) = {8 * n / MiB:.1f} MiB"
                + (f", / {world} ranks = {8 * n / world / MiB:.1f} MiB per rank" if strategy == "fsdp" else
                   " on every rank (ddp replicates)") + f", and {cfg.memory.optimizer}'s state")
    total = 16 * n / MiB
    return (f"shard arithmetic: {n / 1e6:.1f} M parameters x (4 B weights + 4 B gradients + 8 B AdamW moments) = "
            f"{total:.1f} MiB" + (f", / {world} ranks = {total / world:.1f} MiB per rank (fsdp)" if strategy == "fsdp"
                                  else " on every rank (ddp replicates it)")
            + "; the rest of a rank's peak is activations, gathered weights and temporaries")


def apply_changes(cfg: TrainConfig, changes: dict) -> TrainConfig:
    data = cfg.model_dump()
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        target = data
        for parent in parents:
            target = target[parent]
        target[key] = value
    return TrainConfig.model_validate(data)


def measure(arch_cfg: GPTConfig | RNNConfig, cfg: TrainConfig, device: torch.device,
            meter: str = "tensors", timed: bool = True, ranks: Ranks = Ranks()) -> Measured:
    """A few steps on random tokens, then the run's other stages: a validation batch, a checkpoint's
    save, a resume from it into a fresh model and optimizer (as a restarted run does), and the stages
    after training (_after_training). Without `timed`, the timed steps are left out (no speed). Under torchrun (`ranks`), this
    rank's figures, through the same calls as model/train.py: its slice of each batch, validation on every
    rank, the sharded checkpoint and the full weights gathered to rank 0."""
    from model.train import load_sharded_checkpoint, save_distributed

    cfg = cfg.model_copy(update={"memory_sample_steps": list(TRACKED_STEPS), "memory_sample_every": 10**9})
    torch.manual_seed(cfg.seed)
    data_rng = torch.Generator().manual_seed(cfg.seed + ranks.rank)
    model = build_model(arch_cfg).to(device)
    train_step = TrainStep(model, cfg, device, ranks=ranks)

    def next_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.randint(0, arch_cfg.vocab_size, (n, arch_cfg.block_size + 1), generator=data_rng)
        tokens = tokens.to(device)
        return tokens[:, :-1], tokens[:, 1:]

    times = []
    # One folder for every rank's shards: rank 0's, handed to the others.
    tmp = Path(gather_objects(tempfile.mkdtemp(prefix="memlm-plan-") if ranks.is_main else None, ranks)[0])
    try:
        for step in (*TRACKED_STEPS, *(TIMED_STEPS if timed else ())):
            start = time.perf_counter()
            train_step(step, next_batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step in TIMED_STEPS:
                times.append(time.perf_counter() - start)
        tracker = train_step.tracker
        # On CUDA the allocator's own peak is what must fit; on CPU the tracker's live tensor bytes, or
        # with the process meter the resident set's (taken on the step after each tracked one).
        metered = [r for r in tracker.reports if meter == "tensors" or device.type != "cpu"
                   or r.process_peak_bytes is not None]  # the process meter: each step after a tracked one
        step_report = max(metered, key=lambda r: _metered(r, meter))
        stages = {"train_step": _metered(step_report, meter)}
        with tracker.stage("validation"):
            score_batches(model, [next_batch(cfg.batch_size)], cfg.micro_batch_size)
        reshard(model, ranks.strategy)
        with tracker.stage("checkpoint_save"):
            if ranks.distributed:
                save_distributed(tmp / "sharded", tmp / "full", model, train_step.optimizer, arch_cfg, ranks,
                                 {"step": len(times)})
            else:
                save_checkpoint(tmp, model, {"step": len(times), "optimizer": train_step.optimizer.state_dict()})
        tracker.release()
        train_step = model = None
        _collect(device)
        model = build_model(arch_cfg).to(device)
        train_step = TrainStep(model, cfg, device, ranks=ranks)
        resumed = train_step.tracker
        with resumed.stage("resume"):
            if ranks.distributed:
                load_sharded_checkpoint(tmp / "sharded", model, train_step.optimizer, arch_cfg)
            else:
                load_weights(model, tmp, device)
                train_step.optimizer.load_state_dict(load_train_state(tmp)["optimizer"])
        reports = {**tracker.stages, **resumed.stages}
        stages.update({name: _metered(r, meter) for name, r in reports.items()})
        resumed.release()
        train_step = model = None
        _collect(device)
        if ranks.is_main:  # the evaluate stage runs once, on the full weights rank 0 saved
            after = _after_training(tmp / "full" if ranks.distributed else tmp, cfg, device, next_batch)
            stages.update({name: _metered(r, meter) for name, r in after.items()})
        # The ranks step together: the slowest one's time is the job's.
        step_s = max_over_ranks(min(times, default=float("nan")), ranks, device)
        done = Measured(max(stages.values()), dict(step_report.breakdown), step_s, stages)
        gather_objects(None, ranks)  # every rank done with the folder (not after a rank failed: it would wait)
        return done
    finally:
        train_step = model = None
        _collect(device)
        if ranks.is_main:
            shutil.rmtree(tmp, ignore_errors=True)


def _collect(device: torch.device) -> None:
    """Free what was dropped (models and trackers refer to each other), and on CUDA the allocator's cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _after_training(checkpoint_dir: Path, cfg: TrainConfig, device: torch.device, next_batch) -> dict:
    """The run's stages after training, each alone in the process as the run has them: the evaluate stage
    (model/evaluate.py: the weights loaded from their checkpoint, the validation split scored in
    micro-batches, sample generation) and the champion's re-score (flows/model_runs.py: a registered
    version loaded and scored a micro-batch at a time; here a model of the same shape)."""
    tracker = MemoryTracker(None, None, device)
    with tracker.stage("checkpoint_load"):
        tracker.model = with_training_loss(load_lm(checkpoint_dir, device), cfg.memory)
    with tracker.stage("evaluate"):
        score_batches(tracker.model, [next_batch(cfg.batch_size)], cfg.micro_batch_size)
    with tracker.stage("generate"):
        _generation(tracker.model)
    tracker.release()
    _collect(device)
    with tracker.stage("rescore"):
        champion = with_training_loss(load_lm(checkpoint_dir, device), cfg.memory)
        score_batches(champion, [next_batch(cfg.micro_batch_size)])
    return tracker.stages


@torch.inference_mode()
def _generation(model: torch.nn.Module) -> None:
    """What sample generation holds at most: the weights, the KV cache or recurrent state (made for the
    whole context at its first use, so the number of tokens generated does not change it), the longest
    pass (a GPT past its context starts again from the last half block, model/generate.py; a prompt is
    taken to be no longer) and a token's pass with its logits."""
    limit, was_training = model.context_limit, model.training
    context = torch.zeros((1, limit // 2 if limit else 1), dtype=torch.long, device=next(model.parameters()).device)
    cache = model.new_cache()
    model.eval()  # as generate_tokens: no dropout
    try:
        token = next_token_logits(model, context, cache).argmax(-1, keepdim=True)
        next_token_logits(model, token, cache)
    finally:
        model.train(was_training)


@dataclass
class Measured:
    peak_bytes: int  # the largest stage's
    breakdown: dict[str, int]  # the training step's, at its peak
    step_s: float
    stages: dict[str, int]  # stage -> peak bytes
    rank_peaks: list[int] = field(default_factory=list)  # over N ranks: each rank's largest stage, by rank


def _metered(report, meter: str) -> int:
    if meter == "process" and report.device.startswith("cpu"):
        if report.process_peak_bytes is None:  # the trial's steps always give it one where Linux does
            raise TechniqueError("the process meter needs Linux's /proc/self/clear_refs; use --meter tensors")
        return report.process_peak_bytes
    if meter == "process":  # CUDA: what the caching allocator holds, not only what tensors use
        return report.cuda_max_reserved
    return report.budgeted_bytes


# A later candidate (more recomputation, or a lossy change) replaces an earlier one that fits only when it
# measured this much faster: step times on a shared machine move by 10-20% from run to run.
CLEARLY_FASTER = 1.2


def choose(trials: list[Trial], budget_bytes: int) -> Trial | None:
    """The first candidate that fits, unless a later one that fits is clearly faster (predicted candidates
    have no speed: the first that fits, the ladder going from the least recomputation on)."""
    best = None
    for trial in trials:
        if trial.fits(budget_bytes) and (best is None or (
                trial.tokens_per_s is not None and best.tokens_per_s is not None
                and trial.tokens_per_s > CLEARLY_FASTER * best.tokens_per_s)):
            best = trial
    return best


def plan(arch_cfg: GPTConfig | RNNConfig, cfg: TrainConfig, budget_bytes: int, device: torch.device,
         lossy: bool = False, try_all: bool = False, on_trial=None, meter: str = "tensors",
         predict_only: bool = False) -> Plan:
    """Try the candidates in order, the exact ones up to the first that fits (every one with `try_all`),
    then likewise the lossy ones; choose with `choose`. With `predict_only`, each candidate is predicted
    for `device`'s kind (which this machine need not have), not run. With train.distributed, every figure
    is per rank: measured by the job's ranks where this machine can run them (model/plan_ranks.py),
    otherwise predicted for rank 0."""
    from model.plan_ranks import measure_over_ranks, runnable_here

    ranks = cfg.distributed.strategy != "none"
    # N ranks this machine cannot run (more than its devices, several nodes) are predicted.
    predict_only = predict_only or (ranks and not runnable_here(cfg, device))
    if predict_only and meter != "tensors":
        raise PlanRequestError("a prediction is of tensor bytes: --predict goes with --meter tensors" if not ranks else
                         f"{cfg.distributed.world_size} ranks on {cfg.distributed.nnodes} node(s) are more than this "
                         "machine runs, so they are predicted, which counts tensor bytes: use --meter tensors")
    trials = []
    fitted = {False: False, True: False}  # lossy -> a candidate of that kind fits
    costs = quality_costs() if lossy else {}
    for name, changes, is_lossy in candidates(cfg, arch_cfg.arch, lossy):
        if fitted[is_lossy] and not try_all:
            continue
        candidate = apply_changes(cfg, changes)
        trial = Trial(name, changes, is_lossy,
                      quality_cost=costs.get((candidate.memory.precision, candidate.memory.optimizer))
                      if is_lossy else None)
        try:
            if predict_only:
                measured = predict(arch_cfg, candidate, device.type)
            else:
                measured = measure_over_ranks(arch_cfg, candidate, device, meter) if ranks \
                    else measure(arch_cfg, candidate, device, meter)
                trial.tokens_per_s = candidate.batch_size * arch_cfg.block_size / measured.step_s
            trial.peak_bytes, trial.breakdown, trial.stages = measured.peak_bytes, measured.breakdown, measured.stages
            trial.rank_peaks = measured.rank_peaks
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
                None if chosen is None else apply_changes(cfg, chosen.changes),
                cfg.distributed.world_size, predict_only)


# The CUDA caching allocator hands out blocks rounded up to 512 bytes (what max_memory_allocated counts).
CUDA_BLOCK = 512
PREDICTABLE_DEVICES = ("cpu", "cuda")


def _cuda_block_size(nbytes: int) -> int:
    return max(CUDA_BLOCK, -(-nbytes // CUDA_BLOCK) * CUDA_BLOCK)


PREDICTION_ASSUMES = (
    "the tensors the CPU kernels return (CUDA's attention kernels keep a few small extra ones, such as "
    "log-sum-exp rows); no kernel-internal workspace alive between operators; a checkpoint's save holds the "
    "weights and the optimizer state, a resume also a loaded copy of the weights (as measured on CPU); the "
    "evaluate stage loads the saved weights into an fp32 model built on the CPU (beside it on a CPU, before "
    "moving it on CUDA), generates from a short prompt, and the champion it re-scores has this model's "
    "shape; for "
    "CUDA, the caching allocator's 512-byte block rounding, i.e. max_memory_allocated: its reserved memory "
    "(2 MiB and 20 MiB segments), the CUDA context (about 0.3-0.5 GiB) and library workspaces come on top; "
    "over N ranks, rank 0's figures, its checkpoint stages as torch 2.13's DCP measured on gloo (save: the "
    "state, the whole model rank 0 fills in CPU memory (device memory on a CPU only) and, under fsdp, one "
    "parameter's all-gather and the whole tensor made from it; resume: "
    "the optimizer state made by a step on zero gradients, then the rank's checkpoint file read whole beside "
    "the live state, a 1/N share of the weights and optimizer state), collectives' own buffers not counted "
    "(NCCL's; over gloo, FSDP2's gradients are reduced in place, model/distributed.py)")


def predict(arch_cfg: GPTConfig | RNNConfig, cfg: TrainConfig, device_type: str = "cpu") -> Measured:
    """A candidate's peaks without running it: two optimizer steps and a validation batch traced under fake
    tensors (shapes and dtypes, no memory), their allocations replayed through the tracker's categories.
    What it assumes: PREDICTION_ASSUMES.

    Over N ranks (train.distributed), rank 0's peaks, which are the largest (it holds the larger shard
    where a size does not divide by N, and gathers the full weights for the checkpoint): fsdp is traced
    through FSDP2 itself in this one process, a fake process group playing rank 0 of N (collectives on
    fake tensors move nothing); ddp, whose reducer cannot run on fake tensors, as one process on its
    per-rank batch with every gradient allocated from the start (DDP's gradients are views into its
    all-reduce buckets, which live for the whole run)."""
    if device_type not in PREDICTABLE_DEVICES:
        raise PlanRequestError(f"memlm plan --predict predicts for {' or '.join(PREDICTABLE_DEVICES)}, not {device_type!r}")
    if cfg.memory.compile or cfg.memory.split_head_step or cfg.memory.optimizer in ("adamw8bit", "adamw4bit"):
        raise TechniqueError("not predicted (compile, split_head_step and torchao's compiled low-bit AdamW cannot "
                             "be traced under fake tensors): measure it without --predict")
    strategy = cfg.distributed.strategy
    if cfg.distributed.cpu_offload:
        raise TechniqueError("not predicted (cpu_offload keeps the shards in CPU memory, which a prediction of "
                             "device memory does not trace): measure it on the job's GPUs")
    if strategy == "fsdp":
        with _fake_process_group(cfg.distributed.world_size) as mesh:
            return _predict(arch_cfg, cfg, device_type, Ranks("fsdp", 0, cfg.distributed.world_size), mesh)
    if strategy == "ddp":
        check(cfg, torch.device("cpu"))  # what ddp refuses, before tracing it as one process
        return _predict(arch_cfg, cfg, device_type, Ranks(), None, ddp_world=cfg.distributed.world_size)
    return _predict(arch_cfg, cfg, device_type, Ranks(), None)


def _traced_state_init(arch_cfg: GPTConfig | RNNConfig, cfg: TrainConfig, ranks: Ranks, mesh, recorder,
                       round_size, bucket_bytes: int) -> int:
    """The peak of a resumed rank's first act: DCP's get_state_dict makes the fresh optimizer's state by
    stepping once on zero gradients (with DDP's `bucket_bytes` of buckets already held, no gradient in
    them yet)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from model.sharded_checkpoint import state_dict_optimizers

    model = build_model(arch_cfg)
    train_step = TrainStep(model, cfg, torch.device("cpu"), ranks=ranks, mesh=mesh)
    train_step.tracker.grad_bucket_bytes = bucket_bytes  # cfg is one process's: TrainStep does not set it
    with train_step.tracker.traced(0, recorder, round_size) as init:
        get_state_dict(model, state_dict_optimizers(train_step.optimizer))
    return init[0].peak_bytes


def _parameter_blocks(model: torch.nn.Module, round_size) -> list[int]:
    """Each parameter's bytes whole (a DTensor's numel is the global one), as the allocator rounds them."""
    return [round_size(p.numel() * p.element_size()) for p in model.parameters()]


def _traced_after_training(arch_cfg: GPTConfig | RNNConfig, batch_size: int, micro_batch_size: int, memory,
                           recorder, round_size, next_batch) -> dict[str, int]:
    """The evaluate stage's scoring and generation and the re-score's scoring (see _after_training) traced
    on the fp32 model the evaluate stage loads; `model_bytes` is that model's size."""
    model = with_training_loss(build_model(arch_cfg), memory)
    tracker = MemoryTracker(model, None, torch.device("cpu"))
    with tracker.traced(0, recorder, round_size) as evaluation:
        score_batches(model, [next_batch(batch_size)], micro_batch_size)
    with tracker.traced(0, recorder, round_size) as generation:
        _generation(model)
    with tracker.traced(0, recorder, round_size) as rescore:
        score_batches(model, [next_batch(micro_batch_size)])
    return {"evaluate": evaluation[0].peak_bytes, "generate": generation[0].peak_bytes,
            "rescore": rescore[0].peak_bytes,
            "model_bytes": sum(_parameter_blocks(model, round_size))}


@contextlib.contextmanager
def _fake_process_group(world_size: int) -> Iterator[object]:
    """This process as rank 0 of `world_size` in PyTorch's fake process group; yields the device mesh,
    which must be made before fake tensors are on (it reads a real tensor)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("predicting N ranks plays them in a process of its own; this one is in a process group")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield init_device_mesh("cpu", (world_size,))
    finally:
        dist.destroy_process_group()


def _predict(arch_cfg: GPTConfig | RNNConfig, cfg: TrainConfig, device_type: str, ranks: Ranks, mesh,
             ddp_world: int = 1) -> Measured:
    round_size = _cuda_block_size if device_type == "cuda" else (lambda n: n)
    cpu = torch.device("cpu")
    validation_batch, validation_micro = cfg.batch_size, cfg.micro_batch_size
    if ddp_world > 1:  # one process on the rank's share of the batch
        cfg = cfg.model_copy(update={"batch_size": cfg.rank_batch_size, "distributed": DistributedConfig()})
    elif ranks.distributed:  # the collectives the job's backend will run (model/distributed.py)
        backend = backend_for(cfg.distributed, device_type)
        cfg = cfg.model_copy(update={"distributed": cfg.distributed.model_copy(update={"backend": backend})})
    cfg = cfg.model_copy(update={"memory_sample_steps": [], "memory_sample_every": 10**9})
    recorder = AllocationRecorder()
    started = time.perf_counter()
    with FakeTensorMode():
        model = build_model(arch_cfg)
        train_step = TrainStep(model, cfg, cpu, ranks=ranks, mesh=mesh)
        tracker = train_step.tracker
        # What a freshly built optimizer holds before any step (fp8 AdamW's pool of random bits): a resumed
        # run has it beside the weights it loads.
        # (One pool shared by the per-parameter optimizers of a step in backward: each storage once.)
        fresh_optimizer = sum(round_size(n) for n in storage_bytes(attribute_tensors(train_step.optimizer)).values())

        def next_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            tokens = torch.randint(0, arch_cfg.vocab_size, (n, arch_cfg.block_size + 1))
            return tokens[:, :-1], tokens[:, 1:]

        # DDP's all-reduce buckets, in the three states of their life: allocated at wrap, before any gradient
        # points into them (a resume's optimizer-state creation); every gradient a view into them from the
        # first backward on (gradients allocated once and kept, below); and, in step 2, rebuilt in the order
        # backward made the gradients beside the first ones.
        buckets = round_size(ddp_bucket_bytes(model)) if ddp_world > 1 else 0

        def gradients_in_buckets() -> None:
            if buckets:
                for p in model.parameters():
                    if p.requires_grad and p.grad is None:
                        p.grad = torch.zeros_like(p)

        for step in TRACKED_STEPS:
            gradients_in_buckets()
            with tracker.traced(step, recorder, round_size):
                train_step(step, next_batch)
        step_report = max(tracker.reports, key=lambda r: r.peak_bytes)
        gradients_in_buckets()
        with tracker.traced(0, recorder, round_size) as validation:
            score_batches(model, [next_batch(validation_batch)], validation_micro)
        reshard(model, ranks.strategy)
        held = [(round_size(n), category) for n, category in tracker._baseline().values()]
        # Each parameter whole, in the dtype it trains in (DDP's buckets; a DTensor's numel is the global one)
        # and in fp32, as the full-weights checkpoint's model holds it.
        trained = _parameter_blocks(model, round_size)
        if ranks.distributed or ddp_world > 1:
            full = _parameter_blocks(build_model(arch_cfg), round_size)
            resume_init = _traced_state_init(arch_cfg, cfg, ranks, mesh, recorder, round_size, buckets)
        after = _traced_after_training(arch_cfg, validation_batch, validation_micro, cfg.memory, recorder, round_size,
                                       next_batch)
    state_bytes = sum(n for n, _ in held)
    weight_bytes = sum(n for n, category in held if category == "parameters")
    train_peak = step_report.peak_bytes
    if ranks.distributed or ddp_world > 1:
        # The full weights' checkpoint: rank 0 fills a whole model in CPU memory, one all-gathered parameter
        # at a time (model/train.py), which is device memory only on a CPU; under fsdp beside a parameter's
        # all-gather and the whole tensor made from it.
        whole = sum(full) if device_type == "cpu" else 0
        gathered = 2 * max(trained) if ranks.distributed else 0
        # What a rank's checkpoint file holds: its shards, or (ddp, which writes each replicated tensor
        # once) its share of the weights and optimizer state. DCP's load reads a whole file beside the
        # live state.
        checkpointed = sum(n for n, category in held if category != "gradients") // ddp_world
        stages = {"checkpoint_save": state_bytes + whole + gathered,
                  "resume": max(resume_init, state_bytes + checkpointed)}
        train_peak += buckets  # the rebuild in step 2
    else:
        # A resume loads the weights beside the model's before copying them in, then the optimizer state.
        stages = {"checkpoint_save": state_bytes, "resume": max(state_bytes, 2 * weight_bytes + fresh_optimizer)}
    # The evaluate stage loads the weights the checkpoint saved (over ranks, the full fp32 ones) into a
    # model built in fp32 on the CPU, then moved to the device: on a CPU beside it, on CUDA before it.
    model_bytes, saved = after.pop("model_bytes"), sum(full) if ranks.distributed or ddp_world > 1 else weight_bytes
    load = model_bytes + saved if device_type == "cpu" else max(model_bytes, saved)
    after["checkpoint_load"], after["rescore"] = load, max(load, after["rescore"])
    stages = {"train_step": train_peak, "validation": validation[0].peak_bytes, **stages, **after}
    return Measured(max(stages.values()), dict(step_report.breakdown), time.perf_counter() - started, stages)
