"""Checkpoints: weights as safetensors, the training state (optimizer, RNG states, counters) as
safetensors plus JSON, written atomically. Nothing here unpickles: a checkpoint folder someone else could
write cannot run code in the next training or evaluation."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from model.arch import build_model, config_from_dict
from model.gpt import GPTConfig, TiedHeadLM
from model.rnn import RNNConfig
from model.safe_state import StateFileError, load_state, save_state

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
STATE_TENSORS_FILE = "train_state.safetensors"
STATE_FILE = "train_state.json"
PICKLED_STATE_FILE = "train_state.pt"  # written by memlm before it stopped pickling; never loaded


class CheckpointError(ValueError):
    """A checkpoint folder that memlm cannot load safely; the message says what to do."""


def save_checkpoint(directory: Path, model: TiedHeadLM, train_state: dict | None = None) -> Path:
    """Write to a sibling temporary folder, then swap it in, so that a kill never leaves half a checkpoint."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / WEIGHTS_FILE))
    (tmp / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2))
    if train_state is not None:
        save_state(train_state, tmp / STATE_TENSORS_FILE, tmp / STATE_FILE)
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def load_model_config(directory: Path) -> GPTConfig | RNNConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{path} is missing: {directory} is not a whole checkpoint; delete it or set "
                              "train.resume: false to start over")
    return config_from_dict(json.loads(path.read_text()))


def load_lm(directory: Path, device: torch.device | str = "cpu") -> TiedHeadLM:
    return load_lm_files(Path(directory) / WEIGHTS_FILE, Path(directory) / CONFIG_FILE, device)


def load_lm_files(weights_file: Path, config_file: Path, device: torch.device | str = "cpu") -> TiedHeadLM:
    """The model from its two files wherever they are (a checkpoint folder, a registered model's artifacts)."""
    model = build_model(config_from_dict(json.loads(Path(config_file).read_text())))
    _load_safetensors(model, Path(weights_file), device)
    return model.to(device)


def load_weights(model: TiedHeadLM, directory: Path, device: torch.device | str = "cpu") -> None:
    _load_safetensors(model, Path(directory) / WEIGHTS_FILE, device)


def _load_safetensors(model: TiedHeadLM, path: Path, device: torch.device | str) -> None:
    try:
        load_model(model, str(path), device=str(device))
    except SafetensorError as exc:
        raise CheckpointError(f"{path} is not a safetensors file ({exc}); it was not loaded. Delete it and "
                              "train again, or restore it from where it came from") from None


def load_train_state(directory: Path) -> dict | None:
    directory = Path(directory)
    if (directory / STATE_TENSORS_FILE).exists():
        try:
            return load_state(directory / STATE_TENSORS_FILE, directory / STATE_FILE)
        except StateFileError as exc:
            raise CheckpointError(f"{exc}; it was not loaded. Delete {directory} or set train.resume: false "
                                  "to start over") from None
    if (directory / PICKLED_STATE_FILE).exists():
        raise CheckpointError(
            f"{directory / PICKLED_STATE_FILE} is a training state in the old pickle format, which memlm no "
            f"longer loads (a pickle can run code); delete {directory} or set train.resume: false to train again")
    return None


def has_checkpoint(directory: Path) -> bool:
    return (Path(directory) / WEIGHTS_FILE).exists()
