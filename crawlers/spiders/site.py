"""A CrawlSpider that stores every HTML page it reaches within the allowed domains and URL patterns."""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from urllib.parse import urlparse

from scrapy.exceptions import DownloadCancelledError
from scrapy.http import HtmlResponse, Request, Response
from scrapy.linkextractors import LinkExtractor
from scrapy.spidermiddlewares.httperror import HttpError
from scrapy.spiders import CrawlSpider, Rule
from twisted.internet.error import DNSLookupError, TCPTimedOutError
from twisted.internet.error import TimeoutError as TwistedTimeoutError

HTML_TYPES = {"text/html", "application/xhtml+xml"}


def _list_arg(value: str | list[str] | None) -> list[str]:
    """Spider arguments arrive as strings from the command line: a JSON list or comma-separated."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    if value.lstrip().startswith("["):
        return list(json.loads(value))
    return [part.strip() for part in value.split(",") if part.strip()]


def content_type(response: Response) -> str:
    return response.headers.get(b"Content-Type", b"").decode("latin-1").split(";")[0].strip().lower()


class SiteSpider(CrawlSpider):
    name = "site"

    def __init__(self, start_urls=None, allowed_domains=None, allow=None, deny=None, *args, **kwargs):
        self.start_urls = _list_arg(start_urls)
        if not self.start_urls:
            raise ValueError("the site spider needs start_urls (-a start_urls=https://example.org/)")
        self.allowed_domains = _list_arg(allowed_domains) or sorted(
            {urlparse(u).hostname for u in self.start_urls if urlparse(u).hostname}
        )
        # Domains are enforced by Scrapy's offsite middleware (which counts what it filters), not by the
        # link extractor, whose domain test compares host:port and so never matches a site on a port.
        extractor = LinkExtractor(allow=_list_arg(allow), deny=_list_arg(deny))
        self.rules = (Rule(extractor, callback="parse_page", follow=True, errback="record_failure"),)
        super().__init__(*args, **kwargs)

    async def start(self):
        # Start URLs get the same failure accounting as followed links, and go through the duplicate
        # filter so that a link back to a start page does not fetch it again.
        for url in self.start_urls:
            yield Request(url, callback=self._parse, errback=self.record_failure)

    def parse_start_url(self, response: Response):
        return self.parse_page(response)

    def parse_page(self, response: Response):
        ctype = content_type(response)
        if not isinstance(response, HtmlResponse) or ctype not in HTML_TYPES:
            self.crawler.stats.inc_value("memlm/skipped/not_html")
            return
        redirects = response.request.meta.get("redirect_urls") or [response.url]
        yield {
            "url": redirects[0],
            "final_url": response.url,
            "status": response.status,
            "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "content_type": ctype,
            "encoding": response.encoding,
            "sha256": hashlib.sha256(response.body).hexdigest(),
            "depth": response.meta.get("depth", 0),
            "html": response.text,
        }

    def record_failure(self, failure):
        """Count why a followed link gave no page; the manifest reports these counts."""
        if failure.check(HttpError):
            reason = f"http_{failure.value.response.status}"
        elif failure.check(DownloadCancelledError):
            reason = "too_large"
        elif failure.check(TwistedTimeoutError, TCPTimedOutError):
            reason = "timeout"
        elif failure.check(DNSLookupError):
            reason = "dns_error"
        else:
            reason = type(failure.value).__name__
        self.crawler.stats.inc_value(f"memlm/skipped/{reason}")
        self.logger.info("no page from %s: %s", failure.request.url, reason)
