"""Politeness and logging of the crawl: a delay and AutoThrottle for remote hosts, none for a folder
served on 127.0.0.1, the configured User-Agent on every request, and Scrapy's output in memlm's log
while the crawl runs."""
from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from crawlers.config import CrawlConfig
from crawlers.run import crawl
from tests.big_site import build_big_site

pytestmark = pytest.mark.integration
AGENT = "memlm-test-agent/1.0 (+https://example.org/bot)"


@contextlib.contextmanager
def recording_server(root, host: str):
    """Serve `root` on `host`; yields (base URL, [(time, path, User-Agent)] of every request)."""
    requests: list[tuple[float, str, str]] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append((time.monotonic(), self.path, self.headers.get("User-Agent", "")))
            super().do_GET()

        def log_message(self, format, *args):  # noqa: A002
            pass

    server = ThreadingHTTPServer((host, 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()


def page_gaps(requests) -> list[float]:
    times = sorted(t for t, path, _ in requests if path.endswith(".html"))
    return [b - a for a, b in zip(times, times[1:])]


def test_a_remote_host_gets_the_delay_and_the_user_agent_a_local_one_no_delay(site, tmp_path):
    # 127.0.0.2 is this machine too, but not one of the hosts crawled at full speed.
    config = dict(max_pages=6, site_dir=None, download_delay_s=0.4, autothrottle=False, user_agent=AGENT)
    with recording_server(site[0], "127.0.0.2") as (url, remote):
        crawl(CrawlConfig(start_urls=[url + "index.html"], **config), tmp_path / "remote")
    with recording_server(site[0], "127.0.0.1") as (url, local):
        crawl(CrawlConfig(start_urls=[url + "index.html"], **config), tmp_path / "local")
    assert {agent for _, _, agent in remote + local} == {AGENT}
    assert any(path == "/robots.txt" for _, path, _ in remote)  # robots.txt is asked for, with that agent
    # A delay of 0.4 s with Scrapy's ±50% jitter: never less than 0.2 s between two pages of one host.
    assert len(page_gaps(remote)) >= 5 and min(page_gaps(remote)) >= 0.19
    assert sum(page_gaps(local)) < 0.5 * sum(page_gaps(remote))


def test_autothrottle_governs_a_remote_host(site, tmp_path):
    with recording_server(site[0], "127.0.0.2") as (url, remote):
        config = CrawlConfig(start_urls=[url + "index.html"], max_pages=5, site_dir=None, download_delay_s=0.05,
                             autothrottle=True, autothrottle_target_concurrency=1.0)
        result = crawl(config, tmp_path / "c")
    log = (tmp_path / "c" / "scrapy.log").read_text()
    assert "'AUTOTHROTTLE_ENABLED': 'True'" in log and result.manifest["pages"] == 5
    # AutoThrottle starts a remote host's slot at AUTOTHROTTLE_START_DELAY (1 s) and lowers it from there as
    # responses come back fast: robots.txt and the first five pages take over 1 s, where the 0.05 s floor
    # with its ±50% jitter alone would spend under 0.4 s on them.
    times = sorted(t for t, _, _ in remote)
    assert times[5] - times[0] >= 1.0


def test_scrapy_output_reaches_the_log_while_the_crawl_runs(tmp_path, caplog):
    seen_while_running: list[int] = []

    def on_progress(pages: int, _limit: int) -> None:
        seen_while_running.append(sum(r.name == "memlm.crawl" for r in caplog.records))

    caplog.set_level(logging.DEBUG, logger="memlm.crawl")
    # DEBUG logs every request and item: far more than a pipe holds (64 KiB), which a crawl whose
    # output is read only at exit would block on.
    build_big_site(tmp_path / "site", 300)
    config = CrawlConfig(site_dir=tmp_path / "site", serve_port=0, max_pages=400, log_level="DEBUG", http_cache=False)
    result = crawl(config, tmp_path / "crawl", on_progress)
    assert result.manifest["pages"] == 300 + 3 + 1  # the pages, the chapters' indexes, the site's index
    assert seen_while_running and max(seen_while_running[:-1] or [0]) > 0
    assert (tmp_path / "crawl" / "scrapy.log").stat().st_size > 64 * 1024
    assert any("Spider closed" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
