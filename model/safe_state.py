"""Nested training state (optimizer state dicts, RNG states, counters) written without pickle: every
tensor into one safetensors file, the structure around them (dicts, lists, tuples, numbers, strings)
into JSON. Loading either file runs no code, whatever its contents."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

# JSON objects that stand for something JSON has no type for; a plain dict never uses these keys.
TENSOR, TUPLE, PAIRS, SUBCLASS, DTYPE = "__tensor__", "__tuple__", "__pairs__", "__subclass__", "__dtype__"
# Tensor subclasses written as their inner tensors and rebuilt by their own __tensor_unflatten__: torchao's
# low-bit optimizer states. Only these are imported by name when a state is loaded.
DTYPES = {str(d).removeprefix("torch."): d for d in vars(torch).values() if isinstance(d, torch.dtype)}
LOADABLE_SUBCLASSES = {"torchao.optim.subclass_8bit.OptimState8bit", "torchao.optim.subclass_4bit.OptimState4bit",
                       "torchao.optim.subclass_fp8.OptimStateFp8"}


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
    except OSError as exc:
        raise StateFileError(f"{structure_file} cannot be read ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateFileError(f"{structure_file} is not JSON ({exc})") from None
    try:
        return _decode(structure, tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateFileError(f"{structure_file} does not match {tensors_file} ({exc!r})") from None


def _encode(value, tensors: dict[str, torch.Tensor]):
    if isinstance(value, torch.Tensor):
        if type(value) not in (torch.Tensor, torch.nn.Parameter):
            return _encode_subclass(value, tensors)
        key = str(len(tensors))
        tensors[key] = value.detach()
        return {TENSOR: key}
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in (TENSOR, TUPLE, PAIRS, SUBCLASS, DTYPE) for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        # Optimizer state is keyed by parameter index (int): keep the key types.
        return {PAIRS: [[k, _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {TUPLE: [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, torch.dtype):  # in torchao's low-bit states' flatten context
        return {DTYPE: str(value).removeprefix("torch.")}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot write a {type(value).__name__} into a training state file")


def _encode_subclass(value: torch.Tensor, tensors: dict[str, torch.Tensor]) -> dict:
    name = f"{type(value).__module__}.{type(value).__qualname__}"
    if name not in LOADABLE_SUBCLASSES or not hasattr(value, "__tensor_flatten__"):
        raise TypeError(f"cannot write a {name} (a tensor subclass memlm does not know) into a training state")
    inner_names, context = value.__tensor_flatten__()
    return {SUBCLASS: name, "inner": {n: _encode(getattr(value, n), tensors) for n in inner_names},
            "context": _encode(context, tensors)}


def _decode_subclass(value: dict, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    name = value[SUBCLASS]
    if name not in LOADABLE_SUBCLASSES:
        raise ValueError(f"tensor subclass {name} is not one memlm loads")
    module, _, class_name = name.rpartition(".")
    cls = getattr(importlib.import_module(module), class_name)
    inner = {n: _decode(v, tensors) for n, v in value["inner"].items()}
    return cls.__tensor_unflatten__(inner, _decode(value["context"], tensors), None, None)


def _decode(value, tensors: dict[str, torch.Tensor]):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if TENSOR in value:
        return tensors[value[TENSOR]]
    if SUBCLASS in value:
        return _decode_subclass(value, tensors)
    if DTYPE in value:
        if value[DTYPE] not in DTYPES:  # looked up in a table, never as an attribute of torch
            raise ValueError(f"{value[DTYPE]!r} is not a torch dtype")
        return DTYPES[value[DTYPE]]
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
