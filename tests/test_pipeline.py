"""The whole pipeline as a real Prefect flow, logging to a real MLflow store, on the test site."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipeline_run(prefect_flows, site_url, tmp_path_factory):
    from flows.pipeline import pipeline_flow
    from tests.conftest import small_config

    # Its own name: the clean stage's table artifact is keyed by it, and other files' flows share this
    # test process's Prefect server.
    config = small_config(tmp_path_factory.mktemp("pipeline"), site_url, name="pipeline")
    first = pipeline_flow(config=config)
    second = pipeline_flow(config=config)
    return config, first, second


def test_pipeline_runs_every_stage_then_skips_unchanged_ones(pipeline_run):
    _, first, second = pipeline_run
    assert [o.name for o in first] == ["crawl", "clean", "split", "tokenize", "train", "evaluate"]
    assert not any(o.skipped for o in first)
    # The crawl always runs (a site can change); everything after it found its inputs unchanged.
    assert [o.skipped for o in second] == [False, True, True, True, True, True]
    assert second[-1].summary == first[-1].summary


def test_the_run_writes_its_summary_figures(pipeline_run):
    import json

    from flows.pipeline import headline

    config, first, second = pipeline_run
    summary = json.loads((config.run_dir / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == [o.name for o in second]
    assert [s["skipped"] for s in summary["stages"]] == [o.skipped for o in second]
    figures, shown = summary["figures"], headline(second)
    assert figures["bits_per_byte"] == first[-1].summary["bits_per_byte"] == shown["bits per byte"]
    assert figures["parameters"] == shown["parameters"] and figures["pages_crawled"] == shown["pages crawled"]
    assert round(figures["tokens_per_s"]) == shown["tokens/s"] and figures["registered_version"] == 1


def test_mlflow_holds_params_metrics_datasets_and_artifacts(pipeline_run):
    import mlflow

    config, first, _ = pipeline_run
    mlflow.set_tracking_uri(config.mlflow.tracking_uri.get_secret_value())
    train = next(o for o in first if o.name == "train").summary
    run = mlflow.get_run(train["mlflow_run_id"])
    assert run.data.params["model.n_embd"] == "32"
    assert run.data.params["crawl.max_pages"] == "50"
    for metric in ("train/loss", "val/loss", "train/tokens_per_s", "memory/peak_mib", "memory/activations_mib",
                   "memory/backward/peak_mib", "eval/bits_per_byte", "eval/perplexity"):
        assert metric in run.data.metrics, metric
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert len(history) >= 5 and history[-1].value < history[0].value
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train.bin", "val.bin"}
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "data/tokens")}
    assert {"data/tokens/manifest.json", "data/tokens/tokenizer.json"} <= artifacts
    plots = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/loss_curve.png", "plots/memory_timeline.png"}
    eval_files = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "eval")}
    assert "eval/samples.md" in eval_files


def test_registered_model_version_loads_and_generates(pipeline_run):
    import mlflow

    config, first, _ = pipeline_run
    mlflow.set_tracking_uri(config.mlflow.tracking_uri.get_secret_value())
    evaluation = first[-1].summary
    assert evaluation["registered_model"] == "memlm-test" and evaluation["registered_version"] == 1
    version = mlflow.MlflowClient().get_model_version("memlm-test", "1")
    assert float(version.tags["bits_per_byte"]) == pytest.approx(evaluation["bits_per_byte"])
    model = mlflow.pyfunc.load_model("models:/memlm-test/1")
    texts = model.predict(["The list", "A dictionary"], params={"max_new_tokens": 8, "temperature": 0.0})
    assert len(texts) == 2
    assert texts[0].startswith("The list") and len(texts[0]) > len("The list")
    again = model.predict(["The list"], params={"max_new_tokens": 8, "temperature": 0.0})
    assert again[0] == texts[0]


def test_new_page_reruns_the_stages_after_the_crawl(pipeline_run, site, tmp_path):
    """Adding a page changes the crawl's content digest, so cleaning onwards runs again."""
    from flows.pipeline import pipeline_flow
    from tests.site import page

    import time

    config, first, _ = pipeline_run
    root, _ = site
    extra = root / "extra.html"
    # Prose that every cleaning filter keeps (a sentence repeated twelve times is dropped as repetitive,
    # and the run would then see no new document).
    extra.write_text(page("Extra", "<p>The interpreter reads each source file once, compiles it to bytecode and "
                          "keeps the result in a cache next to the module. When the file changes, its timestamp no "
                          "longer matches the cached copy, so the next import compiles it again. Packages work the "
                          "same way: every module inside them is compiled on first use. You rarely need to think "
                          "about this, but it explains why the first run of a large program is slower than the "
                          "second one, and why deleting the cache folder is always safe.</p>", []))
    index = root / "index.html"
    time.sleep(1.1)  # the site server's Last-Modified has one-second resolution: a rewrite in the second of
    # the last fetch would be answered 304 Not Modified
    original = index.read_text()
    index.write_text(original.replace("</body>", '<a href="/extra.html">extra</a></body>'))
    try:
        config = config.model_copy(update={"train": config.train.model_copy(update={"max_steps": 5})})
        third = pipeline_flow(config=config)
    finally:
        index.write_text(original)
        extra.unlink()
    assert [o.skipped for o in third] == [False] * 6
    assert third[0].summary["pages"] == first[0].summary["pages"] + 1
    assert third[1].summary["docs_out"] == first[1].summary["docs_out"] + 1  # the new page, kept
    assert third[-1].summary["registered_version"] == 2


def _write_config(config, path):
    import yaml

    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def test_generate_command_streams_from_the_registry_reproducibly(pipeline_run, tmp_path):
    from tests.test_cli import memlm

    config, _, _ = pipeline_run
    config_file = _write_config(config, tmp_path / "config.yaml")
    args = ["generate", "-m", "models:/memlm-test/1", "-p", "The list", "--max-new-tokens", "10",
            "--seed", "3", "-c", str(config_file)]
    first, second = memlm(*args, cwd=tmp_path), memlm(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.startswith("The list")
    missing = memlm("generate", "-m", "models:/no-such-model/1", "-p", "x", "-c", str(config_file), cwd=tmp_path)
    assert missing.returncode == 2 and "cannot load model 'models:/no-such-model/1'" in missing.stderr
    bad = memlm("generate", "-m", "models:/memlm-test/1", "-p", "x", "--temperature", "-1", "-c", str(config_file),
                cwd=tmp_path)
    assert bad.returncode == 2 and "temperature must be >= 0" in bad.stderr
    half = memlm(*args[:-2], "--weights", "fp16", "-c", str(config_file), cwd=tmp_path)
    assert half.returncode == 0 and half.stdout.startswith("The list"), half.stderr
    unknown = memlm("generate", "-m", "models:/memlm-test/1", "-p", "x", "--weights", "int4", "-c", str(config_file),
                    cwd=tmp_path)
    assert unknown.returncode == 2 and "--weights must be one of fp32, fp16, bf16, int8" in unknown.stderr


def test_mlflow_serves_the_registered_model_over_http(pipeline_run, tmp_path):
    import json
    import os
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    from tests.conftest import free_port

    config, _, _ = pipeline_run
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    # mlflow starts its scoring server as `uvicorn`, found on PATH: the environment's own bin folder.
    env = {**os.environ, "MLFLOW_TRACKING_URI": config.mlflow.tracking_uri.get_secret_value(),
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                               "models:/memlm-test/1", "--env-manager", "local", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"],
                              env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                time.sleep(1)
        body = json.dumps({"inputs": ["The list", "A dictionary"],
                           "params": {"max_new_tokens": 6, "temperature": 0.0}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
        assert len(predictions) == 2 and predictions[0].startswith("The list")
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_clean_report_is_a_prefect_table_artifact(pipeline_run):
    import json

    from prefect.artifacts import Artifact

    artifact = Artifact.get("memlm-pipeline-clean")
    assert artifact is not None and artifact.type == "table"
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    steps = {row["step"] for row in rows}
    assert {"language", "boilerplate", "near_duplicate", "duplicate", "boilerplate leakage"} <= steps


@pytest.mark.usefixtures("prefect_flows")
def test_a_chinese_site_goes_from_crawl_to_a_model_that_writes_chinese(tmp_path):
    import re

    from crawlers.site_server import serve_site
    from flows.pipeline import pipeline_flow
    from model.checkpoint import load_lm
    from model.generate import generate_text
    from tests.conftest import small_config
    from tests.site import build_chinese_site

    pages = build_chinese_site(tmp_path / "site")
    with serve_site(tmp_path / "site") as url:
        config = small_config(tmp_path, url, name="zh", clean={"languages": {"keep": ["zh"]}},
                              evaluate={"prompts": ["列表"], "max_new_tokens": 12},
                              tokenize={"vocab_size": 1500}, train={"max_steps": 150, "lr": 0.01})
        outcomes = {o.name: o for o in pipeline_flow(config=config)}
    clean = outcomes["clean"].summary
    assert clean["languages_in"] == {"zh": len(pages)} and clean["docs_out"] >= len(pages) - 1
    assert clean["spacy_pipelines"] == {"zh": "blank:zh"}
    train = outcomes["train"].summary
    assert train["val_loss"] < train["val_loss_start"]
    from tokenizers import Tokenizer

    model = load_lm(tmp_path / "run" / "train" / "checkpoint")
    tokenizer = Tokenizer.from_file(str(tmp_path / "run" / "tokens" / "tokenizer.json"))
    # Several samples: one may end early at the end-of-text token (the site, and so the data, is keyed by
    # the test server's port, which changes from run to run).
    texts = [generate_text(model, tokenizer, "列表", max_new_tokens=30, temperature=0.8, top_k=40, seed=seed)
             .removeprefix("列表") for seed in range(5)]
    chinese = [len(re.findall(r"[\u4e00-\u9fff]", text)) for text in texts]
    letters = [len(re.findall(r"\w", text)) for text in texts]  # CJK, Latin letters and digits
    assert sum(n >= 5 for n in chinese) >= 3, texts
    assert sum(chinese) >= 0.5 * sum(letters) and "\ufffd" not in "".join(texts), texts
