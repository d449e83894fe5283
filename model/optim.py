"""Optimizers for memory: AdamW with fp32 math over bf16 weights, and stepping inside backward."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class AdamWFP32Math(torch.optim.Optimizer):
    """AdamW whose moments and update are fp32 whatever the weights' dtype (for bf16-true training):
    2 bytes a weight, 8 bytes of optimizer state, and no precision lost in the moments."""

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
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                step = state["step"].item()
                grad = p.grad.float()
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
                weight = p.float()
                weight.mul_(1 - group["lr"] * group["weight_decay"])
                weight.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**step))
                p.copy_(weight)
        return loss


class OptimizerInBackward:
    """One optimizer per parameter, stepped from the parameter's post-accumulate-grad hook, after which
    the gradient is freed: at most a few gradients are ever alive. Looks enough like an optimizer for the
    trainer (param_groups for the learning rate, state and state_dict for checkpoints)."""

    def __init__(self, model: nn.Module, make_optimizer: Callable[[list[dict]], torch.optim.Optimizer],
                 weight_decay: float):
        self.optimizers: dict[nn.Parameter, torch.optim.Optimizer] = {}
        self._handles = []
        for p in dict.fromkeys(model.parameters()):  # a tied weight once
            if not p.requires_grad:
                continue
            decay = weight_decay if p.dim() >= 2 else 0.0
            self.optimizers[p] = make_optimizer([{"params": [p], "weight_decay": decay}])
            self._handles.append(p.register_post_accumulate_grad_hook(self._step_and_free))

    def _step_and_free(self, param: nn.Parameter) -> None:
        self.optimizers[param].step()
        param.grad = None

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers.values() for group in opt.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for opt in self.optimizers.values() for p, s in opt.state.items()}

    def step(self) -> None:
        """Nothing to do: every parameter was stepped during backward."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to do: gradients are freed as they are applied."""

    def state_dict(self) -> dict:
        return {"per_parameter": [opt.state_dict() for opt in self.optimizers.values()]}

    def load_state_dict(self, state: dict) -> None:
        for opt, opt_state in zip(self.optimizers.values(), state["per_parameter"], strict=True):
            opt.load_state_dict(opt_state)

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
