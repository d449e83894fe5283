"""bf16 weights that do not lose AdamW's small updates, and fp32 arithmetic over them where the CPU has
no bf16 hardware.

Rounding a weight to bf16 after each step drops every update smaller than half its last place (about
0.4% of the weight): late in training most updates are that small, so plain bf16 weights stop learning.
Two remedies, both with fp32 math inside the step:
- stochastic rounding: round up with the probability of the remainder, so the stored weight is the
  fp32 result in expectation (no extra memory);
- Kahan summation: keep what rounding dropped in a bf16 compensation buffer (2 bytes a weight) and add
  it to the next update, so that small updates accumulate until they move the weight.

`AdamWBF16` is AdamW with either (or plain rounding), fp32 moments, and the math done in slices so that
its fp32 temporaries are a few MiB whatever a weight's size. `store_matrices_in_bf16` keeps a GPT's
matrices in bf16 and its vectors in fp32; each Linear casts its weight to fp32 as it runs (model/linear.py),
so that a block's fp32 weights exist only while the block computes (or is saved for backward).
`sliced_low_bit_adamw` is torchao's 8- or 4-bit AdamW with the same slicing of its fp32 temporaries.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

Rounding = Literal["nearest", "stochastic", "kahan"]
SLICE = 1 << 18  # elements per slice of the step's fp32 arithmetic: 1 MiB per temporary


def stochastic_round_to_bf16(x: torch.Tensor, generator: torch.Generator | None = None,
                             noise: torch.Tensor | None = None) -> torch.Tensor:
    """bf16 values equal to the fp32 `x` in expectation: a random 16-bit integer is added to the bits
    that bf16 drops, and they are cut off (for either sign, since floats store sign and magnitude).
    `noise`: int32 random bits of x's shape to use (their low 16), instead of drawing them."""
    bits = x.float().contiguous().view(torch.int32)
    if noise is None:
        noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    else:
        noise = noise.bitwise_and(0xFFFF)
    return noise.add_(bits).bitwise_and_(-65536).view(torch.float32).to(torch.bfloat16)


def kahan_add_(weight: torch.Tensor, compensation: torch.Tensor, update: torch.Tensor) -> None:
    """weight += update (fp32) in bf16, carrying what rounding drops in `compensation` (bf16)."""
    total = update.add_(compensation.float()).add_(weight.float())  # the exact sum, in fp32
    weight.copy_(total)
    compensation.copy_(total.sub_(weight.float()))


def adamw_step_factors(state: dict, group: dict) -> tuple[float, float, float]:
    """Count a step in a parameter's `state`; AdamW's factors for it: (weight decay's, the step size with the
    first moment's bias correction, the second moment's bias correction)."""
    state["step"] += 1
    step = state["step"].item()
    beta1, beta2 = group["betas"]
    return 1 - group["lr"] * group["weight_decay"], group["lr"] / (1 - beta1**step), 1 - beta2**step


def add_decayed_update_(w: torch.Tensor, update: torch.Tensor, decay: float, stochastic: bool,
                        noise: torch.Tensor | None = None) -> None:
    """w = w * decay + update, from an fp32 `update` (overwritten): exact for an fp32 `w`; a bf16 `w` takes
    the fp32 result stochastically rounded (with `noise`, see stochastic_round_to_bf16) or to nearest."""
    if w.dtype == torch.float32:
        w.mul_(decay).add_(update)
        return
    new = update.add_(w.float(), alpha=decay)
    w.copy_(stochastic_round_to_bf16(new, noise=noise) if stochastic else new)


class KeepsStateDtypes:
    """Optimizer mixin: a loaded state keeps each tensor's own dtype, moved only to its parameter's device.
    torch.optim.Optimizer.load_state_dict casts every floating-point state tensor to its parameter's dtype,
    which would make a bf16 weight's fp32 moments bf16 on resume, and fp8 codes and fp32 scales bf16 (lossy:
    so the saved tensors are put back, not cast back)."""

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict({**state_dict, "state": {}})  # the groups' settings; no cast copies
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for param_id, p in zip(saved_ids, params, strict=True):
            if param_id in state_dict["state"]:
                self.state[p] = {key: value.to(device=p.device) if key != "step" and isinstance(value, torch.Tensor)
                                 else value for key, value in state_dict["state"][param_id].items()}


class AdamWBF16(KeepsStateDtypes, torch.optim.Optimizer):
    """AdamW for bf16 (or fp32) weights: fp32 moments (8 bytes a weight) and fp32 math, the new weight
    written back to bf16 by `rounding` ('kahan' adds a 2-byte compensation buffer per bf16 weight).
    fp32 weights take the exact fp32 step."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, rounding: Rounding = "stochastic"):
        if rounding not in ("nearest", "stochastic", "kahan"):
            raise ValueError(f"rounding must be nearest, stochastic or kahan, not {rounding!r}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.rounding = rounding

    def _init_state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
            if self.rounding == "kahan" and p.dtype == torch.bfloat16:
                state["compensation"] = torch.zeros_like(p)
        return state

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._init_state(p)
                decay, step_size, bias2 = adamw_step_factors(state, group)
                flat = [t.view(-1) for t in (p, p.grad, state["exp_avg"], state["exp_avg_sq"])]
                comp = state.get("compensation")
                comp = comp.view(-1) if comp is not None else None
                for start in range(0, p.numel(), SLICE):
                    w, g, m, v = (t[start:start + SLICE] for t in flat)
                    g = g.float()
                    m.lerp_(g, 1 - beta1)
                    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    update = (v / bias2).sqrt_().add_(group["eps"])
                    torch.div(m, update, out=update).mul_(-step_size)
                    if comp is not None and w.dtype != torch.float32:
                        kahan_add_(w, comp[start:start + SLICE], update.sub_(w.float(), alpha=1 - decay))
                    else:
                        add_decayed_update_(w, update, decay, self.rounding == "stochastic")
        return loss


@functools.cache
def sliced_low_bit_adamw(name: str) -> type[torch.optim.Optimizer]:
    """torchao's `AdamW8bit` or `AdamW4bit` (`name`), each large weight stepped a slice of rows at a time.

    torchao's step (compiled) dequantizes a weight's two moments and computes in fp32 over the whole weight:
    for the reference config's 16384 x 384 embedding that made 156 MiB of temporaries on CPU, the row's
    peak. A slice of whole quantization blocks is a view of the state's codes and scales (torchao's
    `aten.slice` on its subclasses), so stepping slice by slice is the same step, block for block, with
    temporaries of about SLICE elements."""
    import torchao.optim
    from torchao.optim.adam import single_param_adam

    base = getattr(torchao.optim, name)

    class Sliced(base):
        @torch.no_grad()
        def step(self, closure: Callable | None = None):
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            with torch._dynamo.utils.disable_cache_limit():  # one compiled step per slice shape, as torchao
                for group in self.param_groups:
                    if group["amsgrad"]:
                        raise NotImplementedError("sliced low-bit AdamW has no amsgrad")
                    if not isinstance(group["lr"], torch.Tensor):  # a float would recompile the step per value
                        raise RuntimeError("the low-bit AdamW's lr must stay a tensor: set it with "
                                           "param_groups[i]['lr'].fill_(lr)")
                    for p in group["params"]:
                        if p.grad is None:
                            continue
                        state = self.state[p]
                        if not state:
                            state["step"] = torch.tensor(0.0)
                            state["exp_avg"] = self._new_buffer(p, True)
                            state["exp_avg_sq"] = self._new_buffer(p, False)
                        state["step"] += 1
                        tensors = (p.detach(), p.grad, state["exp_avg"], state["exp_avg_sq"])
                        rows = _rows_per_slice(p, state["exp_avg"], self.block_size)
                        parts = [tensors] if rows is None else [
                            [_rows(t, start, start + rows) for t in tensors] for start in range(0, p.size(0), rows)]
                        for weight, grad, exp_avg, exp_avg_sq in parts:
                            torch.compile(single_param_adam, fullgraph=True, dynamic=False)(
                                weight, grad, state["step"], exp_avg, exp_avg_sq, None, group["lr"],
                                group["betas"][0], group["betas"][1], group["weight_decay"], group["eps"],
                                self.is_adamw, self.bf16_stochastic_round and p.dtype is torch.bfloat16)
            return loss

    Sliced.__name__ = Sliced.__qualname__ = f"Sliced{name}"
    return Sliced


def _rows(t: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Rows of a weight, gradient or state as a view. torchao's slice of its quantized states drops their
    (appearance) dtype, the last of their flattened attributes: put back, or a bf16 weight's step fails."""
    part = t[start:end]
    if part.dtype == t.dtype:
        return part
    names, attributes = part.__tensor_flatten__()
    return type(part).__tensor_unflatten__({name: getattr(part, name) for name in names}, [*attributes[:-1], t.dtype])


def _rows_per_slice(p: torch.Tensor, state: torch.Tensor, block_size: int) -> int | None:
    """Rows of `p` per slice: None (the whole weight at once) for a small weight or a plain (unquantized)
    state, else the most rows within SLICE elements that hold whole quantization blocks (the last slice,
    shorter, ends where the weight does: a whole block too). At most two compiled shapes a weight."""
    if p.numel() <= SLICE or p.dim() < 2 or type(state) is torch.Tensor:
        return None
    row = p[0].numel()
    rows = max(SLICE // row, 1)
    while rows > 1 and (rows * row) % block_size:
        rows -= 1
    return rows if (rows * row) % block_size == 0 and rows < p.size(0) else None


def store_matrices_in_bf16(model: nn.Module) -> None:
    """bf16 storage for every matrix (embeddings, attention, MLP, the tied head), fp32 for vectors
    (norms, biases: few bytes, and sensitive); the model then computes in fp32."""
    for p in model.parameters():
        if p.dim() >= 2:
            p.data = p.data.to(torch.bfloat16)
    model.compute_dtype = torch.float32
