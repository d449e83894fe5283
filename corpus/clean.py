"""Clean stage: the crawl's pages to documents, through named steps that each count what they drop.

Pass 1 (workers, `corpus/extract_pass.py`): main-content extraction and language. Between the passes the
parent finds each site's boilerplate from line counts (`corpus/boilerplate.py`). Pass 2 (workers,
`corpus/filter_pass.py`): language filter, boilerplate and C4 line removal, PII scrubbing, the quality
filters, spaCy, MinHash signatures. The parent then drops exact and near duplicates in page order and
writes the documents and the report (`corpus/clean_report.py`). The workers are processes or a Dask
cluster (`corpus/runners.py`).

Every pass streams: the parent holds a bounded number of pages at any time. What grows with the corpus
is the line counts (spilled to disk past a limit), the near-duplicate index, and one 8-byte hash per
kept document for exact duplicates; the report says how big each got.

A clean after a recrawl redoes only what changed: pass 1 for pages whose bytes changed, pass 2 for pages
whose extracted record changed or whose lines that are site boilerplate changed (a site's boilerplate
moves when pages are added or removed); both passes' results are kept beside the documents and found
again through an index on disk (`corpus/reuse.py`)."""
from __future__ import annotations

import json
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from corpus.boilerplate import LEAKAGE_SHARE, LineCounts, SiteLines, line_key
from corpus.clean_report import Report, nothing_kept_message, report_rows
from corpus.config import CleanConfig
from corpus.extract_pass import extract_chunk, extract_key
from corpus.filter_pass import Cleaned, clean_page, filter_chunk, filter_keys, spacy_pipeline_name
from corpus.near_dedup import NearDuplicateIndex
from corpus.reuse import previous_extractions, previous_filtered
from corpus.runners import pass_runner, workers_of
from corpus.split import document_url
from crawlers.hashset import HashSet
from crawlers.urls import host_of

__all__ = ["CleanError", "CleanResult", "clean", "clean_page", "report_rows"]

DOCS_FILE = "docs.jsonl"
REPORT_FILE = "report.json"
EXTRACTED_FILE = "extracted.jsonl"
FILTERED_FILE = "filtered.jsonl"
LINE_COUNTS_FILE = "line-counts.sqlite"

ProgressCallback = Callable[[int, int | None], None]


@dataclass
class CleanResult:
    docs_file: Path
    report_file: Path
    report: dict


class CleanError(RuntimeError):
    pass


def _pages_in(pages_file: Path) -> int:
    with open(pages_file, "rb") as f:
        return sum(1 for line in f if line.strip())


def _read_jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def clean(pages_file: Path, out_dir: Path, config: CleanConfig,
          on_progress: ProgressCallback | None = None) -> CleanResult:
    """Turn the crawl's page store into clean documents (`docs.jsonl`) and a cleaning report.

    Pages are sharded across `config.workers` processes (spaCy's own n_process was slower here), or
    across a Dask cluster's workers."""
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = _pages_in(pages_file)
    progress = on_progress or (lambda done, total: None)
    report = Report()

    # Pass 1: extraction and language (reused for pages whose bytes did not change since the last
    # clean); each site's line counts for its boilerplate.
    extracted_file = out_dir / EXTRACTED_FILE
    previous = previous_extractions(extracted_file, out_dir / "extracted.index.sqlite", extract_key(config))

    def pages() -> Iterator[dict]:
        for page in _read_jsonl(pages_file):
            if page.get("sha256") in previous:  # the worker is sent the page's name, not its HTML
                yield {"reuse": True, "sha256": page["sha256"], "url": page.get("final_url") or page["url"]}
            else:
                yield page

    with pass_runner(config, total) as run:  # the workers start once, for both passes
        counts = LineCounts(out_dir / LINE_COUNTS_FILE, config.boilerplate.max_counts_in_memory)
        pages_in = reused = 0
        tmp_extracted = out_dir / (EXTRACTED_FILE + ".tmp")
        with open(tmp_extracted, "w", encoding="utf-8") as out:
            for chunk in run(extract_chunk, pages()):
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
                    host = record["host"]
                    counts.add_page(host, {line_key(host, line) for kind, text in record["blocks"] if kind != "code"
                                           for line in text.split("\n")})
                progress(pages_in, 2 * total)
        previous.close()
        tmp_extracted.replace(extracted_file)
        extract_s = time.monotonic() - started

        site_lines = SiteLines(config.boilerplate, counts)
        line_counts = counts.sizes()
        counts.close()
        boilerplate = site_lines.boilerplate

        # Pass 2: the filters, spaCy and signatures (reused for pages whose inputs did not change);
        # duplicates settled here in page order.
        filtered_file = out_dir / FILTERED_FILE
        previous_results = previous_filtered(filtered_file, out_dir / "filtered.index.sqlite")
        keys: deque[str | None] = deque()  # the filter keys of the pages sent and not back yet, in page order
        filter_key = filter_keys(config, boilerplate)
        leakage_before, leakage_after = site_lines.leakage_meter(), site_lines.leakage_meter()

        def records() -> Iterator[dict]:
            for record in _read_jsonl(extracted_file):
                key = None
                if "error" not in record:
                    host = record["host"]
                    lines = [(line, line_key(host, line)) for kind, text in record["blocks"] if kind != "code"
                             for line in text.split("\n")]
                    key = filter_key(record, {k for _, k in lines})
                    for line, k in lines:
                        site_lines.note_text(k, line)
                    leakage_before.add(host, [k for line, k in lines if line.strip()])
                keys.append(key)
                yield {"reuse_key": key} if key in previous_results else record

        seen = HashSet()  # the first 8 bytes of each kept document's normalized-text sha256
        near = NearDuplicateIndex(config.near_dedup) if config.near_dedup.enabled else None
        totals: Counter[str] = Counter()
        done = refiltered = 0
        tmp_file = out_dir / (DOCS_FILE + ".tmp")
        tmp_filtered = out_dir / (FILTERED_FILE + ".tmp")
        with open(tmp_file, "w", encoding="utf-8") as out, open(tmp_filtered, "w", encoding="utf-8") as filtered_out:
            for chunk in run(filter_chunk, records(), boilerplate):
                for item in chunk:
                    key = keys.popleft()
                    done += 1
                    if isinstance(item, str):
                        item = Cleaned.from_json(previous_results[item]["cleaned"])
                    elif key is not None:
                        refiltered += 1
                    if key is not None:
                        filtered_out.write(json.dumps({"key": key, "cleaned": item.to_json()},
                                                      ensure_ascii=False) + "\n")
                    for step, (n, examples) in item.lines_removed.items():
                        report.lines(step, n, examples)
                    report.pii.update(item.pii)
                    if item.dropped_by:
                        report.drop(item.dropped_by, item.url, item.detail)
                        continue
                    dedup_key = int(item.dedup_key[:16], 16)
                    if dedup_key in seen:
                        report.drop("duplicate", item.url)
                        continue
                    seen.add(dedup_key)
                    if near is not None and (kept := near.add(item.url, item.signature)):
                        report.drop("near_duplicate", item.url, f"like {kept}")
                        continue
                    out.write(json.dumps(item.record, ensure_ascii=False) + "\n")
                    report.languages_out[item.lang] += 1
                    leakage_after.add(host_of(item.url), item.line_keys)
                    totals.update(docs=1, chars=len(item.record["text"]), words=item.record["n_words"],
                                  sentences=item.record["n_sentences"])
                progress(total + done, 2 * total)
    previous_results.close()
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
                            "clusters": [{"kept": k, "duplicates": v} for k, v in (near.clusters if near else {}).items()]},
        "boilerplate": {"sites": site_lines.sites(), "distinct_lines": len(boilerplate),
                        "top": site_lines.top_lines()},
        "leakage": {"before": leakage_before.value(), "after": leakage_after.value(),
                    "definition": f"share of lines on more than {LEAKAGE_SHARE:.0%} of their site's pages"},
        "chars_out": totals["chars"],
        "words_out": totals["words"],
        "sentences_out": totals["sentences"],
        "spacy_pipelines": {lang: spacy_pipeline_name(lang, config) for lang in report.languages_out},
        # What grew with the corpus, and how far.
        "memory": {"line_counts": line_counts,
                   "near_duplicate_index": near.sizes() if near else None,
                   "exact_duplicate_hashes": len(seen)},
        "runner": config.runner,
        "workers": workers_of(config),
        "extract_s": round(extract_s, 1),
        "elapsed_s": round(time.monotonic() - started, 1),
        "config": config.model_dump(mode="json"),
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    if pages_in and not totals["docs"]:
        raise CleanError(nothing_kept_message(summary, out_dir / REPORT_FILE))
    return CleanResult(out_dir / DOCS_FILE, out_dir / REPORT_FILE, summary)
