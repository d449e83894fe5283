"""The page store: `pages.jsonl` keyed by canonical URL, and `failures.jsonl` with every URL that gave
no page and why. Both are append-only, one flushed line per record, so a crawl killed at any instant
(even with SIGKILL) leaves at most a torn last line, which reopening cuts off; a restarted crawl reads
what is stored, one record at a time, and fetches only the rest.

Memory does not hold pages: what the store keeps per page is an 8-byte hash of its URL (two when it was
redirected) in a `HashSet` (8 to about 15 bytes a hash), and per failed URL the same."""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from crawlers.hashset import HashSet
from crawlers.urls import canonical_url

PAGES_FILE = "pages.jsonl"
FAILURES_FILE = "failures.jsonl"
MANIFEST_FILE = "manifest.json"  # written last, by the crawl's parent: its presence means the crawl finished
SCRAPY_MANIFEST_FILE = "manifest.scrapy.json"  # the Scrapy process's counts, which the parent completes
TAIL_BLOCK = 1 << 16
HTML_KEY = b', "html": '


def url_hash(canonical: str) -> int:
    """A canonical URL's key in memory: 64 bits (a collision among a billion URLs has odds of 3 in 100)."""
    return int.from_bytes(hashlib.blake2b(canonical.encode(), digest_size=8).digest(), "little")


def cut_torn_tail(path: Path) -> None:
    """Cut a torn last line (a record half written when the writer was killed) off `path`, reading only
    the file's end."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - TAIL_BLOCK)
            f.seek(start)
            block = f.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                cut = start + newline + 1
                break
            end = start
        else:
            cut = 0
        if cut < size:
            f.truncate(cut)


def complete_records(path: Path) -> Iterator[dict]:
    """The whole JSON records of a JSONL file, one at a time, after cutting off a torn last line in place."""
    if not path.exists():
        return
    cut_torn_tail(path)
    with open(path, "rb") as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # cannot happen with whole-line appends; skip rather than lose the rest


def record_heads(path: Path) -> Iterator[dict]:
    """The stored pages' records without their HTML, without decoding the HTML: the fields before
    `"html"` are cut off each line (a `"` inside a JSON string is escaped, so the first `, "html": `
    is the key)."""
    if not path.exists():
        return
    cut_torn_tail(path)
    with open(path, "rb") as f:
        for line in f:
            cut = line.find(HTML_KEY)
            try:
                yield json.loads(line[:cut] + b"}") if cut > 0 else json.loads(line)
            except json.JSONDecodeError:
                continue


def count_complete_records(path: Path) -> int:
    if not path.exists():
        return 0
    cut_torn_tail(path)
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


class PageStore:
    def __init__(self, out_dir: Path, resume: bool):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.pages_path = self.out_dir / PAGES_FILE
        self.failures_path = self.out_dir / FAILURES_FILE
        self.url_hashes = HashSet()  # canonical request and final URLs of stored pages
        self.failed_hashes = HashSet()
        self.pages = 0
        self.by_status: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()  # reason -> URLs
        if resume:
            for record in record_heads(self.pages_path):
                self._note_page(record)
            for record in complete_records(self.failures_path):
                self.failed_hashes.add(url_hash(record["url"]))
                self.failures[record["reason"]] += 1
        else:
            self.pages_path.unlink(missing_ok=True)
            self.failures_path.unlink(missing_ok=True)
        self.resumed_pages = self.pages
        self._pages_out = open(self.pages_path, "a", encoding="utf-8")
        self._failures_out = open(self.failures_path, "a", encoding="utf-8")

    def _note_page(self, record: dict) -> None:
        self.url_hashes.add(url_hash(canonical_url(record["url"])))
        self.url_hashes.add(url_hash(canonical_url(record["final_url"])))
        self.pages += 1
        self.by_status[str(record["status"])] += 1

    def has_page(self, url: str) -> bool:
        return url_hash(canonical_url(url)) in self.url_hashes

    def knows(self, canonical: str) -> bool:
        """Whether the canonical URL is stored or recorded as failed."""
        key = url_hash(canonical)
        return key in self.url_hashes or key in self.failed_hashes

    def add_page(self, record: dict) -> bool:
        """Store a page unless its final URL is stored already; False when it was a duplicate."""
        if url_hash(canonical_url(record["final_url"])) in self.url_hashes:
            self.url_hashes.add(url_hash(canonical_url(record["url"])))
            return False
        _append(self._pages_out, record)
        self._note_page(record)
        return True

    def add_failure(self, url: str, reason: str, detail: str = "") -> bool:
        """Record why `url` gave no page, once per URL; False when it was already recorded."""
        url = canonical_url(url)
        key = url_hash(url)
        if key in self.failed_hashes:
            return False
        self.failed_hashes.add(key)
        self.failures[reason] += 1
        _append(self._failures_out, {"url": url, "reason": reason, **({"detail": detail} if detail else {})})
        return True

    def stored_records(self) -> Iterator[dict]:
        self._pages_out.flush()
        yield from complete_records(self.pages_path)

    def failure_counts(self) -> dict[str, int]:
        return dict(self.failures)

    def close(self) -> None:
        self._pages_out.close()
        self._failures_out.close()


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` whole: a process killed meanwhile leaves the old file or the new one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _append(out, record: dict) -> None:
    # One write call per whole line, then flush: what reaches the OS survives SIGKILL of this process.
    out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.flush()
