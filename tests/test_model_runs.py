"""flows/model_runs.py on its own: which MLflow run a training continues, and registration with the
champion/challenger decision in a real MLflow store (SQLite), the champion re-scored from its artifacts."""
from __future__ import annotations

import json

import pytest
import torch

from flows.config import MemlmConfig
from flows.model_runs import register_and_promote, resumable_run


def test_a_training_continues_its_run_only_with_the_same_inputs_and_a_checkpoint(tmp_path):
    train_dir = tmp_path / "train"
    (train_dir / "checkpoint").mkdir(parents=True)
    (train_dir / "inputs.json").write_text(json.dumps({"key": "k1", "mlflow_run_id": "run-1"}))
    assert resumable_run(train_dir, "k1", force=False) == "run-1"
    assert (train_dir / "checkpoint").exists()
    assert resumable_run(train_dir, "k2", force=False) is None  # other inputs: start over, clean
    assert train_dir.is_dir() and not any(train_dir.iterdir())
    (train_dir / "inputs.json").write_text(json.dumps({"key": "k1", "mlflow_run_id": "run-1"}))
    assert resumable_run(train_dir, "k1", force=False) is None  # no checkpoint to resume from
    (train_dir / "checkpoint").mkdir()
    (train_dir / "inputs.json").write_text(json.dumps({"key": "k1", "mlflow_run_id": "run-1"}))
    assert resumable_run(train_dir, "k1", force=True) is None


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A run folder with a tokenizer and a validation split, and an MLflow store beside it."""
    import mlflow
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from corpus.tokenize import EOT

    text = "The list is a list of things. A dictionary maps keys to values. " * 4
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    tokenizer.train_from_iterator([text] * 20, trainers.BpeTrainer(
        vocab_size=80, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    (tmp_path / "run" / "tokens").mkdir(parents=True)
    tokenizer.save(str(tmp_path / "run" / "tokens" / "tokenizer.json"))
    (tmp_path / "run" / "split").mkdir()
    (tmp_path / "run" / "split" / "val.jsonl").write_text(
        "".join(json.dumps({"url": f"http://x/{i}", "text": text}) + "\n" for i in range(4)))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return tmp_path, tokenizer.get_vocab_size()


def checkpoint(path, vocab: int, seed: int):
    from model.checkpoint import save_checkpoint
    from model.gpt import GPT, GPTConfig

    torch.manual_seed(seed)
    return save_checkpoint(path, GPT(GPTConfig(vocab_size=vocab, block_size=8, n_layer=1, n_head=1, n_embd=16)))


def test_registration_tags_the_version_and_the_better_model_holds_champion(run_dir, monkeypatch):
    import mlflow
    import prefect.artifacts

    root, vocab = run_dir
    shown = []
    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact", lambda **kw: shown.append(kw))
    config = MemlmConfig.model_validate({
        "name": "t", "run_dir": str(root / "run"), "mlflow": {"registered_model": "m"},
        "train": {"batch_size": 2, "device": "cpu"}, "evaluate": {"max_batches": 2}})
    experiment = mlflow.create_experiment("e", artifact_location=(root / "artifacts").as_uri())
    summaries = []
    for seed, claimed_bpb in ((0, 2.0), (1, 0.5)):
        with mlflow.start_run(experiment_id=experiment) as run:
            summaries.append(register_and_promote(config, checkpoint(root / f"ckpt{seed}", vocab, seed),
                                                  {"val_loss": 1.0, "bits_per_byte": claimed_bpb}, run.info.run_id))
    first, second = summaries
    assert first["registered_version"] == 1 and "first version" in first["promotion"]["decision"]
    # v1 is measured again on the current validation split from its registered files: an untrained model
    # scores far above v2's 0.5, so v2 wins.
    assert second["registered_version"] == 2 and second["promotion"]["winner"] == "2"
    assert second["promotion"]["champion_bpb"] > 0.5
    client = mlflow.MlflowClient()
    assert client.get_registered_model("m").aliases == {"champion": 2, "challenger": 1}
    tags = client.get_model_version("m", "2").tags
    assert tags["bits_per_byte"] == "0.5" and tags["promotion"] == second["promotion"]["decision"]
    assert [a["key"] for a in shown] == ["memlm-t-promotion"] * 2 and "v2 becomes champion" in shown[1]["markdown"]


def test_a_config_store_does_not_become_the_next_configs(tmp_path, monkeypatch):
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which memlm reads as the user's override: a
    # worker that serves two configs must reach each one's own store.
    import mlflow

    from flows.tracking import setup_mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, second = (MemlmConfig.model_validate({"mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/{name}.db"}})
                     for name in ("first", "second"))
    setup_mlflow(first)
    setup_mlflow(second)
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/second.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/user.db")  # the user's own override wins
    setup_mlflow(first)
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/user.db"
