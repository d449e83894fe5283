"""Item pipeline: pages go to the spider's page store; Scrapy's counts (`manifest.scrapy.json`), which the crawl's
parent completes into the manifest, are written at the end."""
from __future__ import annotations

import json
from pathlib import Path

from scrapy.exceptions import DropItem

from crawlers.store import FAILURES_FILE, SCRAPY_MANIFEST_FILE


class PageStorePipeline:
    def __init__(self, crawler):
        self.crawler = crawler
        self.max_pages = crawler.settings.getint("MEMLM_MAX_PAGES")

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    @property
    def store(self):
        return self.crawler.spider.store

    def process_item(self, item):
        if self.store.pages >= self.max_pages:
            self.crawler.stats.inc_value("memlm/not_stored/max_pages")
            raise DropItem("page limit reached")
        if not self.store.add_page(item):
            # Two URLs that redirect to one page: store it once.
            self.crawler.stats.inc_value("memlm/not_stored/duplicate_url")
            raise DropItem("page already stored")
        return {k: v for k, v in item.items() if k != "html"}

    def close_spider(self):
        store = self.store
        stats = self.crawler.stats.get_stats()
        # Links not followed (URL patterns, depth) and pages not stored (limit, duplicates): counts only.
        not_taken = {key.rsplit("/", 1)[1]: value for key, value in stats.items()
                     if key.startswith(("memlm/not_followed/", "memlm/not_stored/"))}
        responses = {key.rsplit("/", 1)[1]: value for key, value in stats.items()
                     if key.startswith("downloader/response_status_count/")}
        manifest = {
            "pages": store.pages,
            "resumed_with_pages": store.resumed_pages,
            "pages_by_status": dict(store.by_status),
            "responses_by_status": responses,
            "skipped": {**store.failure_counts(), **not_taken},
            "failures_file": FAILURES_FILE,
            "retries": stats.get("retry/count", 0),
            "not_modified": stats.get("httpcache/revalidate", 0),
        }
        store.close()
        (Path(store.out_dir) / SCRAPY_MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
