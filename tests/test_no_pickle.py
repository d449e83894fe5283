"""Nothing memlm loads is a pickle: a checkpoint or a registered model that someone tampered with
gives a clear error, never the payload's side effect."""
from __future__ import annotations

import pickle

import pytest
import torch

from model.checkpoint import CheckpointError, load_lm, load_train_state, save_checkpoint
from model.gpt import GPT, GPTConfig


class Payload:
    """Unpickling this creates the marker file: the side effect a tampered file must not get."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=1, n_embd=16))


def trained_state(model: GPT) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), betas=(0.9, 0.95), fused=True)
    model.loss(model(torch.randint(0, 64, (2, 8))), torch.randint(0, 64, (2, 8))).backward()
    optimizer.step()
    data_rng = torch.Generator().manual_seed(3)
    return {"step": 7, "optimizer": optimizer.state_dict(), "val_loss": 4.5,
            "rng": {"torch": torch.get_rng_state(), "data": data_rng.get_state()}}


def test_the_training_state_round_trips_without_pickle(tmp_path):
    model = tiny_model()
    state = trained_state(model)
    save_checkpoint(tmp_path / "ckpt", model, state)
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["model.safetensors", "model_config.json", "train_state.json", "train_state.safetensors"]
    back = load_train_state(tmp_path / "ckpt")
    assert back["step"] == 7 and back["val_loss"] == 4.5
    assert back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]  # betas stay a tuple
    for key, saved in state["optimizer"]["state"].items():
        for name, tensor in saved.items():
            assert torch.equal(back["optimizer"]["state"][key][name], tensor)
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"]) and back["rng"]["data"].dtype == torch.uint8
    torch.optim.AdamW(model.parameters(), fused=True).load_state_dict(back["optimizer"])


@pytest.mark.parametrize("victim", ["train_state.safetensors", "model.safetensors"])
def test_a_checkpoint_file_replaced_by_a_pickle_is_refused(tmp_path, victim):
    model = tiny_model()
    save_checkpoint(tmp_path / "ckpt", model, trained_state(model))
    marker = tmp_path / "payload-ran"
    (tmp_path / "ckpt" / victim).write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CheckpointError, match=f"{victim} is not a safetensors file.*not loaded"):
        load_train_state(tmp_path / "ckpt") if victim.startswith("train") else load_lm(tmp_path / "ckpt")
    assert not marker.exists()


def test_an_old_pickled_training_state_is_refused_with_what_to_do(tmp_path):
    model = tiny_model()
    save_checkpoint(tmp_path / "ckpt", model)
    marker = tmp_path / "payload-ran"
    torch.save({"step": 1, "optimizer": Payload(marker)}, tmp_path / "ckpt" / "train_state.pt")
    with pytest.raises(CheckpointError, match="old pickle format.*delete .*train.resume: false"):
        load_train_state(tmp_path / "ckpt")
    assert not marker.exists()


@pytest.fixture
def registered(tmp_path, monkeypatch):
    """A tiny model logged and registered in a real MLflow store (SQLite, local artifacts)."""
    import mlflow
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from model.pyfunc import log_text_generator

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    tokenizer.train_from_iterator(["The list is a list of things."] * 20,
                                  trainers.BpeTrainer(vocab_size=64, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ckpt", GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=8, n_layer=1,
                                                     n_head=1, n_embd=16)))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = log_text_generator(tmp_path / "ckpt", tmp_path / "tokenizer.json", "m", "The list")
    location = mlflow.MlflowClient().get_logged_model(info.model_id).artifact_location
    from urllib.parse import urlparse

    return urlparse(location).path


def test_the_registered_model_is_code_and_data_and_loads_both_ways(registered):
    from pathlib import Path

    import mlflow

    from model.pyfunc import load_registered

    files = {p.name for p in Path(registered).rglob("*")}
    assert "python_model.pkl" not in files and not any(name.endswith((".pkl", ".pt")) for name in files)
    assert {"served_model.py", "model.safetensors", "model_config.json", "tokenizer.json"} <= files
    model, tokenizer = load_registered("models:/m/1")
    assert model.num_params() > 0 and tokenizer.get_vocab_size() > 0
    served = mlflow.pyfunc.load_model("models:/m/1")  # what `mlflow models serve` does
    from model.generate import generate_text

    # The logged signature's params reach predict (greedy, 3 new tokens), as memlm's own loading gives.
    expected = generate_text(model, tokenizer, "The list", 3, 0.0, None, 1.0, seed=0)
    assert served.predict(["The list"], params={"max_new_tokens": 3, "temperature": 0.0}) == [expected]


def test_registry_artifacts_replaced_by_pickles_run_nothing(registered, tmp_path, monkeypatch):
    from pathlib import Path

    import mlflow
    import yaml

    from model.pyfunc import RegisteredModelError, load_registered

    marker = tmp_path / "payload-ran"
    root = Path(registered)
    # A loader switched to a pickled python model: memlm never reads the loader; MLflow refuses it.
    mlmodel = yaml.safe_load((root / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    flavor.pop("model_code_path")
    flavor["python_model"] = "python_model.pkl"
    flavor["loader_module"] = "mlflow.pyfunc.model"
    (root / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    (root / "python_model.pkl").write_bytes(pickle.dumps(Payload(marker)))
    load_registered("models:/m/1")
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # as the memlm command sets it
    with pytest.raises(mlflow.exceptions.MlflowException, match="pickle is disallowed"):
        mlflow.pyfunc.load_model("models:/m/1")
    # The weights replaced by a pickle: a clear error.
    weights = next(root.rglob("model.safetensors"))
    weights.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(RegisteredModelError, match="models:/m/1: .*model.safetensors is not a safetensors file"):
        load_registered("models:/m/1")
    assert not marker.exists()


class Packed(torch.Tensor):
    """A stand-in for torchao's low-bit optimizer states: a tensor subclass that is its inner tensors."""

    @staticmethod
    def __new__(cls, codes: torch.Tensor, scale: torch.Tensor, shape: tuple):
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=torch.float32)

    def __init__(self, codes, scale, shape):
        self.codes, self.scale = codes, scale

    def __tensor_flatten__(self):
        return ["codes", "scale"], (tuple(self.shape),)

    @classmethod
    def __tensor_unflatten__(cls, inner, context, outer_size, outer_stride):
        return cls(inner["codes"], inner["scale"], context[0])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise NotImplementedError(f"{func} on a Packed tensor")


def test_a_known_tensor_subclass_round_trips_and_an_unknown_one_is_never_imported(tmp_path, monkeypatch):
    import json

    from model import safe_state
    from model.safe_state import StateFileError, load_state, save_state

    packed = Packed(torch.arange(6, dtype=torch.uint8), torch.tensor([0.5]), (2, 3))
    with pytest.raises(TypeError, match="tensor subclass memlm does not know"):
        save_state({"exp_avg": packed}, tmp_path / "s.safetensors", tmp_path / "s.json")
    monkeypatch.setattr(safe_state, "LOADABLE_SUBCLASSES", {"tests.test_no_pickle.Packed"})
    save_state({"exp_avg": packed}, tmp_path / "s.safetensors", tmp_path / "s.json")
    back = load_state(tmp_path / "s.safetensors", tmp_path / "s.json")["exp_avg"]
    assert type(back) is Packed and back.shape == (2, 3)
    assert torch.equal(back.codes, packed.codes) and torch.equal(back.scale, packed.scale)
    # A structure file that names another class (here one that would start a process) is refused unimported.
    structure = json.loads((tmp_path / "s.json").read_text())
    structure["exp_avg"]["__subclass__"] = "subprocess.Popen"
    (tmp_path / "s.json").write_text(json.dumps(structure))
    with pytest.raises(StateFileError, match="subprocess.Popen is not one memlm loads"):
        load_state(tmp_path / "s.safetensors", tmp_path / "s.json")



@pytest.mark.parametrize("name", ["AdamW8bit", "AdamW4bit"])
def test_torchaos_low_bit_states_round_trip_and_resume_the_same_steps(tmp_path, name):
    """torchao's states (tensor subclasses whose flatten context holds a dtype) survive a checkpoint: the
    optimizer loaded from it takes the step the uninterrupted one takes."""
    torchao_optim = pytest.importorskip("torchao.optim")
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(64, 64))  # torchao quantizes tensors of at least 4,096 elements

    def step(param, optimizer):
        param.grad = torch.sin(param.detach() * 3)
        optimizer.step()

    optimizer = getattr(torchao_optim, name)([weight], lr=1e-2)
    step(weight, optimizer)
    save_checkpoint(tmp_path / "ckpt", tiny_model(), {"optimizer": optimizer.state_dict()})
    after_one = weight.detach().clone()
    step(weight, optimizer)

    state = load_train_state(tmp_path / "ckpt")["optimizer"]
    assert type(state["state"][0]["exp_avg"]).__name__.startswith("OptimState")
    resumed = torch.nn.Parameter(after_one)
    optimizer = getattr(torchao_optim, name)([resumed], lr=1e-2)
    optimizer.load_state_dict(state)
    step(resumed, optimizer)
    assert torch.equal(resumed.detach(), weight.detach())
