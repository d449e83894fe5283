"""What a crawl stored, 16 bytes a page: each page's URL hash and the first 64 bits of its body's sha256,
rows sorted (`page_digests.npy`). It gives the crawl's content digest and the pages added, changed and
removed since the corpus was last announced.

Built by the crawl's parent process once Scrapy has exited, so that the Scrapy process never imports
numpy (about 17 MB resident)."""
from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from crawlers.store import record_heads, url_hash, write_atomically

PAGE_DIGESTS_FILE = "page_digests.npy"
PAGE_DIGEST = np.dtype([("url", "<u8"), ("body", "<u8")])


def digest_table(pages: Iterable[tuple[str, str]]) -> np.ndarray:
    """The PAGE_DIGEST rows of (final URL, body sha256 hex) pairs, sorted, one per URL hash."""
    rows = np.fromiter(((url_hash(url), int(sha[:16], 16)) for url, sha in pages), dtype=PAGE_DIGEST)
    rows.sort(order=("url", "body"))
    return rows[np.unique(rows["url"], return_index=True)[1]]


def save_table(path: Path, table: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, table, allow_pickle=False)
    write_atomically(path, buffer.getvalue())


def load_table(path: Path) -> np.ndarray:
    """A saved digest table; a `published.json` {URL: sha256} map of memlm before 16-byte rows, converted;
    an empty table when there is neither."""
    if path.exists():
        return np.load(path, allow_pickle=False)
    legacy = path.with_suffix(".json")
    if legacy.exists():
        return digest_table(json.loads(legacy.read_text()).items())
    return np.empty(0, PAGE_DIGEST)


def stored_page_digests(pages_file: Path) -> np.ndarray:
    """The digest table of a page store, read one record head at a time."""
    return digest_table((record["final_url"], record["sha256"]) for record in record_heads(pages_file))


def content_digest(table: np.ndarray) -> str:
    """Equal when the same pages have the same bytes, in whatever order they were crawled."""
    return hashlib.sha256(table.tobytes()).hexdigest()


def corpus_changes(before: np.ndarray, after: np.ndarray) -> dict[str, int]:
    """Pages added, changed (same URL, other bytes) and removed between two digest tables."""
    common, in_before, in_after = np.intersect1d(before["url"], after["url"], assume_unique=True,
                                                 return_indices=True)
    return {"added": len(after) - len(common),
            "changed": int(np.count_nonzero(before["body"][in_before] != after["body"][in_after])),
            "removed": len(before) - len(common)}
