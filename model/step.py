"""One optimizer step with the configured memory techniques, shared by the trainer and the benchmark."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from model.config import TrainConfig
from model.distributed import Ranks, ddp_bucket_bytes, full_tensor, gradient_sync, mean_over_ranks, parallelize
from model.gpt import GPT
from model.memory import MemoryTracker
from model.techniques import apply_to_model, build_optimizer, check, forward_context, grad_scaler

BatchFn = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


class TrainStep:
    """Applies `cfg.memory` to the model, builds the optimizer, and runs steps: micro-batches with
    accumulation, mixed precision (with a gradient scaler for fp16), clipping, and memory tracking; under
    torchrun, the model replicated (ddp) or sharded (fsdp) over the ranks."""

    def __init__(self, model: GPT, cfg: TrainConfig, device: torch.device, snapshot_path: Path | None = None,
                 ranks: Ranks = Ranks(), mesh=None):
        self.warnings = check(cfg, device)
        for warning in self.warnings:
            warnings.warn(warning, stacklevel=2)
        apply_to_model(model, cfg.memory)
        self.model, self.cfg, self.device, self.ranks = model, cfg, device, ranks
        self.trained = parallelize(model, cfg.distributed, cfg.memory, device, mesh)
        # The tracker before the optimizer: its gradient hooks must run before those of an optimizer
        # that steps in backward and frees each gradient.
        self.tracker = MemoryTracker(model, None, device, cfg.memory_sample_steps, cfg.memory_sample_every,
                                     snapshot_path, grad_bucket_bytes=ddp_bucket_bytes(model)
                                     if cfg.distributed.strategy == "ddp" else 0)
        self.optimizer = self.tracker.optimizer = build_optimizer(model, cfg, device)
        self.scaler = grad_scaler(device, cfg.memory)
        self.forward = torch.compile(self.trained) if cfg.memory.compile else self.trained

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):  # torchao's low-bit optimizers keep it as a tensor
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def __call__(self, step: int, next_batch: BatchFn) -> tuple[float, float | None]:
        """Run optimizer step `step`; returns (mean loss over the batch, gradient norm before clipping)."""
        cfg, mem, tracker = self.cfg, self.cfg.memory, self.tracker
        loss_value, grad_norm = 0.0, None
        with tracker.track(step):
            for micro in range(cfg.grad_accum_steps):
                x, y = next_batch(cfg.micro_batch_size)
                with gradient_sync(self.trained, cfg.distributed.strategy, micro == cfg.grad_accum_steps - 1):
                    with tracker.phase("forward"), forward_context(self.device, mem):
                        hidden = self.forward(x)
                        with tracker.scope("loss"):
                            loss = self.model.loss(hidden, y) / cfg.grad_accum_steps
                    del hidden
                    with tracker.phase("backward"):
                        (self.scaler.scale(loss) if self.scaler else loss).backward()
                loss_value += loss.item()
                del loss
            tracker.note_gradients()
            with tracker.phase("optimizer"):
                if cfg.grad_clip > 0 and not mem.optimizer_in_backward:  # there the optimizer clips, a step late
                    if self.scaler:
                        self.scaler.unscale_(self.optimizer)
                    grad_norm = float(full_tensor(torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                                                 cfg.grad_clip)))
                if self.scaler:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                if cfg.grad_clip > 0 and mem.optimizer_in_backward:
                    grad_norm = self.optimizer.grad_norm
                # DDP's gradients are views into its all-reduce buckets, which it keeps anyway: zeroed, they
                # stay visible to the memory tracker as gradients (set to None, they would be unaccounted).
                self.optimizer.zero_grad(set_to_none=cfg.distributed.strategy != "ddp")
        # Each rank averaged its own share of the batch; the step's loss is the mean over ranks.
        return mean_over_ranks(loss_value, self.ranks, self.device), grad_norm
