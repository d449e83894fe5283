"""The crawl under fire: a hostile site on 127.0.0.1, and a crawl killed with SIGKILL that resumes."""
from __future__ import annotations

import json
import signal
import threading
import time
from urllib.parse import urlsplit

import psutil
import pytest

from crawlers.config import CrawlConfig
from crawlers.run import CrawlError, crawl
from crawlers.store import complete_records
from tests.hostile_site import (CP1252_TEXT, EXPECTED_FAILURES, GBK_TEXT, MANY_PAGES, SJIS_TEXT, STORED,
                                serve_hostile_site)

pytestmark = pytest.mark.integration


def records(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path.lstrip("/") + (f"?{parts.query}" if parts.query else "")


@pytest.fixture(scope="module")
def hostile_crawl(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile")
    with serve_hostile_site() as (url, hits):
        config = CrawlConfig(start_urls=[url + "index.html"], site_dir=None, deny=[], max_depth=3,
                             download_timeout_s=1.0, download_maxsize_mb=0.1)
        result = crawl(config, out)
    return result, hits, out


def test_every_good_page_is_stored_once(hostile_crawl):
    result, hits, _ = hostile_crawl
    stored = sorted(path_of(r["final_url"]) for r in records(result.pages_file))
    assert [p for p in stored if not p.startswith("calendar/")] == STORED
    # index (depth 0) -> 2026-01 (1) -> 02 (2) -> 03 (3); the depth limit stops the endless calendar.
    assert [p for p in stored if p.startswith("calendar/")] == [f"calendar/2026-0{m}.html" for m in (1, 2, 3)]
    assert result.manifest["skipped"]["max_depth"] == 1
    # Three session-id spellings of one article, and a link back with another: fetched once.
    assert hits["article.html"] == 1


def test_every_bad_page_is_recorded_with_its_reason(hostile_crawl):
    result, hits, out = hostile_crawl
    failures = {path_of(r["url"]): r["reason"] for r in records(out / "failures.jsonl")}
    for path, reason in EXPECTED_FAILURES.items():
        assert failures.get(path) == reason, (path, failures)
    offsite = [r["url"] for r in records(out / "failures.jsonl") if r["reason"] == "offsite"]
    assert offsite == ["http://offsite.invalid/page.html"]
    # Server errors are retried (RETRY_TIMES = 2) before they are recorded; a 404 is not.
    assert hits["busy503.html"] == 3 and hits["error500.html"] == 3 and hits["missing.html"] == 1
    assert hits["private/secret.html"] == 0
    counts = result.manifest["skipped"]
    assert all(counts[reason] >= 1 for reason in EXPECTED_FAILURES.values())


@pytest.mark.parametrize("path, text", [("cp1252.html", CP1252_TEXT), ("gbk.html", GBK_TEXT), ("sjis.html", SJIS_TEXT)])
def test_wrong_and_missing_charsets_decode(hostile_crawl, path, text):
    result, _, _ = hostile_crawl
    page = next(r for r in records(result.pages_file) if r["final_url"].endswith(path))
    assert text in page["html"]


def test_a_crawl_killed_with_sigkill_resumes_without_loss_or_duplicates(tmp_path):
    out = tmp_path / "crawl"
    with serve_hostile_site() as (url, hits):
        config = CrawlConfig(start_urls=[url + "many.html"], site_dir=None, deny=[], concurrency=2)
        failed: list[Exception] = []

        def first_run():
            try:
                crawl(config, out)
            except CrawlError as e:
                failed.append(e)

        thread = threading.Thread(target=first_run)
        thread.start()
        deadline = time.monotonic() + 60
        while sum(1 for _ in complete_records(out / "pages.jsonl")) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        scrapy = [p for p in psutil.Process().children(recursive=True) if "scrapy" in " ".join(p.cmdline())]
        assert scrapy, "the crawl subprocess was not found"
        for proc in scrapy:
            proc.send_signal(signal.SIGKILL)
        thread.join(30)
        assert failed and not (out / "manifest.json").exists()
        stored_before = {r["final_url"] for r in complete_records(out / "pages.jsonl")}
        assert 10 <= len(stored_before) < MANY_PAGES + 1
        hits_before = dict(hits)

        result = crawl(config, out)

    final = [r["final_url"] for r in records(result.pages_file)]
    assert len(final) == len(set(final)) == MANY_PAGES + 1  # many.html and every page it links to
    assert result.manifest["resumed"] and result.manifest["resumed_with_pages"] == len(stored_before)
    # A page stored before the kill is not fetched again.
    refetched = [u for u in stored_before if hits[path_of(u)] > hits_before.get(path_of(u), 0)]
    assert refetched == []


def test_a_torn_last_record_is_cut_off(tmp_path):
    store = tmp_path / "pages.jsonl"
    store.write_text('{"url": "a"}\n{"url": "b"}\n{"url": "c", "ht')
    assert [r["url"] for r in complete_records(store)] == ["a", "b"]
    assert store.read_text() == '{"url": "a"}\n{"url": "b"}\n'
