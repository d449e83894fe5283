"""Main-content extraction over lxml's HTML tree: a page's title, declared language, and its text as blocks
(headings, paragraphs, list items, tables, code). Code blocks are marked so that the line and quality
filters judge prose only: a documentation page is not dropped for its code.

A data table becomes one block with one line per row, its cells separated by ` | ` and its header row
marked once by a `| --- |` line under it (Markdown's table), so that the boilerplate count and the line
filters see rows, not cells. An admonition's title ("Note", "Warning") leads its first paragraph and a
short definition-list term leads its definition, rather than standing alone as a line that repeats on
every page. XHTML that declares itself XML is parsed as XML.

The tree is lxml's own (libxml2's HTML parser, which BeautifulSoup's "lxml" builder also drove, through
lxml's feed interface): building BeautifulSoup's Python tree on top of it and walking that was more than
nine tenths of extraction's time. lxml keeps text as an element's `text` and each child's `tail`, so removing an element
keeps its tail."""
from __future__ import annotations

import html.entities
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from itertools import islice

from lxml import etree

MAIN_TAGS = ("main", "article")
DROP_TAGS = ("script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form",
             "button", "select", "iframe", "svg", "canvas")
DROP_ROLES = {"navigation", "search", "banner", "contentinfo", "complementary"}
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
XHTML = re.compile(r"^\s*<\?xml[^>]*\?>.*?<html[^>]*xmlns=[\"']http://www\.w3\.org/1999/xhtml", re.S)
XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
NAMED_ENTITY = re.compile(r"&([A-Za-z][A-Za-z0-9]*);")
XML_ENTITIES = {"amp", "lt", "gt", "quot", "apos"}
TABLE_RULE = re.compile(r"^\|(?: --- \|)+$")
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"  # as the XML parser names it; the HTML one, "xml:lang"
RUBY_ANNOTATIONS = {"rt", "rp"}


class UnparseableHTML(ValueError):
    """The HTML parser gave up part way through the page (nesting deeper than libxml2's 2,048 levels)."""


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


def main_content(document: etree._Element) -> etree._Element:
    for name in MAIN_TAGS:
        if (found := _first_outside_templates(document.iter(name))) is not None:
            return found
    if (found := _first_outside_templates(e for e in document.iter() if e.get("role") == "main")) is not None:
        return found
    return next(document.iter("body"), document)


def _first_outside_templates(elements) -> etree._Element | None:
    """The first of `elements` not inside a <template>: a template's contents are not part of the page (a
    client-side template's `<article>{{title}}</article>` is not its article), as CSS selectors have it."""
    return next((e for e in elements if next(e.iterancestors("template"), None) is None), None)


def strip_furniture(root: etree._Element) -> None:
    for tag in list(root.iterdescendants(*DROP_TAGS)):
        if _attached(tag, root) and not (tag.tag == "aside" and _is_admonition(tag)) and not _article_header(tag):
            _remove(tag)
    for tag in [t for t in root.iterdescendants() if t.get("role") in DROP_ROLES]:
        if _attached(tag, root):
            _remove(tag)
    _strip_furniture_classes(root)
    for link in [a for a in root.iterdescendants("a") if a.get("rel") is not None]:
        if _attached(link, root) and PAGE_LINK_RELS & set(link.get("rel").lower().split()):
            _drop_link_panel(link, root)


def _strip_furniture_classes(node: etree._Element) -> None:
    """Remove the elements whose class (or id) words name furniture. Highlighters' classes ("hljs-comment")
    inside code name code, not furniture, so code's insides are not looked at. In document order, from a
    stack of the elements still to look at rather than by recursion: pages nest deeper than Python recurses."""
    pending = list(reversed(node))
    while pending:
        tag = pending.pop()
        if not isinstance(tag.tag, str):
            continue
        # A heading's or section's id is a slug of its title ("why-is-my-page-not-in-the-navigation").
        marks = (tag.get("class") or "") + ("" if tag.tag in ID_IS_A_SLUG else " " + (tag.get("id") or ""))
        if marks.strip() and FURNITURE.search(marks):
            _remove(tag)
        elif tag.tag not in ("pre", "code"):
            pending.extend(reversed(tag))


def _attached(element: etree._Element, root: etree._Element) -> bool:
    """Whether `element` is still inside `root` (nothing above it was removed)."""
    return any(ancestor is root for ancestor in element.iterancestors())


def _remove(element: etree._Element) -> None:
    """Take `element` out of the tree, keeping the text that follows it (its tail)."""
    parent = element.getparent()
    if element.tail:
        previous = element.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + element.tail
        else:
            parent.text = (parent.text or "") + element.tail
    parent.remove(element)


def _drop_link_panel(link: etree._Element, root: etree._Element) -> None:
    """Remove the block around a next/previous/up link when it holds little besides links ("Next: Simple
    Example, Up: Using libffi [Index]", the page-to-page bar of Texinfo and older DocBook)."""
    block = link.getparent()
    while block is not None and block.tag not in LINK_PANEL_BLOCKS:
        block = block.getparent()
    if block is None or block.tag in ("body", "main", "article", "html"):
        return
    link_text = "".join(inline_text(a) for a in block.iterdescendants("a"))
    other = len(re.sub(r"\W", "", inline_text(block))) - len(re.sub(r"\W", "", link_text))
    if link_text and other <= LINK_PANEL_MAX_OTHER_CHARS:
        if block is root or any(ancestor is block for ancestor in root.iterancestors()):
            # The panel holds the whole main content: nothing of the page is left.
            root.text = None
            for child in list(root):
                root.remove(child)
        else:
            _remove(block)


def _article_header(tag: etree._Element) -> bool:
    """An article's own header, which holds its headline (a site's header is outside the article)."""
    return (tag.tag == "header" and next(tag.iterancestors("article"), None) is not None
            and next(tag.iterdescendants(*HEADINGS), None) is not None)


def _is_admonition(tag: etree._Element) -> bool:
    return bool(ADMONITION.search(tag.get("class") or ""))


def text_of(node: etree._Element) -> str:
    """All the text inside `node`, as written: comments, processing instructions and ruby annotations
    (a reading given over a word: <rt>, <rp>) left out."""
    parts: list[str] = []
    _gather_text(node, parts, spaced=False)
    return "".join(parts)


def inline_text(node: etree._Element) -> str:
    """The text of `node` on one line: block boundaries and line breaks become spaces."""
    parts: list[str] = []
    _gather_text(node, parts, spaced=True)
    return " ".join("".join(parts).split())


def _gather_text(element: etree._Element, parts: list[str], spaced: bool) -> None:
    """The text of `element` and its descendants into `parts`: with a space around each block and line
    break (`spaced`), or as written, ruby annotations left out. From a stack of what is still to add (text,
    or an element to open) rather than by recursion: pages nest deeper than Python recurses."""
    pending: list[str | etree._Element] = [element]
    while pending:
        item = pending.pop()
        if type(item) is str:  # lxml's text and tails are plain str; an element never is
            parts.append(item)
            continue
        if item.text:
            parts.append(item.text)
        for child in reversed(item):  # onto the stack last first
            if child.tail:
                pending.append(child.tail)
            if isinstance(child.tag, str):
                if spaced and (child.tag in BLOCKS or child.tag == "br"):
                    pending += (" ", child, " ")
                elif spaced or child.tag not in RUBY_ANNOTATIONS:
                    pending.append(child)


def _cells(row: etree._Element) -> list[etree._Element]:
    return [cell for cell in row if cell.tag in ("td", "th")]


def is_data_table(table: etree._Element) -> bool:
    names = {d.tag for d in table.iterdescendants()}
    return "tr" in names and names.isdisjoint(LAYOUT_INSIDE)


def table_lines(table: etree._Element) -> list[str]:
    """One line per row, ` | ` between cells; the header row once, with the `| --- |` rule under it."""
    lines: list[str] = []
    header: str | None = None
    for row in table.iterdescendants("tr"):
        cells = _cells(row)
        if not cells:
            continue
        texts = [inline_text(cell).replace("|", "\\|") for cell in cells]
        if not any(texts):
            continue
        line = "| " + " | ".join(texts) + " |"
        is_header = row.getparent().tag == "thead" or all(cell.tag == "th" for cell in cells)
        if is_header and header is None and not lines:
            header = line
            lines += [line, "|" + " --- |" * len(cells)]
        elif line != header:  # a header repeated down a long table is said once
            lines.append(line)
    return lines


def render_blocks(root: etree._Element) -> list[Block]:
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

    def flush_all() -> None:
        flush()
        flush_lead()

    # The elements still to render, in document order, and for each element opened, what to do after its
    # children (a heading's or a block's flush) and its tail: a stack rather than recursion, since pages
    # nest deeper than Python recurses.
    if root.text:
        inline.append(root.text)
    pending: list[etree._Element | tuple[Callable[[], None] | None, etree._Element]] = list(reversed(root))
    while pending:
        child = pending.pop()
        if type(child) is tuple:  # an element whose children are rendered
            after, finished = child
            if after is not None:
                after()
            if finished.tail:
                inline.append(finished.tail)
            continue
        name = child.tag
        descend, after = False, None
        if not isinstance(name, str):
            pass  # a comment, processing instruction or entity; its tail is text
        elif name == "pre":
            flush_all()
            code = "\n".join(line.rstrip() for line in text_of(child).strip("\n").splitlines())
            if code.strip():
                blocks.append(Block("code", _nfc(code)))
        elif name == "br":
            inline.append(" ")
        elif name == "table" and is_data_table(child):
            flush_all()
            caption = next(child.iterdescendants("caption"), None)
            if caption is not None and (text := inline_text(caption)):
                blocks.append(Block("text", _nfc(text)))
            if lines := table_lines(child):
                blocks.append(Block("table", _nfc("\n".join(lines))))
        elif _is_admonition(child) and (title := _admonition_title(child)) is not None:
            flush_all()
            text = inline_text(title)
            _remove(title)
            if text:
                lead.append(text.rstrip(":"))
            descend, after = True, flush_all
        elif name == "dt" and _next_tag_name(child) == "dd" and len(term := inline_text(child)) <= TERM_MAX_CHARS:
            flush_all()
            if term:
                lead.append(term.rstrip(":"))
        elif name in HEADINGS:
            flush_all()
            descend, after = True, partial(flush, "heading", "#" * HEADINGS[name] + " ")
        elif name in BLOCKS:
            flush()
            descend, after = True, partial(flush, "item", "- ") if name == "li" else flush
        else:
            descend = True
        if descend:
            if child.text:
                inline.append(child.text)
            if len(child) or after is not None:  # else nothing is left to do before its tail (most inline tags)
                pending.append((after, child))
                pending.extend(reversed(child))
                continue
        if child.tail:
            inline.append(child.tail)
    flush_all()
    return blocks


def _next_tag_name(tag: etree._Element) -> str | None:
    for sibling in tag.itersiblings():
        if isinstance(sibling.tag, str):
            return sibling.tag
    return None


def _admonition_title(admonition: etree._Element) -> etree._Element | None:
    """The element that names an admonition: a titled child, or a heading first inside it."""
    elements = (d for d in admonition.iterdescendants() if isinstance(d.tag, str))
    for child in islice(elements, 6):
        if ADMONITION_TITLE.search(child.get("class") or "") or child.tag in HEADINGS:
            return child
    return None


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def parse(markup: str) -> etree._Element | None:
    """The page's root element (None for a page with no elements). XHTML that says it is XML (an XML
    declaration and the XHTML namespace) and is well-formed is parsed as XML, its HTML entities made
    numeric first and its namespace dropped from element names; everything else as HTML."""
    if XHTML.match(markup[:2000]):
        # The declaration goes: the text is already decoded, whatever encoding it names.
        xml = NAMED_ENTITY.sub(_numeric_entity, XML_DECLARATION.sub("", markup, count=1))
        try:
            root = etree.fromstring(xml.encode("utf-8"), etree.XMLParser(resolve_entities=False, no_network=True))
        except etree.XMLSyntaxError:
            pass  # XHTML in name only: tag soup, read as HTML below
        else:
            for element in root.iter():
                if isinstance(element.tag, str) and element.tag.startswith("{"):
                    element.tag = etree.QName(element).localname
            return root
    # Bytes in a named encoding: the text is already decoded, whatever its <meta charset> says. A huge
    # tree lifts libxml2's limits of 256 levels of nesting (to 2,048) and of 10 MB a text node, which
    # BeautifulSoup's builder (lxml's feed parser) never met: old pages nest unclosed <font>s deep.
    parser = etree.HTMLParser(encoding="utf-8", huge_tree=True)
    root = etree.fromstring(markup.encode("utf-8"), parser)
    # libxml2 recovers from every error but a fatal one, after which the rest of the page is lost.
    if fatal := next((e for e in parser.error_log if e.level == etree.ErrorLevels.FATAL), None):
        raise UnparseableHTML(f"libxml2 stopped at line {fatal.line}: {fatal.message}")
    return root


def _numeric_entity(m: re.Match) -> str:
    name = m.group(1)
    if name in XML_ENTITIES or name not in html.entities.name2codepoint:
        return m.group(0)
    return f"&#{html.entities.name2codepoint[name]};"


def extract_page(markup: str) -> Page:
    document = parse(markup)
    if document is None:
        return Page("", None)
    title_tag = next(document.iter("title"), None)
    title = " ".join(text_of(title_tag).split()) if title_tag is not None else ""
    root_tag = next(document.iter("html"), None)
    lang = None if root_tag is None else root_tag.get("lang") or root_tag.get(XML_LANG) or root_tag.get("xml:lang")
    lang = lang.strip().split("-")[0].split("_")[0].lower() if isinstance(lang, str) and lang.strip() else None
    root = main_content(document)
    strip_furniture(root)
    return Page(_nfc(title), lang, render_blocks(root))


def extract(markup: str) -> tuple[str, str]:
    """(title, main text) of an HTML page."""
    page = extract_page(markup)
    return page.title, page.text
