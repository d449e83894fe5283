"""Shared fixtures: a test website served on 127.0.0.1, its crawl, and the corpus built from it."""
from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    # Each pytest-xdist worker its own Prefect home: the temporary servers its flows start then keep
    # their SQLite database apart from the other worker's.
    import atexit
    import shutil
    import tempfile

    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix=f"memlm-prefect-{os.environ['PYTEST_XDIST_WORKER']}-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

from crawlers.config import CrawlConfig  # noqa: E402
from crawlers.site_server import serve_site  # noqa: E402
from flows.config import MemlmConfig  # noqa: E402
from tests.site import build_site  # noqa: E402

torch.set_num_threads(max(1, 2 // WORKERS))  # the 2 cores these tests are sized for, shared by the workers


# Test files by their measured time, longest first (the rest follow in their own order): `make test`
# hands files to its two workers in this order (--no-loadscope-reorder), so that neither worker starts a
# long file when the other is nearly done.
LONGEST_FIRST = ("test_distributed.py", "test_live.py", "test_plan.py", "test_pipeline.py", "test_secrets.py",
                 "test_memory_budget.py", "test_cli.py", "test_clean_scale.py", "test_split.py", "test_rnn.py",
                 "test_techniques.py", "test_crawl_polite.py", "test_crawl.py", "test_clean_unparseable.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    expected = build_site(root)
    return root, expected


@pytest.fixture(scope="session")
def site_url(site):
    with serve_site(site[0]) as url:
        yield url


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout_s: float, what: str, every_s: float = 1.0):
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One Prefect server for this test process's flows: `memlm` commands get it through `env=prefect_api`
    (each would otherwise start and stop a temporary server of its own, about 13 s of the 18 s such a
    command takes here), flows run in this process through `prefect_flows`."""
    import subprocess
    import sys
    from pathlib import Path

    from flows.servers import answers

    home = tmp_path_factory.mktemp("prefect-server")
    log = home / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    with open(log, "wb") as out:
        server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                                   "127.0.0.1", "--port", str(port)],
                                  env={**os.environ, "PREFECT_HOME": str(home)}, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: answers(url + "/health") or server.poll() is not None, 120, "the Prefect server")
        if server.poll() is not None:
            pytest.fail(f"the Prefect server did not start:\n{log.read_text()[-2000:]}")
        yield {"PREFECT_API_URL": url}
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(30)


@pytest.fixture(scope="session")
def prefect_flows(prefect_api):
    """Flows run in this process report to `prefect_api`'s server (one per test process, rather than a
    prefect_test_harness server per test file)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_api["PREFECT_API_URL"]}):
        yield prefect_api
        # Logs and events still queued are sent before the server stops (else: "Error logging to API").
        APILogWorker.drain_all(timeout=30)
        EventsWorker.drain_all(timeout=30)


def small_config(tmp_path, site_url: str, **overrides) -> MemlmConfig:
    """A config that runs the whole pipeline on the test site in seconds."""
    data = {
        "name": "test",
        "run_dir": str(tmp_path / "run"),
        "crawl": {"start_urls": [site_url + "index.html"], "max_pages": 50, "site_dir": None},
        "clean": {"gopher_quality": {"min_words": 20}},
        "split": {"val_fraction": 0.3},
        "tokenize": {"vocab_size": 400},
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32},
        "train": {"batch_size": 8, "max_steps": 30, "warmup_steps": 5, "eval_interval": 10, "eval_batches": 2,
                  "checkpoint_interval": 10, "log_interval": 5, "lr": 0.01, "min_lr": 0.001, "threads": 2},
        "evaluate": {"prompts": ["The list"], "max_new_tokens": 12},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow/mlflow.db", "registered_model": "memlm-test"},
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return MemlmConfig.model_validate(data)


@pytest.fixture(scope="session")
def crawled(site_url, tmp_path_factory):
    from crawlers.run import crawl

    out = tmp_path_factory.mktemp("crawl")
    return crawl(CrawlConfig(start_urls=[site_url + "index.html"], max_pages=50, site_dir=None), out)


@pytest.fixture(scope="session")
def corpus(crawled, tmp_path_factory, site_url):
    """clean → split → tokenize on the crawled test site; returns (config, dirs)."""
    from corpus.clean import clean
    from corpus.split import split
    from corpus.tokenize import tokenize

    root = tmp_path_factory.mktemp("corpus")
    config = small_config(root, site_url)
    cleaned = clean(crawled.pages_file, root / "clean", config.clean)
    parts = split(cleaned.docs_file, root / "split", config.split)
    tokens = tokenize(parts.files, root / "tokens", config.tokenize)
    return config, {"root": root, "clean": cleaned, "split": parts, "tokens": tokens}


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_restored():
    """mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI for the process, and memlm lets that variable
    override the config: without this, one test's store would leak into the next test's runs."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
