"""Cross-entropy over a linear head that never holds the full (tokens × vocabulary) logits.

The forward pass computes the loss chunk by chunk, keeping only each token's log-sum-exp; the backward
pass recomputes each chunk's logits from the hidden states, turns them into that chunk's gradient and
adds it up, as fused linear cross-entropy does. Peak extra memory is one chunk of logits, not all."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int):
        dtype = _compute_dtype(hidden)
        n = hidden.size(0)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            for start in range(0, n, chunk_size):
                end = min(start + chunk_size, n)
                logits = (hidden[start:end].to(dtype) @ w.T).float()
                chunk_lse = torch.logsumexp(logits, dim=-1)
                lse[start:end] = chunk_lse
                total += (chunk_lse - logits.gather(1, targets[start:end, None]).squeeze(1)).sum()
                del logits
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_size, ctx.dtype = chunk_size, dtype
        return total / n

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        n, chunk_size, dtype = hidden.size(0), ctx.chunk_size, ctx.dtype
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        scale = grad_output.float() / n
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            for start in range(0, n, chunk_size):
                end = min(start + chunk_size, n)
                h = hidden[start:end].to(dtype)
                # d(loss)/d(logits) = softmax - one_hot(target), recomputed from the saved log-sum-exp.
                grad_logits = (h @ w.T).float().sub_(lse[start:end, None]).exp_()
                grad_logits[torch.arange(end - start, device=h.device), targets[start:end]] -= 1
                grad_logits = grad_logits.mul_(scale).to(dtype)
                if grad_hidden is not None:
                    grad_hidden[start:end] = (grad_logits @ w).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight.addmm_(grad_logits.T.float(), h.float())
                del grad_logits
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_size: int = 0) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`; chunked when chunk_size > 0."""
    hidden = hidden.reshape(-1, hidden.size(-1))
    targets = targets.reshape(-1)
    if chunk_size <= 0:
        return F.cross_entropy((hidden @ weight.T).float(), targets)
    return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_size)
