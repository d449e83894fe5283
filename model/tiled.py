"""Tiled MLP: the GPT's position-wise MLP (norm and first layer, GELU, output layer) run over slices of
the sequence, keeping only its input.

Forward computes the output slice by slice without saving anything inside. Backward recomputes one
slice at a time up to the first layer's output and takes the rest of the gradient by hand: the output
layer's gradients need only its input (the GELU, recomputed and freed at once) and its weight, and the
GELU's gradient needs only its input. So the 4x-wide hidden layer exists for one slice, never for the
whole sequence, and at most three slice-sized hidden tensors are alive at a time. Inside a checkpointed
block, the block's own recomputation only has to bring back this function's input: with `skip_output`
it returns without computing the output nobody will read, so that the hidden layer is computed twice
per step (forward, backward), not three times."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class TiledMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre_fn: Callable[[torch.Tensor], torch.Tensor], pre_params: tuple[nn.Parameter, ...],
                out: nn.Linear, chunks: int, skip_output: bool, x: torch.Tensor, *params: torch.Tensor):
        ctx.pre_fn, ctx.pre_params, ctx.out, ctx.chunks = pre_fn, pre_params, out, chunks
        device = x.device.type
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(x)
        if skip_output:
            return x.new_zeros(()).expand(*x.shape[:-1], out.out_features)
        return torch.cat([out(F.gelu(pre_fn(part), approximate="tanh")) for part in x.chunk(chunks, dim=1)], dim=1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        enabled, autocast_dtype = ctx.autocast
        out = ctx.out
        grad_x = torch.empty_like(x)
        grad_pre_params: list[torch.Tensor | None] = [None] * len(ctx.pre_params)
        # Summed over slices in fp32 whatever the weights' dtype (bf16-true), converted once at the end.
        grad_weight = torch.zeros_like(out.weight, dtype=torch.float32)
        grad_bias = torch.zeros_like(out.bias, dtype=torch.float32) if out.bias is not None else None
        start = 0
        for size in [part.size(1) for part in x.chunk(ctx.chunks, dim=1)]:
            end = start + size
            part = x[:, start:end].detach().requires_grad_()
            with torch.enable_grad(), torch.autocast(x.device.type, dtype=autocast_dtype, enabled=enabled):
                pre = ctx.pre_fn(part)
            dtype = autocast_dtype if enabled else pre.dtype
            g = grad_out[:, start:end].reshape(-1, grad_out.size(-1)).to(dtype)
            with torch.no_grad():
                hidden = F.gelu(pre, approximate="tanh")
                grad_weight.add_((g.T @ hidden.reshape(-1, hidden.size(-1)).to(dtype)).float())
                del hidden
                grad_hidden = (g @ out.weight.to(dtype)).view_as(pre)
                grad_pre = torch.ops.aten.gelu_backward(grad_hidden, pre, approximate="tanh")
                del grad_hidden
            if grad_bias is not None:
                grad_bias.add_(g.sum(0).float())
            grads = torch.autograd.grad(pre, (part, *ctx.pre_params), grad_pre)
            del pre, grad_pre
            grad_x[:, start:end] = grads[0]
            for i, grad in enumerate(grads[1:]):
                grad_pre_params[i] = grad if grad_pre_params[i] is None else grad_pre_params[i].add_(grad)
            start = end
        out_grads = [grad_weight.to(out.weight.dtype)]
        if grad_bias is not None:
            out_grads.append(grad_bias.to(out.bias.dtype))
        return None, None, None, None, None, grad_x, *grad_pre_params, *out_grads


def tiled_mlp(pre_fn: Callable[[torch.Tensor], torch.Tensor], pre_params: list[nn.Parameter], out: nn.Linear,
              x: torch.Tensor, chunks: int, skip_output: bool = False) -> torch.Tensor:
    """`out(gelu_tanh(pre_fn(x)))` over `chunks` slices of the sequence (dim 1); gradients flow to x,
    `pre_params` and `out`'s weight and bias."""
    params = [*pre_params, *out.parameters()]
    return TiledMLP.apply(pre_fn, tuple(pre_params), out, chunks, skip_output, x, *params)
