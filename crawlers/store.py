"""The page store: `pages.jsonl` keyed by canonical URL, and `failures.jsonl` with every URL that gave
no page and why. Both are append-only, one flushed line per record, so a crawl killed at any instant
(even with SIGKILL) leaves at most a torn last line, which reopening cuts off; a restarted crawl reads
what is stored and fetches only the rest."""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from crawlers.urls import canonical_url

PAGES_FILE = "pages.jsonl"
FAILURES_FILE = "failures.jsonl"
MANIFEST_FILE = "manifest.json"


def complete_records(path: Path) -> Iterator[dict]:
    """The whole JSON records of a JSONL file, after cutting off a torn last line in place."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            f.truncate(end)
    for line in data[:end].splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue  # cannot happen with whole-line appends; skip rather than lose the rest


class PageStore:
    def __init__(self, out_dir: Path, resume: bool):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.pages_path = self.out_dir / PAGES_FILE
        self.failures_path = self.out_dir / FAILURES_FILE
        self.urls: set[str] = set()  # canonical request and final URLs of stored pages
        self.pages: list[tuple[str, str]] = []  # (final URL, body sha256)
        self.by_status: Counter[str] = Counter()
        self.failed: dict[str, str] = {}
        if resume:
            for record in complete_records(self.pages_path):
                self._note_page(record)
            for record in complete_records(self.failures_path):
                self.failed[record["url"]] = record["reason"]
        else:
            self.pages_path.unlink(missing_ok=True)
            self.failures_path.unlink(missing_ok=True)
        self.resumed_pages = len(self.pages)
        self._pages_out = open(self.pages_path, "a", encoding="utf-8")
        self._failures_out = open(self.failures_path, "a", encoding="utf-8")

    def _note_page(self, record: dict) -> None:
        self.urls.add(canonical_url(record["url"]))
        self.urls.add(canonical_url(record["final_url"]))
        self.pages.append((record["final_url"], record["sha256"]))
        self.by_status[str(record["status"])] += 1

    def has_page(self, url: str) -> bool:
        return canonical_url(url) in self.urls

    def add_page(self, record: dict) -> bool:
        """Store a page unless its final URL is stored already; False when it was a duplicate."""
        if canonical_url(record["final_url"]) in self.urls:
            self.urls.add(canonical_url(record["url"]))
            return False
        _append(self._pages_out, record)
        self._note_page(record)
        return True

    def add_failure(self, url: str, reason: str, detail: str = "") -> bool:
        """Record why `url` gave no page, once per URL; False when it was already recorded."""
        url = canonical_url(url)
        if url in self.failed:
            return False
        self.failed[url] = reason
        _append(self._failures_out, {"url": url, "reason": reason, **({"detail": detail} if detail else {})})
        return True

    def stored_records(self) -> Iterator[dict]:
        self._pages_out.flush()
        yield from complete_records(self.pages_path)

    def failure_counts(self) -> dict[str, int]:
        return dict(Counter(self.failed.values()))

    def close(self) -> None:
        self._pages_out.close()
        self._failures_out.close()


def _append(out, record: dict) -> None:
    # One write call per whole line, then flush: what reaches the OS survives SIGKILL of this process.
    out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.flush()


def corpus_changes(before: dict[str, str], after: dict[str, str]) -> dict[str, int]:
    """Pages added, changed (same URL, other bytes) and removed between two {final URL: sha256} maps."""
    return {"added": sum(1 for url in after if url not in before),
            "changed": sum(1 for url, sha in after.items() if url in before and before[url] != sha),
            "removed": sum(1 for url in before if url not in after)}
