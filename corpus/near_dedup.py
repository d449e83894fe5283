"""Near-duplicate pages found with MinHash LSH: signatures (datasketch's MinHash) in the workers, the
index in the parent, in page order, so that the first of a cluster is kept.

The index is what grows with the corpus here, per kept document: its signature (`num_perm` 32-bit
values, 512 bytes at the default 128) and one entry per LSH band (9 bands at the defaults, 12 bytes each
in sorted numpy arrays; a Python dict took about 100). datasketch's MinHashLSH kept a MinHash object
(with its permutations) and byte strings per band, several kilobytes a document; this index finds the
same candidates: documents that share a band's values exactly, with datasketch's choice of bands and
rows for the threshold."""
from __future__ import annotations

import hashlib

import numpy as np

from corpus.config import NearDedupConfig
from corpus.filters import words_of

SEED = 1
SCHEME = "affine32"  # 32-bit values: signatures are kept as uint32
ROWS_PER_BLOCK = 4096
MERGE_AT_LEAST = 1024  # recent entries, in a dict, merged into the sorted arrays
CLUSTERS_KEPT = 50  # near-duplicate clusters listed in the report, with up to
DUPLICATES_LISTED = 20  # of each cluster's pages: the counts are in the report's drops


class HashIndex:
    """64-bit hash -> documents, as arrays sorted by hash (8 + 4 bytes an entry) and a dict of the
    entries added since the last merge: one LSH band."""

    def __init__(self):
        self.values = np.empty(0, dtype=np.uint64)
        self.docs = np.empty(0, dtype=np.int32)
        self.recent: dict[int, list[int]] = {}
        self.recent_entries = 0

    def get(self, value: int) -> list[int]:
        key = np.uint64(value)
        lo, hi = int(np.searchsorted(self.values, key, "left")), int(np.searchsorted(self.values, key, "right"))
        return [*self.docs[lo:hi].tolist(), *self.recent.get(value, ())]

    def add(self, value: int, doc: int) -> None:
        self.recent.setdefault(value, []).append(doc)
        self.recent_entries += 1
        if self.recent_entries >= max(MERGE_AT_LEAST, len(self.values) // 16):  # O(n log n) in all
            self.merge()

    def merge(self) -> None:
        pairs = [(value, doc) for value, docs in self.recent.items() for doc in docs]
        values = np.concatenate([self.values, np.fromiter((v for v, _ in pairs), np.uint64, len(pairs))])
        docs = np.concatenate([self.docs, np.fromiter((d for _, d in pairs), np.int32, len(pairs))])
        order = np.lexsort((docs, values))  # by value, then document: candidates in page order
        self.values, self.docs = values[order], docs[order]
        self.recent, self.recent_entries = {}, 0

    def __len__(self) -> int:
        return len(self.values) + self.recent_entries


def signature(text: str, lang: str, cfg: NearDedupConfig) -> np.ndarray:
    from datasketch import MinHash

    words = words_of(text.lower(), lang)
    n = cfg.shingle_words
    shingles = {" ".join(words[i:i + n]).encode() for i in range(max(len(words) - n + 1, 1))}
    minhash = MinHash(num_perm=cfg.num_perm, seed=SEED, scheme=SCHEME)
    minhash.update_batch(list(shingles))
    return minhash.hashvalues


class NearDuplicateIndex:
    def __init__(self, cfg: NearDedupConfig):
        from datasketch.lsh import _optimal_param

        self.cfg = cfg
        self.bands, self.rows = _optimal_param(cfg.threshold, cfg.num_perm, 0.5, 0.5)
        self.buckets = [HashIndex() for _ in range(self.bands)]
        self.keys: list[str] = []
        self._blocks: list[np.ndarray] = []
        self.clusters: dict[str, list[dict]] = {}

    def _signature(self, i: int) -> np.ndarray:
        return self._blocks[i // ROWS_PER_BLOCK][i % ROWS_PER_BLOCK]

    def _band_keys(self, values: np.ndarray) -> list[int]:
        data = values.astype(np.uint32).tobytes()
        width = 4 * self.rows
        return [int.from_bytes(hashlib.blake2b(data[b * width:(b + 1) * width], digest_size=8).digest(), "little")
                for b in range(self.bands)]

    def add(self, key: str, hashvalues: np.ndarray) -> str | None:
        """Index the page `key`; returns the kept page it nearly duplicates (and then does not index it)."""
        values = np.asarray(hashvalues, dtype=np.uint32)
        band_keys = self._band_keys(values)
        candidates: set[int] = set()
        for bucket, band_key in zip(self.buckets, band_keys):
            candidates.update(bucket.get(band_key))
        for other in sorted(candidates):
            similarity = float(np.count_nonzero(self._signature(other) == values)) / len(values)
            if similarity >= self.cfg.threshold:
                kept = self.keys[other]
                if kept in self.clusters or len(self.clusters) < CLUSTERS_KEPT:
                    listed = self.clusters.setdefault(kept, [])
                    if len(listed) < DUPLICATES_LISTED:
                        listed.append({"url": key, "similarity": round(similarity, 3)})
                return kept
        i = len(self.keys)
        self.keys.append(key)
        if i % ROWS_PER_BLOCK == 0:
            self._blocks.append(np.empty((ROWS_PER_BLOCK, len(values)), dtype=np.uint32))
        self._blocks[-1][i % ROWS_PER_BLOCK] = values
        for bucket, band_key in zip(self.buckets, band_keys):
            bucket.add(band_key, i)
        return None

    def sizes(self) -> dict:
        entries = sum(len(b) for b in self.buckets)
        return {"documents": len(self.keys), "bands": self.bands, "rows_per_band": self.rows,
                "band_entries": entries, "signature_bytes": len(self._blocks) * ROWS_PER_BLOCK * self.cfg.num_perm * 4}
