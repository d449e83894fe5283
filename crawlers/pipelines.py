"""The page store: one JSONL record per HTML page, and the crawl manifest written at the end."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from scrapy.exceptions import DropItem

PAGES_FILE = "pages.jsonl"
MANIFEST_FILE = "manifest.json"

# Scrapy's own stats that explain pages the crawl did not store.
_SCRAPY_SKIP_STATS = {
    "robotstxt/forbidden": "robots_disallowed",
    "offsite/filtered": "offsite",
    "retry/max_reached": "retries_exhausted",
}


def content_digest(pages: list[tuple[str, str]]) -> str:
    """Digest of (url, body sha256) pairs: equal when the same pages have the same bytes."""
    h = hashlib.sha256()
    for url, sha in sorted(pages):
        h.update(f"{url}\t{sha}\n".encode())
    return h.hexdigest()


class PageStorePipeline:
    def __init__(self, crawler):
        self.crawler = crawler
        self.out_dir = Path(crawler.settings.get("MEMLM_OUT_DIR"))
        self.max_pages = crawler.settings.getint("MEMLM_MAX_PAGES")
        self.pages: list[tuple[str, str]] = []
        self.stored_urls: set[str] = set()
        self.by_status: dict[str, int] = {}
        self._file = None

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def open_spider(self):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.out_dir / PAGES_FILE, "w", encoding="utf-8")

    def process_item(self, item):
        if item["final_url"] in self.stored_urls:
            # Two links that redirect to one page: store it once.
            self.crawler.stats.inc_value("memlm/skipped/duplicate_url")
            raise DropItem("page already stored")
        if len(self.pages) >= self.max_pages:
            self.crawler.stats.inc_value("memlm/skipped/max_pages")
            raise DropItem("page limit reached")
        self.stored_urls.add(item["final_url"])
        self._file.write(json.dumps(item, ensure_ascii=False) + "\n")
        self._file.flush()
        self.pages.append((item["final_url"], item["sha256"]))
        self.by_status[str(item["status"])] = self.by_status.get(str(item["status"]), 0) + 1
        return {k: v for k, v in item.items() if k != "html"}

    def close_spider(self):
        self._file.close()
        stats = self.crawler.stats.get_stats()
        skipped = {
            key.removeprefix("memlm/skipped/"): value
            for key, value in stats.items()
            if key.startswith("memlm/skipped/")
        }
        for key, reason in _SCRAPY_SKIP_STATS.items():
            if stats.get(key):
                skipped[reason] = stats[key]
        responses = {
            key.rsplit("/", 1)[1]: value
            for key, value in stats.items()
            if key.startswith("downloader/response_status_count/")
        }
        manifest = {
            "pages": len(self.pages),
            "pages_by_status": self.by_status,
            "responses_by_status": responses,
            "skipped": skipped,
            "content_digest": content_digest(self.pages),
        }
        (self.out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
