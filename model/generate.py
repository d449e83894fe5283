"""Sampling with a cache (the GPT's keys and values, the RNN's states): each new token costs one position,
not the whole prefix."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from tokenizers import Tokenizer

from model.gpt import TiedHeadLM
from model.utf8_guard import Utf8Guard

EOT = "<|endoftext|>"


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, max_new_tokens: int) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 decodes greedily), got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")


@torch.inference_mode()
def generate_tokens(model: TiedHeadLM, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None,
                    generator: torch.Generator | None = None, stop_id: int | None = None,
                    use_cache: bool = True, guard: Utf8Guard | None = None) -> Iterator[int]:
    """Yield up to `max_new_tokens` sampled token ids after the prompt `idx` (1, T); with a `guard`, only
    tokens that keep the text valid UTF-8."""
    check_sampling(temperature, top_k, top_p, max_new_tokens)
    was_training = model.training
    model.eval()
    limit = model.context_limit
    cache = model.new_cache() if use_cache else None
    pending = idx if limit is None else idx[:, -limit:]
    try:
        for _ in range(max_new_tokens):
            if cache is not None and limit is not None and cache.length + pending.size(1) > limit:
                # Past the context length: start a fresh cache over the last half block, as cropping would.
                cache = model.new_cache()
                pending = idx[:, -(limit // 2):]
            context = pending if cache is not None else (idx if limit is None else idx[:, -limit:])
            logits = next_token_logits(model, context, cache)
            next_id = _sample(logits if guard is None else guard.mask(logits), temperature, top_k, top_p, generator)
            idx = torch.cat([idx, next_id], dim=1)
            pending = next_id
            if stop_id is not None and int(next_id) == stop_id:
                return
            if guard is not None:
                guard.advance(int(next_id))
            yield int(next_id)
    finally:
        model.train(was_training)


def next_token_logits(model: TiedHeadLM, context: torch.Tensor, cache=None) -> torch.Tensor:
    """fp32 logits (1, vocab) of the token after `context` (1, T), whose earlier tokens `cache` holds."""
    return model.lm_head(model(context, cache)[:, -1, :]).float()


def generate(model: TiedHeadLM, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             stop_id: int | None = None, use_cache: bool = True) -> torch.Tensor:
    """The prompt `idx` (1, T) with the sampled tokens appended."""
    new = list(generate_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, generator, stop_id, use_cache))
    return torch.cat([idx, torch.tensor([new], dtype=idx.dtype, device=idx.device)], dim=1)


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


def stream_text(model: TiedHeadLM, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 60,
                temperature: float = 0.8, top_k: int | None = 40, top_p: float | None = None,
                seed: int | None = 0, stop: list[str] | tuple[str, ...] = ()) -> Iterator[str]:
    """Yield the continuation of `prompt` piece by piece as it is sampled, ending before any stop string."""
    device = next(model.parameters()).device
    eot = tokenizer.token_to_id(EOT)
    ids = tokenizer.encode(prompt).ids or [eot]
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    guard = Utf8Guard.for_tokenizer(tokenizer)
    new_ids: list[int] = []
    shown = 0
    hold = max((len(s) for s in stop), default=1) - 1  # text that could still become a stop string
    for token in generate_tokens(model, torch.tensor([ids], device=device), max_new_tokens, temperature, top_k,
                                 top_p, generator, stop_id=eot, guard=guard):
        new_ids.append(token)
        text = _complete_characters(tokenizer.decode(new_ids), guard)
        cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
        if cut >= 0:
            yield text[shown:cut]
            return
        if len(text) - hold > shown:
            yield text[shown:len(text) - hold]
            shown = len(text) - hold
    text = _complete_characters(tokenizer.decode(new_ids), guard)
    if len(text) > shown:
        yield text[shown:]


def _complete_characters(text: str, guard: Utf8Guard | None) -> str:
    """`text` without a character the sampled bytes have only begun (decoded as one U+FFFD at the end);
    a tokenizer that is not byte-level never splits one."""
    return text if guard is None or guard.between_characters else text[:-1]


def generate_text(model: TiedHeadLM, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 60,
                  temperature: float = 0.8, top_k: int | None = 40, top_p: float | None = None,
                  seed: int | None = 0, stop: list[str] | tuple[str, ...] = ()) -> str:
    """The prompt followed by its sampled continuation."""
    return prompt + "".join(stream_text(model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p,
                                        seed, stop))
