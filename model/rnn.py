"""The article's language model: recurrent layers with ReLU (or GRU, LSTM) cells, ReLU feed-forward
layers between them, and causal attention over the hidden states so far — the weight of step j at time t
is softmax over j ≤ t of vᵀh_j — whose context vector is combined with h_t to predict the next token."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.gpt import TiedHeadLM
from model.linear import Linear

CELLS = {"relu": lambda c: nn.RNN(c, c, nonlinearity="relu", batch_first=True),
         "gru": lambda c: nn.GRU(c, c, batch_first=True),
         "lstm": lambda c: nn.LSTM(c, c, batch_first=True)}


@dataclass
class RNNConfig:
    vocab_size: int
    block_size: int = 128  # training sequence length; decoding has no context limit
    n_layer: int = 2
    n_embd: int = 256
    cell: str = "relu"
    dropout: float = 0.0
    arch: str = "rnn-attention"

    def to_dict(self) -> dict:
        return asdict(self)


class RNNState:
    """What incremental decoding carries: each layer's recurrent state, and the attention's running
    maximum score, normaliser and weighted sum of hidden states (so no step is ever recomputed)."""

    def __init__(self, n_layer: int):
        self.hidden: list = [None] * n_layer
        self.max = self.denom = self.numer = None
        self.length = 0


class RNNAttentionLM(TiedHeadLM):
    context_limit = None

    def __init__(self, config: RNNConfig):
        super().__init__(config.vocab_size, config.n_embd)
        if config.cell not in CELLS:
            raise ValueError(f"model.cell must be one of {', '.join(CELLS)}, got {config.cell!r}")
        self.config = config
        self.rnns = nn.ModuleList(CELLS[config.cell](config.n_embd) for _ in range(config.n_layer))
        self.ffs = nn.ModuleList(nn.Sequential(Linear(config.n_embd, config.n_embd), nn.ReLU(),
                                               nn.Dropout(config.dropout)) for _ in range(config.n_layer - 1))
        self.score = Linear(config.n_embd, 1, bias=False)  # v
        self.combine = Linear(2 * config.n_embd, config.n_embd)
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.time_chunks = 1  # activation checkpointing over chunks of time steps (model/techniques.py)
        nn.init.normal_(self.wte.weight, std=0.02)

    def new_cache(self) -> RNNState:
        return RNNState(self.config.n_layer)

    def flops_per_token(self) -> float:
        return 6 * self.num_params() + 6 * self.config.block_size * self.config.n_embd

    def _recur(self, rnn: nn.RNNBase, x: torch.Tensor, state):
        if self.time_chunks <= 1 or not (self.training and torch.is_grad_enabled()):
            return rnn(x, state)
        outputs = []
        for part in x.chunk(self.time_chunks, dim=1):
            out, state = checkpoint(rnn, part, state, use_reentrant=False)
            outputs.append(out)
        return torch.cat(outputs, dim=1), state

    def forward(self, idx: torch.Tensor, cache: RNNState | None = None) -> torch.Tensor:
        h = self.embed(idx)
        for i, rnn in enumerate(self.rnns):
            h, state = self._recur(rnn, h, cache.hidden[i] if cache is not None else None)
            if cache is not None:
                cache.hidden[i] = state
            if i < len(self.ffs):
                h = h + self.ffs[i](h)
        scores = self.score(h).squeeze(-1).float()  # (B, T)
        context = self._causal_context(h, scores) if cache is None else self._running_context(h, scores, cache)
        return self.ln_f(torch.tanh(self.combine(torch.cat([h, context.to(h.dtype)], dim=-1))))

    @staticmethod
    def _causal_context(h: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        T = h.size(1)
        mask = torch.ones(T, T, dtype=torch.bool, device=h.device).tril()
        weights = F.softmax(scores[:, None, :].expand(-1, T, -1).masked_fill(~mask, float("-inf")), dim=-1)
        return weights.to(h.dtype) @ h

    @staticmethod
    def _running_context(h: torch.Tensor, scores: torch.Tensor, cache: RNNState) -> torch.Tensor:
        contexts = []
        for t in range(h.size(1)):
            s, x = scores[:, t:t + 1], h[:, t].float()
            if cache.max is None:
                cache.max, cache.denom, cache.numer = s, torch.ones_like(s), x
            else:
                new_max = torch.maximum(cache.max, s)
                old, new = torch.exp(cache.max - new_max), torch.exp(s - new_max)
                cache.denom = cache.denom * old + new
                cache.numer = cache.numer * old + new * x
                cache.max = new_max
            contexts.append(cache.numer / cache.denom)
        cache.length += h.size(1)
        return torch.stack(contexts, dim=1)
