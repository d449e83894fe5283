"""Clean stage: main-content extraction with BeautifulSoup, then spaCy sentences, tokens and quality filters."""
from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import Comment, Declaration, Doctype, ProcessingInstruction
from w3lib.url import canonicalize_url

from corpus.config import CleanConfig
from corpus.jsonl import read_jsonl

DOCS_FILE = "docs.jsonl"
REPORT_FILE = "report.json"

MAIN_SELECTORS = ("main", "article", "[role=main]")
DROP_TAGS = ("script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form",
             "button", "select", "iframe", "svg", "canvas")
DROP_ROLES = ("navigation", "search", "banner", "contentinfo", "complementary")
# Class or id words that mark page furniture rather than content.
FURNITURE = re.compile(
    r"(?:^|[-_\s])(side-?bar\w*|sphinxsidebar\w*|nav|navbar|navigation|menu|breadcrumbs?|footer|related|"
    r"cookie\w*|banner|share|social|skip-?link|headerlink|toc|switcher\w*)(?:$|[-_\s])",
    re.I,
)
HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
BLOCKS = {"p", "div", "section", "article", "main", "ul", "ol", "li", "dl", "dt", "dd", "table", "tr",
          "td", "th", "blockquote", "figure", "figcaption", "hr", "caption", "details", "summary", "body"}
SKIPPED_STRINGS = (Comment, Declaration, Doctype, ProcessingInstruction)

ProgressCallback = Callable[[int, int | None], None]


@dataclass
class CleanResult:
    docs_file: Path
    report_file: Path
    report: dict


def main_content(soup: BeautifulSoup) -> Tag:
    for selector in MAIN_SELECTORS:
        found = soup.select_one(selector)
        if found is not None:
            return found
    return soup.body or soup


def strip_furniture(root: Tag) -> None:
    for tag in root.find_all(DROP_TAGS):
        tag.decompose()
    for tag in root.find_all(attrs={"role": DROP_ROLES}):
        tag.decompose()
    for tag in root.find_all(True):
        if tag.decomposed or tag.attrs is None:
            continue
        marks = " ".join(tag.get("class") or []) + " " + (tag.get("id") or "")
        if marks.strip() and FURNITURE.search(marks):
            tag.decompose()


def render_text(root: Tag) -> str:
    """Headings, paragraphs, list items and table cells as lines; code blocks verbatim."""
    lines: list[str] = []
    inline: list[str] = []

    def flush(prefix: str = "") -> None:
        text = " ".join("".join(inline).split())
        inline.clear()
        if text:
            lines.append(prefix + text)

    def walk(node: Tag) -> None:
        for child in node.children:
            if isinstance(child, NavigableString):
                if not isinstance(child, SKIPPED_STRINGS):
                    inline.append(str(child))
                continue
            name = child.name
            if name == "pre":
                flush()
                code = "\n".join(line.rstrip() for line in child.get_text().strip("\n").splitlines())
                if code.strip():
                    lines.append(code)
            elif name == "br":
                inline.append(" ")
            elif name in HEADINGS:
                flush()
                walk(child)
                flush("#" * HEADINGS[name] + " ")
            elif name in BLOCKS:
                flush()
                walk(child)
                flush("- " if name == "li" else "")
            else:
                walk(child)

    walk(root)
    flush()
    return unicodedata.normalize("NFC", "\n".join(lines))


def extract(html: str) -> tuple[str, str]:
    """(title, main text) of an HTML page."""
    soup = BeautifulSoup(html, "lxml")
    title = " ".join(soup.title.get_text().split()) if soup.title else ""
    root = main_content(soup)
    strip_furniture(root)
    return unicodedata.normalize("NFC", title), render_text(root)


def dedup_key(text: str) -> str:
    return hashlib.sha256(" ".join(text.casefold().split()).encode()).hexdigest()


def spacy_pipeline_name(config: CleanConfig) -> str:
    import spacy

    if config.spacy_model and spacy.util.is_package(config.spacy_model):
        return config.spacy_model
    name = f"blank:{config.language}"
    return name + (f" ({config.spacy_model} is not installed)" if config.spacy_model else "")


def load_nlp(config: CleanConfig):
    """A trained spaCy pipeline if the config names an installed one, else `spacy.blank` + sentencizer."""
    import spacy

    if config.spacy_model and spacy.util.is_package(config.spacy_model):
        nlp = spacy.load(config.spacy_model, exclude=["ner", "lemmatizer", "textcat"])
    else:
        nlp = spacy.blank(config.language)
    if not {"sentencizer", "parser", "senter"} & set(nlp.pipe_names):
        nlp.add_pipe("sentencizer")
    nlp.max_length = max(nlp.max_length, config.max_chars + 1)
    return nlp


def quality_failure(doc, config: CleanConfig) -> tuple[str | None, dict]:
    """The first quality filter a spaCy Doc fails (None when it passes), and its statistics."""
    tokens = [t for t in doc if not t.is_space]
    words = [t for t in tokens if not t.is_punct]
    alpha = sum(t.is_alpha for t in tokens)
    stats = {
        "n_words": len(words),
        "n_sentences": sum(1 for _ in doc.sents),
        "alpha_ratio": round(alpha / len(tokens), 4) if tokens else 0.0,
        "n_stop_words": sum(t.is_stop for t in words),
    }
    if stats["n_words"] < config.min_words:
        return "min_words", stats
    if stats["alpha_ratio"] < config.min_alpha_ratio:
        return "min_alpha_ratio", stats
    if stats["n_stop_words"] < config.min_stop_words:
        return "min_stop_words", stats
    return None, stats


@dataclass
class _Cleaned:
    """What a worker found for one page; the parent settles duplicates, in page order."""

    url: str
    reason: str | None
    dedup_key: str | None = None
    record: dict | None = None


_worker: dict = {}


def _start_worker(config: CleanConfig) -> None:
    _worker["config"] = config
    _worker["nlp"] = load_nlp(config)


def _clean_chunk(pages: list[dict]) -> list[_Cleaned]:
    """Extract and filter a chunk of pages (in a worker process, or inline with one worker)."""
    config, nlp = _worker["config"], _worker["nlp"]
    results: list[_Cleaned] = []
    to_parse: list[tuple[str, dict]] = []
    for page in pages:
        title, text = extract(page["html"])
        url = canonicalize_url(page.get("final_url") or page["url"])
        if not text.strip():
            results.append(_Cleaned(url, "empty"))
        elif len(text) > config.max_chars:
            results.append(_Cleaned(url, "max_chars"))
        else:
            item = _Cleaned(url, None, dedup_key(text))
            results.append(item)
            to_parse.append((text, {"item": item, "title": title}))
    for doc, meta in nlp.pipe(to_parse, as_tuples=True, batch_size=config.batch_size):
        item = meta["item"]
        item.reason, stats = quality_failure(doc, config)
        if item.reason is None:
            item.record = {
                "id": hashlib.sha256(item.url.encode()).hexdigest()[:16],
                "url": item.url,
                "title": meta["title"],
                "text": doc.text,
                "text_sha256": hashlib.sha256(doc.text.encode()).hexdigest(),
                **stats,
            }
    return results


def _chunks(pages: Iterator[dict], size: int) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for page in pages:
        chunk.append(page)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def clean(pages_file: Path, out_dir: Path, config: CleanConfig,
          on_progress: ProgressCallback | None = None) -> CleanResult:
    """Turn the crawl's page store into clean documents (`docs.jsonl`) and a cleaning report.

    Pages are sharded across `config.workers` processes (spaCy's own n_process was slower here)."""
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = config.workers or os.cpu_count() or 1
    dropped: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    seen: set[str] = set()
    totals = Counter()
    pages_in = 0
    chunks = _chunks(read_jsonl(pages_file), config.batch_size)
    tmp_file = out_dir / (DOCS_FILE + ".tmp")
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(
                multiprocessing.get_context("spawn").Pool(workers, _start_worker, (config,)))
            results = pool.imap(_clean_chunk, chunks)
        else:
            _start_worker(config)
            results = map(_clean_chunk, chunks)
        out = stack.enter_context(open(tmp_file, "w", encoding="utf-8"))
        for chunk in results:
            for item in chunk:
                pages_in += 1
                reason = item.reason
                # Exact duplicates are settled here, in page order, before the quality filters count.
                if item.dedup_key is not None:
                    if item.dedup_key in seen:
                        reason = "duplicate"
                    seen.add(item.dedup_key)
                if reason:
                    dropped[reason] += 1
                    if len(examples.setdefault(reason, [])) < 5:
                        examples[reason].append(item.url)
                    continue
                out.write(json.dumps(item.record, ensure_ascii=False) + "\n")
                totals.update(docs=1, chars=len(item.record["text"]), words=item.record["n_words"],
                              sentences=item.record["n_sentences"])
            if on_progress:
                on_progress(pages_in, None)
    tmp_file.replace(out_dir / DOCS_FILE)
    report = {
        "pages_in": pages_in,
        "docs_out": totals["docs"],
        "dropped": dict(dropped),
        "dropped_examples": examples,
        "chars_out": totals["chars"],
        "words_out": totals["words"],
        "sentences_out": totals["sentences"],
        "spacy_pipeline": spacy_pipeline_name(config),
        "workers": workers,
        "filters": config.model_dump(),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return CleanResult(out_dir / DOCS_FILE, out_dir / REPORT_FILE, report)
