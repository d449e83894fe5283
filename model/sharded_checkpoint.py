"""Sharded checkpoints of a distributed run, with torch.distributed.checkpoint (DCP), pickle-free.

Every rank writes its own shards of the weights and optimizer state as safetensors files
(DCP's HuggingFaceStorageWriter); the reader rebuilds the layout from the files' headers, so a checkpoint
saved at one world size loads at any other (2 -> 1, 1 -> 2), and in a single process without a process
group. What is not a tensor (the step, validation figures, the optimizer's hyperparameters, the data
generator's state) goes to one JSON file that rank 0 writes last: its presence marks a complete save.
The state dicts come from torch.distributed.checkpoint.state_dict (fully qualified names, DTensor shards
under FSDP, the tied embedding/head weight once).

Saved to a sibling temporary folder and swapped in after every rank finished, so that a kill never
leaves half a checkpoint."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from model.distributed import Ranks
from model.optim import OptimizerInBackward

STATE_FILE = "train_state.json"


def has_sharded_checkpoint(directory: Path) -> bool:
    return (Path(directory) / STATE_FILE).exists()


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _tensors(model: nn.Module, model_state: dict, optim_state: dict) -> dict[str, torch.Tensor]:
    """The tensors, flat, each once: a tied weight (the embedding and the output head) has one name per
    module that holds it, and safetensors refuses shared memory; loading into the first name fills both."""
    seen: set[int] = set()
    tied = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.add(f"model.{name}")
        seen.add(id(param))
    flat = _flatten({"model": model_state, "optim": optim_state})
    return {k: v for k, v in flat.items() if isinstance(v, torch.Tensor) and k not in tied}


def _barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


def state_dict_optimizers(optimizer) -> torch.optim.Optimizer | list[torch.optim.Optimizer]:
    """What DCP's state-dict functions take: one optimizer, or a list of them (an optimizer stepped in
    backward is one per parameter, each keyed by its parameter's name)."""
    return list(optimizer.optimizers.values()) if isinstance(optimizer, OptimizerInBackward) else optimizer


def save_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, train_state: dict,
                 ranks: Ranks) -> None:
    """Every rank calls this; `train_state` (JSON-able) is rank 0's."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if ranks.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier(ranks)
    model_state, optim_state = get_state_dict(model, state_dict_optimizers(optimizer))
    tensors = _tensors(model, model_state, optim_state)
    dcp.save(tensors, storage_writer=dcp.HuggingFaceStorageWriter(str(tmp), save_distributed=ranks.distributed))
    _barrier(ranks)
    if ranks.is_main:
        state = {**train_state, "param_groups": optim_state["param_groups"], "world_size": ranks.world_size}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        old = directory.with_name(directory.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old, ignore_errors=True)
    _barrier(ranks)


def load_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Load weights and optimizer state into this rank's shards (any world size); returns the JSON state."""
    directory = Path(directory)
    state = json.loads((directory / STATE_FILE).read_text())
    # Creates the optimizer's state (zeros) when it has none yet, so that DCP has tensors to load into.
    model_state, optim_state = get_state_dict(model, state_dict_optimizers(optimizer))
    with warnings.catch_warnings():
        # Without a process group DCP warns that it loads in one process: that is the intent (2 -> 1).
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(_tensors(model, model_state, optim_state),
                 storage_reader=dcp.HuggingFaceStorageReader(str(directory)))
    # JSON has no tuples; the optimizers want their betas as one.
    optim_state["param_groups"] = [{k: tuple(v) if k == "betas" else v for k, v in group.items()}
                                   for group in state["param_groups"]]
    set_state_dict(model, state_dict_optimizers(optimizer), model_state_dict=model_state, optim_state_dict=optim_state)
    return state
