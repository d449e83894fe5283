"""Cross-entropy over a linear head that never holds the full (tokens × vocabulary) logits.

The forward pass goes chunk by chunk: one chunk's logits, its log-sum-exp and, when a gradient will be
wanted, at once that chunk's gradient with respect to the hidden states and the head's weight (as
Liger-Kernel's fused linear cross-entropy does). Backward then only scales what forward computed: the
logits are made once, not again in backward. Peak extra memory is one chunk of logits, not all.

With a vocabulary chunk as well (Cut Cross-Entropy's scheme), a chunk's logits are never whole either: a
first pass over (tokens × vocabulary) tiles keeps an online log-sum-exp per token (a running maximum
and sum), a second makes each tile's logits again and turns them into that tile's gradients. The
logits cost one more matrix multiply; the loss's temporaries are one tile.

With a head tied to the input embedding, the head's weight gradient need not live through the whole
backward pass (a vocabulary × width tensor): `LateHeadGrad` postpones it to the end of backward, into
the buffer of the embedding's gradient (at the price of computing the logits once more), and
`model.optim.SplitHeadStep` steps the optimizer with it at once, except in the input tokens' rows."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from model.optim import SplitHeadStep


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


def _chunk_softmax_grad(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor):
    """For one chunk: (per-token loss, d loss/d logits = softmax - one_hot(target)), in fp32.

    In place on the one fp32 logits buffer, so that a chunk costs a single (chunk × vocabulary) tensor."""
    logits = (h @ w.T).float()
    rows = torch.arange(h.size(0), device=h.device)
    target_logits = logits[rows, targets]
    top = logits.amax(dim=1, keepdim=True)
    probs = logits.sub_(top).exp_()
    total = probs.sum(dim=1, keepdim=True)
    token_loss = (top + total.log()).squeeze(1) - target_logits  # log-sum-exp - target logit
    probs.div_(total)
    probs[rows, targets] -= 1
    return token_loss, probs


def _tiled_logsumexp(h: torch.Tensor, w: torch.Tensor, vocab_chunk: int) -> torch.Tensor:
    """Per-row log-sum-exp of `h @ w.T` (fp32), one vocabulary tile of logits at a time."""
    top = torch.full((h.size(0), 1), float("-inf"), dtype=torch.float32, device=h.device)
    total = torch.zeros((h.size(0), 1), dtype=torch.float32, device=h.device)
    for v in range(0, w.size(0), vocab_chunk):
        logits = (h @ w[v:v + vocab_chunk].to(h.dtype).T).float()
        new_top = torch.maximum(top, logits.amax(dim=1, keepdim=True))
        total.mul_((top - new_top).exp_()).add_(logits.sub_(new_top).exp_().sum(dim=1, keepdim=True))
        top = new_top
        del logits  # before the next tile's logits exist
    return (top + total.log_()).squeeze(1)


def _tiled_softmax_grads(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor,
                         vocab_chunk: int):
    """(first vocabulary row, d loss/d logits) for each vocabulary tile, given the rows' log-sum-exp."""
    for v in range(0, w.size(0), vocab_chunk):
        probs = (h @ w[v:v + vocab_chunk].to(h.dtype).T).float().sub_(lse.unsqueeze(1)).exp_()
        # Subtract 1 at the rows whose target is in this tile with a fixed-shape scatter: a boolean-mask index
        # would need nonzero(), which syncs a GPU with its host and cannot be traced by the fake-tensor planner.
        local = targets - v
        here = (local >= 0) & (local < probs.size(1))
        probs.scatter_add_(1, local.clamp(0, probs.size(1) - 1).unsqueeze(1), here.to(probs.dtype).neg_().unsqueeze(1))
        yield v, probs
        del probs  # before the next tile's logits exist (the caller drops its reference too)


def _target_logits(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # In fp32, as the log-sum-exp's logits are kept: under autocast a half-precision product rounds the
    # target logit differently from the rest and biases the loss.
    return (h.float() * w[targets].float()).sum(dim=1)


class LateHeadGrad:
    """Pending head-gradient work, done in the backward of the token embedding's lookup (the tied weight's
    other use, and the last node of backward): the lookup's own gradient and the head's are made in one
    buffer and handed to autograd as the tied weight's whole gradient, so that the weight's gradient comes
    from one node whatever then reduces it (DDP's all-reduce, FSDP's reduce-scatter) or steps it."""

    def __init__(self):
        self.pending: list[tuple] = []

    def embed(self, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The token embedding `weight[idx]`, whose backward adds the pending head gradient."""
        return _EmbeddingWithHeadGrad.apply(idx, weight, self)

    def add_into(self, grad: torch.Tensor, weight: torch.Tensor) -> None:
        with torch.autocast(weight.device.type, enabled=False), torch.no_grad():
            for hidden, targets, lse, scale, chunk_size, vocab_chunk, dtype in self.pending:
                w = weight if vocab_chunk else weight.to(dtype)  # vocabulary tiles are cast one at a time
                for start in range(0, hidden.size(0), chunk_size):
                    h = hidden[start:start + chunk_size].to(dtype)
                    if vocab_chunk:
                        for v, grad_logits in _tiled_softmax_grads(h, w, targets[start:start + chunk_size],
                                                                   lse[start:start + chunk_size], vocab_chunk):
                            grad[v:v + grad_logits.size(1)].addmm_(
                                grad_logits.mul_(scale).T.to(grad.dtype), h.to(grad.dtype))
                            del grad_logits
                        continue
                    _, grad_logits = _chunk_softmax_grad(h, w, targets[start:start + chunk_size])
                    grad.addmm_(grad_logits.mul_(scale).T.to(grad.dtype), h.to(grad.dtype))
        self.pending.clear()


class _EmbeddingWithHeadGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx: torch.Tensor, weight: torch.Tensor, head: LateHeadGrad):
        ctx.save_for_backward(idx, weight)
        ctx.head = head
        return F.embedding(idx, weight)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        idx, weight = ctx.saved_tensors
        # The kernel autograd runs for nn.Embedding, so the lookup's part is the same bit for bit.
        grad = torch.ops.aten.embedding_dense_backward(grad_output, idx, weight.size(0), -1, False)
        ctx.head.add_into(grad, weight)
        return None, grad, None


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int,
                vocab_chunk: int, head: LateHeadGrad | SplitHeadStep | None, want_grads: bool):
        dtype = _compute_dtype(hidden)
        n = hidden.size(0)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # Gradients of the summed (not yet averaged) loss: the mean and any upstream scale (the fp16
        # gradient scaler's, accumulation's 1/k) are applied in backward, in fp32.
        grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if want_grads else None
        late = isinstance(head, LateHeadGrad)
        head_grad_here = want_grads and not late
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if head_grad_here else None
        # With vocabulary tiles and the head's gradient late, the late pass needs each token's log-sum-exp.
        lse_all = torch.empty(n, dtype=torch.float32, device=hidden.device) if vocab_chunk and late else None
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight if vocab_chunk else weight.to(dtype)  # vocabulary tiles are cast one at a time
            for start in range(0, n, chunk_size):
                if vocab_chunk:
                    h, chunk_targets = hidden[start:start + chunk_size].to(dtype), targets[start:start + chunk_size]
                    lse = _tiled_logsumexp(h, w, vocab_chunk)
                    total += (lse - _target_logits(h, w, chunk_targets)).sum()
                    if lse_all is not None:
                        lse_all[start:start + chunk_size] = lse
                    if not want_grads:
                        continue
                    grad_h = grad_hidden[start:start + chunk_size]
                    grad_h.zero_()
                    for v, grad_logits in _tiled_softmax_grads(h, w, chunk_targets, lse, vocab_chunk):
                        grad_logits = grad_logits.to(dtype)
                        grad_h.addmm_(grad_logits.float(), w[v:v + vocab_chunk].float())
                        if head_grad_here:
                            grad_weight[v:v + vocab_chunk].addmm_(grad_logits.T.float(), h.float())
                        del grad_logits
                    continue
                h = hidden[start:start + chunk_size].to(dtype)
                token_loss, grad_logits = _chunk_softmax_grad(h, w, targets[start:start + chunk_size])
                total += token_loss.sum()
                if want_grads:
                    grad_logits = grad_logits.to(dtype)
                    grad_hidden[start:start + chunk_size] = grad_logits @ w
                if head_grad_here:
                    grad_weight.addmm_(grad_logits.T.float(), h.float())
                del grad_logits
        if want_grads:
            ctx.save_for_backward(grad_hidden, grad_weight, hidden if late else None, targets, lse_all)
        ctx.chunk_size, ctx.vocab_chunk, ctx.dtype, ctx.head = chunk_size, vocab_chunk, dtype, head
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight, hidden, targets, lse = ctx.saved_tensors
        scale = grad_output.float() / grad_hidden.size(0)
        if isinstance(ctx.head, LateHeadGrad) and ctx.needs_input_grad[1]:
            ctx.head.pending.append((hidden, targets, lse, scale, ctx.chunk_size, ctx.vocab_chunk, ctx.dtype))
        grad_hidden = grad_hidden.mul_(scale).to(ctx.hidden_dtype) if ctx.needs_input_grad[0] else None
        if grad_weight is not None and ctx.needs_input_grad[1]:
            grad_weight = grad_weight.mul_(scale).to(ctx.weight_dtype)
            if ctx.head is not None:  # a SplitHeadStep: it takes the gradient now, autograd gets none
                ctx.head.step_untouched_rows(grad_weight)
                grad_weight = None
        else:
            grad_weight = None
        return grad_hidden, grad_weight, None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_size: int = 0, head: LateHeadGrad | SplitHeadStep | None = None,
                         vocab_chunk: int = 0) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`; chunked by tokens when chunk_size > 0
    (and by vocabulary rows too when vocab_chunk > 0), with the weight's gradient routed through `head`
    when one is given."""
    hidden = hidden.reshape(-1, hidden.size(-1))
    targets = targets.reshape(-1)
    if chunk_size <= 0:
        return F.cross_entropy((hidden @ weight.T).float(), targets)
    # Inside an autograd.Function's forward grad mode is always off, so whether backward will come is
    # decided here: evaluation under no_grad skips the gradient work.
    want_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_size, max(vocab_chunk, 0), head,
                                           want_grads)
