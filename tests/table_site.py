"""A manual whose chapters are mostly tables (a package list per chapter, the same columns and many of
the same figures in every chapter), with its own plain-text rendering to count words against."""
from __future__ import annotations

import random
from pathlib import Path

GROUPS = ["network", "database", "graphics", "audio", "compression", "security", "science", "text", "web",
          "testing", "storage", "fonts"]
STEMS = ["lib", "py", "go", "node", "perl", "ruby", "tcl", "lua", "java", "rust"]
ROLES = ["client library", "command line tools", "development headers", "documentation", "shared runtime",
         "bindings for Python", "server daemon", "test suite", "plugins", "utilities"]
VERSIONS = ["1.0", "1.2", "2.0", "2.1", "3.4"]
SIZES = ["12 KB", "48 KB", "1 MB", "3 MB"]
LICENSES = ["GPL", "MIT", "BSD", "Apache"]


def chapter(rng: random.Random, number: int, group: str) -> tuple[str, str]:
    """(HTML page, the text a reader sees as its content)."""
    title = f"Chapter {number}. The {group} packages"
    intro = (f"This chapter lists the packages of the {group} section. Each of them is built from source on every "
             f"release, and the table gives the version, the installed size and the license of each one.")
    outro = (f"Packages of the {group} section that are not listed here were removed in the last release; "
             f"their replacements are named in the release notes of the project.")
    rows = []
    for i in range(18):
        name = f"{rng.choice(STEMS)}-{group}{i}"
        rows.append([name, rng.choice(VERSIONS), rng.choice(SIZES), rng.choice(LICENSES),
                     f"{group} {rng.choice(ROLES)}"])
    header = ["Package", "Version", "Size", "License", "Description"]
    table = ("<table class='docutils'><thead><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr></thead><tbody>"
             + "".join("<tr>" + "".join(f"<td><p>{c}</p></td>" for c in row) + "</tr>" for row in rows)
             + "</tbody></table>")
    terms = [("Version", "the upstream version that the package was built from."),
             ("Size", f"the space the {group} package takes once installed.")]
    dl = "<dl>" + "".join(f"<dt>{t}</dt><dd><p>{d}</p></dd>" for t, d in terms) + "</dl>"
    note = (f"<div class='admonition note'><p class='admonition-title'>Note</p><p>The {group} packages are "
            f"rebuilt whenever one of their dependencies changes.</p></div>")
    html = (f"<!DOCTYPE html><html lang='en'><head><title>{title}</title></head><body>"
            f"<nav class='topnav'><a href='index.html'>Manual</a> | <a href='about.html'>About</a></nav>"
            f"<div class='sphinxsidebar' role='navigation'><ul><li>Contents</li><li>Index</li></ul></div>"
            f"<div class='body' role='main'><h1>{title}</h1><p>{intro}</p>{note}{table}{dl}<p>{outro}</p></div>"
            f"<footer>Copyright 2026 the manual's authors</footer></body></html>")
    text = "\n".join([title, intro, "Note", f"The {group} packages are rebuilt whenever one of their dependencies "
                      "changes.", " ".join(header), *(" ".join(r) for r in rows),
                      *(f"{t} {d}" for t, d in terms), outro])
    return html, text


def build_table_site(root: Path) -> dict[str, str]:
    """Write the chapters under `root`; returns each page's file name and its plain text."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(3)
    texts = {}
    for number, group in enumerate(GROUPS, 1):
        html, text = chapter(rng, number, group)
        name = f"chapter{number}.html"
        (root / name).write_text(html, encoding="utf-8")
        texts[name] = text
    return texts
