"""Champion and challenger by bits per byte in a real MLflow registry (SQLite), and the fail-fast check
for servers that do not answer."""
from __future__ import annotations

import hashlib
import json
import time

import pytest

from crawlers.digests import corpus_changes, digest_table, load_table, save_table


@pytest.fixture
def registry(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    client.create_registered_model("m")
    for _ in range(3):
        client.create_model_version("m", source=(tmp_path / "model").as_uri())
    return client


def test_the_better_version_holds_champion(registry):
    from flows.registry import list_versions, promote

    first = promote("m", "1", 2.0, lambda v: pytest.fail("there is no champion to measure yet"))
    assert first.winner == "1" and "first version" in first.decision
    second = promote("m", "2", 1.9, lambda v: {"1": 2.1}[v])  # v1 scores 2.1 on the current split
    assert second.winner == "2" and second.champion_version == "1" and second.champion_bpb == 2.1
    assert registry.get_registered_model("m").aliases == {"champion": 2, "challenger": 1}
    third = promote("m", "3", 2.5, lambda v: {"2": 1.95}[v])
    assert third.winner == "2" and "v2 stays champion" in third.decision
    assert registry.get_registered_model("m").aliases == {"champion": 2, "challenger": 3}
    rows = {r["version"]: r for r in list_versions("m")}
    assert rows["2"]["aliases"] == ["champion"] and rows["3"]["aliases"] == ["challenger"]
    assert rows["2"]["bits_per_byte_current_val"] == "1.95000" and rows["3"]["promotion"] == third.decision


def test_corpus_changes_count_added_changed_and_removed():
    def changes(before: dict[str, str], after: dict[str, str]) -> dict[str, int]:
        return corpus_changes(digest_table(before.items()), digest_table(after.items()))

    sha = {n: hashlib.sha256(str(n).encode()).hexdigest() for n in range(5)}
    assert changes({}, {"a": sha[1]}) == {"added": 1, "changed": 0, "removed": 0}
    assert changes({"a": sha[1], "b": sha[2]}, {"a": sha[1], "b": sha[3], "c": sha[4]}) == {"added": 1, "changed": 1, "removed": 0}
    assert changes({"a": sha[1], "b": sha[2]}, {"a": sha[1]}) == {"added": 0, "changed": 0, "removed": 1}
    assert changes({"a": sha[1]}, {"a": sha[1]}) == {"added": 0, "changed": 0, "removed": 0}


def test_the_published_corpus_is_read_back_and_a_map_from_before_digest_tables_is_converted(tmp_path):
    pages = {"http://h/a": hashlib.sha256(b"a").hexdigest(), "http://h/b": hashlib.sha256(b"b").hexdigest()}
    unchanged = {"added": 0, "changed": 0, "removed": 0}
    assert len(load_table(tmp_path / "published.npy")) == 0
    (tmp_path / "published.json").write_text(json.dumps(pages))
    assert corpus_changes(load_table(tmp_path / "published.npy"), digest_table(pages.items())) == unchanged
    save_table(tmp_path / "published.npy", digest_table(pages.items()))
    (tmp_path / "published.json").unlink()
    assert corpus_changes(load_table(tmp_path / "published.npy"), digest_table(pages.items())) == unchanged
    assert not list(tmp_path.glob("*.partial"))


def test_a_server_that_does_not_answer_fails_in_seconds_naming_its_url(tmp_path, monkeypatch):
    from flows.config import MemlmConfig
    from flows.servers import ServerError, use_running_servers

    from tests.conftest import free_port

    port = free_port()  # nothing listens on it
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{port}/api")
    config = MemlmConfig.model_validate({"servers": {"state_dir": str(tmp_path / "state")}})
    started = time.monotonic()
    with pytest.raises(ServerError, match=rf"Prefect API at http://127.0.0.1:{port}/api did not answer.*memlm up"):
        use_running_servers(config)
    assert time.monotonic() - started < 5


def test_a_folder_crawls_many_start_urls_fit_in_a_dataset_tag():
    from flows.tracking import crawled_from

    urls = [f"http://127.0.0.1:8731/library/module{i}.html" for i in range(530)]
    assert len(crawled_from(urls)) <= 500 and crawled_from(urls).endswith("and 529 more start URLs")
    assert crawled_from(urls[:2]) == ", ".join(urls[:2])
