"""Sampling from a GPT with a KV cache: each new token costs one position, not the whole prefix."""
from __future__ import annotations

import torch
from tokenizers import Tokenizer

from model.gpt import GPT, KVCache


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             stop_id: int | None = None, use_cache: bool = True) -> torch.Tensor:
    """Append up to `max_new_tokens` tokens to `idx` (1, T). temperature 0 decodes greedily."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    was_training = model.training
    model.eval()
    block = model.config.block_size
    cache = KVCache(model.config.n_layer) if use_cache else None
    pending = idx[:, -block:]
    for _ in range(max_new_tokens):
        if cache is not None and cache.length + pending.size(1) > block:
            # Past the context length: start a fresh cache over the last half block, as cropping would.
            cache = KVCache(model.config.n_layer)
            pending = idx[:, -(block // 2):]
        context = pending if cache is not None else idx[:, -block:]
        logits = model.lm_head(model(context, cache)[:, -1, :]).float()
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        idx = torch.cat([idx, next_id], dim=1)
        pending = next_id
        if stop_id is not None and int(next_id) == stop_id:
            break
    model.train(was_training)
    return idx


def _sample(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
            generator: torch.Generator | None) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest set of tokens whose probability reaches top_p (always at least one).
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)


def generate_text(model: GPT, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 60,
                  temperature: float = 0.8, top_k: int | None = 40, top_p: float | None = None,
                  seed: int | None = 0) -> str:
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt).ids or [tokenizer.token_to_id("<|endoftext|>")]
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    out = generate(model, torch.tensor([ids], device=device), max_new_tokens, temperature, top_k, top_p,
                   generator, stop_id=tokenizer.token_to_id("<|endoftext|>"))
    return tokenizer.decode(out[0].tolist())
