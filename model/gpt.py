"""A decoder-only GPT in the spirit of nanoGPT's model.py: pre-norm blocks, SDPA attention, tied embeddings.

The forward pass stops at the final hidden states; the loss takes those and the output head, so that
memory techniques (such as a chunked cross-entropy) can avoid holding the full logits.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from model.linear import Linear
from model.losses import LateHeadGrad, linear_cross_entropy
from model.optim import SplitHeadStep
from model.tiled import tiled_mlp


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    bias: bool = False
    arch: str = "gpt"

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Keys and values of the tokens seen so far, for incremental decoding: one buffer per layer,
    allocated for the whole context at first use and filled in place (no copy of the past per token)."""

    def __init__(self, n_layer: int):
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layer
        self.length = 0  # positions filled, the same in every layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, block_size: int):
        """Store the new keys and values (B, H, T, D) of `layer`; returns all of them so far."""
        if self.layers[layer] is None:
            shape = (k.size(0), k.size(1), block_size, k.size(3))
            self.layers[layer] = (k.new_empty(shape), v.new_empty(shape))
        keys, values = self.layers[layer]
        T = k.size(2)
        keys.narrow(2, self.length, T).copy_(k)
        values.narrow(2, self.length, T).copy_(v)
        end = self.length + T
        if layer == len(self.layers) - 1:
            self.length = end
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.block_size = config.block_size
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        # (B, T, 3C) -> three (B, n_head, T, head size) views, in few operators (decoding runs them per token)
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None:
            k, v = cache.update(layer, k, v, self.block_size)
        # With a cache, new queries attend to every cached position; causal masking applies only when
        # the whole sequence is processed at once (or as the prompt's first chunk).
        causal = cache is None or k.size(2) == T
        if not causal and T > 1:
            raise ValueError("a KV cache takes one token at a time after the prompt")
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)
        # Activation checkpointing (a memory technique, see model/techniques.py): which part of this block
        # keeps only its input in forward and recomputes the rest in backward.
        self.checkpoint: str = "none"  # "none", "block", "attention" or "mlp"
        # Tiled MLP (also a memory technique): the MLP runs over this many slices of the sequence, each
        # recomputed in backward, so its 4x-wide hidden layer exists for one slice at a time.
        self.mlp_chunks: int = 1
        self._recomputing = False  # inside this block's checkpoint recomputation

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        recompute = self.training and cache is None and torch.is_grad_enabled()
        if recompute and self.checkpoint == "block":
            return checkpoint(self._forward, x, None, 0, True, use_reentrant=False,
                              context_fn=lambda: (contextlib.nullcontext(), self._recomputation()))
        return self._forward(x, cache, layer, recompute)

    @contextlib.contextmanager
    def _recomputation(self):
        self._recomputing = True
        try:
            yield
        finally:
            self._recomputing = False

    def _forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                 recompute: bool = False) -> torch.Tensor:
        if recompute and self.checkpoint == "attention":
            x = x + checkpoint(self._attention, x, use_reentrant=False)
        else:
            x = x + self._attention(x, cache, layer)
        if recompute and self.mlp_chunks > 1 and x.size(1) >= self.mlp_chunks:
            # The block's recomputation needs only the tiled MLP's input back, not its output.
            params = [*self.ln_2.parameters(), *self.mlp.c_fc.parameters()]
            return x + self.mlp.dropout(tiled_mlp(self._mlp_first_layer, params, self.mlp.c_proj, x, self.mlp_chunks,
                                                  skip_output=self._recomputing))
        if recompute and self.checkpoint == "mlp":
            return x + checkpoint(self._mlp, x, use_reentrant=False)
        return x + self._mlp(x)

    def _attention(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        return self.attn(self.ln_1(x), cache, layer)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_2(x))

    def _mlp_first_layer(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp.c_fc(self.ln_2(x))


class TiedHeadLM(nn.Module):
    """What every memlm language model shares: a token embedding tied to the output head, and the loss
    (plain, or chunked so that the full logits never exist)."""

    context_limit: int | None = None  # tokens a model can attend to while decoding (None: no limit)

    def __init__(self, vocab_size: int, n_embd: int):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.lm_head = Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.loss_chunk_size = 0  # memory techniques: see model/techniques.py
        self.loss_vocab_chunk_size = 0
        # The dtype the model computes in when it differs from its weights' (bf16 weights computed in fp32).
        self.compute_dtype: torch.dtype | None = None
        # Where the tied weight's head gradient goes (memory techniques): autograd (None), or one of these.
        self.head_grad: LateHeadGrad | SplitHeadStep | None = None

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters, a tied weight once; without position embeddings when `non_embedding`."""
        n = sum(p.numel() for p in self.parameters())
        wpe = getattr(self, "wpe", None)
        return n - wpe.weight.numel() if non_embedding and wpe is not None else n

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """The tokens' embeddings; with the head's gradient late, its lookup adds that gradient in backward."""
        if isinstance(self.head_grad, LateHeadGrad) and torch.is_grad_enabled():
            return self.head_grad.embed(idx, self.wte.weight)
        return self.wte(idx)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy; chunked (never the full logits) when `loss_chunk_size` > 0."""
        if self.loss_chunk_size <= 0:
            logits = self.lm_head(hidden)
            return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
        return linear_cross_entropy(hidden, self.lm_head.weight, targets, self.loss_chunk_size, self.head_grad,
                                    self.loss_vocab_chunk_size)


class GPT(TiedHeadLM):
    def __init__(self, config: GPTConfig):
        super().__init__(config.vocab_size, config.n_embd)
        self.config = config
        self.context_limit = config.block_size
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections keeps the residual stream's variance in check.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layer)

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward and backward), as in the PaLM paper's appendix B."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * c.block_size

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final hidden states (B, T, n_embd); `self.lm_head` maps them to logits."""
        T = idx.size(1)
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        x = self.embed(idx) + self.wpe.weight[start:start + T]
        x = self.drop(x if self.compute_dtype is None else x.to(self.compute_dtype))
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        return self.ln_f(x)
