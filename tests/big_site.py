"""A generated documentation site of any size, written to disk: chapters of pages in folders, each page
with navigation, prose, a code block, a table and links to its neighbours, its chapter's index and a few
pages far away, so that a breadth-first crawl from the index reaches every page. Deterministic: the same
`n_pages` gives the same bytes."""
from __future__ import annotations

import random
from pathlib import Path

from tests.site import OBJECTS, SUBJECTS, TAILS, VERBS

PAGES_PER_CHAPTER = 100
NAV = ('<nav class="related"><a href="/index.html">Home</a> | <a href="/search.html">Search</a> | '
       '<a href="/glossary.html">Glossary</a></nav>')


def page_path(i: int) -> str:
    return f"chapter{i // PAGES_PER_CHAPTER:05d}/page{i:07d}.html"


def _sentence(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}."


def _page(i: int, n_pages: int) -> str:
    rng = random.Random(i)
    chapter = i // PAGES_PER_CHAPTER
    links = sorted({(i + 1) % n_pages, (i + 7) % n_pages, rng.randrange(n_pages), rng.randrange(n_pages)})
    related = "".join(f'<li><a href="/{page_path(j)}">Section {j}</a></li>' for j in links)
    paragraphs = "".join(f"<p>{' '.join(_sentence(rng) for _ in range(rng.randint(4, 8)))} Page {i} "
                         f"of chapter {chapter} explains item {rng.randrange(10**6)}.</p>" for _ in range(rng.randint(4, 7)))
    rows = "".join(f"<tr><td>option_{i}_{r}</td><td>{rng.randrange(1000)}</td><td>{_sentence(rng)}</td></tr>"
                   for r in range(rng.randint(2, 5)))
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Section {i}</title></head><body>"
            f"{NAV}<div class='sphinxsidebar'><ul>{related}</ul></div>"
            f"<div class='body' role='main'><h1>Section {i}: {rng.choice(OBJECTS)}</h1>{paragraphs}"
            f"<h2>Example</h2><pre>def section_{i}(value):\n    return value * {rng.randrange(100)}\n</pre>"
            f"<table><tr><th>option</th><th>default</th><th>meaning</th></tr>{rows}</table>"
            f"<p>See also <a href='/{page_path(links[0])}'>the next section</a> and "
            f"<a href='/chapter{chapter:05d}/index.html'>the chapter</a>.</p></div>"
            f"<footer>Example project documentation, generated.</footer></body></html>")


def build_big_site(root: Path, n_pages: int) -> list[str]:
    """Write `n_pages` pages, one index per chapter and the site's index under `root`; returns the paths."""
    root = Path(root)
    paths = []
    n_chapters = (n_pages + PAGES_PER_CHAPTER - 1) // PAGES_PER_CHAPTER
    chapters = [f"chapter{c:05d}/index.html" for c in range(n_chapters)]
    index = "".join(f'<li><a href="/{p}">Chapter {c}</a></li>' for c, p in enumerate(chapters))
    (root / "index.html").parent.mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text(f"<html lang='en'><head><title>Index</title></head><body>{NAV}<ul>{index}"
                                     f"</ul></body></html>")
    for c, chapter in enumerate(chapters):
        (root / chapter).parent.mkdir(parents=True, exist_ok=True)
        members = range(c * PAGES_PER_CHAPTER, min((c + 1) * PAGES_PER_CHAPTER, n_pages))
        items = "".join(f'<li><a href="/{page_path(i)}">Section {i}</a></li>' for i in members)
        (root / chapter).write_text(f"<html lang='en'><head><title>Chapter {c}</title></head><body>{NAV}"
                                    f"<ul>{items}</ul></body></html>")
    for i in range(n_pages):
        path = page_path(i)
        (root / path).write_text(_page(i, n_pages))
        paths.append(path)
    return ["index.html", *chapters, *paths]
