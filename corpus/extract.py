"""Main-content extraction with BeautifulSoup: a page's title, declared language, and its text as blocks
(headings, paragraphs, list items, tables, code). Code blocks are marked so that the line and quality
filters judge prose only: a documentation page is not dropped for its code.

A data table becomes one block with one line per row, its cells separated by ` | ` and its header row
marked once by a `| --- |` line under it (Markdown's table), so that the boilerplate count and the line
filters see rows, not cells. An admonition's title ("Note", "Warning") leads its first paragraph and a
short definition-list term leads its definition, rather than standing alone as a line that repeats on
every page. XHTML that declares itself XML is parsed as XML."""
from __future__ import annotations

import html.entities
import re
import unicodedata
import warnings
from dataclasses import dataclass, field

import lxml.etree
from bs4 import BeautifulSoup, NavigableString, Tag, XMLParsedAsHTMLWarning
from bs4.element import Comment, Declaration, Doctype, ProcessingInstruction

MAIN_SELECTORS = ("main", "article", "[role=main]")
DROP_TAGS = ("script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form",
             "button", "select", "iframe", "svg", "canvas")
DROP_ROLES = ("navigation", "search", "banner", "contentinfo", "complementary")
# Class or id words that mark page furniture rather than content.
FURNITURE = re.compile(
    r"(?:^|[-_\s])(side-?bar\w*|sphinxsidebar\w*|nav|navbar|navigation|menu|breadcrumbs?|footer|related|"
    r"cookie\w*|banner|share|social|skip-?link|headerlink|toc|switcher\w*|navheader|navfooter|legalnotice|"
    r"copiable-anchor|copiable-link|comments?|"
    r"postprofile|signature|author|byline|pagination|pager|buttons?|back2top|linenos|linenodiv)(?:$|[-_\s])",
    re.I,
)
# Sphinx and MkDocs "admonition note", DocBook "note"/"warning", GitHub "markdown-alert", callouts.
ADMONITION = re.compile(r"(?:^|\s)(?:admonition|note|warning|tip|caution|important|hint|danger|attention|"
                        r"seealso|versionadded|versionchanged|deprecated|markdown-alert|callout)(?:$|\s)", re.I)
ADMONITION_TITLE = re.compile(r"(?:^|\s)(?:admonition-title|title|markdown-alert-title|callout-title)(?:$|\s)")
# Links to the neighbouring pages, and the blocks whose other text is at most a few labels ("Next:", "Up:").
PAGE_LINK_RELS = {"next", "prev", "previous", "up", "index", "contents", "start"}
LINK_PANEL_BLOCKS = {"p", "div", "td", "tr", "table", "ul", "ol", "li", "body", "main", "article", "html"}
LINK_PANEL_MAX_OTHER_CHARS = 24
ID_IS_A_SLUG = {"h1", "h2", "h3", "h4", "h5", "h6", "section", "dt", "article", "span", "a"}
HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
BLOCKS = {"p", "div", "section", "article", "main", "ul", "ol", "li", "dl", "dt", "dd", "table", "tr",
          "td", "th", "blockquote", "figure", "figcaption", "hr", "caption", "details", "summary", "body",
          "aside", "thead", "tbody", "tfoot", "header", "footer", "nav", "pre", "h1", "h2", "h3", "h4", "h5",
          "h6", "address", "center", "fieldset", "form", "legend", "dialog"}
# A table whose cells hold these lays out a page; its cells are read as blocks, not as rows.
LAYOUT_INSIDE = {"table", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote"}
# A definition-list term longer than this (an API signature) stays a line of its own.
TERM_MAX_CHARS = 60
SKIPPED_STRINGS = (Comment, Declaration, Doctype, ProcessingInstruction)
XHTML = re.compile(r"^\s*<\?xml[^>]*\?>.*?<html[^>]*xmlns=[\"']http://www\.w3\.org/1999/xhtml", re.S)
XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
NAMED_ENTITY = re.compile(r"&([A-Za-z][A-Za-z0-9]*);")
XML_ENTITIES = {"amp", "lt", "gt", "quot", "apos"}
TABLE_RULE = re.compile(r"^\|(?: --- \|)+$")


@dataclass
class Block:
    kind: str  # "heading", "text", "item", "table" or "code"
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


def heading_lines(blocks: list[Block]) -> list[int]:
    """The line numbers of the headings in the text the blocks make (joined by newlines): the sections
    the split may cut a page into, found without mistaking a code comment for a heading."""
    found, line = [], 0
    for block in blocks:
        if block.kind == "heading":
            found.append(line)
        line += block.text.count("\n") + 1
    return found


def main_content(soup: BeautifulSoup) -> Tag:
    for selector in MAIN_SELECTORS:
        found = soup.select_one(selector)
        if found is not None:
            return found
    return soup.body or soup


def strip_furniture(root: Tag) -> None:
    for tag in root.find_all(DROP_TAGS):
        if not tag.decomposed and not (tag.name == "aside" and _is_admonition(tag)) and not _article_header(tag):
            tag.decompose()
    for tag in root.find_all(attrs={"role": DROP_ROLES}):
        tag.decompose()
    # Highlighters' classes ("hljs-comment") inside code name code, not furniture.
    in_code = {id(d) for code in root.find_all(("pre", "code")) for d in code.descendants}
    for tag in root.find_all(True):
        if tag.decomposed or tag.attrs is None or id(tag) in in_code:
            continue
        # A heading's or section's id is a slug of its title ("why-is-my-page-not-in-the-navigation").
        marks = _classes(tag) + ("" if tag.name in ID_IS_A_SLUG else " " + (tag.get("id") or ""))
        if marks.strip() and FURNITURE.search(marks):
            tag.decompose()
    for link in root.find_all("a", rel=True):
        if not link.decomposed and PAGE_LINK_RELS & set(_words_of(link.get("rel"))):
            _drop_link_panel(link)


def _words_of(value) -> list[str]:
    """An attribute's words (a list from the HTML parser, a string from the XML one), lowercased."""
    return [w.lower() for w in (value.split() if isinstance(value, str) else value or [])]


def _drop_link_panel(link: Tag) -> None:
    """Remove the block around a next/previous/up link when it holds little besides links ("Next: Simple
    Example, Up: Using libffi [Index]", the page-to-page bar of Texinfo and older DocBook)."""
    block = link.parent
    while block is not None and block.name not in LINK_PANEL_BLOCKS:
        block = block.parent
    if block is None or block.name in ("body", "main", "article", "html"):
        return
    link_text = "".join(inline_text(a) for a in block.find_all("a"))
    other = len(re.sub(r"\W", "", inline_text(block))) - len(re.sub(r"\W", "", link_text))
    if link_text and other <= LINK_PANEL_MAX_OTHER_CHARS:
        block.decompose()


def _article_header(tag: Tag) -> bool:
    """An article's own header, which holds its headline (a site's header is outside the article)."""
    return tag.name == "header" and tag.find_parent("article") is not None and tag.find(tuple(HEADINGS)) is not None


def _classes(tag: Tag) -> str:
    """The class attribute as one string (a list from the HTML parser, a string from the XML one)."""
    classes = tag.get("class") or ""
    return classes if isinstance(classes, str) else " ".join(classes)


def _is_admonition(tag: Tag) -> bool:
    return bool(ADMONITION.search(_classes(tag)))


def inline_text(node: Tag) -> str:
    """The text of `node` on one line: block boundaries and line breaks become spaces."""
    parts: list[str] = []

    def walk(element: Tag) -> None:
        for child in element.children:
            if isinstance(child, NavigableString):
                if not isinstance(child, SKIPPED_STRINGS):
                    parts.append(str(child))
            elif child.name in BLOCKS or child.name == "br":
                parts.append(" ")
                walk(child)
                parts.append(" ")
            else:
                walk(child)

    walk(node)
    return " ".join("".join(parts).split())


def _rows(table: Tag) -> list[Tag]:
    """The rows of a data table (thead, tbody, tfoot or bare; it holds no table of its own)."""
    return [d for d in table.descendants if d.name == "tr"]


def _cells(row: Tag) -> list[Tag]:
    return [cell for cell in row.children if cell.name in ("td", "th")]


def is_data_table(table: Tag) -> bool:
    names = {d.name for d in table.descendants}
    return "tr" in names and names.isdisjoint(LAYOUT_INSIDE)


def table_lines(table: Tag) -> list[str]:
    """One line per row, ` | ` between cells; the header row once, with the `| --- |` rule under it."""
    lines: list[str] = []
    header: str | None = None
    for row in _rows(table):
        cells = _cells(row)
        if not cells:
            continue
        texts = [inline_text(cell).replace("|", "\\|") for cell in cells]
        if not any(texts):
            continue
        line = "| " + " | ".join(texts) + " |"
        is_header = row.parent.name == "thead" or all(cell.name == "th" for cell in cells)
        if is_header and header is None and not lines:
            header = line
            lines += [line, "|" + " --- |" * len(cells)]
        elif line != header:  # a header repeated down a long table is said once
            lines.append(line)
    return lines


def render_blocks(root: Tag) -> list[Block]:
    """Headings (as '# ...'), paragraphs, list items ('- ...') and table rows; code verbatim."""
    blocks: list[Block] = []
    inline: list[str] = []
    lead: list[str] = []  # an admonition's title or a term, waiting for the text it introduces

    def flush(kind: str = "text", prefix: str = "") -> None:
        text = " ".join("".join(inline).split())
        inline.clear()
        if text:
            if lead and kind == "text":
                text = f"{lead.pop()}: {text}"
            flush_lead()
            blocks.append(Block(kind, _nfc(prefix + text)))

    def flush_lead() -> None:
        if lead:
            blocks.append(Block("text", _nfc(lead.pop())))

    def walk(node: Tag) -> None:
        for child in node.children:
            if isinstance(child, NavigableString):
                if not isinstance(child, SKIPPED_STRINGS):
                    inline.append(str(child))
                continue
            name = child.name
            if name == "pre":
                flush()
                flush_lead()
                code = "\n".join(line.rstrip() for line in child.get_text().strip("\n").splitlines())
                if code.strip():
                    blocks.append(Block("code", _nfc(code)))
            elif name == "br":
                inline.append(" ")
            elif name == "table" and is_data_table(child):
                flush()
                flush_lead()
                caption = child.find("caption")
                if caption is not None and (text := inline_text(caption)):
                    blocks.append(Block("text", _nfc(text)))
                if lines := table_lines(child):
                    blocks.append(Block("table", _nfc("\n".join(lines))))
            elif _is_admonition(child) and (title := _admonition_title(child)) is not None:
                flush()
                flush_lead()
                text = inline_text(title)
                title.decompose()
                if text:
                    lead.append(text.rstrip(":"))
                walk(child)
                flush()
                flush_lead()
            elif name == "dt" and _next_tag_name(child) == "dd" and len(term := inline_text(child)) <= TERM_MAX_CHARS:
                flush()
                flush_lead()
                if term:
                    lead.append(term.rstrip(":"))
            elif name in HEADINGS:
                flush()
                flush_lead()
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
    flush_lead()
    return blocks


def _next_tag_name(tag: Tag) -> str | None:
    for sibling in tag.next_siblings:
        if isinstance(sibling, Tag):
            return sibling.name
    return None


def _admonition_title(admonition: Tag) -> Tag | None:
    """The element that names an admonition: a titled child, or a heading first inside it."""
    for child in admonition.find_all(True, limit=6):
        if ADMONITION_TITLE.search(_classes(child)) or child.name in HEADINGS:
            return child
    return None


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def parse(markup: str) -> BeautifulSoup:
    """XHTML that says it is XML (an XML declaration and the XHTML namespace) and is well-formed is parsed
    as XML, its HTML entities made numeric first; everything else as HTML."""
    if XHTML.match(markup[:2000]):
        # The declaration goes: the text is already decoded, whatever encoding it names.
        xml = NAMED_ENTITY.sub(_numeric_entity, XML_DECLARATION.sub("", markup, count=1))
        try:
            lxml.etree.fromstring(xml.encode("utf-8"), lxml.etree.XMLParser(resolve_entities=False, no_network=True))
        except lxml.etree.XMLSyntaxError:
            pass  # XHTML in name only: tag soup, read as HTML below
        else:
            return BeautifulSoup(xml, "xml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        return BeautifulSoup(markup, "lxml")


def _numeric_entity(m: re.Match) -> str:
    name = m.group(1)
    if name in XML_ENTITIES or name not in html.entities.name2codepoint:
        return m.group(0)
    return f"&#{html.entities.name2codepoint[name]};"


def extract_page(markup: str) -> Page:
    soup = parse(markup)
    title_tag = soup.find("title")
    title = " ".join(title_tag.get_text().split()) if title_tag else ""
    root_tag = soup.find("html")
    lang = (root_tag.get("lang") or root_tag.get("xml:lang")) if root_tag else None
    lang = lang.strip().split("-")[0].split("_")[0].lower() if isinstance(lang, str) and lang.strip() else None
    root = main_content(soup)
    strip_furniture(root)
    return Page(_nfc(title), lang, render_blocks(root))


def extract(markup: str) -> tuple[str, str]:
    """(title, main text) of an HTML page."""
    page = extract_page(markup)
    return page.title, page.text
