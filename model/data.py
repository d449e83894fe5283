"""Token files read through numpy.memmap: the corpus is never loaded into memory whole."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch


class ShortTokenFileError(ValueError):
    """A token file too short for one training window; the message says how to get more tokens."""


class TokenFile:
    def __init__(self, path: Path, block_size: int, dtype: str = "uint16"):
        self.path = Path(path)
        self.tokens = np.memmap(self.path, dtype=np.dtype(dtype), mode="r")
        self.block_size = block_size
        if len(self.tokens) < block_size + 1:
            raise ShortTokenFileError(
                f"{self.path.name} holds {len(self.tokens)} tokens, fewer than model.block_size + 1 "
                f"({block_size + 1}): crawl more pages or lower model.block_size"
            )

    def __len__(self) -> int:
        return len(self.tokens)

    def _window(self, start: int) -> torch.Tensor:
        return torch.from_numpy(self.tokens[start:start + self.block_size + 1].astype(np.int64))

    def random_batch(self, batch_size: int, generator: torch.Generator, device: torch.device,
                     part: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch_size` random windows; with `part` (i, n), only the i-th of n equal slices of them is read
        (the generator advances by the whole batch, so every part sees the same draw)."""
        starts = torch.randint(len(self.tokens) - self.block_size, (batch_size,), generator=generator)
        i, n = part
        starts = starts.chunk(n)[i]
        windows = torch.stack([self._window(int(s)) for s in starts])
        return self._to(windows, device)

    def sequential_batches(self, batch_size: int, device: torch.device,
                           max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Non-overlapping windows from the start: the same tokens every time, for comparable losses."""
        n_windows = (len(self.tokens) - 1) // self.block_size
        starts = [i * self.block_size for i in range(n_windows)]
        for b, i in enumerate(range(0, len(starts), batch_size)):
            if max_batches is not None and b >= max_batches:
                return
            yield self._to(torch.stack([self._window(s) for s in starts[i:i + batch_size]]), device)

    @staticmethod
    def _to(windows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = windows[:, :-1], windows[:, 1:]
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.contiguous(), y.contiguous()
