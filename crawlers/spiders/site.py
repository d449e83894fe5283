"""The site spider: stores every HTML page it reaches within the allowed domains, URL patterns and
depth, records every URL that gave no page with its reason, and resumes from its page store."""
from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path

from scrapy import Spider
from scrapy.exceptions import (CannotResolveHostError, DownloadCancelledError, DownloadConnectionRefusedError,
                               DownloadTimeoutError, IgnoreRequest, ResponseDataLossError)
from scrapy.http import Request, Response
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.internet.error import ConnectionRefusedError, DNSLookupError, TCPTimedOutError
from twisted.internet.error import TimeoutError as TwistedTimeoutError

from crawlers.decode import NotText, decode_html
from crawlers.hashset import HashSet
from crawlers.store import PageStore, url_hash
from crawlers.urls import canonical_url, host_of, on_domains, page_links

HTML_TYPES = {"text/html", "application/xhtml+xml"}
# Reasons a downloader middleware gives when it drops a request, as the manifest names them.
IGNORED = {"Forbidden by robots.txt": "robots_disallowed", "max redirections reached": "redirect_limit",
           "Filtered offsite request": "offsite"}


def _list_arg(value: str | list[str] | None) -> list[str]:
    """Spider arguments arrive as strings from the command line: a JSON list or comma-separated."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    if value.lstrip().startswith("["):
        return list(json.loads(value))
    return [part.strip() for part in value.split(",") if part.strip()]


def content_type(response: Response) -> tuple[str, str | None]:
    """(media type, charset or None) from the Content-Type header."""
    header = response.headers.get(b"Content-Type", b"").decode("latin-1")
    media, _, params = header.partition(";")
    charset = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", params, re.I)
    return media.strip().lower(), charset.group(1) if charset else None


class SiteSpider(Spider):
    name = "site"

    def __init__(self, start_urls=None, allowed_domains=None, allow=None, deny=None, max_depth=0, resume="0",
                 start_urls_file=None, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.start_urls = _list_arg(start_urls)
        self.start_urls_file = Path(start_urls_file) if start_urls_file else None
        if not self.start_urls and not self.start_urls_file:
            raise ValueError("the site spider needs start_urls (-a start_urls=https://example.org/) or "
                             "start_urls_file (one URL a line)")
        self.domains = [d.lower() for d in _list_arg(allowed_domains)] or sorted(
            {host_of(u) for u in self._start_urls()})
        self.allow = [re.compile(p) for p in _list_arg(allow)]
        self.deny = [re.compile(p) for p in _list_arg(deny)]
        self.max_depth = int(max_depth)
        self.resume = str(resume) in ("1", "true", "True")
        self.enqueued = HashSet()  # hashes of the canonical URLs requested or recorded

    @classmethod
    def from_crawler(cls, crawler, *args, **kwargs):
        spider = super().from_crawler(crawler, *args, **kwargs)
        spider.store = PageStore(Path(crawler.settings.get("MEMLM_OUT_DIR")), resume=spider.resume)
        return spider

    async def start(self):
        for url in self._start_urls():
            key = url_hash(canonical_url(url))
            # A served folder's files are all start URLs; a page linked from one fetched earlier is
            # enqueued already.
            if key not in self.enqueued and not self.store.has_page(url):
                self.enqueued.add(key)
                yield self._request(url, 0)
        # After a restart the frontier is rebuilt from the stored pages' own links: whatever they link
        # to that is neither stored nor failed is still to fetch.
        for record in self.store.stored_records():
            for request in self._follow(record["html"], record["final_url"], record.get("depth", 0)):
                yield request

    def _start_urls(self):
        yield from self.start_urls
        if self.start_urls_file:
            with open(self.start_urls_file, encoding="utf-8") as f:
                yield from (line.strip() for line in f if line.strip())

    def parse(self, response: Response):
        if not on_domains(response.url, self.domains):
            self.store.add_failure(response.request.meta.get("redirect_urls", [response.url])[0], "offsite",
                                   f"redirected to {response.url}")
            return
        media, charset = content_type(response)
        if media not in HTML_TYPES:
            self.store.add_failure(response.url, "not_html", media or "no Content-Type")
            return
        try:
            html, encoding = decode_html(response.body, charset)
        except NotText:
            self.store.add_failure(response.url, "binary", f"served as {media}")
            return
        depth = response.meta.get("depth", 0)
        redirects = response.request.meta.get("redirect_urls") or [response.url]
        yield {
            "url": redirects[0],
            "final_url": response.url,
            "status": response.status,
            "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "content_type": media,
            "encoding": encoding,
            "sha256": hashlib.sha256(response.body).hexdigest(),
            "depth": depth,
            "html": html,
        }
        yield from self._follow(html, response.url, depth)

    def _follow(self, html: str, page_url: str, depth: int):
        for url in page_links(html, page_url):
            key = url_hash(url)
            if key in self.enqueued or self.store.knows(url):
                continue
            self.enqueued.add(key)
            if not on_domains(url, self.domains):
                self.store.add_failure(url, "offsite")
            elif (self.allow and not any(p.search(url) for p in self.allow)) or any(p.search(url) for p in self.deny):
                self.crawler.stats.inc_value("memlm/not_followed/url_pattern")
            elif self.max_depth and depth + 1 > self.max_depth:
                self.crawler.stats.inc_value("memlm/not_followed/max_depth")
            else:
                yield self._request(url, depth + 1)

    def _request(self, url: str, depth: int) -> Request:
        # dont_filter: each URL is enqueued once already (by its canonical form), and a redirect loop
        # must run into the redirect limit and be recorded, not vanish in the duplicate filter.
        return Request(url, callback=self.parse, errback=self.record_failure, meta={"depth": depth},
                       dont_filter=True)

    def record_failure(self, failure):
        """Record why a request gave no page; the manifest counts these and failures.jsonl lists them."""
        detail = ""
        if failure.check(HttpError):
            reason = f"http_{failure.value.response.status}"
        elif failure.check(DownloadCancelledError):
            reason = "too_large"
        elif failure.check(DownloadTimeoutError, TwistedTimeoutError, TCPTimedOutError):
            reason = "timeout"
        elif failure.check(CannotResolveHostError, DNSLookupError):
            reason = "dns_error"
        elif failure.check(DownloadConnectionRefusedError, ConnectionRefusedError):
            reason = "connection_refused"
        elif failure.check(ResponseDataLossError):
            reason = "truncated"
        elif failure.check(IgnoreRequest):
            message = str(failure.value)
            reason = next((r for prefix, r in IGNORED.items() if message.startswith(prefix)), "ignored")
            detail = message
        else:
            reason, detail = "error", f"{type(failure.value).__name__}: {failure.value}"
        self.store.add_failure(failure.request.url, reason, detail)
        self.logger.info("no page from %s: %s", failure.request.url, reason)
