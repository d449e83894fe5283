"""Site boilerplate and leakage: each line of a page (outside code blocks) is counted once per page, as
an 8-byte hash of its site and its normalized text; lines on a large share of one site's pages are its
boilerplate, and leakage is the share of output lines that occur on more than half of their site's pages.

The counts are what grows with the corpus here: one entry per distinct line of a site, 12 bytes in sorted
numpy arrays (a Python dict took about 100). Up to `clean.boilerplate.max_counts_in_memory` entries stay
in memory; past that they are added into an SQLite table beside the documents and memory starts again,
so a million pages' lines cost disk, not RAM."""
from __future__ import annotations

import hashlib
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from corpus.config import BoilerplateConfig

# Leakage: an output line that occurs on more than this share of its site's pages is boilerplate.
LEAKAGE_SHARE = 0.5
TOP_LINES = 15
KEY_DTYPE = np.dtype("<u8")  # a line key's 8 bytes, as stored
MERGE_AT_LEAST = 65_536  # pending keys of a site merged into its sorted counts


def line_key(host: str, line: str) -> bytes:
    normalized = " ".join(line.casefold().split())
    return hashlib.blake2b(f"{host}\0{normalized}".encode(), digest_size=8).digest()


def _key_bytes(key: np.uint64) -> bytes:
    return int(key).to_bytes(KEY_DTYPE.itemsize, "little")  # line_key's bytes, whatever this machine's order


class _SiteCounts:
    """One site's counts as two arrays sorted by key (8 + 4 bytes an entry), and the keys of the pages
    added since they were last merged in."""

    def __init__(self):
        self.keys = np.empty(0, dtype=KEY_DTYPE)
        self.counts = np.empty(0, dtype=np.uint32)
        self.pending: list[np.ndarray] = []
        self.pending_entries = 0

    def add(self, keys: np.ndarray) -> None:
        self.pending.append(keys)
        self.pending_entries += len(keys)
        # A quarter: a merge briefly holds about 65 bytes per pending key beside the 12 of each counted one.
        if self.pending_entries >= max(MERGE_AT_LEAST, len(self.keys) // 4):
            self.merge()

    def merge(self) -> None:
        if not self.pending:
            return
        added, counts = np.unique(np.concatenate(self.pending), return_counts=True)
        self.pending, self.pending_entries = [], 0
        at = np.searchsorted(self.keys, added)
        known = at < len(self.keys)
        known[known] = self.keys[at[known]] == added[known]
        self.counts[at[known]] += counts[known].astype(np.uint32)
        # New keys go in at their places: one new array of each kind, not a sort of the whole.
        new = ~known
        self.keys = np.insert(self.keys, at[new], added[new])
        self.counts = np.insert(self.counts, at[new], counts[new].astype(np.uint32))

    def __len__(self) -> int:
        return len(self.keys) + self.pending_entries


class LineCounts:
    """Pages per site, and per site the number of pages each line key occurs on."""

    def __init__(self, spill_file: Path, max_in_memory: int):
        self.spill_file, self.max_in_memory = Path(spill_file), max_in_memory
        self.site_pages: Counter[str] = Counter()
        self._sites: dict[str, _SiteCounts] = {}
        self._in_memory = 0
        self.peak_in_memory = 0
        self.spills = 0
        self._db: sqlite3.Connection | None = None
        self.spill_file.unlink(missing_ok=True)

    def add_page(self, host: str, keys: Iterable[bytes]) -> None:
        """Count one page of `host` whose distinct line keys are `keys`."""
        self.site_pages[host] += 1
        added = np.frombuffer(b"".join(keys), dtype=KEY_DTYPE)
        if not len(added):
            return
        if host not in self._sites:
            self._sites[host] = _SiteCounts()
        site = self._sites[host]
        before = len(site)
        site.add(added)
        self._in_memory += len(site) - before
        self.peak_in_memory = max(self.peak_in_memory, self._in_memory)  # a page's keys before they merge included
        if self._in_memory > self.max_in_memory:
            for other in self._sites.values():
                other.merge()
            self._in_memory = sum(len(other) for other in self._sites.values())
            # Spilled past 90% of the limit, so that merging again waits for a tenth of it in new keys.
            if self._in_memory > 0.9 * self.max_in_memory:
                self._spill()

    def _spill(self) -> None:
        if self._db is None:
            self._db = sqlite3.connect(self.spill_file)
            self._db.execute("PRAGMA journal_mode=OFF")
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.execute("CREATE TABLE counts (host TEXT, key BLOB, n INTEGER, PRIMARY KEY (host, key)) "
                             "WITHOUT ROWID")
        with self._db:
            for host, site in self._sites.items():
                site.merge()
                self._db.executemany(
                    "INSERT INTO counts VALUES (?, ?, ?) ON CONFLICT (host, key) DO UPDATE SET n = n + excluded.n",
                    ((host, _key_bytes(key), int(n)) for key, n in zip(site.keys, site.counts)))
        self._sites = {}
        self._in_memory = 0
        self.spills += 1

    def repeated(self, host: str) -> Iterator[tuple[bytes, int]]:
        """(line key, pages) of the lines of `host` found on two pages or more."""
        if self._db is not None:
            if self._in_memory:
                self._spill()
            yield from self._db.execute("SELECT key, n FROM counts WHERE host = ? AND n >= 2", (host,))
        elif site := self._sites.get(host):
            site.merge()
            several = site.counts >= 2
            yield from ((_key_bytes(key), int(n)) for key, n in zip(site.keys[several], site.counts[several]))

    def sizes(self) -> dict:
        """What the counts took: entries in memory at most, and the table on disk when they spilled."""
        return {"max_entries_in_memory": self.max_in_memory, "peak_entries_in_memory": self.peak_in_memory,
                "spills": self.spills,
                "disk_bytes": self.spill_file.stat().st_size if self.spill_file.exists() else 0}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self.spill_file.unlink(missing_ok=True)


class SiteLines:
    """What the counts say about each site: the boilerplate line keys to remove, the keys of lines that
    leak (on more than LEAKAGE_SHARE of the site's pages), and the most widespread boilerplate lines."""

    def __init__(self, cfg: BoilerplateConfig, counts: LineCounts):
        self.cfg = cfg
        self.site_pages = dict(counts.site_pages)
        self.leaky: dict[str, set[bytes]] = {}
        found: list[tuple[float, bytes]] = []
        for host, pages in self.site_pages.items():
            if pages < cfg.min_pages:
                continue
            leaky = self.leaky.setdefault(host, set())
            for key, n in counts.repeated(host):
                if n > LEAKAGE_SHARE * pages:
                    leaky.add(key)
                if cfg.enabled and n >= cfg.min_share * pages:
                    found.append((n / pages, key))
        found.sort(reverse=True)
        self.boilerplate = frozenset(key for _, key in found)
        self.top = found[:TOP_LINES]
        self._top_keys = {key for _, key in self.top}
        self.top_text: dict[bytes, str] = {}

    def note_text(self, key: bytes, line: str) -> None:
        """Keep the text of a top boilerplate line, as first seen in page order, for the report."""
        if key in self._top_keys and key not in self.top_text:
            self.top_text[key] = line

    def top_lines(self) -> list[dict]:
        return [{"line": self.top_text.get(key, "")[:120], "share_of_pages": round(share, 3)}
                for share, key in self.top]

    def leakage_meter(self) -> LeakageMeter:
        return LeakageMeter(self)

    def sites(self) -> int:
        return sum(1 for n in self.site_pages.values() if n >= self.cfg.min_pages)


class LeakageMeter:
    """Share of the lines of the pages added that occur on more than half of their site's crawled pages
    (sites of at least `min_pages` pages: on a site of one page every line is on all of them)."""

    def __init__(self, site_lines: SiteLines):
        self.site_lines = site_lines
        self.lines = self.leaked = 0

    def add(self, host: str, keys: list[bytes]) -> None:
        if self.site_lines.site_pages.get(host, 0) < self.site_lines.cfg.min_pages:
            return
        leaky = self.site_lines.leaky.get(host, set())
        self.lines += len(keys)
        self.leaked += sum(k in leaky for k in keys)

    def value(self) -> float:
        return round(self.leaked / self.lines, 5) if self.lines else 0.0
