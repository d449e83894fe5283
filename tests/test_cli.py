"""The memlm command line: a bad config gives one line naming the field, exit code 2, before any work."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MEMLM = [str(Path(sys.executable).parent / "memlm")] if shutil.which("memlm", path=str(Path(sys.executable).parent)) \
    else [sys.executable, "-m", "flows.cli"]


def memlm(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*MEMLM, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=None if env is None else {**os.environ, **env})


@pytest.mark.parametrize("yaml_text, expected", [
    ("train:\n  lr: -1\n", "train.lr: Input should be greater than 0 (got -1)"),
    ("train:\n  learning_rate: 0.1\n", "train.learning_rate: unknown field; allowed here: batch_size"),
    ("model:\n  n_embd: 100\n  n_head: 3\n", "model: Value error, n_embd (100) must be a multiple of n_head (3)"),
    ("train: [1, 2\n", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping of sections"),
])
def test_bad_config_gives_one_line_and_exit_code_2(tmp_path, yaml_text, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    result = memlm("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow").exists()  # no work started


def test_missing_config_file(tmp_path):
    result = memlm("train", "--config", "nope.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.yaml: no such config file" in result.stderr


def test_demo_config_is_valid():
    from flows.config import load_config

    config = load_config(Path(__file__).parents[1] / "configs" / "demo.yaml")
    assert config.crawl.site_dir == Path("/usr/share/doc/python3.11/html")
    assert config.mlflow.registered_model == "memlm-demo"


def test_help_lists_every_command(tmp_path):
    result = memlm("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("run", "crawl", "clean", "split", "tokenize", "train", "evaluate", "ui", "serve-site", "generate", "plan"):
        assert command in result.stdout


def _stage_inputs(tmp_path: Path, clean_record: str) -> Path:
    """A run folder whose clean stage left `clean_record` and no documents, and a config for it."""
    (tmp_path / "run" / "clean").mkdir(parents=True)
    (tmp_path / "run" / "clean" / "stage.json").write_text(clean_record)
    (tmp_path / "run" / "clean" / "docs.jsonl").write_text("")
    config = tmp_path / "c.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\nmlflow:\n  tracking_uri: sqlite:///{tmp_path}/mlflow.db\n")
    return config


@pytest.mark.integration
def test_a_stage_that_stops_for_a_known_reason_says_so_in_one_line(tmp_path, prefect_api):
    config = _stage_inputs(tmp_path, '{"key": "k", "summary": {"docs_sha256": "0"}}')
    result = memlm("split", "--config", str(config), cwd=tmp_path, env=prefect_api)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "Finished in state Failed" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    log = tmp_path / "run" / "memlm.log"
    assert errors == [f"error: the train split is empty (0 documents in all, split by section): crawl more pages or change "
                      f"split.val_fraction (details: {log})"]
    # Prefect's task and flow tracebacks are in the run's log.
    assert log.read_text().count("Traceback") >= 2 and "EmptySplitError" in log.read_text()


@pytest.mark.integration
@pytest.mark.parametrize("command, left_behind, missing, stage", [
    ("tokenize", [], "split/manifest.json", "split"),
    # A training cut short leaves its periodic checkpoint, not a finished stage.
    ("evaluate", ["train/checkpoint/model.safetensors"], "train/stage.json", "train"),
])
def test_a_stage_run_before_its_input_names_the_command_that_makes_it(tmp_path, prefect_api, command, left_behind,
                                                                      missing, stage):
    run = tmp_path / "run"
    for path in left_behind:
        (run / path).parent.mkdir(parents=True, exist_ok=True)
        (run / path).write_bytes(b"")
    config = tmp_path / "c.yaml"
    config.write_text(f"run_dir: {run}\nmlflow:\n  tracking_uri: sqlite:///{tmp_path}/mlflow.db\n")
    result = memlm(command, "--config", str(config), cwd=tmp_path, env=prefect_api)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {run / missing} does not exist: the {stage} stage has not run to its end for run_dir "
                      f"{run}; run `memlm {stage}` with this config first (or `memlm run` for every stage) "
                      f"(details: {run / 'memlm.log'})"]


# A record this memlm never writes, and documents that are not JSON (a ValueError memlm did not raise):
# bugs or damage, not reasons, so the traceback stays.
@pytest.mark.integration
@pytest.mark.parametrize("clean_record, docs, error", [
    ('{"key": "k"}', "", "KeyError: 'summary'"),
    ('{"key": "k", "summary": {"docs_sha256": "0"}}', "{not json\n", "json.decoder.JSONDecodeError"),
])
def test_an_unexpected_error_keeps_its_traceback(tmp_path, prefect_api, clean_record, docs, error):
    config = _stage_inputs(tmp_path, clean_record)
    (tmp_path / "run" / "clean" / "docs.jsonl").write_text(docs)
    result = memlm("split", "--config", str(config), cwd=tmp_path, env=prefect_api)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and error in result.stderr, result.stderr[-2000:]


def test_demo_rnn_config_is_the_demo_with_the_recurrent_model():
    from flows.config import load_config

    configs = Path(__file__).parents[1] / "configs"
    gpt, rnn = load_config(configs / "demo.yaml"), load_config(configs / "demo-rnn.yaml")
    assert rnn.model.arch == "rnn-attention" and (rnn.model.n_layer, rnn.model.n_embd) == (2, 456)
    for section in ("crawl", "clean", "split", "tokenize", "evaluate"):
        assert getattr(rnn, section) == getattr(gpt, section), section
    assert rnn.train.model_copy(update={"max_minutes": gpt.train.max_minutes}) == gpt.train
    assert rnn.run_dir != gpt.run_dir and rnn.mlflow.registered_model != gpt.mlflow.registered_model


def test_expected_failures_name_memlms_errors_and_import_nothing():
    """Every name is an exception class of memlm's; looking them up after a failure imports nothing (the
    one-line error came about 5 s late while torch and DCP were imported to check the error's class)."""
    import importlib

    from flows.failures import EXPECTED_FAILURES

    for dotted in EXPECTED_FAILURES:
        module, name = dotted.rsplit(".", 1)
        assert issubclass(getattr(importlib.import_module(module), name), Exception), dotted
    probe = ("import sys; from flows.failures import expected_failures; from corpus.split import EmptySplitError; "
             "found = expected_failures(); assert EmptySplitError in found, found; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=120)
