"""Checkpoints: weights as safetensors, optimizer and RNG state beside them, written atomically."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from model.arch import build_model, config_from_dict
from model.gpt import GPTConfig, TiedHeadLM
from model.rnn import RNNConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
STATE_FILE = "train_state.pt"


def save_checkpoint(directory: Path, model: TiedHeadLM, train_state: dict | None = None) -> Path:
    """Write to a sibling temporary folder, then swap it in, so that a kill never leaves half a checkpoint."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / WEIGHTS_FILE))
    (tmp / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2))
    if train_state is not None:
        torch.save(train_state, tmp / STATE_FILE)
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def load_model_config(directory: Path) -> GPTConfig | RNNConfig:
    return config_from_dict(json.loads((Path(directory) / CONFIG_FILE).read_text()))


def load_lm(directory: Path, device: torch.device | str = "cpu") -> TiedHeadLM:
    model = build_model(load_model_config(directory))
    load_weights(model, directory, device)
    return model.to(device)


def load_weights(model: TiedHeadLM, directory: Path, device: torch.device | str = "cpu") -> None:
    load_model(model, str(Path(directory) / WEIGHTS_FILE), device=str(device))


def load_train_state(directory: Path) -> dict | None:
    path = Path(directory) / STATE_FILE
    # Our own file (optimizer state, RNG states, counters): not arbitrary downloaded pickles.
    return torch.load(path, weights_only=False) if path.exists() else None


def has_checkpoint(directory: Path) -> bool:
    return (Path(directory) / WEIGHTS_FILE).exists()
