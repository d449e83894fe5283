"""Clean stage: the crawl's pages to documents, through named steps that each count what they drop.

Pass 1 (worker processes): main-content extraction and language. Between the passes the parent finds
each site's boilerplate (lines on a large share of its pages). Pass 2 (worker processes): language
filter, boilerplate and C4 line removal, PII scrubbing, Gopher quality, Gopher repetition and FineWeb
quality filters, spaCy sentences and tokens, MinHash signatures. The parent then drops exact and near
duplicates in page order and writes the documents and the report.

A clean after a recrawl redoes only what changed: pass 1 for pages whose bytes changed, pass 2 for pages
whose extracted record changed or whose lines that are site boilerplate changed (a site's boilerplate
moves when pages are added or removed); both passes' results are kept beside the documents."""
from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crawlers.urls import host_of
from corpus.config import CleanConfig
from corpus.extract import Block, extract_page, heading_lines
from corpus.filters import Doc, c4_lines, fineweb_quality, gopher_quality, gopher_repetition, remove_lines
from corpus.jsonl import read_jsonl
from corpus.language import page_language
from corpus.near_dedup import NearDuplicateIndex, signature
from corpus.pii import scrub
from corpus.split import document_url

DOCS_FILE = "docs.jsonl"
REPORT_FILE = "report.json"
EXTRACTED_FILE = "extracted.jsonl"
FILTERED_FILE = "filtered.jsonl"
EXAMPLES_PER_STEP = 5
# Leakage: an output line that occurs on more than this share of its site's pages is boilerplate.
LEAKAGE_SHARE = 0.5

ProgressCallback = Callable[[int, int | None], None]


@dataclass
class CleanResult:
    docs_file: Path
    report_file: Path
    report: dict


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


def line_key(host: str, line: str) -> bytes:
    normalized = " ".join(line.casefold().split())
    return hashlib.blake2b(f"{host}\0{normalized}".encode(), digest_size=8).digest()


# ------------------------------------------------------------------------------------------ pass 1
def extract_record(page: dict, config: CleanConfig) -> dict:
    url = document_url(page.get("final_url") or page["url"])
    extracted = extract_page(page["html"])
    prose = "\n".join(b.text for b in extracted.blocks if b.is_prose)
    lang, decided = page_language(extracted.lang, prose, config.languages)
    return {"url": url, "host": host_of(url), "sha256": page.get("sha256"), "extract_key": extract_key(config),
            "title": extracted.title, "lang": lang, "lang_decided": decided,
            "blocks": [[b.kind, b.text] for b in extracted.blocks]}


def extract_key(config: CleanConfig) -> str:
    """What pass 1's output depends on besides the page: a page with the same bytes and key is reused."""
    return hashlib.sha256(json.dumps(["extract-v2", config.languages.model_dump()], sort_keys=True).encode()
                          ).hexdigest()[:16]


def _previous_extractions(extracted_file: Path, config: CleanConfig) -> dict[str, dict]:
    """Pass 1's records from the last clean, by page sha256 (when made with the same settings)."""
    key = extract_key(config)
    if not extracted_file.exists():
        return {}
    return {r["sha256"]: r for r in read_jsonl(extracted_file)
            if r.get("sha256") and r.get("extract_key") == key and "error" not in r}


# ------------------------------------------------------------------------------------------ pass 2
def filter_keys(config: CleanConfig, boilerplate: frozenset[bytes]) -> Callable[[dict, set[bytes]], str]:
    """The key of pass 2's result for one page, given the page's record and its prose lines' keys: what
    that result depends on, namely the record, the settings and spaCy pipeline that shape the output, and
    which of the page's lines are boilerplate."""
    settings = json.dumps(["filter-v2", config.model_dump(mode="json", exclude={"workers", "batch_size"})],
                          sort_keys=True)
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


def _previous_filtered(filtered_file: Path) -> dict[str, dict]:
    """Pass 2's results from the last clean, by filter key."""
    if not filtered_file.exists():
        return {}
    return {r["key"]: r["cleaned"] for r in read_jsonl(filtered_file)}


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


_worker: dict = {}


def _start_worker(config: CleanConfig, boilerplate: frozenset[bytes] = frozenset()) -> None:
    _worker.update(config=config, boilerplate=boilerplate, nlp={})


def _nlp(lang: str):
    """spaCy for `lang`: the configured trained pipeline if installed, else spacy.blank + sentencizer."""
    cache, config = _worker["nlp"], _worker["config"]
    if lang not in cache:
        cache[lang] = load_nlp(lang, config)
    return cache[lang]


def spacy_pipeline_name(lang: str, config: CleanConfig) -> str:
    import spacy

    keep = config.languages.keep
    if config.spacy_model and keep and lang == keep[0] and spacy.util.is_package(config.spacy_model):
        return config.spacy_model
    return f"blank:{lang}"


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


def _extract_chunk(pages: list[dict]) -> list[dict]:
    out = []
    for page in pages:
        if page.get("reuse"):
            out.append(page)
            continue
        try:
            out.append(extract_record(page, _worker["config"]))
        except Exception as e:  # noqa: BLE001 - one unparseable page must not stop the stage
            out.append({"url": page.get("final_url") or page.get("url", "?"), "error": f"{type(e).__name__}: {e}"})
    return out


def _filter_chunk(records: list[dict]) -> list[Cleaned | str]:
    config, boilerplate = _worker["config"], _worker["boilerplate"]
    results: list[Cleaned | str] = []
    survivors: dict[str, list[tuple[Doc, Cleaned]]] = defaultdict(list)
    for record in records:
        if "error" in record:
            results.append(Cleaned(record["url"], "?", "unparseable", record["error"]))
            continue
        if "reuse_key" in record:  # the parent has this page's result from the last clean
            results.append(record["reuse_key"])
            continue
        doc, result = text_steps(record, config, boilerplate)
        results.append(result)
        if result.dropped_by is None:
            survivors[doc.lang].append((doc, result))
    for lang, items in survivors.items():
        texts = [doc.text for doc, _ in items]
        for (doc, result), parsed in zip(items, _nlp(lang).pipe(texts, batch_size=config.batch_size)):
            n_words = sum(1 for t in parsed if not (t.is_space or t.is_punct))
            result.record = {
                "id": hashlib.sha256(doc.url.encode()).hexdigest()[:16],
                "url": doc.url,
                "title": doc.title,
                "lang": lang,
                "text": parsed.text,
                "text_sha256": hashlib.sha256(parsed.text.encode()).hexdigest(),
                "n_words": n_words,
                "n_sentences": sum(1 for _ in parsed.sents),
                "headings": heading_lines(doc.blocks),
            }
    return results


def _chunks(items: Iterable[dict], size: int) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@contextlib.contextmanager
def _mapper(workers: int, initargs: tuple) -> Iterator[Callable]:
    """imap over a pool of `workers` spawned processes, or map in this process for one worker."""
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers, _start_worker, initargs) as pool:
            yield pool.imap
    else:
        _start_worker(*initargs)
        yield map


class _Report:
    """Counts and examples gathered as results come back."""

    def __init__(self):
        self.dropped: Counter[str] = Counter()
        self.examples: dict[str, list[dict]] = defaultdict(list)
        self.lines_removed: Counter[str] = Counter()
        self.line_examples: dict[str, list[str]] = defaultdict(list)
        self.pii: Counter[str] = Counter()
        self.languages: Counter[str] = Counter()
        self.languages_out: Counter[str] = Counter()

    def drop(self, step: str, url: str, detail: str = "") -> None:
        self.dropped[step] += 1
        if len(self.examples[step]) < EXAMPLES_PER_STEP:
            self.examples[step].append({"url": url, **({"detail": detail} if detail else {})})

    def lines(self, step: str, n: int, examples: list[str]) -> None:
        self.lines_removed[step] += n
        room = EXAMPLES_PER_STEP - len(self.line_examples[step])
        self.line_examples[step].extend(e[:200] for e in examples[:max(room, 0)])


def clean(pages_file: Path, out_dir: Path, config: CleanConfig,
          on_progress: ProgressCallback | None = None) -> CleanResult:
    """Turn the crawl's page store into clean documents (`docs.jsonl`) and a cleaning report.

    Pages are sharded across `config.workers` processes (spaCy's own n_process was slower here)."""
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = config.workers or os.cpu_count() or 1
    total = sum(1 for _ in read_jsonl(pages_file))
    progress = on_progress or (lambda done, total: None)
    report = _Report()

    # Pass 1: extraction and language (reused for pages whose bytes did not change since the last
    # clean); each site's line counts for its boilerplate.
    extracted_file = out_dir / EXTRACTED_FILE
    previous = _previous_extractions(extracted_file, config)

    def pages() -> Iterator[dict]:
        for page in read_jsonl(pages_file):
            if page.get("sha256") in previous:  # the worker is sent the page's name, not its HTML
                yield {"reuse": True, "sha256": page["sha256"], "url": page.get("final_url") or page["url"]}
            else:
                yield page

    host_pages: Counter[str] = Counter()
    line_pages: dict[str, Counter[bytes]] = defaultdict(Counter)
    line_text: dict[bytes, str] = {}
    pages_in = reused = 0
    tmp_extracted = out_dir / (EXTRACTED_FILE + ".tmp")
    with _mapper(workers, (config,)) as imap, open(tmp_extracted, "w", encoding="utf-8") as out:
        for chunk in imap(_extract_chunk, _chunks(pages(), config.batch_size)):
            for record in chunk:
                pages_in += 1
                if record.get("reuse"):
                    url = document_url(record["url"])
                    record = {**previous[record["sha256"]], "url": url, "host": host_of(url)}
                    reused += 1
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                if "error" in record:
                    continue
                report.languages[record["lang"]] += 1
                host_pages[record["host"]] += 1
                keys = {}
                for kind, text in record["blocks"]:
                    if kind != "code":
                        for line in text.split("\n"):
                            keys.setdefault(line_key(record["host"], line), line)
                line_pages[record["host"]].update(keys.keys())
                for key, line in keys.items():
                    line_text.setdefault(key, line)
            progress(pages_in, 2 * total)
    tmp_extracted.replace(extracted_file)
    extract_s = time.monotonic() - started

    boilerplate, top_boilerplate = _site_boilerplate(config, host_pages, line_pages, line_text)

    # Pass 2: the filters, spaCy and signatures (reused for pages whose inputs did not change);
    # duplicates settled here in page order.
    filtered_file = out_dir / FILTERED_FILE
    previous_filtered = _previous_filtered(filtered_file)
    keys: list[str | None] = []  # each page's filter key, in page order
    filter_key = filter_keys(config, boilerplate)
    lines_in: list[tuple[str, list[bytes]]] = []  # every page's prose lines, for leakage before the steps

    def records() -> Iterator[dict]:
        for record in read_jsonl(extracted_file):
            key = None
            if "error" not in record:
                host = record["host"]
                lines = [(line, line_key(host, line)) for kind, text in record["blocks"] if kind != "code"
                         for line in text.split("\n")]
                key = filter_key(record, {k for _, k in lines})
                lines_in.append((host, [k for line, k in lines if line.strip()]))
            keys.append(key)
            yield {"reuse_key": key} if key in previous_filtered else record

    seen: set[str] = set()
    near = NearDuplicateIndex(config.near_dedup) if config.near_dedup.enabled else None
    totals: Counter[str] = Counter()
    kept_lines: list[tuple[str, list[bytes]]] = []
    done = refiltered = 0
    tmp_file = out_dir / (DOCS_FILE + ".tmp")
    tmp_filtered = out_dir / (FILTERED_FILE + ".tmp")
    with _mapper(workers, (config, boilerplate)) as imap, open(tmp_file, "w", encoding="utf-8") as out, \
            open(tmp_filtered, "w", encoding="utf-8") as filtered_out:
        for chunk in imap(_filter_chunk, _chunks(records(), config.batch_size)):
            for item in chunk:
                key = keys[done]
                done += 1
                if isinstance(item, str):
                    item = Cleaned.from_json(previous_filtered[item])
                elif key is not None:
                    refiltered += 1
                if key is not None:
                    filtered_out.write(json.dumps({"key": key, "cleaned": item.to_json()}, ensure_ascii=False) + "\n")
                for step, (n, examples) in item.lines_removed.items():
                    report.lines(step, n, examples)
                report.pii.update(item.pii)
                if item.dropped_by:
                    report.drop(item.dropped_by, item.url, item.detail)
                    continue
                if item.dedup_key in seen:
                    report.drop("duplicate", item.url)
                    continue
                seen.add(item.dedup_key)
                if near is not None and (kept := near.add(item.url, item.signature)):
                    report.drop("near_duplicate", item.url, f"like {kept}")
                    continue
                out.write(json.dumps(item.record, ensure_ascii=False) + "\n")
                report.languages_out[item.lang] += 1
                kept_lines.append((host_of(item.url), item.line_keys))
                totals.update(docs=1, chars=len(item.record["text"]), words=item.record["n_words"],
                              sentences=item.record["n_sentences"])
            progress(total + done, 2 * total)
    tmp_filtered.replace(filtered_file)
    tmp_file.replace(out_dir / DOCS_FILE)

    summary = {
        "pages_in": pages_in,
        "pages_extracted_again": pages_in - reused,
        "pages_filtered_again": refiltered,
        "docs_out": totals["docs"],
        "dropped": dict(report.dropped),
        "dropped_examples": dict(report.examples),
        "lines_removed": dict(report.lines_removed),
        "lines_removed_examples": {k: v for k, v in report.line_examples.items() if v},
        "languages_in": dict(report.languages),
        "languages_out": dict(report.languages_out),
        "pii_replaced": dict(report.pii),
        "near_duplicates": {"dropped": report.dropped.get("near_duplicate", 0),
                            "clusters": [{"kept": k, "duplicates": v} for k, v in (near.clusters if near else {}).items()][:50]},
        "boilerplate": {"sites": sum(1 for n in host_pages.values() if n >= config.boilerplate.min_pages),
                        "distinct_lines": len(boilerplate), "top": top_boilerplate},
        "leakage": {"before": _leakage(lines_in, host_pages, line_pages, config.boilerplate.min_pages),
                    "after": _leakage(kept_lines, host_pages, line_pages, config.boilerplate.min_pages),
                    "definition": f"share of lines on more than {LEAKAGE_SHARE:.0%} of their site's pages"},
        "chars_out": totals["chars"],
        "words_out": totals["words"],
        "sentences_out": totals["sentences"],
        "spacy_pipelines": {lang: spacy_pipeline_name(lang, config) for lang in report.languages_out},
        "workers": workers,
        "extract_s": round(extract_s, 1),
        "elapsed_s": round(time.monotonic() - started, 1),
        "config": config.model_dump(mode="json"),
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    if pages_in and not totals["docs"]:
        raise CleanError(_nothing_kept_message(summary, out_dir / REPORT_FILE))
    return CleanResult(out_dir / DOCS_FILE, out_dir / REPORT_FILE, summary)


class CleanError(RuntimeError):
    pass


def _nothing_kept_message(summary: dict, report_file: Path) -> str:
    steps = sorted(summary["dropped"].items(), key=lambda kv: -kv[1])
    parts = []
    for step, n in steps[:3]:
        example = (summary["dropped_examples"].get(step) or [{}])[0]
        parts.append(f"{step} {n} (e.g. {example.get('url', '?')}: {example.get('detail', '')})")
    step = steps[0][0] if steps else "language"
    setting = "clean.languages.keep" if step == "language" else f"clean.{step}"
    return (f"cleaning kept none of the {summary['pages_in']} pages: {'; '.join(parts)}. "
            f"Loosen {setting} in the config (see {report_file} for every step's counts).")


def _site_boilerplate(config: CleanConfig, host_pages: Counter, line_pages: dict, line_text: dict
                      ) -> tuple[frozenset[bytes], list[dict]]:
    """Line keys to remove, and the most widespread of them for the report."""
    cfg = config.boilerplate
    if not cfg.enabled:
        return frozenset(), []
    found: list[tuple[float, bytes]] = []
    for host, counts in line_pages.items():
        pages = host_pages[host]
        if pages < cfg.min_pages:
            continue
        found += [(n / pages, key) for key, n in counts.items() if n >= 2 and n >= cfg.min_share * pages]
    found.sort(reverse=True)
    top = [{"line": line_text[key][:120], "share_of_pages": round(share, 3)} for share, key in found[:15]]
    return frozenset(key for _, key in found), top


def _leakage(pages: Iterable[tuple[str, list[bytes]]], host_pages: Counter, line_pages: dict,
             min_pages: int) -> float:
    """Share of the lines of `pages` that occur on more than half of their site's crawled pages (sites
    of at least `min_pages` pages: on a site of one page every line is on all of them)."""
    lines = leaked = 0
    for host, keys in pages:
        if host_pages[host] < min_pages:
            continue
        limit = LEAKAGE_SHARE * host_pages[host]
        counts = line_pages[host]
        lines += len(keys)
        leaked += sum(counts[k] > limit for k in keys)
    return round(leaked / lines, 5) if lines else 0.0


def report_rows(report: dict) -> list[dict]:
    """The cleaning report as table rows (step, what it removed, an example), in pipeline order."""
    rows = [{"step": "language", "removed": f"{report['dropped'].get('language', 0)} pages",
             "example": f"kept {report['languages_out']} of {report['languages_in']}"}]
    for step, n in report["lines_removed"].items():
        examples = report["lines_removed_examples"].get(step) or [""]
        rows.append({"step": step, "removed": f"{n} lines", "example": examples[0][:80]})
    rows += [{"step": f"pii: {kind}", "removed": f"{n} replaced", "example": ""}
             for kind, n in report["pii_replaced"].items()]
    for step, n in report["dropped"].items():
        if step == "language":
            continue
        first = (report["dropped_examples"].get(step) or [{}])[0]
        example = " — ".join(filter(None, [first.get("url", ""), first.get("detail", "")]))
        rows.append({"step": step, "removed": f"{n} pages", "example": example[:120]})
    leakage = report["leakage"]
    rows.append({"step": "boilerplate leakage", "removed": f"{leakage['before']:.2%} → {leakage['after']:.2%}",
                 "example": leakage["definition"]})
    return rows
