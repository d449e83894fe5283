"""Near-duplicate pages found with MinHash LSH (datasketch): signatures in the workers, the index in the
parent, in page order, so that the first of a cluster is kept."""
from __future__ import annotations

import numpy as np

from corpus.config import NearDedupConfig
from corpus.filters import words_of

SEED = 1
SCHEME = "affine32"  # signatures made in the workers are rebuilt in the parent: same hash family


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
        from datasketch import MinHashLSH

        self.cfg = cfg
        self.lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
        self.signatures: dict[str, object] = {}
        self.clusters: dict[str, list[dict]] = {}

    def add(self, key: str, hashvalues: np.ndarray) -> str | None:
        """Index the page `key`; returns the kept page it nearly duplicates (and then does not index it)."""
        from datasketch import MinHash

        minhash = MinHash(num_perm=self.cfg.num_perm, seed=SEED, hashvalues=hashvalues, scheme=SCHEME)
        for other in self.lsh.query(minhash):
            similarity = minhash.jaccard(self.signatures[other])
            if similarity >= self.cfg.threshold:
                self.clusters.setdefault(other, []).append({"url": key, "similarity": round(similarity, 3)})
                return other
        self.lsh.insert(key, minhash)
        self.signatures[key] = minhash
        return None
