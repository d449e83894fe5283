"""Stepping the optimizer inside backward, the tied head weight's split step, and the two clips that work
there."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.adamw import adamw as adamw_step

from model.fp8_adamw import AdamWFp8, dequantize_fp8
from model.lowbit import SLICE


class SplitHeadStep:
    """AdamW's step for a tied embedding/output-head weight, taken in two parts so that its
    vocabulary × width gradient never lives through backward.

    The head's gradient is complete when the loss's backward starts; the embedding adds to it only in the
    rows of the tokens that were input. Rows no input token touched are stepped at once with the head's
    gradient alone; the touched rows keep their head gradient (a few MiB) and are stepped at the end of
    backward with the embedding's part added. AdamW is elementwise, so this is exactly its step."""

    def __init__(self, weight: nn.Parameter, embedding: nn.Embedding, optimizer: torch.optim.AdamW):
        self.weight, self.optimizer = weight, optimizer
        self.rows: torch.Tensor | None = None  # token ids input in this step's forward
        self.head_rows: torch.Tensor | None = None  # their rows of the head's gradient
        self.handle = embedding.register_forward_pre_hook(self._record_rows)

    def _record_rows(self, module: nn.Module, args: tuple) -> None:
        if module.training and torch.is_grad_enabled():
            self.rows = torch.unique(args[0])

    def _state(self) -> dict:
        state = self.optimizer.state[self.weight]
        if not state:  # as torch.optim.AdamW(fused=True) initializes it, so that checkpoints stay alike
            state["step"] = torch.zeros((), dtype=torch.float32, device=self.weight.device)
            state["exp_avg"] = torch.zeros_like(self.weight, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(self.weight, memory_format=torch.preserve_format)
        return state

    def _adamw(self, param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
               step: torch.Tensor) -> None:
        group = self.optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        adamw_step([param], [grad], [exp_avg], [exp_avg_sq], [], [step], fused=True, amsgrad=False, beta1=beta1,
                   beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)

    @torch.no_grad()
    def step_untouched_rows(self, head_grad: torch.Tensor) -> None:
        """Step every row with the head's (final, scaled) gradient, except the input tokens' rows."""
        if self.rows is None:
            raise RuntimeError("split head step: no training forward pass recorded the input tokens")
        state, rows = self._state(), self.rows
        tensors = (self.weight, state["exp_avg"], state["exp_avg_sq"])
        kept = [t.index_select(0, rows) for t in tensors]
        self.head_rows = head_grad.index_select(0, rows)
        self._adamw(self.weight, head_grad, state["exp_avg"], state["exp_avg_sq"], state["step"])
        for tensor, rows_before in zip(tensors, kept):
            tensor.index_copy_(0, rows, rows_before)

    @torch.no_grad()
    def step_touched_rows(self) -> None:
        """Step the input tokens' rows with the head's gradient plus the embedding's (now in .grad)."""
        state, rows = self._state(), self.rows
        grad = self.weight.grad.index_select(0, rows).add_(self.head_rows)
        tensors = (self.weight, state["exp_avg"], state["exp_avg_sq"])
        param, exp_avg, exp_avg_sq = (t.index_select(0, rows) for t in tensors)
        # The step counter already moved on for this step; these rows take the same step number.
        self._adamw(param, grad, exp_avg, exp_avg_sq, state["step"] - 1)
        for tensor, rows_after in zip(tensors, (param, exp_avg, exp_avg_sq)):
            tensor.index_copy_(0, rows, rows_after)
        self.head_rows = self.rows = None


def update_rms(grad: torch.Tensor, state: dict, group: dict) -> float:
    """StableAdamW's measure of one weight tensor's coming AdamW step (Wortsman et al. 2023, "Stable and
    low-precision training for large-scale vision-language models"; optimi's StableAdamW): the root mean
    square of grad^2 / v, where v is the bias-corrected second moment with this gradient already in it.
    About 1 where gradients are steady; large where this gradient is far above the tensor's recent ones
    (a spike that v has not caught up with). Reads the second moment of torch's and memlm's AdamWs, fp32
    (`exp_avg_sq`) or fp8 (`exp_avg_sq_root`, its root per block), a slice at a time (1 MiB temporaries)."""
    if "step" not in state:
        return 1.0  # the first step: v is this gradient squared, so every ratio is 1
    beta2, eps_sq = group["betas"][1], group["eps"] ** 2
    bias2 = 1 - beta2 ** (float(state["step"]) + 1)
    flat, total = grad.reshape(-1), torch.zeros((), dtype=torch.float64, device=grad.device)
    for start in range(0, flat.numel(), SLICE):
        end = min(start + SLICE, flat.numel())
        g = flat[start:end].float()
        if "exp_avg_sq" in state:
            v = state["exp_avg_sq"].reshape(-1)[start:end].to(torch.float32, copy=True)
        else:
            v = dequantize_fp8(state["exp_avg_sq_root"][start:end],
                               AdamWFp8._scales(state, "exp_avg_sq_root", start, end), signed=False).square_()
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2).div_(bias2).clamp_(min=eps_sq)
        total += g.square().div_(v).sum(dtype=torch.float64)
    return math.sqrt(total.item() / max(flat.numel(), 1))


class OptimizerInBackward:
    """One optimizer per parameter, stepped from the parameter's post-accumulate-grad hook, after which
    the gradient is freed: at most a few gradients are ever alive. Looks enough like an optimizer for the
    trainer (param_groups for the learning rate, state and state_dict for checkpoints).

    With `split_head` (a tied head weight and its embedding), that weight is stepped by a SplitHeadStep.

    Two clips, neither needing the other weights' gradients before a weight is stepped:
    - `grad_clip` (> 0): the global norm clip one step late. A step's gradients are scaled by
      min(1, grad_clip / the previous step's global norm), while their own norm is summed for the next
      step (`step()` closes it; the first step is unclipped). An approximation: on the demo model it kept
      about a third of the exact clip's gain (bench/results/convergence-cpu-backward-clips.json).
    - `update_clip`: each weight's step size (and its weight decay) divided by max(1, update_rms) of its own
      step, as StableAdamW does."""

    def __init__(self, model: nn.Module, make_optimizer: Callable[[list[dict]], torch.optim.Optimizer],
                 weight_decay: float, split_head: tuple[nn.Parameter, nn.Embedding] | None = None,
                 update_clip: bool = False, grad_clip: float = 0.0):
        self.update_clip, self.grad_clip = update_clip, grad_clip
        self.clip_factor = 1.0  # from the previous step's global norm
        self.grad_norm: float | None = None  # the last step's global norm, before clipping
        self._norm_sq: torch.Tensor | float = 0.0
        self.optimizers: dict[nn.Parameter, torch.optim.Optimizer] = {}
        self._handles = []
        for p in dict.fromkeys(model.parameters()):  # a tied weight once
            if not p.requires_grad:
                continue
            decay = weight_decay if p.dim() >= 2 else 0.0
            self.optimizers[p] = make_optimizer([{"params": [p], "weight_decay": decay}])
            self._handles.append(p.register_post_accumulate_grad_hook(self._step_and_free))
        self.split_head = None
        if split_head is not None:
            weight, embedding = split_head
            self.split_head = SplitHeadStep(weight, embedding, self.optimizers[weight])
            self._handles.append(self.split_head.handle)

    def _step_and_free(self, param: nn.Parameter) -> None:
        if self.grad_clip:
            self._norm_sq = self._norm_sq + torch.linalg.vector_norm(param.grad, dtype=torch.float32).square()
            if self.clip_factor < 1.0:
                param.grad.mul_(self.clip_factor)
        if self.split_head is not None and param is self.split_head.weight:
            self.split_head.step_touched_rows()
        elif self.update_clip:
            optimizer = self.optimizers[param]
            group = optimizer.param_groups[0]
            lr = group["lr"]
            group["lr"] = lr / max(1.0, update_rms(param.grad, optimizer.state[param], group))
            try:
                optimizer.step()
            finally:
                group["lr"] = lr
        else:
            self.optimizers[param].step()
        param.grad = None

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers.values() for group in opt.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for opt in self.optimizers.values() for p, s in opt.state.items()}

    def step(self) -> None:
        """Every parameter was stepped during backward; with `grad_clip`, this step's global norm (summed
        as the gradients came) sets the next step's clip."""
        if self.grad_clip:
            self.grad_norm = math.sqrt(float(self._norm_sq))
            if math.isfinite(self.grad_norm):  # else the factor stays: an overflow says nothing of the next step
                self.clip_factor = min(1.0, self.grad_clip / (self.grad_norm + 1e-6))
            self._norm_sq = 0.0

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to do: gradients are freed as they are applied."""

    def state_dict(self) -> dict:
        return {"per_parameter": [opt.state_dict() for opt in self.optimizers.values()],
                "clip_factor": self.clip_factor}

    def load_state_dict(self, state: dict) -> None:
        for opt, opt_state in zip(self.optimizers.values(), state["per_parameter"], strict=True):
            opt.load_state_dict(opt_state)
        self.clip_factor = state.get("clip_factor", 1.0)

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
