"""Extraction fidelity benchmark: word-level precision, recall and F1 of memlm's main-content extraction
and of trafilatura's on the pages of `tests/extract_pages/` (Sphinx, DocBook XHTML, MkDocs Material, a
WordPress blog and a phpBB forum), each against its gold text (what a reader calls the page's main content).

Words are lowercased runs of letters and digits; precision is the share of the extracted words (as a
multiset) that are in the gold text, recall the share of the gold text's words that were extracted. The
totals pool every page's words (micro average); `mean_f1` averages the pages' F1. It also runs the
generated manual of tables (`tests/table_site.py`) through the real clean stage and counts the words of
its plain-text rendering that the documents keep.

    python bench/extract.py                                  # table on stdout
    python bench/extract.py --json bench/results/extract.json
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corpus.extract import extract_page  # noqa: E402

PAGES_DIR = ROOT / "tests" / "extract_pages"
WORD = re.compile(r"\w+")


def words(text: str) -> Counter:
    return Counter(w.casefold() for w in WORD.findall(text))


def memlm_text(markup: str) -> str:
    return extract_page(markup).text


def trafilatura_text(markup: str) -> str:
    import trafilatura

    return trafilatura.extract(markup) or ""


EXTRACTORS = {"memlm": memlm_text, "trafilatura": trafilatura_text}


def pages() -> list[tuple[str, str, str]]:
    """(name, HTML, gold text) of every page of the set."""
    return [(p.stem, p.read_text(encoding="utf-8"), p.with_suffix(".txt").read_text(encoding="utf-8"))
            for p in sorted(PAGES_DIR.glob("*.html"))]


def prf(extracted: Counter, gold: Counter) -> dict:
    overlap = sum((extracted & gold).values())
    precision = overlap / sum(extracted.values()) if extracted else 0.0
    recall = overlap / sum(gold.values()) if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "overlap": overlap, "extracted": sum(extracted.values()), "gold": sum(gold.values())}


def score(extractor, items: list[tuple[str, str, str]]) -> dict:
    per_page, per_site = {}, {}
    totals: dict[str, tuple[Counter, Counter]] = {}
    started = time.perf_counter()
    for name, markup, gold_text in items:
        extracted, gold = words(extractor(markup)), words(gold_text)
        per_page[name] = prf(extracted, gold)
        site = name.split("-")[0]
        ex, go = totals.setdefault(site, (Counter(), Counter()))
        ex.update({f"{name}\0{w}": n for w, n in extracted.items()})
        go.update({f"{name}\0{w}": n for w, n in gold.items()})
    elapsed = time.perf_counter() - started
    for site, (ex, go) in totals.items():
        per_site[site] = prf(ex, go)
    all_ex = sum((ex for ex, _ in totals.values()), Counter())
    all_go = sum((go for _, go in totals.values()), Counter())
    return {"total": prf(all_ex, all_go), "mean_f1": round(sum(p["f1"] for p in per_page.values()) / len(per_page), 4),
            "seconds": round(elapsed, 3), "sites": per_site, "pages": per_page}


def table_manual_words_kept() -> dict:
    """Share of the table manual's words (against its own plain-text rendering) left after the clean."""
    import hashlib
    import tempfile

    from corpus.clean import clean
    from corpus.config import CleanConfig
    from corpus.jsonl import read_jsonl
    from tests.table_site import build_table_site

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        texts = build_table_site(root / "site")
        with open(root / "pages.jsonl", "w") as out:
            for name in texts:
                markup = (root / "site" / name).read_text()
                out.write(json.dumps({"url": f"http://manual.example/{name}", "html": markup,
                                      "sha256": hashlib.sha256(markup.encode()).hexdigest()}) + "\n")
        result = clean(root / "pages.jsonl", root / "clean", CleanConfig(workers=1))
        docs = {d["url"].rsplit("/", 1)[1]: d["text"] for d in read_jsonl(result.docs_file)}
    want = sum(sum(words(t).values()) for t in texts.values())
    kept = sum(sum((words(docs.get(n, "")) & words(t)).values()) for n, t in texts.items())
    return {"pages": len(texts), "docs_out": len(docs), "words": want, "words_kept": kept,
            "share_kept": round(kept / want, 4), "dropped": result.report["dropped"],
            "lines_removed": result.report["lines_removed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    import trafilatura

    items = pages()
    results = {name: score(extractor, items) for name, extractor in EXTRACTORS.items()}
    report = {"pages": len(items), "sites": sorted({n.split("-")[0] for n, _, _ in items}),
              "trafilatura_version": trafilatura.__version__, "command": f"python bench/extract.py --json {args.json}",
              "extractors": results, "table_manual_through_clean": table_manual_words_kept()}
    print(f"{len(items)} pages from {len(report['sites'])} sites")
    print(f"{'extractor':<12} {'site':<8} {'precision':>9} {'recall':>7} {'F1':>6}")
    for name, result in results.items():
        for site, row in [*result["sites"].items(), ("all", result["total"])]:
            print(f"{name:<12} {site:<8} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>6.3f}")
    manual = report["table_manual_through_clean"]
    print(f"table manual through the clean: {manual['docs_out']} of {manual['pages']} pages kept, "
          f"{manual['share_kept']:.1%} of its words")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
