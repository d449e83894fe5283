"""Optimizers with less state than AdamW's 8 bytes a weight: Adam-mini, and Muon for the hidden matrices.

- `AdamMini`: AdamW's first moment, but one second moment per row of a matrix (an output neuron of a
  Linear layer, a token of the embedding; its authors' partition for all but Q and K, which they give one
  per head, a coarser block than a row) and one per vector: 4 bytes a weight plus a few per row.
- `MuonWithAdamW`: `torch.optim.Muon` (momentum orthogonalized by Newton-Schulz; one 4-byte buffer) for
  the transformer blocks' 2-D matrices, AdamW for embeddings, the tied head and vectors, as Muon's
  authors prescribe. Muon's learning rate is scaled to match AdamW's update size (`match_rms_adamw`),
  so the run's one learning rate serves both.
Both step each parameter on its own, so they can be stepped in backward (model/optim.py).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from model.lowbit import adamw_step_factors


class AdamMini(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                blocks = p.shape[0] if p.dim() >= 2 else 1
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["block_sq"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
                decay, step_size, bias2 = adamw_step_factors(state, group)
                grad = p.grad.float()
                state["exp_avg"].lerp_(grad, 1 - beta1)
                mean_sq = grad.view(blocks, -1).pow(2).mean(dim=1)
                state["block_sq"].mul_(beta2).add_(mean_sq, alpha=1 - beta2)
                denom = (state["block_sq"] / bias2).sqrt_().add_(group["eps"])
                update = state["exp_avg"].view(blocks, -1) / denom.unsqueeze(1)
                p.mul_(decay)
                p.add_(update.view_as(p).to(p.dtype), alpha=-step_size)
        return loss


def is_hidden_matrix(name: str, p: nn.Parameter) -> bool:
    """A transformer block's 2-D weight: what Muon steps (embeddings, the head and vectors go to AdamW)."""
    return p.dim() == 2 and name.startswith("blocks.")


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer object over two: Muon for the hidden matrices, AdamW for the rest. Its param_groups
    are theirs (so the trainer's learning-rate schedule reaches both), its state theirs."""

    def __init__(self, model: nn.Module, groups: list[dict], lr: float, betas: tuple[float, float]):
        hidden_ids = {id(p) for name, p in model.named_parameters() if is_hidden_matrix(name, p)}
        muon_groups, adamw_groups = [], []
        for group in groups:
            for target, keep in ((muon_groups, True), (adamw_groups, False)):
                params = [p for p in group["params"] if (id(p) in hidden_ids) == keep]
                if params:
                    target.append({**group, "params": params})
        self.parts: list[torch.optim.Optimizer] = []
        if muon_groups:
            self.parts.append(torch.optim.Muon(muon_groups, lr=lr, momentum=betas[0],
                                               adjust_lr_fn="match_rms_adamw"))
        if adamw_groups:
            self.parts.append(torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, fused=True))
        # Not Optimizer.__init__: the groups and state live in the parts.
        self.defaults = {"lr": lr}
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}

    @property
    def param_groups(self) -> list[dict]:
        return [g for part in self.parts for g in part.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for part in self.parts for p, s in part.state.items()}

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = closure() if closure is not None else None
        for part in self.parts:
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        for part, part_state in zip(self.parts, state["parts"], strict=True):
            part.load_state_dict(part_state)
