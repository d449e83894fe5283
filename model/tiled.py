"""Tiled MLP: a position-wise MLP run over slices of the sequence, keeping only its input.

Forward computes the output slice by slice without saving anything inside; backward recomputes one slice
at a time up to the output layer's input and takes its gradients, so the 4x-wide hidden layer exists for
one slice, never for the whole sequence. The output layer's forward is not recomputed: its gradients need
only its input and weight. Inside a checkpointed block, the block's own recomputation only has to bring
back this function's input: with `skip_output` it returns without computing the output nobody will read,
so that the MLP's hidden layer is computed twice per step (forward, backward), not three times."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class TiledMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_fn: Callable[[torch.Tensor], torch.Tensor], hidden_params: tuple[nn.Parameter, ...],
                out: nn.Linear, chunks: int, skip_output: bool, x: torch.Tensor, *params: torch.Tensor):
        ctx.hidden_fn, ctx.hidden_params, ctx.out, ctx.chunks = hidden_fn, hidden_params, out, chunks
        device = x.device.type
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(x)
        if skip_output:
            return x.new_zeros(()).expand(*x.shape[:-1], out.out_features)
        return torch.cat([out(hidden_fn(part)) for part in x.chunk(chunks, dim=1)], dim=1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        enabled, autocast_dtype = ctx.autocast
        out = ctx.out
        grad_x = torch.empty_like(x)
        grad_hidden_params: list[torch.Tensor | None] = [None] * len(ctx.hidden_params)
        # Summed over slices in fp32 whatever the weights' dtype (bf16-true), converted once at the end.
        grad_weight = torch.zeros_like(out.weight, dtype=torch.float32)
        grad_bias = torch.zeros_like(out.bias, dtype=torch.float32) if out.bias is not None else None
        start = 0
        for size in [part.size(1) for part in x.chunk(ctx.chunks, dim=1)]:
            end = start + size
            part = x[:, start:end].detach().requires_grad_()
            with torch.enable_grad(), torch.autocast(x.device.type, dtype=autocast_dtype, enabled=enabled):
                hidden = ctx.hidden_fn(part)
            dtype = autocast_dtype if enabled else hidden.dtype
            g = grad_out[:, start:end].reshape(-1, grad_out.size(-1)).to(dtype)
            grad_hidden = (g @ out.weight.to(dtype)).view_as(hidden)
            grad_weight.add_((g.T @ hidden.detach().reshape(-1, hidden.size(-1)).to(dtype)).to(grad_weight.dtype))
            if grad_bias is not None:
                grad_bias.add_(g.sum(0).to(grad_bias.dtype))
            grads = torch.autograd.grad(hidden, (part, *ctx.hidden_params), grad_hidden)
            del hidden, grad_hidden
            grad_x[:, start:end] = grads[0]
            for i, grad in enumerate(grads[1:]):
                grad_hidden_params[i] = grad if grad_hidden_params[i] is None else grad_hidden_params[i].add_(grad)
            start = end
        out_grads = [grad_weight.to(out.weight.dtype)] + ([grad_bias.to(out.bias.dtype)] if grad_bias is not None else [])
        return None, None, None, None, None, grad_x, *grad_hidden_params, *out_grads


def tiled_mlp(hidden_fn: Callable[[torch.Tensor], torch.Tensor], hidden_params: list[nn.Parameter], out: nn.Linear,
              x: torch.Tensor, chunks: int, skip_output: bool = False) -> torch.Tensor:
    """`out(hidden_fn(x))` over `chunks` slices of the sequence (dim 1); gradients flow to x,
    `hidden_params` and `out`'s weight and bias."""
    params = [*hidden_params, *out.parameters()]
    return TiledMLP.apply(hidden_fn, tuple(hidden_params), out, chunks, skip_output, x, *params)
