"""What a clean after a recrawl reuses from the last one: pass 1's records (`extracted.jsonl`, found by
the page's sha256) and pass 2's results (`filtered.jsonl`, found by the filter key). Neither file is
read into memory: an SQLite index maps each key to its line's offset, and a reused result is read from
the file when it is needed."""
from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

EXTRACTED_KEYS = re.compile(rb'"sha256": "([0-9a-f]{64})", "extract_key": "([0-9a-f]+)"')
FILTERED_PREFIX = b'{"key": "'


class PreviousResults:
    """Records of a JSONL file of the last clean, by key."""

    def __init__(self, path: Path, index_file: Path, key_of: Callable[[bytes], str | None]):
        self.path, self.index_file = Path(path), Path(index_file)
        self.index_file.unlink(missing_ok=True)
        # Pool.imap reads the records (and asks what to reuse) in a thread of its own.
        self._db = sqlite3.connect(self.index_file, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE lines (key TEXT PRIMARY KEY, offset INTEGER) WITHOUT ROWID")
        self.entries = 0
        self._file = open(self.path, "rb") if self.path.exists() else None
        if self._file is not None:
            with self._db:
                # A later line with the same key replaces an earlier one, as a dict built in order would.
                self._db.executemany("INSERT OR REPLACE INTO lines VALUES (?, ?)", self._keys(key_of))
            self.entries = self._db.execute("SELECT count(*) FROM lines").fetchone()[0]

    def _keys(self, key_of: Callable[[bytes], str | None]):
        offset = 0
        for line in self._file:
            if (key := key_of(line)) is not None:
                yield key, offset
            offset += len(line)

    def __contains__(self, key: str | None) -> bool:
        return key is not None and self._offset(key) is not None

    def _offset(self, key: str) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT offset FROM lines WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def __getitem__(self, key: str) -> dict:
        offset = self._offset(key)
        if offset is None:
            raise KeyError(key)
        self._file.seek(offset)
        return json.loads(self._file.readline())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._db.close()
        self.index_file.unlink(missing_ok=True)


def previous_extractions(extracted_file: Path, index_file: Path, extract_key: str) -> PreviousResults:
    """Pass 1's records from the last clean, by page sha256 (those made with the same settings)."""
    def key_of(line: bytes) -> str | None:
        match = EXTRACTED_KEYS.search(line)
        return match.group(1).decode() if match and match.group(2).decode() == extract_key else None

    return PreviousResults(extracted_file, index_file, key_of)


def previous_filtered(filtered_file: Path, index_file: Path) -> PreviousResults:
    """Pass 2's results from the last clean, by filter key (each line is {"key": ..., "cleaned": ...})."""
    def key_of(line: bytes) -> str | None:
        return line[len(FILTERED_PREFIX):line.index(b'"', len(FILTERED_PREFIX))].decode() \
            if line.startswith(FILTERED_PREFIX) else None

    return PreviousResults(filtered_file, index_file, key_of)
