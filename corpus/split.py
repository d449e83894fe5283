"""Split stage: which side (train or validation) each document goes to, decided by a hash of a stable key
alone, so that adding pages never moves old text from one side to the other.

The key of a page is its URL without scheme and port: the same site served over https or on another
port splits the same way, and a page served from this machine (a crawled folder, a local server) is
known by its path alone (`document_url`), in the corpus as in the split. A corpus too small for its
validation fraction (fewer than `min_val_pages` expected validation pages) is split by section instead:
a section is a page's text under one heading, keyed by the page's URL and its heading path, and the
sections of a page that fall on one side in a row become one document there."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from crawlers.urls import canonical_url
from corpus.config import SplitConfig
from corpus.jsonl import file_sha256, read_jsonl

SPLITS = ("train", "val")
MANIFEST_FILE = "manifest.json"
LOOPBACK_HOSTS = {"localhost", "::1"}


@dataclass
class SplitResult:
    files: dict[str, Path]
    manifest_file: Path
    manifest: dict


class EmptySplitError(ValueError):
    pass


def document_url(url: str) -> str:
    """The URL a document is known by in the corpus: the canonical URL, or for a page served from this
    machine its path and query only, so that the port it happened to be served on does not matter."""
    url = canonical_url(url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return url


def split_key(url: str) -> str:
    parts = urlsplit(url)
    return f"{(parts.hostname or '').lower()}{parts.path or '/'}{'?' + parts.query if parts.query else ''}"


def _side(key: str, config: SplitConfig) -> str:
    digest = hashlib.sha256(f"{config.salt}\0{key}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return "val" if position < config.val_fraction else "train"


def side_of(url: str, config: SplitConfig) -> str:
    return _side(split_key(url), config)


def sections(doc: dict) -> list[tuple[str, str]]:
    """(heading path, text) of each section of a document, in order; the text before the first heading
    has the empty path. A heading path repeated on one page gets its ordinal (`Example (2)`)."""
    lines = doc["text"].split("\n")
    starts = [i for i in doc.get("headings", []) if 0 < i < len(lines)]
    bounds = [0, *starts, len(lines)]
    stack: list[tuple[int, str]] = []
    seen: Counter[str] = Counter()
    found = []
    for start, end in zip(bounds, bounds[1:]):
        first = lines[start]
        level = len(first) - len(first.lstrip("#"))
        if start in doc.get("headings", []) and 0 < level <= 6:
            stack = [(lv, title) for lv, title in stack if lv < level] + [(level, first[level:].strip())]
        path = " / ".join(title for _, title in stack)
        seen[path] += 1
        found.append((path if seen[path] == 1 else f"{path} ({seen[path]})", "\n".join(lines[start:end])))
    return found


def section_parts(doc: dict, config: SplitConfig) -> list[tuple[str, dict]]:
    """A document cut into runs of consecutive sections on the same side: (side, document)."""
    parts: list[tuple[str, list[str], list[str]]] = []
    for path, text in sections(doc):
        side = _side(f"{split_key(doc['url'])}\0{path}", config)
        if parts and parts[-1][0] == side:
            parts[-1][1].append(path)
            parts[-1][2].append(text)
        else:
            parts.append((side, [path], [text]))
    out = []
    for side, paths, texts in parts:
        text = "\n".join(texts)
        if text.strip():
            key = f"{doc['url']}\0{paths[0]}"
            out.append((side, {"id": hashlib.sha256(key.encode()).hexdigest()[:16], "url": doc["url"],
                               "title": doc.get("title", ""), "lang": doc.get("lang"), "sections": paths,
                               "text": text}))
    return out


def split_unit(n_docs: int, config: SplitConfig) -> str:
    if config.unit != "auto":
        return config.unit
    return "page" if n_docs * config.val_fraction >= config.min_val_pages else "section"


def split(docs_file: Path, out_dir: Path, config: SplitConfig) -> SplitResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {name: out_dir / f"{name}.jsonl" for name in SPLITS}
    pages = sum(1 for _ in read_jsonl(docs_file))
    unit = split_unit(pages, config)
    counts = dict.fromkeys(SPLITS, 0)
    section_counts = dict.fromkeys(SPLITS, 0)
    handles = {name: open(path, "w", encoding="utf-8") for name, path in files.items()}
    try:
        for doc in read_jsonl(docs_file):
            if unit == "page":
                parts = [(side_of(doc["url"], config), doc)]
            else:
                parts = section_parts(doc, config)
            for side, part in parts:
                handles[side].write(json.dumps(part, ensure_ascii=False) + "\n")
                counts[side] += 1
                section_counts[side] += len(part.get("sections", [])) if unit == "section" else 0
    finally:
        for handle in handles.values():
            handle.close()
    for name in SPLITS:
        if counts[name] == 0:
            raise EmptySplitError(
                f"the {name} split is empty ({pages} documents in all, split by {unit}): "
                "crawl more pages or change split.val_fraction"
            )
    manifest = {
        "docs": counts,
        "unit": unit,
        "pages": pages,
        **({"sections": section_counts} if unit == "section" else {}),
        "val_fraction": config.val_fraction,
        "salt": config.salt,
        "sha256": {name: file_sha256(path) for name, path in files.items()},
    }
    manifest_file = out_dir / MANIFEST_FILE
    manifest_file.write_text(json.dumps(manifest, indent=2))
    return SplitResult(files, manifest_file, manifest)
