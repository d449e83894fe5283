"""Run the crawl stage: Scrapy in a subprocess (Twisted's reactor cannot restart in one process)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from crawlers.config import CrawlConfig
from crawlers.store import MANIFEST_FILE, PAGES_FILE, complete_records
from crawlers.site_server import serve_site

ProgressCallback = Callable[[int, int], None]
HTTP_CACHE_DIR = "httpcache"


@dataclass
class CrawlResult:
    pages_file: Path
    manifest_file: Path
    manifest: dict


class CrawlError(RuntimeError):
    pass


def crawl(config: CrawlConfig, out_dir: Path, on_progress: ProgressCallback | None = None) -> CrawlResult:
    """Crawl the configured site into `out_dir/pages.jsonl` and `out_dir/manifest.json`.

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


def folder_start_urls(site_dir: Path, base_url: str, config: CrawlConfig) -> list[str]:
    """The index first, then every HTML file of the folder that the URL patterns allow: a file dropped
    into the folder is crawled even before any page links to it."""
    index = [base_url + "index.html"] if (site_dir / "index.html").exists() else [base_url]
    deny = [re.compile(p) for p in config.deny]
    allow = [re.compile(p) for p in config.allow]
    files = sorted(p.relative_to(site_dir).as_posix() for p in site_dir.rglob("*.htm*") if p.is_file())
    urls = [base_url + quote(f) for f in files if f != "index.html"]
    return index + [u for u in urls if not any(d.search(u) for d in deny)
                    and (not allow or any(a.search(u) for a in allow))]


def _run_scrapy(config: CrawlConfig, start_urls: list[str], out_dir: Path,
                on_progress: ProgressCallback | None) -> CrawlResult:
    pages_file, manifest_file, log_file = out_dir / PAGES_FILE, out_dir / MANIFEST_FILE, out_dir / "scrapy.log"
    resume = pages_file.exists() and not manifest_file.exists()
    stored = sum(1 for _ in complete_records(pages_file)) if resume else 0
    manifest_file.unlink(missing_ok=True)
    settings = {
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
        "CONCURRENT_REQUESTS_PER_DOMAIN": config.concurrency,
        "USER_AGENT": config.user_agent,
        "LOG_FILE": str(log_file.resolve()),
    }
    args = {
        "start_urls": json.dumps(start_urls),
        "allowed_domains": json.dumps(config.allowed_domains),
        "allow": json.dumps(config.allow),
        "deny": json.dumps(config.deny),
        "max_depth": str(config.max_depth),
        "resume": "1" if resume else "0",
    }
    cmd = [sys.executable, "-m", "scrapy", "crawl", "site"]
    for key, value in args.items():
        cmd += ["-a", f"{key}={value}"]
    for key, value in settings.items():
        cmd += ["-s", f"{key}={value}"]
    env = {**os.environ, "SCRAPY_SETTINGS_MODULE": "crawlers.settings"}
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        if on_progress:
            on_progress(_count_lines(pages_file), config.max_pages)
        time.sleep(0.5)
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0 or not manifest_file.exists():
        tail = "\n".join((stderr or _tail(log_file)).splitlines()[-15:])
        raise CrawlError(f"scrapy exited with code {proc.returncode}; log: {log_file}\n{tail}")
    manifest = json.loads(manifest_file.read_text())
    manifest["start_urls"] = start_urls
    manifest["resumed"] = resume
    manifest["elapsed_s"] = round(time.monotonic() - started, 1)
    manifest_file.write_text(json.dumps(manifest, indent=2))
    if on_progress:
        on_progress(manifest["pages"], config.max_pages)
    if manifest["pages"] == 0:
        raise CrawlError(
            f"the crawl stored no pages from {', '.join(start_urls)} (skipped: {manifest['skipped'] or 'nothing'}); "
            f"check the start URLs, crawl.allow/deny and robots.txt; log: {log_file}"
        )
    return CrawlResult(pages_file, manifest_file, manifest)


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""
