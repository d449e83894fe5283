"""Nested training state (optimizer state dicts, RNG states, counters) written without pickle: every
tensor into one safetensors file, the structure around them (dicts, lists, tuples, numbers, strings)
into JSON. Loading either file runs no code, whatever its contents."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

# JSON objects that stand for something JSON has no type for; a plain dict never uses these keys.
TENSOR, TUPLE, PAIRS = "__tensor__", "__tuple__", "__pairs__"


class StateFileError(ValueError):
    """A state file that is not what memlm writes: not safetensors, not JSON, or not matching each other."""


def save_state(state, tensors_file: Path, structure_file: Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, tensors)
    save_file(_unshared(tensors), str(tensors_file))
    Path(structure_file).write_text(json.dumps(structure, indent=1))


def load_state(tensors_file: Path, structure_file: Path):
    try:
        tensors = load_file(str(tensors_file), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise StateFileError(f"{tensors_file} is not a safetensors file ({exc})") from None
    try:
        structure = json.loads(Path(structure_file).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateFileError(f"{structure_file} is not JSON ({exc})") from None
    try:
        return _decode(structure, tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateFileError(f"{structure_file} does not match {tensors_file} ({exc!r})") from None


def _encode(value, tensors: dict[str, torch.Tensor]):
    if isinstance(value, torch.Tensor):
        if type(value) not in (torch.Tensor, torch.nn.Parameter):
            raise TypeError(f"cannot write a {type(value).__name__} (a tensor subclass) as safetensors")
        key = str(len(tensors))
        tensors[key] = value.detach()
        return {TENSOR: key}
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in (TENSOR, TUPLE, PAIRS) for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        # Optimizer state is keyed by parameter index (int): keep the key types.
        return {PAIRS: [[k, _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {TUPLE: [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot write a {type(value).__name__} into a training state file")


def _decode(value, tensors: dict[str, torch.Tensor]):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if TENSOR in value:
        return tensors[value[TENSOR]]
    if TUPLE in value:
        return tuple(_decode(v, tensors) for v in value[TUPLE])
    if PAIRS in value:
        return {k: _decode(v, tensors) for k, v in value[PAIRS]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory; copy only those (and make every one contiguous)."""
    seen: set[tuple[torch.device, int]] = set()
    out = {}
    for key, tensor in tensors.items():
        where = (tensor.device, tensor.untyped_storage().data_ptr())
        shared = tensor.numel() > 0 and where in seen
        seen.add(where)
        out[key] = tensor.clone() if shared else tensor.contiguous()
    return out
