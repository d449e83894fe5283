"""Sampling that only writes valid UTF-8 with a byte-level BPE.

A byte-level token can hold part of a character, so a small or undertrained model can sample a lead byte
followed by anything but its continuation bytes, and the decoded text shows U+FFFD. The guard follows the
UTF-8 decoder's state through the sampled bytes and masks every token whose bytes would break it: at each
step only tokens that continue the current character (or start from a character boundary) can be drawn."""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders

# A decoder state: (continuation bytes still owed, lowest and highest byte allowed next). Ranges per RFC 3629,
# which rules out overlong forms, surrogates and code points past U+10FFFF.
State = tuple[int, int, int]
BOUNDARY: State = (0, 0x00, 0xFF)
_CONTINUATION = (0x80, 0xBF)


def _after_lead(byte: int) -> State | None:
    if byte < 0x80:
        return BOUNDARY
    if 0xC2 <= byte <= 0xDF:
        return (1, *_CONTINUATION)
    if 0xE0 <= byte <= 0xEF:
        return (2, *{0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F)}.get(byte, _CONTINUATION))
    if 0xF0 <= byte <= 0xF4:
        return (3, *{0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}.get(byte, _CONTINUATION))
    return None  # a stray continuation byte, C0, C1 or F5..FF


def advance(state: State, data: bytes) -> State | None:
    """The decoder state after `data`, or None where `data` breaks UTF-8 from `state`."""
    for byte in data:
        owed, low, high = state
        if owed == 0:
            state = _after_lead(byte)
            if state is None:
                return None
        elif low <= byte <= high:
            state = BOUNDARY if owed == 1 else (owed - 1, *_CONTINUATION)
        else:
            return None
    return state


def _byte_of_symbol() -> dict[str, int]:
    """The byte-level BPE's printable stand-in for each byte (GPT-2's table): printable Latin-1 bytes stand
    for themselves, the other 68 are shifted past U+00FF in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + shifted)
            shifted += 1
    return {symbol: b for b, symbol in symbols.items()}


class Utf8Guard:
    """Masks the logits of tokens that would make the sampled text invalid UTF-8; `advance` after each draw.

    Special tokens (end of text) are allowed only between characters. Ids past the tokenizer's vocabulary
    (a model's padded rows) are never allowed: they decode to nothing."""

    def __init__(self, tokenizer: Tokenizer):
        byte_of = _byte_of_symbol()
        self._bytes: dict[int, bytes] = {}
        self._special: set[int] = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        for token, i in tokenizer.get_vocab(with_added_tokens=False).items():
            self._bytes[i] = bytes(byte_of[ch] for ch in token)
        self._masks: dict[tuple[State, torch.device], torch.Tensor] = {}
        self.state = BOUNDARY

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer) -> Utf8Guard | None:
        """A guard for a byte-level BPE; None for any other tokenizer, whose tokens are whole characters."""
        return cls(tokenizer) if isinstance(tokenizer.decoder, decoders.ByteLevel) else None

    @property
    def between_characters(self) -> bool:
        return self.state == BOUNDARY

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        key = (self.state, logits.device)
        if key not in self._masks:
            allowed = torch.zeros(logits.size(-1), dtype=torch.bool)
            for i, data in self._bytes.items():
                if i < len(allowed) and advance(self.state, data) is not None:
                    allowed[i] = True
            if self.between_characters:
                allowed[[i for i in self._special if i < len(allowed)]] = True
            self._masks[key] = allowed.to(logits.device)
        return logits.masked_fill(~self._masks[key], float("-inf"))

    def advance(self, token: int) -> None:
        if token in self._special:
            return
        state = advance(self.state, self._bytes[token])
        if state is None:
            raise ValueError(f"token {token} ({self._bytes[token]!r}) breaks UTF-8 after state {self.state}")
        self.state = state
