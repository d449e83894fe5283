"""Cross-entropy over a linear head that never holds the full (tokens × vocabulary) logits.

The forward pass computes the loss chunk by chunk, keeping only each token's log-sum-exp; the backward
pass recomputes each chunk's logits from the hidden states, turns them into that chunk's gradient and
adds it up, as fused linear cross-entropy does. Peak extra memory is one chunk of logits, not all.

With a head tied to the input embedding, `LateHeadGrad` can postpone the head's weight gradient to the
end of backward, where the embedding's gradient is created anyway: a vocabulary × width gradient then
does not live through the whole backward pass (at the price of computing the logits once more)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


def _chunk_grads(hidden, weight, targets, lse, scale, chunk_size, dtype):
    """Yield (start, end, h, d loss/d logits) chunk by chunk, logits recomputed from the hidden states."""
    w = weight.to(dtype)
    for start in range(0, hidden.size(0), chunk_size):
        end = min(start + chunk_size, hidden.size(0))
        h = hidden[start:end].to(dtype)
        # softmax - one_hot(target), from the log-sum-exp saved in forward.
        grad_logits = (h @ w.T).float().sub_(lse[start:end, None]).exp_()
        grad_logits[torch.arange(end - start, device=h.device), targets[start:end]] -= 1
        yield start, end, h, w, grad_logits.mul_(scale).to(dtype)


class LateHeadGrad:
    """Pending head-gradient work, added to the tied weight's gradient once autograd has accumulated the
    embedding's part (a post-accumulate-grad hook, registered before any optimizer's)."""

    def __init__(self, weight: torch.nn.Parameter):
        self.pending: list[tuple] = []
        self.handle = weight.register_post_accumulate_grad_hook(self._apply)

    def _apply(self, weight: torch.Tensor) -> None:
        with torch.autocast(weight.device.type, enabled=False), torch.no_grad():
            for hidden, targets, lse, scale, chunk_size, dtype in self.pending:
                for _, _, h, _, grad_logits in _chunk_grads(hidden, weight, targets, lse, scale, chunk_size, dtype):
                    weight.grad.addmm_(grad_logits.T.to(weight.grad.dtype), h.to(weight.grad.dtype))
        self.pending.clear()


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int,
                late: LateHeadGrad | None):
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
        ctx.chunk_size, ctx.dtype, ctx.late = chunk_size, dtype, late
        return total / n

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        scale = grad_output.float() / hidden.size(0)
        weight_grad_here = ctx.needs_input_grad[1] and ctx.late is None
        if ctx.needs_input_grad[1] and ctx.late is not None:
            ctx.late.pending.append((hidden, targets, lse, scale, ctx.chunk_size, ctx.dtype))
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if weight_grad_here else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start, end, h, w, grad_logits in _chunk_grads(hidden, weight, targets, lse, scale,
                                                             ctx.chunk_size, ctx.dtype):
                if grad_hidden is not None:
                    grad_hidden[start:end] = (grad_logits @ w).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight.addmm_(grad_logits.T.float(), h.float())
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_size: int = 0, late: LateHeadGrad | None = None) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`; chunked when chunk_size > 0."""
    hidden = hidden.reshape(-1, hidden.size(-1))
    targets = targets.reshape(-1)
    if chunk_size <= 0:
        return F.cross_entropy((hidden @ weight.T).float(), targets)
    return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_size, late)
