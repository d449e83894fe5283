"""One optimizer step with the configured memory techniques, shared by the trainer and the benchmark."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from model.config import TrainConfig
from model.gpt import GPT
from model.memory import MemoryTracker
from model.techniques import apply_to_model, build_optimizer, check, forward_context, grad_scaler

BatchFn = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


class TrainStep:
    """Applies `cfg.memory` to the model, builds the optimizer, and runs steps: micro-batches with
    accumulation, mixed precision (with a gradient scaler for fp16), clipping, and memory tracking."""

    def __init__(self, model: GPT, cfg: TrainConfig, device: torch.device, snapshot_path: Path | None = None):
        self.warnings = check(cfg, device)
        for warning in self.warnings:
            warnings.warn(warning, stacklevel=2)
        apply_to_model(model, cfg.memory)
        self.model, self.cfg, self.device = model, cfg, device
        # The tracker before the optimizer: its gradient hooks must run before those of an optimizer
        # that steps in backward and frees each gradient.
        self.tracker = MemoryTracker(model, None, device, cfg.memory_sample_steps, cfg.memory_sample_every,
                                     snapshot_path)
        self.optimizer = self.tracker.optimizer = build_optimizer(model, cfg, device)
        self.scaler = grad_scaler(device, cfg.memory)
        self.forward = torch.compile(model) if cfg.memory.compile else model

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
            for _ in range(cfg.grad_accum_steps):
                x, y = next_batch(cfg.micro_batch_size)
                with tracker.phase("forward"), forward_context(self.device, mem):
                    hidden = self.forward(x)
                    with tracker.scope("loss"):
                        loss = self.model.loss(hidden, y) / cfg.grad_accum_steps
                del hidden
                with tracker.phase("backward"):
                    (self.scaler.scale(loss) if self.scaler else loss).backward()
                loss_value += loss.item()
                del loss
            with tracker.phase("optimizer"):
                if cfg.grad_clip > 0:
                    if self.scaler:
                        self.scaler.unscale_(self.optimizer)
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
                if self.scaler:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        return loss_value, grad_norm
