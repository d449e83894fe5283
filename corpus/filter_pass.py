"""Pass 2 of cleaning, in the workers: language filter, boilerplate and C4 line removal, PII scrubbing,
the Gopher and FineWeb quality filters, spaCy sentences and tokens, and the signatures that the parent's
duplicate steps compare."""
from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from corpus.boilerplate import line_key
from corpus.config import CleanConfig
from corpus.extract import Block, heading_lines
from corpus.extract_pass import extract_record
from corpus.filters import Doc, c4_lines, fineweb_quality, gopher_quality, gopher_repetition, remove_lines
from corpus.near_dedup import signature
from corpus.pii import scrub
from corpus.workers import worker_boilerplate, worker_config, worker_nlp


@dataclass
class Cleaned:
    """What pass 2 made of one page; the parent settles duplicates, in page order."""

    url: str
    lang: str
    dropped_by: str | None = None
    detail: str = ""
    record: dict | None = None
    dedup_key: str | None = None
    signature: object = None
    line_keys: list[bytes] = field(default_factory=list)
    lines_removed: dict[str, tuple[int, list[str]]] = field(default_factory=dict)
    pii: Counter = field(default_factory=Counter)

    def to_json(self) -> dict:
        return {"url": self.url, "lang": self.lang, "dropped_by": self.dropped_by, "detail": self.detail,
                "record": self.record, "dedup_key": self.dedup_key,
                "signature": None if self.signature is None else [int(v) for v in self.signature],
                "line_keys": [k.hex() for k in self.line_keys],
                "lines_removed": {step: [n, examples] for step, (n, examples) in self.lines_removed.items()},
                "pii": dict(self.pii)}

    @classmethod
    def from_json(cls, data: dict) -> Cleaned:
        return cls(data["url"], data["lang"], data["dropped_by"], data["detail"], data["record"], data["dedup_key"],
                   None if data["signature"] is None else np.array(data["signature"], dtype=np.uint64),
                   [bytes.fromhex(k) for k in data["line_keys"]],
                   {step: (n, examples) for step, (n, examples) in data["lines_removed"].items()},
                   Counter(data["pii"]))


NLP_LOCK = threading.Lock()  # one spaCy memory zone at a time in a process (see filter_chunk)
# Settings that change how the work is done, not what it gives.
EXECUTION_FIELDS = {"workers", "batch_size", "runner", "dask_address", "shard_pages", "shard_chars"}


def filter_keys(config: CleanConfig, boilerplate: frozenset[bytes]) -> Callable[[dict, set[bytes]], str]:
    """The key of pass 2's result for one page, given the page's record and its prose lines' keys: what
    that result depends on, namely the record, the settings and spaCy pipeline that shape the output, and
    which of the page's lines are boilerplate."""
    settings = config.model_dump(mode="json", exclude=EXECUTION_FIELDS)
    settings["boilerplate"].pop("max_counts_in_memory", None)
    settings = json.dumps(["filter-v2", settings], sort_keys=True)
    pipelines: dict[str, str] = {}

    def key(record: dict, line_keys: set[bytes]) -> str:
        lang = record["lang"]
        pipeline = pipelines.setdefault(lang, spacy_pipeline_name(lang, config))
        digest = hashlib.sha256(settings.encode())
        digest.update(json.dumps([pipeline, record], sort_keys=True, ensure_ascii=False).encode())
        for line_in_boilerplate in sorted(line_keys & boilerplate):
            digest.update(line_in_boilerplate)
        return digest.hexdigest()[:32]

    return key


def text_steps(record: dict, config: CleanConfig, boilerplate: frozenset[bytes] = frozenset()) -> tuple[Doc, Cleaned]:
    """Every step of pass 2 up to spaCy, for one extracted page."""
    doc = Doc(record["url"], record["host"], record["title"], record["lang"],
              [Block(kind, text) for kind, text in record["blocks"]])
    result = Cleaned(doc.url, doc.lang)
    keep = config.languages.keep
    if keep and doc.lang not in keep:
        result.dropped_by, result.detail = "language", f"{doc.lang} ({record.get('lang_decided', '')})"
        return doc, result
    cfg = config.for_language(doc.lang)
    if boilerplate:
        result.lines_removed["boilerplate"] = remove_lines(doc, boilerplate, line_key)
    if cfg.c4_lines.enabled:
        n, examples, reason = c4_lines(doc, cfg.c4_lines)
        result.lines_removed["c4_lines"] = (n, examples)
        if reason:
            result.dropped_by, result.detail = "c4_lines", reason
            return doc, result
    if cfg.pii.enabled:
        blocks = []
        for block in doc.blocks:
            text, counts = scrub(block.text, cfg.pii)
            result.pii.update(counts)
            blocks.append(Block(block.kind, text))
        doc.blocks = blocks
    text = doc.text
    if not text.strip():
        result.dropped_by = "empty"
        return doc, result
    if len(text) > cfg.max_chars:
        result.dropped_by, result.detail = "max_chars", f"{len(text)} characters > {cfg.max_chars}"
        return doc, result
    for name, step, section in (("gopher_quality", gopher_quality, cfg.gopher_quality),
                                ("gopher_repetition", gopher_repetition, cfg.gopher_repetition),
                                ("fineweb_quality", fineweb_quality, cfg.fineweb_quality)):
        if section.enabled and (reason := step(doc, section)):
            result.dropped_by, result.detail = name, reason
            return doc, result
    result.dedup_key = hashlib.sha256(" ".join(text.casefold().split()).encode()).hexdigest()
    if cfg.near_dedup.enabled:
        result.signature = signature(text, doc.lang, cfg.near_dedup)
    result.line_keys = [line_key(doc.host, line) for line in doc.prose_lines()]
    return doc, result


def clean_page(html: str, url: str, config: CleanConfig) -> Cleaned:
    """Both passes for one page on its own (no site boilerplate, no spaCy): what a page alone comes to."""
    record = extract_record({"url": url, "html": html}, config)
    return text_steps(record, config)[1]


def spacy_pipeline_name(lang: str, config: CleanConfig) -> str:
    keep = config.languages.keep
    if not (config.spacy_model and keep and lang == keep[0]):
        return f"blank:{lang}"  # without importing spaCy (and thinc, and torch): the parent has no use for them
    import spacy

    return config.spacy_model if spacy.util.is_package(config.spacy_model) else f"blank:{lang}"


def load_nlp(lang: str, config: CleanConfig):
    import spacy

    name = spacy_pipeline_name(lang, config)
    if name.startswith("blank:"):
        try:
            nlp = spacy.blank(lang)
        except ImportError:  # a language spaCy has no class for
            nlp = spacy.blank("xx")
    else:
        nlp = spacy.load(name, exclude=["ner", "lemmatizer", "textcat"])
    if not {"sentencizer", "parser", "senter"} & set(nlp.pipe_names):
        nlp.add_pipe("sentencizer")
    nlp.max_length = max(nlp.max_length, config.max_chars + 1)
    return nlp


def filter_chunk(records: list[dict]) -> list[Cleaned | str]:
    """Pass 2 over a chunk of extracted records; a record the parent has a result for from the last clean
    comes back as that result's key."""
    config, boilerplate = worker_config(), worker_boilerplate()
    results: list[Cleaned | str] = []
    survivors: dict[str, list[tuple[Doc, Cleaned]]] = defaultdict(list)
    for record in records:
        if "error" in record:
            results.append(Cleaned(record["url"], "?", "unparseable", record["error"]))
            continue
        if "reuse_key" in record:
            results.append(record["reuse_key"])
            continue
        doc, result = text_steps(record, config, boilerplate)
        results.append(result)
        if result.dropped_by is None:
            survivors[doc.lang].append((doc, result))
    for lang, items in survivors.items():
        texts = [doc.text for doc, _ in items]
        nlp = worker_nlp(lang)
        # Without the zone, every new word a page brings stays in the worker's vocabulary for good: about
        # 4 kB a page, so memory grows with the corpus. The record keeps only Python strings. One zone at
        # a time: a Dask worker's threads share the pipeline, and a zone's end frees its strings for all.
        with NLP_LOCK, nlp.memory_zone():
            parsed_docs = nlp.pipe(texts, batch_size=config.batch_size)
            for (doc, result), parsed in zip(items, parsed_docs, strict=True):
                n_words, n_sentences = word_and_sentence_counts(parsed)
                result.record = {
                    "id": hashlib.sha256(doc.url.encode()).hexdigest()[:16],
                    "url": doc.url,
                    "title": doc.title,
                    "lang": lang,
                    "text": parsed.text,
                    "text_sha256": hashlib.sha256(parsed.text.encode()).hexdigest(),
                    "n_words": n_words,
                    "n_sentences": n_sentences,
                    "headings": heading_lines(doc.blocks),
                }
    return results


def word_and_sentence_counts(parsed) -> tuple[int, int]:
    """(tokens that are neither space nor punctuation, sentences) of a spaCy Doc, read from its arrays:
    iterating a Doc makes a Python Token per token, which cost more than spaCy's tokenizer itself."""
    if len(parsed) == 0:
        return 0, 0
    flags = parsed.to_array(["IS_SPACE", "IS_PUNCT", "SENT_START"])
    n_words = int(((flags[:, 0] == 0) & (flags[:, 1] == 0)).sum())
    # Doc.sents: a sentence starts at the first token and at every later token whose SENT_START is 1.
    return n_words, 1 + int((flags[1:, 2].astype(np.int64) == 1).sum())
