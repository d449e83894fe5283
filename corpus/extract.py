"""Main-content extraction with BeautifulSoup: a page's title, declared language, and its text as blocks
(headings, paragraphs, list items, table cells, code). Code blocks are marked so that the line and
quality filters judge prose only: a documentation page is not dropped for its code."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import Comment, Declaration, Doctype, ProcessingInstruction

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


@dataclass
class Block:
    kind: str  # "heading", "text", "item" or "code"
    text: str

    @property
    def is_prose(self) -> bool:
        return self.kind != "code"


@dataclass
class Page:
    title: str
    lang: str | None  # from <html lang>, primary subtag only
    blocks: list[Block] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(b.text for b in self.blocks)

    def prose_lines(self) -> list[str]:
        return [b.text for b in self.blocks if b.is_prose]


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


def render_blocks(root: Tag) -> list[Block]:
    """Headings (as '# ...'), paragraphs, list items ('- ...') and table cells as one block each; code verbatim."""
    blocks: list[Block] = []
    inline: list[str] = []

    def flush(kind: str = "text", prefix: str = "") -> None:
        text = " ".join("".join(inline).split())
        inline.clear()
        if text:
            blocks.append(Block(kind, _nfc(prefix + text)))

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
                    blocks.append(Block("code", _nfc(code)))
            elif name == "br":
                inline.append(" ")
            elif name in HEADINGS:
                flush()
                walk(child)
                flush("heading", "#" * HEADINGS[name] + " ")
            elif name in BLOCKS:
                flush()
                walk(child)
                flush("item" if name == "li" else "text", "- " if name == "li" else "")
            else:
                walk(child)

    walk(root)
    flush()
    return blocks


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def extract_page(html: str) -> Page:
    soup = BeautifulSoup(html, "lxml")
    title = " ".join(soup.title.get_text().split()) if soup.title else ""
    lang = soup.html.get("lang") if soup.html else None
    lang = lang.strip().split("-")[0].split("_")[0].lower() if isinstance(lang, str) and lang.strip() else None
    root = main_content(soup)
    strip_furniture(root)
    return Page(_nfc(title), lang, render_blocks(root))


def extract(html: str) -> tuple[str, str]:
    """(title, main text) of an HTML page."""
    page = extract_page(html)
    return page.title, page.text
