"""Train stage: AdamW, warmup + cosine schedule, gradient clipping, periodic validation, checkpoints
with optimizer and RNG state, and resume from the last checkpoint. The same loop runs in one process or
as one rank of a torchrun job (model/distributed.py): every rank takes its slice of each step's batch,
rank 0 alone writes the history, metrics and full weights."""
from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model.arch import build_model, config_for, config_from_dict
from model.checkpoint import CheckpointError, has_checkpoint, load_model_config, load_train_state, load_weights, save_checkpoint
from model.config import ModelConfig, TrainConfig
from model.data import TokenFile
from model.distributed import Ranks, gather_objects, max_over_ranks, replicas_that_differ, reshard, start, stop
from model.evaluate import evaluate_loss
from model.hardware import matmul_peak_flops, peak_is_known, resolve_device
from model.memory import MemoryBudgetError, MemoryTracker, meters_note, stage_entry
from model.sharded_checkpoint import STATE_FILE as SHARDED_STATE_FILE
from model.sharded_checkpoint import has_sharded_checkpoint, load_sharded, save_sharded
from model.step import TrainStep
from model.techniques import rounds_with_random_bits

CHECKPOINT_DIR = "checkpoint"
SHARDED_CHECKPOINT_DIR = "checkpoint_sharded"
HISTORY_FILE = "history.jsonl"
MEMORY_FILE = "memory.json"

MetricsCallback = Callable[[dict[str, float], int], None]
ProgressCallback = Callable[[int, int, dict[str, float]], None]


@dataclass
class TrainResult:
    checkpoint_dir: Path
    history_file: Path
    memory_file: Path
    steps: int
    resumed_from: int
    n_params: int
    train_loss: float
    val_loss_start: float
    val_loss: float
    tokens_per_s: float
    mfu: float
    peak_memory_mib: float
    memory: dict
    elapsed_s: float
    stopped_early: bool = False
    warnings: list[str] = field(default_factory=list)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at `max_steps` (steps count from 1)."""
    if step <= cfg.warmup_steps:
        return cfg.lr * step / max(1, cfg.warmup_steps)
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * (cfg.lr - cfg.min_lr)


def _rng_state(device: torch.device, data_rng: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "data": data_rng.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device, data_rng: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data_rng.set_state(state["data"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _json_rng_state(state: dict) -> dict:
    return {name: t.tolist() for name, t in state.items()}


def _tensor_rng_state(state: dict) -> dict:
    return {name: torch.tensor(v, dtype=torch.uint8) for name, v in state.items()}


def train(model_cfg: ModelConfig, cfg: TrainConfig, tokens_dir: Path, out_dir: Path,
          on_metrics: MetricsCallback | None = None, on_progress: ProgressCallback | None = None) -> TrainResult:
    """Train in this process, or as this rank of the torchrun job that train.distributed describes."""
    ranks, device = start(cfg.distributed, resolve_device(cfg.device))
    result = _train(model_cfg, cfg, Path(tokens_dir), Path(out_dir), ranks, device, on_metrics, on_progress)
    # Only after a clean finish: a failed rank exits at once and torchrun ends the others.
    stop(ranks)
    return result


def _train(model_cfg: ModelConfig, cfg: TrainConfig, tokens_dir: Path, out_dir: Path, ranks: Ranks,
           device: torch.device, on_metrics: MetricsCallback | None, on_progress: ProgressCallback | None) -> TrainResult:
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((tokens_dir / "manifest.json").read_text())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data_rng = torch.Generator().manual_seed(cfg.seed)

    arch_cfg = config_for(model_cfg, manifest["vocab_size"])
    train_tokens = TokenFile(tokens_dir / "train.bin", arch_cfg.block_size, manifest["dtype"])
    val_tokens = TokenFile(tokens_dir / "val.bin", arch_cfg.block_size, manifest["dtype"])

    model = build_model(arch_cfg).to(device)
    train_step = TrainStep(model, cfg, device, snapshot_path=out_dir / "cuda_memory_snapshot.pickle", ranks=ranks)
    optimizer, tracker = train_step.optimizer, train_step.tracker
    tracker.budget_mib = cfg.memory_budget_mib  # every stage below is measured and checked against it
    ckpt_dir = out_dir / CHECKPOINT_DIR
    sharded_dir = out_dir / SHARDED_CHECKPOINT_DIR
    history_file = out_dir / HISTORY_FILE
    start_step, state = 0, None
    if cfg.resume and has_sharded_checkpoint(sharded_dir):
        with tracker.stage("resume"):
            state = load_sharded_checkpoint(sharded_dir, model, optimizer, arch_cfg)
        _set_rng_state(_tensor_rng_state(state["rng"]), device, data_rng)
    elif cfg.resume and has_checkpoint(ckpt_dir) and ranks.distributed:
        raise CheckpointError(
            f"the checkpoint in {ckpt_dir} was written by a single-process run (train.distributed.strategy none): "
            "resume it with strategy none, or set train.resume: false to start over")
    elif cfg.resume and has_checkpoint(ckpt_dir):
        if load_model_config(ckpt_dir) != arch_cfg:
            raise CheckpointError(
                f"the checkpoint in {ckpt_dir} is for another model shape; "
                "delete it or set train.resume: false to start over"
            )
        with tracker.stage("resume"):
            load_weights(model, ckpt_dir, device)
            state = load_train_state(ckpt_dir)
            if state is not None:
                optimizer.load_state_dict(state["optimizer"])
        if state is not None:
            _set_rng_state(state["rng"], device, data_rng)
    if state is not None:
        start_step = state["step"]
        # Steps after the checkpoint were lost with the interrupted process; they run again.
        if history_file.exists():
            kept = [line for line in history_file.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= start_step]
            if ranks.is_main:
                history_file.write_text("".join(line + "\n" for line in kept))
    elif ranks.is_main:
        history_file.unlink(missing_ok=True)

    peak_measured_now = not peak_is_known(device)  # a later run in this process reuses its figure
    peak_flops = matmul_peak_flops(device)
    flops_per_token = model.flops_per_token()
    tokens_per_step = cfg.batch_size * arch_cfg.block_size

    def validate() -> float:
        # Every rank computes the same figure (FSDP's forward needs them all); rank 0 logs it.
        with tracker.stage("validation"):
            loss = evaluate_loss(model, val_tokens, cfg.batch_size, device, cfg.eval_batches,
                                 cfg.micro_batch_size)[0]
        reshard(model, ranks.strategy)
        return loss

    def log(metrics: dict[str, float], step: int) -> None:
        if not ranks.is_main:
            return
        with open(history_file, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if on_metrics:
            on_metrics(metrics, step)

    val_loss_start = state["val_loss_start"] if state else validate()
    if state is None:
        log({"val/loss": val_loss_start}, 0)
    val_loss = state["val_loss"] if state else val_loss_start
    model.train()
    step, loss_value, stopped_early = start_step, float("nan"), False
    window_tokens, window_start = 0, time.perf_counter()
    tokens_per_s = 0.0
    for step in range(start_step + 1, cfg.max_steps + 1):
        lr = lr_at(step, cfg)
        train_step.set_lr(lr)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        # Every rank draws the whole batch's windows from the same generator and reads its own slice:
        # no two ranks see the same window, and the batch is the same whatever the world size.
        x, y = train_tokens.random_batch(cfg.batch_size, data_rng, device, part=(ranks.rank, ranks.world_size))
        micro_batches = zip(x.split(cfg.micro_batch_size), y.split(cfg.micro_batch_size))
        loss_value, grad_norm = train_step(step, lambda n: next(micro_batches))
        del x, y
        window_tokens += tokens_per_step
        elapsed_window = time.perf_counter() - window_start
        metrics = {"train/loss": loss_value, "train/lr": lr}
        if grad_norm is not None:
            metrics["train/grad_norm"] = grad_norm
        if device.type == "cuda":
            metrics["memory/step_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        if tracker.wants(step) and tracker.last is not None:
            metrics.update(_rank_memory_metrics(tracker.last.metrics(), ranks))
        _check_budget(cfg, metrics, step)
        if step % cfg.log_interval == 0 or step == cfg.max_steps or tracker.wants(step):
            tokens_per_s = window_tokens / elapsed_window
            metrics["train/tokens_per_s"] = tokens_per_s
            metrics["train/mfu"] = flops_per_token * tokens_per_s / peak_flops
            log(metrics, step)
            window_tokens, window_start = 0, time.perf_counter()
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            val_loss = validate()
            log({"val/loss": val_loss}, step)
            window_start = time.perf_counter()
        out_of_time = cfg.max_minutes is not None and max_over_ranks(
            (time.monotonic() - started) / 60, ranks, device) >= cfg.max_minutes
        if step % cfg.checkpoint_interval == 0 or step == cfg.max_steps or out_of_time:
            if out_of_time and step % cfg.eval_interval != 0:
                val_loss = validate()
                log({"val/loss": val_loss}, step)
            with tracker.stage("checkpoint_save"):
                if rounds_with_random_bits(cfg.memory) and (differ := replicas_that_differ(model, optimizer, ranks)):
                    raise RuntimeError(
                        f"after step {step} the DDP ranks hold different weights or optimizer state "
                        f"({', '.join(differ[:5])}): their replicas drifted apart, so no checkpoint was written; this "
                        "is a bug in memlm: please report it with your train config (one process, strategy none, "
                        "avoids it)")
                if ranks.distributed:
                    save_distributed(sharded_dir, ckpt_dir, model, optimizer, arch_cfg, ranks, {
                        "step": step, "rng": _json_rng_state(_rng_state(device, data_rng)),
                        "val_loss_start": val_loss_start, "val_loss": val_loss})
                else:
                    save_checkpoint(ckpt_dir, model, {
                        "step": step, "optimizer": optimizer.state_dict(), "rng": _rng_state(device, data_rng),
                        "val_loss_start": val_loss_start, "val_loss": val_loss,
                    })
                    # This checkpoint is now the newest: a later run must not resume an older sharded one.
                    shutil.rmtree(sharded_dir, ignore_errors=True)
        if on_progress and ranks.is_main:
            on_progress(step, cfg.max_steps, {"loss": loss_value, "val_loss": val_loss})
        if out_of_time:
            stopped_early = step < cfg.max_steps
            break

    memory = _rank_memory_summary(_memory_summary(tracker, device), ranks)
    memory_file = out_dir / MEMORY_FILE
    if ranks.is_main:
        memory_file.write_text(json.dumps(memory, indent=2))
    return TrainResult(
        checkpoint_dir=ckpt_dir,
        history_file=history_file,
        memory_file=memory_file,
        steps=step,
        resumed_from=start_step,
        n_params=model.num_params(),
        train_loss=loss_value,
        val_loss_start=val_loss_start,
        val_loss=val_loss,
        tokens_per_s=tokens_per_s,
        # Measured again at the end: at the start the cores may be shared with the run's set-up (a
        # tracking store's migrations, the previous stage's workers), which understates the peak.
        mfu=flops_per_token * tokens_per_s / matmul_peak_flops(device, fresh=peak_measured_now),
        peak_memory_mib=memory.get("peak_mib", 0.0),
        memory=memory,
        elapsed_s=round(time.monotonic() - started, 1),
        stopped_early=stopped_early,
        warnings=train_step.warnings,
    )


def _check_budget(cfg: TrainConfig, metrics: dict[str, float], step: int) -> None:
    # On CUDA the allocator's peak, every step; on CPU the tracker's, on its steps.
    measured = metrics.get("memory/step_peak_mib", metrics.get("memory/peak_mib"))
    if cfg.memory_budget_mib is None or measured is None or measured <= cfg.memory_budget_mib:
        return
    raise MemoryBudgetError(
        f"training step {step} peaked at {measured:.1f} MiB, over train.memory_budget_mib ({cfg.memory_budget_mib:g}): "
        "`memlm plan -c CONFIG` finds memory settings that fit it (it reads the budget from the config), "
        "or raise the budget")


def load_sharded_checkpoint(directory: Path, model: torch.nn.Module, optimizer, arch_cfg) -> dict:
    if config_from_dict(json.loads((directory / SHARDED_STATE_FILE).read_text())["model_config"]) != arch_cfg:
        raise CheckpointError(
            f"the checkpoint in {directory} is for another model shape; "
            "delete it or set train.resume: false to start over")
    return load_sharded(directory, model, optimizer)


def save_distributed(sharded_dir: Path, ckpt_dir: Path, model: torch.nn.Module, optimizer, arch_cfg,
                     ranks: Ranks, train_state: dict) -> None:
    """The sharded checkpoint (every rank), then the full weights as a single-process checkpoint
    (gathered on rank 0; no train state in it), which evaluation and registration read as today."""
    save_sharded(sharded_dir, model, optimizer, {**train_state, "model_config": arch_cfg.to_dict()}, ranks)
    whole = _gathered_model(model, arch_cfg, ranks)
    if ranks.is_main:
        save_checkpoint(ckpt_dir, whole)


def _gathered_model(model: torch.nn.Module, arch_cfg, ranks: Ranks) -> torch.nn.Module | None:
    """Rank 0's whole model in CPU memory, filled one parameter at a time (each rank takes part in each
    all-gather), so that a rank's device holds at most one gathered parameter beside its shards and rank
    0 one copy of the weights (a gathered state dict first and a model after would be two, and the tied
    embedding/head twice in the first)."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from model.distributed import full_tensor

    with torch.device("meta"):  # no initialization: every tensor is overwritten below
        whole = build_model(arch_cfg)
    sources = [*model.named_parameters(), *model.named_buffers()]
    names = {**dict(whole.named_parameters()), **dict(whole.named_buffers())}.keys()
    if {name for name, _ in sources} != names:  # on every rank, before any of them gathers
        raise ValueError(f"the trained model's tensors ({sorted(name for name, _ in sources)}) are not those of "
                         f"{type(whole).__name__} ({sorted(names)}): cannot write its full weights")
    if not ranks.is_main:
        whole = None
    else:
        # Memory for each tensor once, set on every module that refers to it (the tied head among them);
        # to_empty would make one per reference and untie them.
        made: dict[int, torch.Tensor] = {}
        for name, t in [*whole.named_parameters(remove_duplicate=False), *whole.named_buffers(remove_duplicate=False)]:
            if id(t) not in made:
                empty = torch.empty_like(t, device="cpu")
                made[id(t)] = torch.nn.Parameter(empty, t.requires_grad) if isinstance(t, torch.nn.Parameter) else empty
            module, _, attr = name.rpartition(".")
            setattr(whole.get_submodule(module), attr, made[id(t)])
    targets = {} if whole is None else {**dict(whole.named_parameters()), **dict(whole.named_buffers())}
    for name, t in sources:
        if isinstance(t, DTensor) and t.device.type == "cpu" and dist.get_backend() == "nccl":
            t = t.to(torch.device("cuda", torch.cuda.current_device()))  # shards offloaded to CPU (cpu_offload)
        full = full_tensor(t)
        if whole is not None:
            with torch.no_grad():
                targets[name].copy_(full)
        del full
    return whole


def _rank_memory_metrics(metrics: dict[str, float], ranks: Ranks) -> dict[str, float]:
    """With several ranks: the largest rank's figures as the headline, and every rank's peak."""
    if not ranks.distributed:
        return metrics
    every = gather_objects(metrics, ranks)
    largest = max(every, key=lambda m: m["memory/peak_mib"])
    return {**largest, **{f"memory/rank{r}/peak_mib": m["memory/peak_mib"] for r, m in enumerate(every)}}


def _rank_memory_summary(summary: dict, ranks: Ranks) -> dict:
    """The largest rank's summary, with every rank's peak and breakdown under "ranks"."""
    if not ranks.distributed:
        return summary
    every = gather_objects({k: summary.get(k) for k in ("peak_bytes", "peak_mib", "peak_phase", "breakdown", "phases")},
                           ranks)
    largest = max(range(len(every)), key=lambda r: every[r]["peak_bytes"] or 0)
    head = gather_objects(summary if ranks.rank == largest else None, ranks)[largest]
    return {**head, "rank": largest, "world_size": ranks.world_size,
            "strategy": ranks.strategy, "ranks": [{"rank": r, **e} for r, e in enumerate(every)]}


def _memory_summary(tracker: MemoryTracker, device: torch.device) -> dict:
    """The largest tracked step in full, and every stage's peak (the training step's among them)."""
    peak = tracker.peak
    stages = {name: stage_entry(r) for name, r in tracker.stages.items()}
    common = {"budget_mib": tracker.budget_mib, "meters_note": meters_note(device)}
    if peak is None:
        return {"device": str(device), "tracked_steps": [], "stages": stages, **common}
    return {**peak.to_dict(), "tracked_steps": [r.step for r in tracker.reports],
            "timeline": peak.timeline, "phase_starts_ms": peak.phase_starts_ms,
            "stages": {"train_step": stage_entry(peak), **stages}, **common}
