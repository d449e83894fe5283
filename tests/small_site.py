"""A documentation site of a dozen long pages: too few for a page-level validation split."""
from __future__ import annotations

import random
from pathlib import Path

TOPICS = ["scheduler", "cache", "parser", "indexer", "uploader", "renderer", "resolver", "tokenizer", "watcher",
          "exporter", "importer", "validator", "planner", "profiler", "router", "archiver"]
SECTIONS = ["Overview of the {}", "Installing the {}", "Using the {}", "Examples for the {}", "Configuring the {}",
            "When the {} fails"]
DETS = ["the", "a", "every", "each", "this", "that", "one", "no"]
ADJS = ["small", "large", "new", "old", "shared", "local", "remote", "slow", "quick", "empty", "full", "broken",
        "hidden", "public", "private", "default", "custom", "nested", "sorted", "frozen"]
NOUNS = ["file", "server", "request", "table", "record", "queue", "worker", "option", "setting", "process", "thread",
         "buffer", "message", "folder", "report", "field", "column", "result", "handler", "socket", "module", "job"]
VERBS = ["reads", "writes", "opens", "closes", "checks", "sends", "stores", "drops", "copies", "returns", "starts",
         "stops", "locks", "keeps", "loads", "moves", "skips", "splits", "merges", "counts"]
PREPS = ["before", "after", "with", "without", "for", "from", "into", "under", "beside", "through"]


def sentence(rng: random.Random) -> str:
    words = [rng.choice(DETS), rng.choice(ADJS), rng.choice(NOUNS), rng.choice(VERBS), rng.choice(DETS),
             rng.choice(ADJS), rng.choice(NOUNS), rng.choice(PREPS), rng.choice(DETS), rng.choice(NOUNS)]
    return " ".join(words).capitalize() + "."


def paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(sentence(rng) for _ in range(sentences))


def long_page(rng: random.Random, topic: str, links: list[str]) -> str:
    title = f"The {topic}"
    body = "".join(
        f"<h2>{section.format(topic)}</h2>" + "".join(f"<p>{paragraph(rng, 5)}</p>" for _ in range(2))
        + (f"<pre># how the {topic} is called\n{topic}.run(limit={rng.randrange(100)})\n</pre>"
           if section.startswith("Examples") else "")
        for section in SECTIONS)
    nav = "".join(f"<a href='{href}'>{href}</a> " for href in links)
    return (f"<!DOCTYPE html><html lang='en'><head><title>{title}</title></head><body><nav>{nav}</nav>"
            f"<main><h1>{title}</h1><p>{paragraph(rng, 4)}</p>{body}</main></body></html>")


def build_small_site(root: Path, pages: int = 12, seed: int = 5) -> list[str]:
    """Write `pages` long pages (index.html links them all); returns their file names."""
    root.mkdir(parents=True, exist_ok=True)
    names = ["index.html"] + [f"{topic}.html" for topic in TOPICS[1:pages]]
    for i, name in enumerate(names):
        rng = random.Random(seed * 1000 + i)  # a page's text does not depend on how many pages there are
        (root / name).write_text(long_page(rng, TOPICS[i], [f"/{n}" for n in names]))
    return names
