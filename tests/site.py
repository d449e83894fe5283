"""A small documentation-like website for tests: navigation, sidebars, code blocks, a robots.txt,
links out of the domain, a non-HTML file, a missing page, a duplicate page, a near-duplicate page, a
too-short page, a line of site boilerplate inside every page's content, personal data, and a page in
German."""
from __future__ import annotations

import random
from pathlib import Path

TOPICS = ["lists", "dictionaries", "strings", "functions", "classes", "modules", "exceptions", "files",
          "iterators", "generators", "decorators", "testing"]
SUBJECTS = ["A list", "The interpreter", "This function", "Every module", "The standard library", "A generator",
            "The programmer", "Each object", "An exception", "The compiler", "A dictionary", "The loop"]
VERBS = ["returns", "stores", "creates", "reads", "changes", "holds", "raises", "calls", "describes", "uses"]
OBJECTS = ["a new value", "the whole sequence", "an error message", "the first item", "a small table",
           "the current state", "every element", "the result of the call", "a copy of the data", "the file"]
TAILS = ["when it is needed", "for the user", "in the same way", "at the end of the block", "with care",
         "before it is used", "as the example shows", "in most programs", "without a copy", "by default"]
NAV = '<nav class="topnav"><a href="/index.html">Home</a> | <a href="/about.html">About</a> | NAVTOKEN menu</nav>'
SIDEBAR = '<div class="sphinxsidebar" role="navigation"><h3>SIDEBARTOKEN contents</h3><ul>{links}</ul></div>'
FOOTER = "<footer>FOOTERTOKEN copyright 2026</footer>"
# Inside the main content, so that only the site-wide line count can find it.
BOILERPLATE = "<p>BOILERTOKEN This page belongs to the test documentation, release 1.0 of the example project.</p>"
CONTACT = ("<p>Write to jane.doe@example-corp.com or call +1 415-555-0132 about the server at 93.184.216.34; "
           "the card 4111 1111 1111 1111 is only a test card. The build uses AKIAIOSFODNN7EXAMPLE as its key.</p>")
GERMAN = ("Diese Seite ist auf Deutsch geschrieben. Sie beschreibt, wie man mit Listen und Wörterbüchern "
          "arbeitet, und sie gehört nicht zu den Sprachen, die der Test behalten will. Jeder Absatz enthält "
          "genug Wörter, damit die Spracherkennung sicher ist und das Ergebnis eindeutig bleibt. ")


def prose(rng: random.Random, sentences: int) -> str:
    return " ".join(
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}."
        for _ in range(sentences)
    )


def page(title: str, body: str, links: list[str]) -> str:
    link_items = "".join(f'<li><a href="{href}">{href}</a></li>' for href in links)
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<script>var TRACKER = 'SCRIPTTOKEN';</script><style>.x{{color:red}}</style></head><body>"
        f"<header>HEADERTOKEN site banner</header>{NAV}"
        f"{SIDEBAR.format(links=link_items)}"
        f'<div class="body" role="main"><h1>{title}<a class="headerlink" href="#">¶</a></h1>{body}</div>'
        f"{FOOTER}</body></html>"
    )


def topic_body(rng: random.Random, topic: str, links: list[str]) -> str:
    paragraphs = "".join(f"<p>{prose(rng, 6)}</p>" for _ in range(3))
    code = f"<pre>def use_{topic}(value):\n    return [value] * 2\n</pre>"
    inline = " ".join(f'<a href="{href}">see {href}</a>' for href in links)
    return (f"{paragraphs}<h2>Example</h2>{code}<ul><li>{prose(rng, 1)}</li><li>{prose(rng, 1)}</li></ul>"
            f"<p>{inline}</p>{BOILERPLATE}")


def build_site(root: Path, topics: list[str] = TOPICS) -> dict[str, list[str]]:
    """Write the site under `root`; returns the paths a crawl should and should not store."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "private").mkdir(exist_ok=True)
    (root / "files").mkdir(exist_ok=True)
    rng = random.Random(7)
    pages = [f"{t}.html" for t in topics]
    index_links = [f"/{p}" for p in pages] + ["/about.html", "/short.html", "/copy-of-lists.html",
                                               "/near-copy-of-strings.html", "/contact.html", "/deutsch.html",
                                               "/private/secret.html", "/files/data.csv", "/missing.html",
                                               "http://elsewhere.example/page.html"]
    (root / "index.html").write_text(page("Index of the test docs", topic_body(rng, "index", index_links), index_links))
    (root / "about.html").write_text(page("About these docs", topic_body(rng, "about", ["/index.html"]), []))
    for i, name in enumerate(pages):
        neighbours = [f"/{pages[(i + 1) % len(pages)]}", "https://other.example/x.html"]
        (root / name).write_text(page(f"Working with {topics[i]}", topic_body(rng, topics[i], neighbours), neighbours))
    lists_html = (root / "lists.html").read_text() if "lists.html" in pages else None
    if lists_html:
        (root / "copy-of-lists.html").write_text(lists_html)
    strings_html = (root / "strings.html").read_text() if "strings.html" in pages else None
    if strings_html:  # one word changed: not an exact duplicate, a near one
        first_object = next(o for o in OBJECTS if o in strings_html)
        (root / "near-copy-of-strings.html").write_text(strings_html.replace(first_object, "an other thing", 1))
    (root / "contact.html").write_text(page("Contact", f"<p>{prose(rng, 8)}</p>{CONTACT}<p>{prose(rng, 8)}</p>", []))
    (root / "deutsch.html").write_text(
        page("Deutsch", f"<p>{GERMAN * 2}</p><p>{GERMAN}</p>", []).replace("lang='en'", "lang='de'"))
    (root / "short.html").write_text(page("Short", "<p>Too short to keep.</p>", []))
    (root / "private" / "secret.html").write_text(page("Secret", "<p>robots.txt forbids this page.</p>", []))
    (root / "files" / "data.csv").write_text("a,b\n1,2\n")
    (root / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n")
    stored = ["index.html", "about.html", "short.html", "contact.html", "deutsch.html", *pages]
    stored += (["copy-of-lists.html"] if lists_html else []) + (["near-copy-of-strings.html"] if strings_html else [])
    return {"stored": sorted(stored), "forbidden": ["private/secret.html"]}
