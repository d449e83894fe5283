"""What the device can do: resolve it, and measure its matrix-multiply peak for FLOPs utilization."""
from __future__ import annotations

import time

import torch


class DeviceError(RuntimeError):
    """The configured device is not on this machine; the message says what to set instead."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("train.device is 'cuda' but PyTorch sees no CUDA device; use 'cpu' or 'auto'")
    return torch.device(name)


_best_peak: dict[tuple, float] = {}


def matmul_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 1024,
                      seconds: float = 0.3, rounds: int = 3, fresh: bool = False) -> float:
    """FLOP/s of a square matrix multiply in `dtype`: the best this process has measured on the device at
    its thread count, measured now (a few short rounds, ~1 s) when there is none yet or when `fresh`.
    The yardstick for MFU; the best round is the least disturbed by other work on the machine."""
    key = (str(device), dtype, size, torch.get_num_threads())
    if key in _best_peak and not fresh:
        return _best_peak[key]
    # Its own generator: a run's random draws (stochastic rounding among them) must not depend on whether
    # this process measured the peak already, or a resumed run would round otherwise than one never stopped.
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    torch.mm(a, b)  # warm-up
    best = _best_peak.get(key, 0.0)
    for _ in range(rounds):
        _sync(device)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            torch.mm(a, b)
            n += 1
        _sync(device)
        best = max(best, 2 * size**3 * n / (time.perf_counter() - start))
    _best_peak[key] = best
    return best


def peak_is_known(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 1024) -> bool:
    return (str(device), dtype, size, torch.get_num_threads()) in _best_peak


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
