"""Near-duplicate pages found with MinHash LSH: signatures (datasketch's MinHash) in the workers, the
index in the parent, in page order, so that the first of a cluster is kept.

The index is what grows with the corpus here, per kept document: its signature (`num_perm` 32-bit
values, 512 bytes at the default 128) and one entry per LSH band (9 bands at the defaults, about 100
bytes each in CPython). datasketch's MinHashLSH kept a MinHash object (with its permutations) and byte
strings per band, several kilobytes a document; this index finds the same candidates: documents that
share a band's values exactly, with datasketch's choice of bands and rows for the threshold."""
from __future__ import annotations

import hashlib

import numpy as np

from corpus.config import NearDedupConfig
from corpus.filters import words_of

SEED = 1
SCHEME = "affine32"  # 32-bit values: signatures are kept as uint32
ROWS_PER_BLOCK = 4096


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
        self.buckets: list[dict[int, int | list[int]]] = [{} for _ in range(self.bands)]
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
            found = bucket.get(band_key)
            if found is not None:
                candidates.update(found if isinstance(found, list) else (found,))
        for other in sorted(candidates):
            similarity = float(np.count_nonzero(self._signature(other) == values)) / len(values)
            if similarity >= self.cfg.threshold:
                kept = self.keys[other]
                self.clusters.setdefault(kept, []).append({"url": key, "similarity": round(similarity, 3)})
                return kept
        i = len(self.keys)
        self.keys.append(key)
        if i % ROWS_PER_BLOCK == 0:
            self._blocks.append(np.empty((ROWS_PER_BLOCK, len(values)), dtype=np.uint32))
        self._blocks[-1][i % ROWS_PER_BLOCK] = values
        for bucket, band_key in zip(self.buckets, band_keys):
            found = bucket.get(band_key)
            if found is None:
                bucket[band_key] = i  # most bands are held by one document: an int, not a list
            elif isinstance(found, list):
                found.append(i)
            else:
                bucket[band_key] = [found, i]
        return None

    def sizes(self) -> dict:
        entries = sum(len(b) for b in self.buckets)
        return {"documents": len(self.keys), "bands": self.bands, "rows_per_band": self.rows,
                "band_entries": entries, "signature_bytes": len(self._blocks) * ROWS_PER_BLOCK * self.cfg.num_perm * 4}
