"""Run the crawl stage: Scrapy in a subprocess (Twisted's reactor cannot restart in one process)."""
from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from crawlers.config import LOCAL_HOSTS, CrawlConfig
from crawlers.store import MANIFEST_FILE, PAGES_FILE, SCRAPY_MANIFEST_FILE, count_complete_records, write_atomically
from crawlers.site_server import serve_site

ProgressCallback = Callable[[int, int], None]
HTTP_CACHE_DIR = "httpcache"
FRONTIER_DIR = "frontier"
START_URLS_FILE = "start_urls.txt"
MANIFEST_START_URLS = 20
SCRAPY_LEVEL = re.compile(r"^\S+ \S+ \[[^\]]+\] (DEBUG|INFO|WARNING|ERROR|CRITICAL): ")
log = logging.getLogger("memlm.crawl")


@dataclass
class CrawlResult:
    pages_file: Path
    manifest_file: Path
    manifest: dict


class CrawlError(RuntimeError):
    pass


def crawl(config: CrawlConfig, out_dir: Path, on_progress: ProgressCallback | None = None) -> CrawlResult:
    """Crawl the configured site into `out_dir/pages.jsonl`, `out_dir/page_digests.npy` and, last,
    `out_dir/manifest.json`.

    A page store without a manifest is a crawl that was stopped (even by SIGKILL): it is resumed, keeping
    its pages and fetching only what they link to that is not stored yet."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.start_urls:
        return _run_scrapy(config, config.start_urls, out_dir, on_progress)
    site_dir = Path(config.site_dir)
    if not site_dir.is_dir():
        raise CrawlError(
            f"crawl.site_dir {site_dir} does not exist: install it (Debian: apt-get install python3.11-doc), "
            "point crawl.site_dir at any folder of HTML, or set crawl.start_urls to a live site"
        )
    with serve_site(site_dir, port=config.serve_port) as base_url:
        return _run_scrapy(config, folder_start_urls(site_dir, base_url, config), out_dir, on_progress)


def folder_start_urls(site_dir: Path, base_url: str, config: CrawlConfig) -> Iterator[str]:
    """The index first, then every HTML file of the folder that the URL patterns allow, in the order of
    their paths: a file dropped into the folder is crawled even before any page links to it."""
    yield base_url + "index.html" if (site_dir / "index.html").exists() else base_url
    deny = [re.compile(p) for p in config.deny]
    allow = [re.compile(p) for p in config.allow]
    for path in _html_files(site_dir):
        url = base_url + quote(path)
        if path != "index.html" and not any(d.search(url) for d in deny) and (
                not allow or any(a.search(url) for a in allow)):
            yield url


def _html_files(folder: Path, prefix: str = "") -> Iterator[str]:
    """The `*.htm*` files under `folder` as relative paths, in sorted order, holding one folder's names
    at a time (a site of 100,000 files as one sorted list was 10 MB held through the crawl). A folder
    sorts as its name and a slash, as its files' paths do."""
    try:
        with os.scandir(folder) as scan:
            names = sorted(e.name + "/" if e.is_dir(follow_symlinks=False) else e.name for e in scan
                           if e.is_dir(follow_symlinks=False)
                           or (e.is_file() and fnmatch.fnmatchcase(e.name, "*.htm*")))
    except OSError as exc:  # skipped, as pathlib's rglob skips it, but said
        log.warning("not crawled: %s cannot be listed (%s)", folder, exc.strerror or exc)
        return
    for name in names:
        if name.endswith("/"):
            yield from _html_files(folder / name, prefix + name)
        else:
            yield prefix + name


def scrapy_settings(config: CrawlConfig, out_dir: Path, stored: int) -> dict:
    """Scrapy's settings for one crawl of `config` into `out_dir` that has `stored` pages already."""
    local_slot = {"delay": 0, "concurrency": config.concurrency}
    return {
        "MEMLM_OUT_DIR": str(out_dir.resolve()),
        "MEMLM_MAX_PAGES": config.max_pages,
        "CLOSESPIDER_ITEMCOUNT": max(config.max_pages - stored, 1),
        "REDIRECT_MAX_TIMES": config.max_redirects,
        # A recrawl asks with If-Modified-Since / If-None-Match and gets 304 for what did not change.
        "HTTPCACHE_ENABLED": config.http_cache,
        "HTTPCACHE_POLICY": "scrapy.extensions.httpcache.RFC2616Policy",
        "HTTPCACHE_DIR": str((out_dir / HTTP_CACHE_DIR).resolve()),
        "ROBOTSTXT_OBEY": config.obey_robots,
        "DOWNLOAD_MAXSIZE": int(config.download_maxsize_mb * 1024 * 1024),
        "DOWNLOAD_TIMEOUT": config.download_timeout_s,
        "CONCURRENT_REQUESTS": config.concurrency,
        # Remote hosts get the polite settings; the local hosts' download slots override them (and
        # AutoThrottle leaves those slots alone: crawlers/throttle.py).
        "CONCURRENT_REQUESTS_PER_DOMAIN": config.concurrency_per_host,
        "DOWNLOAD_DELAY": config.download_delay_s,
        "AUTOTHROTTLE_ENABLED": config.autothrottle,
        "AUTOTHROTTLE_START_DELAY": max(config.download_delay_s, 1.0),
        "AUTOTHROTTLE_MAX_DELAY": config.autothrottle_max_delay_s,
        "AUTOTHROTTLE_TARGET_CONCURRENCY": config.autothrottle_target_concurrency,
        "DOWNLOAD_SLOTS": json.dumps({host: local_slot for host in LOCAL_HOSTS}),
        "USER_AGENT": config.user_agent,
        "LOG_LEVEL": config.log_level,
        # The frontier (requests not sent yet) waits on disk, not in memory.
        "JOBDIR": str((out_dir / FRONTIER_DIR).resolve()),
    }


def _run_scrapy(config: CrawlConfig, start_urls: Iterable[str], out_dir: Path,
                on_progress: ProgressCallback | None) -> CrawlResult:
    pages_file, manifest_file, log_file = out_dir / PAGES_FILE, out_dir / MANIFEST_FILE, out_dir / "scrapy.log"
    scrapy_manifest = out_dir / SCRAPY_MANIFEST_FILE
    resume = pages_file.exists() and not manifest_file.exists()
    # One URL a line in a file: a served folder of 100,000 pages has as many start URLs, far more than
    # a command-line argument may hold. Written before the last crawl's manifest is removed, so that a
    # folder that cannot be listed leaves a finished crawl finished.
    start_file = out_dir / START_URLS_FILE
    first_urls, start_url_count = _write_start_urls(start_file, start_urls)
    stored = count_complete_records(pages_file) if resume else 0
    manifest_file.unlink(missing_ok=True)
    scrapy_manifest.unlink(missing_ok=True)
    # A frontier left by a killed crawl is not trusted (Scrapy loses it on SIGKILL): the spider rebuilds
    # it from the stored pages' links.
    shutil.rmtree(out_dir / FRONTIER_DIR, ignore_errors=True)
    args = {
        "start_urls_file": str(start_file.resolve()),
        "allowed_domains": json.dumps(config.allowed_domains),
        "allow": json.dumps(config.allow),
        "deny": json.dumps(config.deny),
        "max_depth": str(config.max_depth),
        "resume": "1" if resume else "0",
    }
    cmd = [sys.executable, "-m", "scrapy", "crawl", "site"]
    for key, value in args.items():
        cmd += ["-a", f"{key}={value}"]
    for key, value in scrapy_settings(config, out_dir, stored).items():
        cmd += ["-s", f"{key}={value}"]
    env = {**os.environ, "SCRAPY_SETTINGS_MODULE": "crawlers.settings"}
    started = time.monotonic()
    # Scrapy logs to stderr; a thread copies each line to scrapy.log and to memlm's log as it comes, so
    # that a chatty crawl never fills a pipe and blocks.
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    last_lines: deque[str] = deque(maxlen=15)
    copier = threading.Thread(target=_copy_log, args=(proc.stdout, log_file, last_lines), daemon=True,
                              name="memlm-crawl-log")
    copier.start()
    counter = RecordCounter(pages_file)
    while proc.poll() is None:
        if on_progress:
            on_progress(counter.count(), config.max_pages)
        time.sleep(0.5)
    copier.join()
    if proc.returncode != 0 or not scrapy_manifest.exists():
        tail = "\n".join(last_lines)
        raise CrawlError(f"scrapy exited with code {proc.returncode}; log: {log_file}\n{tail}")
    # Imported once Scrapy has exited, so that numpy (about 17 MB) is not held while the crawl runs.
    from crawlers.digests import PAGE_DIGESTS_FILE, content_digest, save_table, stored_page_digests

    manifest = json.loads(scrapy_manifest.read_text())
    digests = stored_page_digests(pages_file)
    save_table(out_dir / PAGE_DIGESTS_FILE, digests)
    manifest["content_digest"] = content_digest(digests)
    manifest["page_digests_file"] = PAGE_DIGESTS_FILE
    manifest["start_urls"] = first_urls
    manifest["start_url_count"] = start_url_count
    manifest["resumed"] = resume
    manifest["elapsed_s"] = round(time.monotonic() - started, 1)
    write_atomically(manifest_file, json.dumps(manifest, indent=2).encode())
    scrapy_manifest.unlink()
    if on_progress:
        on_progress(manifest["pages"], config.max_pages)
    if manifest["pages"] == 0:
        raise CrawlError(
            f"the crawl stored no pages from {', '.join(first_urls[:3])}{' …' if start_url_count > 3 else ''} (skipped: {manifest['skipped'] or 'nothing'}); "
            f"check the start URLs, crawl.allow/deny and robots.txt; log: {log_file}"
        )
    return CrawlResult(pages_file, manifest_file, manifest)


def _write_start_urls(path: Path, urls: Iterable[str]) -> tuple[list[str], int]:
    """One URL a line, streamed; the first few (for the manifest) and how many."""
    first: list[str] = []
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for url in urls:
            f.write(url + "\n")
            if count < MANIFEST_START_URLS:
                first.append(url)
            count += 1
    return first, count


def _copy_log(stream, log_file: Path, last_lines: deque) -> None:
    """Each line of Scrapy's output to `log_file` and to memlm's log at the level Scrapy gave it (lines
    that continue a record, such as a traceback's or the final stats', at that record's level; output
    that is no log record at all, such as a crash before logging starts, as an error)."""
    level = logging.ERROR
    with open(log_file, "a", encoding="utf-8") as out:
        for line in stream:
            out.write(line)
            out.flush()
            line = line.rstrip("\n")
            last_lines.append(line)
            if match := SCRAPY_LEVEL.match(line):
                level = logging.getLevelName(match.group(1))
            log.log(level, "%s", line)


class RecordCounter:
    """Whole lines of a growing JSONL file, counted from where the last count stopped."""

    def __init__(self, path: Path):
        self.path, self.offset, self.lines = path, 0, 0

    def count(self) -> int:
        if not self.path.exists():
            return self.lines
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for chunk in iter(lambda: f.read(1 << 20), b""):
                self.lines += chunk.count(b"\n")
                self.offset += len(chunk)
        return self.lines
