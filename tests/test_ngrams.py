"""Gopher's repetition statistics from numbered n-grams (`NGrams`) equal the direct count over tuples of
words, on random pages with much and little repetition and on pages shorter than n."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from corpus.filters import NGrams


def direct_most_common(words: list[str], n: int):
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return grams.most_common(1)[0] if grams else None


def direct_repeated_chars(words: list[str], n: int) -> int:
    seen: set[tuple[str, ...]] = set()
    covered = [False] * len(words)
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        if gram in seen:
            covered[i:i + n] = [True] * n
        seen.add(gram)
    return sum(len(w) for w, c in zip(words, covered) if c)


@pytest.mark.parametrize("vocabulary", [2, 5, 40, 5000])
def test_numbered_ngrams_equal_the_direct_count(vocabulary):
    rng = random.Random(vocabulary)
    pool = [("w" * rng.randrange(1, 9)) + str(i) for i in range(vocabulary)]
    for length in [0, 1, 3, 7, 60, 400]:
        words = [rng.choice(pool) for _ in range(length)]
        if length > 20:  # a repeated passage, as a page with a paragraph said twice
            words[10:10] = words[length // 2:length // 2 + 15]
        grams = NGrams(words)
        for n in range(1, 12):
            direct = direct_most_common(words, n)
            ours = grams.most_common(n)
            if direct is None:
                assert ours is None
            else:
                at, count = ours
                assert (tuple(words[at:at + n]), count) == direct
            assert grams.repeated_chars(n) == direct_repeated_chars(words, n), (vocabulary, length, n)
