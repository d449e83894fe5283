"""Cleaning and crawling at scale: bounded memory (line counts spilled to disk, a page store read one
record at a time) and the Dask runner, which must give the processes runner's documents byte for byte."""
from __future__ import annotations

import importlib
import json
import os
import tracemalloc

import pytest

from corpus.clean import clean
from corpus.config import CleanConfig
from crawlers.digests import stored_page_digests
from crawlers.store import PageStore

pytestmark = pytest.mark.integration
SETTINGS = {"gopher_quality": {"min_words": 20}}


def same_report(a: dict, b: dict) -> None:
    for part in ("pages_in", "docs_out", "dropped", "lines_removed", "pii_replaced", "leakage", "languages_out",
                 "boilerplate", "near_duplicates"):
        assert a[part] == b[part], part


def test_line_counts_spilled_to_disk_give_the_same_documents(crawled, tmp_path):
    in_memory = clean(crawled.pages_file, tmp_path / "memory", CleanConfig(workers=1, **SETTINGS))
    spilled = clean(crawled.pages_file, tmp_path / "spilled",
                    CleanConfig(workers=1, boilerplate={"max_counts_in_memory": 10}, **SETTINGS))
    assert in_memory.report["memory"]["line_counts"]["spills"] == 0
    assert spilled.report["memory"]["line_counts"]["spills"] >= 5
    assert spilled.report["memory"]["line_counts"]["peak_entries_in_memory"] <= 10 + 200  # one page's lines past the limit
    assert spilled.docs_file.read_bytes() == in_memory.docs_file.read_bytes()
    same_report(spilled.report, in_memory.report)
    assert in_memory.report["memory"]["near_duplicate_index"]["documents"] == in_memory.report["docs_out"]
    assert not (tmp_path / "spilled" / "line-counts.sqlite").exists()  # the spill is removed at the end


NANNY_SETS = ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PYTHONHASHSEED")


@pytest.mark.usefixtures("prefect_flows")
def test_the_dask_runner_gives_the_processes_runners_documents(crawled, tmp_path, monkeypatch):
    from distributed import LocalCluster

    from corpus.runners import prefect_api_url

    for name in NANNY_SETS:  # a plain LocalCluster's nanny sets them here: taken back after the test
        monkeypatch.delenv(name, raising=False)
    processes = clean(crawled.pages_file, tmp_path / "processes", CleanConfig(workers=2, **SETTINGS))
    # The workers report their task runs to this process's Prefect server, as a cluster's workers would
    # (without it each starts a temporary server of its own).
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      env={"PREFECT_API_URL": prefect_api_url()}) as cluster:
        dask = clean(crawled.pages_file, tmp_path / "dask",
                     CleanConfig(runner="dask", dask_address=cluster.scheduler_address, shard_pages=4, **SETTINGS))
        # The workers did the work: each has the config it was sent, and spaCy loaded.
        held = cluster.get_client().run(lambda: importlib.import_module("corpus.workers")._state.get("config") is not None)
    assert dask.docs_file.read_bytes() == processes.docs_file.read_bytes()
    same_report(dask.report, processes.report)
    assert dask.report["runner"] == "dask" and all(held.values())
    # Without an address memlm starts a local cluster of its own, with large shards (a few per worker).
    own = clean(crawled.pages_file, tmp_path / "own", CleanConfig(runner="dask", workers=2, **SETTINGS))
    assert own.docs_file.read_bytes() == processes.docs_file.read_bytes()
    same_report(own.report, processes.report)


@pytest.mark.usefixtures("prefect_flows")
def test_memlms_own_cluster_keeps_glibcs_adaptive_malloc_and_leaves_this_process_environment_alone(monkeypatch):
    from distributed import Client

    from corpus.runners import local_cluster

    for name in NANNY_SETS:  # as a user's shell has them
        monkeypatch.delenv(name, raising=False)
    with local_cluster(2) as address, Client(address) as client:
        seen = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")))
        during = {name for name in NANNY_SETS if name in os.environ}
    assert list(seen.values()) == [(None, "1")] * 2  # Dask's numeric-thread settings kept, its malloc one not
    assert during == set()  # the nanny's variables taken back from this process once the workers started
    assert not {name for name in NANNY_SETS if name in os.environ}


def test_a_resumed_page_store_holds_no_pages_in_memory(tmp_path):
    html = "<p>" + "word " * 20_000 + "</p>"  # 100 kB a page, 40 MB in all
    with open(tmp_path / "pages.jsonl", "w") as f:
        for i in range(400):
            record = {"url": f"http://h/{i}", "final_url": f"http://h/{i}", "status": 200, "fetched_at": "",
                      "content_type": "text/html", "encoding": "utf-8", "sha256": f"{i:016x}" * 4, "depth": 1,
                      "html": html}
            f.write(json.dumps(record) + "\n")
        f.write('{"url": "http://h/torn", "html": "<p>half')  # a crawl killed mid-write
    tracemalloc.start()
    store = PageStore(tmp_path, resume=True)
    digests = stored_page_digests(tmp_path / "pages.jsonl")
    biggest = max(len(r["html"]) for r in store.stored_records())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    store.close()
    assert store.pages == len(digests) == 400 and store.has_page("http://h/399") and not store.has_page("http://h/torn")
    assert biggest == len(html)
    assert peak < 2_000_000, f"{peak} bytes held to resume a 40 MB store"
