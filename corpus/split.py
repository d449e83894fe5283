"""Split stage: a document's side (train or validation) is decided by a hash of its canonical URL alone,
so adding pages never moves an old page from one side to the other. Scheme and port are left out of the
hash: the same site served over https or on another port splits the same way."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from corpus.config import SplitConfig
from corpus.jsonl import file_sha256, read_jsonl

SPLITS = ("train", "val")
MANIFEST_FILE = "manifest.json"


@dataclass
class SplitResult:
    files: dict[str, Path]
    manifest_file: Path
    manifest: dict


class EmptySplitError(ValueError):
    pass


def split_key(url: str) -> str:
    parts = urlsplit(url)
    return f"{(parts.hostname or '').lower()}{parts.path or '/'}{'?' + parts.query if parts.query else ''}"


def side_of(url: str, config: SplitConfig) -> str:
    digest = hashlib.sha256(f"{config.salt}\0{split_key(url)}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return "val" if position < config.val_fraction else "train"


def split(docs_file: Path, out_dir: Path, config: SplitConfig) -> SplitResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {name: out_dir / f"{name}.jsonl" for name in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)
    handles = {name: open(path, "w", encoding="utf-8") for name, path in files.items()}
    try:
        for doc in read_jsonl(docs_file):
            side = side_of(doc["url"], config)
            handles[side].write(json.dumps(doc, ensure_ascii=False) + "\n")
            counts[side] += 1
    finally:
        for handle in handles.values():
            handle.close()
    for name in SPLITS:
        if counts[name] == 0:
            raise EmptySplitError(
                f"the {name} split is empty ({sum(counts.values())} documents in all): "
                "crawl more pages or change split.val_fraction"
            )
    manifest = {
        "docs": counts,
        "val_fraction": config.val_fraction,
        "salt": config.salt,
        "sha256": {name: file_sha256(path) for name, path in files.items()},
    }
    manifest_file = out_dir / MANIFEST_FILE
    manifest_file.write_text(json.dumps(manifest, indent=2))
    return SplitResult(files, manifest_file, manifest)
