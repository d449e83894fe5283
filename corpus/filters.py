"""The cleaning steps, in the style of datatrove: each a small named step with its thresholds from the
config. A document filter returns why it drops a page (None keeps it); a line filter removes lines and
says how many. Statistics are taken on prose (headings, paragraphs, list items); code is not judged."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from corpus.config import (C4LinesConfig, FineWebQualityConfig, GopherQualityConfig, GopherRepetitionConfig)
from corpus.extract import TABLE_RULE, Block

CJK_LANGS = {"zh", "ja"}
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
CJK_WORDS = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
TERMINAL = ('.', '!', '?', '"', "'", '”', '’', '。', '！', '？', '…', ':', ';', '：', '；', ')', '）')
BULLETS = ("- ", "* ", "• ", "· ", "‣ ")
POLICY = re.compile(r"terms of (?:use|service)|privacy policy|cookie policy|uses? cookies|use of cookies", re.I)
JS_NOTICE = re.compile(r"javascript", re.I)
JS_ASK = re.compile(r"enable|disabled|required|turn on", re.I)
# Notices are short; a paragraph that discusses JavaScript or cookies at length is content.
NOTICE_MAX_WORDS = 25
HEADING_MARK = re.compile(r"^#{1,6} ")
TABLE_PIPES = re.compile(r"(?<!\\)\|")


@dataclass
class Doc:
    """A page on its way through the steps."""

    url: str
    host: str
    title: str
    lang: str
    blocks: list[Block]

    @property
    def text(self) -> str:
        return "\n".join(b.text for b in self.blocks)

    def prose_lines(self) -> list[str]:
        """Prose as a reader sees it: heading marks and bullets stay, one entry per line."""
        return [line for b in self.blocks if b.is_prose for line in b.text.split("\n") if line.strip()]

    def sentence_lines(self) -> list[str]:
        """Prose lines outside tables: a table row is complete without a full stop, however short."""
        return [line for b in self.blocks if b.is_prose and b.kind != "table" for line in b.text.split("\n")
                if line.strip()]

    def prose_text(self) -> str:
        """Prose as words: heading marks, table rules and the pipes between cells left out."""
        lines = []
        for line in self.prose_lines():
            if TABLE_RULE.match(line):
                continue
            lines.append(TABLE_PIPES.sub(" ", line).strip() if line.startswith("| ") else HEADING_MARK.sub("", line))
        return "\n".join(lines)


def words_of(text: str, lang: str) -> list[str]:
    """Whitespace words; for Chinese and Japanese, each ideograph or kana is a word."""
    return CJK_WORDS.findall(text) if lang in CJK_LANGS else text.split()


@lru_cache(maxsize=None)
def stop_words(lang: str) -> frozenset[str]:
    from spacy.util import get_lang_class

    try:
        return frozenset(get_lang_class(lang).Defaults.stop_words)
    except ImportError:
        return frozenset()


def _strip_punct(word: str) -> str:
    return word.strip(".,;:!?\"'()[]{}<>«»“”‘’。，、；：！？（）")


# ----------------------------------------------------------------------------------------------- lines
def drop_prose_lines(doc: Doc, drops) -> list[str]:
    """Remove the prose lines for which `drops(line)` is true (code is left alone); returns them. A
    table's header and rule stay while any of its rows does: a header that repeats across a site's
    tables names their columns, and goes only with the last row."""
    removed: list[str] = []
    kept_blocks: list[Block] = []
    for block in doc.blocks:
        if not block.is_prose:
            kept_blocks.append(block)
            continue
        lines = block.text.split("\n")
        head = lines[:2] if block.kind == "table" and len(lines) > 1 and TABLE_RULE.match(lines[1]) else []
        kept = []
        for line in lines[len(head):]:
            (removed if drops(line) else kept).append(line)
        if kept:
            kept_blocks.append(Block(block.kind, "\n".join(head + kept)))
        else:
            removed += head[:1]
    doc.blocks = kept_blocks
    return removed


def c4_lines(doc: Doc, cfg: C4LinesConfig) -> tuple[int, list[str], str | None]:
    """(lines removed, a few of them, reason to drop the page or None)."""
    if cfg.drop_lorem_ipsum and "lorem ipsum" in doc.text.lower():
        return 0, [], "lorem ipsum"
    if cfg.drop_curly_braces and "{" in doc.text:
        return 0, [], "curly brace"
    removed = drop_prose_lines(doc, lambda line: _c4_drops_line(line, cfg))
    return len(removed), removed[:3], None


def _c4_drops_line(line: str, cfg: C4LinesConfig) -> bool:
    words = line.split()
    notice = len(words) <= NOTICE_MAX_WORDS
    if notice and cfg.drop_javascript_notices and JS_NOTICE.search(line) and JS_ASK.search(line):
        return True
    if notice and cfg.drop_policy_lines and POLICY.search(line):
        return True
    if cfg.min_words_per_line and len(words) < cfg.min_words_per_line:
        return True
    if cfg.require_terminal_punctuation and not line.rstrip().endswith(TERMINAL):
        return True
    return any(len(w) > cfg.max_word_chars for w in words)


def remove_lines(doc: Doc, unwanted: frozenset[bytes], key) -> tuple[int, list[str]]:
    """Remove prose lines whose `key(host, line)` is in `unwanted` (site boilerplate)."""
    removed = drop_prose_lines(doc, lambda line: key(doc.host, line) in unwanted)
    return len(removed), removed[:3]


# ------------------------------------------------------------------------------------------- documents
def gopher_quality(doc: Doc, cfg: GopherQualityConfig) -> str | None:
    text = doc.prose_text()
    words = [w for w in words_of(text, doc.lang) if _strip_punct(w)]
    n = len(words)
    if n < cfg.min_words:
        return f"{n} words < {cfg.min_words}"
    if n > cfg.max_words:
        return f"{n} words > {cfg.max_words}"
    mean = sum(len(_strip_punct(w)) for w in words) / n
    if cfg.min_mean_word_length is not None and mean < cfg.min_mean_word_length:
        return f"mean word length {mean:.2f} < {cfg.min_mean_word_length}"
    if cfg.max_mean_word_length is not None and mean > cfg.max_mean_word_length:
        return f"mean word length {mean:.2f} > {cfg.max_mean_word_length}"
    symbols = (text.count("#") + text.count("...") + text.count("…")) / n
    if symbols > cfg.max_symbol_word_ratio:
        return f"symbol/word ratio {symbols:.3f} > {cfg.max_symbol_word_ratio}"
    lines = doc.prose_lines()
    bullets = sum(line.lstrip().startswith(BULLETS) for line in lines) / len(lines)
    if bullets > cfg.max_bullet_line_share:
        return f"bullet lines {bullets:.2f} > {cfg.max_bullet_line_share}"
    ellipsis = sum(line.rstrip().endswith(("...", "…")) for line in lines) / len(lines)
    if ellipsis > cfg.max_ellipsis_line_share:
        return f"lines ending in an ellipsis {ellipsis:.2f} > {cfg.max_ellipsis_line_share}"
    alpha = sum(any(c.isalpha() for c in w) for w in words) / n
    if alpha < cfg.min_alpha_word_share:
        return f"words with a letter {alpha:.2f} < {cfg.min_alpha_word_share}"
    stops = stop_words(doc.lang)
    n_stop = sum(_strip_punct(w).lower() in stops for w in words)
    if n_stop < cfg.min_stop_words:
        return f"{n_stop} stop words < {cfg.min_stop_words}"
    return None


def _dup_share(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of characters in them)."""
    seen: set[str] = set()
    dup = dup_chars = 0
    for item in items:
        if item in seen:
            dup += 1
            dup_chars += len(item)
        seen.add(item)
    total_chars = sum(len(i) for i in items) or 1
    return dup / (len(items) or 1), dup_chars / total_chars


def gopher_repetition(doc: Doc, cfg: GopherRepetitionConfig) -> str | None:
    lines = [line for line in doc.prose_lines() if not TABLE_RULE.match(line)]
    paragraphs = [b.text for b in doc.blocks if b.is_prose]
    line_share, line_chars = _dup_share(lines)
    if line_share > cfg.max_dup_line_share:
        return f"duplicated lines {line_share:.2f} > {cfg.max_dup_line_share}"
    if line_chars > cfg.max_dup_line_char_share:
        return f"characters in duplicated lines {line_chars:.2f} > {cfg.max_dup_line_char_share}"
    para_share, para_chars = _dup_share(paragraphs)
    if para_share > cfg.max_dup_paragraph_share:
        return f"duplicated paragraphs {para_share:.2f} > {cfg.max_dup_paragraph_share}"
    if para_chars > cfg.max_dup_paragraph_char_share:
        return f"characters in duplicated paragraphs {para_chars:.2f} > {cfg.max_dup_paragraph_char_share}"
    words = words_of(doc.prose_text(), doc.lang)
    grams = NGrams(words)
    total = int(grams.lengths.sum()) or 1
    for n, limit in sorted(cfg.max_top_ngram_char_share.items()):
        if (top := grams.most_common(n)) is not None:
            at, count = top
            share = count * int(grams.lengths[at:at + n].sum()) / total
            if count > 1 and share > limit:
                return f"top {n}-gram {' '.join(words[at:at + n])!r} {share:.2f} > {limit}"
    for n, limit in sorted(cfg.max_dup_ngram_char_share.items()):
        share = grams.repeated_chars(n) / total
        if share > limit:
            return f"characters in duplicated {n}-grams {share:.2f} > {limit}"
    return None


class NGrams:
    """The n-grams of a page's words, each numbered by which distinct n-gram it is, for every n up to the
    largest asked. An n-gram's number comes from its (n-1)-gram's number and its last word's, so each n
    costs one sort of integers rather than a tuple of strings per position."""

    def __init__(self, words: list[str]):
        ids: dict[str, int] = {}
        self.word_ids = np.fromiter((ids.setdefault(w, len(ids)) for w in words), np.int64, len(words))
        self.vocabulary = max(len(ids), 1)
        self.lengths = np.fromiter((len(w) for w in words), np.int64, len(words))
        self._grams: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def distinct(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(number of the n-gram at each position, first position of each distinct n-gram, its count)."""
        if n not in self._grams:
            positions = len(self.word_ids) - n + 1
            if positions <= 0:
                empty = np.zeros(0, np.int64)
                self._grams[n] = (empty, empty, empty)
            else:
                keys = self.word_ids if n == 1 else (
                    self.distinct(n - 1)[0][:positions] * self.vocabulary + self.word_ids[n - 1:])
                _, first, numbers, counts = np.unique(keys, return_index=True, return_inverse=True,
                                                      return_counts=True)
                self._grams[n] = (numbers, first, counts)
        return self._grams[n]

    def most_common(self, n: int) -> tuple[int, int] | None:
        """(first position, count) of the most frequent n-gram, the earliest of equals (Counter's choice)."""
        _, first, counts = self.distinct(n)
        if not len(counts):
            return None
        top = counts == counts.max()
        return int(first[top].min()), int(counts.max())

    def repeated_chars(self, n: int) -> int:
        """Characters of the words covered by an n-gram that occurred earlier in the page."""
        numbers, first, _ = self.distinct(n)
        starts = np.flatnonzero(first[numbers] < np.arange(len(numbers)))
        depth = np.zeros(len(self.word_ids) + 1, np.int64)
        np.add.at(depth, starts, 1)
        np.add.at(depth, starts + n, -1)
        return int(self.lengths[np.cumsum(depth[:-1]) > 0].sum())


def fineweb_quality(doc: Doc, cfg: FineWebQualityConfig) -> str | None:
    lines = doc.sentence_lines()
    if not lines:
        return None if doc.prose_lines() else "no prose lines"
    punct = sum(line.rstrip().endswith(TERMINAL) for line in lines) / len(lines)
    if punct < cfg.min_line_punct_share:
        return f"lines ending a sentence {punct:.2f} < {cfg.min_line_punct_share}"
    short = sum(len(line) <= cfg.short_line_chars for line in lines) / len(lines)
    if short > cfg.max_short_line_share:
        return f"short lines {short:.2f} > {cfg.max_short_line_share}"
    _, char_dup = _dup_share(lines)
    if char_dup > cfg.max_char_dup_share:
        return f"characters in duplicated lines {char_dup:.3f} > {cfg.max_char_dup_share}"
    n_words = len(words_of("\n".join(lines), doc.lang)) or 1
    newline_ratio = (len(lines) - 1) / n_words
    if newline_ratio > cfg.max_newline_per_word:
        return f"line breaks per word {newline_ratio:.2f} > {cfg.max_newline_per_word}"
    return None
