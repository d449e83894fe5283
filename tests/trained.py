"""A small model trained to well below chance, so that inference-weight checks compare real predictions
(an untrained model's loss is about ln(vocabulary) whatever its weights)."""
from __future__ import annotations

import math

import torch

VOCAB = 256


def markov_tokens(n: int, seed: int) -> torch.Tensor:
    """Token streams of a fixed random Markov chain: each token has three likely successors (about 1.2 nats
    a token to learn, against ln 256 = 5.5 by chance)."""
    table = torch.Generator().manual_seed(0)
    successors = torch.randint(0, VOCAB, (VOCAB, 3), generator=table)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.empty(n, dtype=torch.long)
    tokens[0] = 0
    choices = torch.multinomial(torch.tensor([0.6, 0.3, 0.1]), n, replacement=True, generator=g)
    for i in range(1, n):
        tokens[i] = successors[tokens[i - 1], choices[i]]
    return tokens


def batches(tokens: torch.Tensor, block: int, rows: int, g: torch.Generator):
    starts = torch.randint(0, len(tokens) - block - 1, (rows,), generator=g)
    x = torch.stack([tokens[s:s + block] for s in starts])
    y = torch.stack([tokens[s + 1:s + block + 1] for s in starts])
    return x, y


def train_tiny(model: torch.nn.Module, steps: int = 150, block: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    data, g = markov_tokens(20_000, seed=1), torch.Generator().manual_seed(2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        x, y = batches(data, block, 16, g)
        loss = model.loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    x, y = validation(block)
    with torch.no_grad():
        trained = model.loss(model(x), y).item()
    assert trained < 0.5 * math.log(VOCAB), f"the model did not learn the chain (validation loss {trained:.2f})"
    return model


def validation(block: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    return batches(markov_tokens(5_000, seed=3), block, 32, torch.Generator().manual_seed(4))
