"""Table-aware extraction: rows as lines, a header marked once, admonitions and definition lists as
text, XHTML parsed as XML without a warning; and a manual of tables keeps its words through the real
clean."""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections import Counter

from corpus.clean import clean
from corpus.config import CleanConfig
from corpus.extract import extract, extract_page
from corpus.jsonl import read_jsonl
from tests.table_site import build_table_site


def test_a_table_row_is_one_line_and_its_header_is_said_once():
    _, text = extract("<html><body><main><p>Sizes of the packages.</p><table><caption>Packages</caption>"
                      "<thead><tr><th>Package</th><th>Size</th></tr></thead><tbody>"
                      "<tr><td><p>numpy</p></td><td>12 <b>MB</b></td></tr>"
                      "<tr><th>Package</th><th>Size</th></tr>"  # the header again, down a long table
                      "<tr><td>a|b</td><td></td></tr></tbody></table></main></body></html>")
    assert text == ("Sizes of the packages.\nPackages\n| Package | Size |\n| --- | --- |\n| numpy | 12 MB |\n"
                    "| a\\|b |  |")


def test_a_layout_table_is_read_as_blocks():
    _, text = extract("<html><body><table><tr><td><h2>Install</h2><p>Run the installer.</p></td>"
                      "<td><pre>make install</pre></td></tr></table></body></html>")
    assert text == "## Install\nRun the installer.\nmake install"


def test_admonitions_and_definition_lists_are_kept_as_text():
    page = extract_page(
        "<html><body><div class='admonition warning'><p class='admonition-title'>Warning</p><p>Back up first.</p>"
        "</div><aside class='admonition tip'><p class='admonition-title'>Tip</p><p>Use a venv.</p></aside>"
        "<dl><dt>dtype</dt><dd><p>The type of the elements.</p><p>Defaults to float.</p></dd>"
        "<dt>numpy.zeros(shape, dtype=float, order='C', *, like=None, device=None)</dt><dd><p>Zeros.</p></dd>"
        "</dl></body></html>")
    assert page.text == ("Warning: Back up first.\nTip: Use a venv.\ndtype: The type of the elements.\n"
                         "Defaults to float.\nnumpy.zeros(shape, dtype=float, order='C', *, like=None, device=None)\n"
                         "Zeros.")


def test_xhtml_that_says_so_is_parsed_as_xml_without_a_warning():
    xhtml = ('<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 '
             'Transitional//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n<html '
             'xmlns="http://www.w3.org/1999/xhtml" xml:lang="fr"><head><meta http-equiv="Content-Type" content='
             '"text/html; charset=UTF-8" /><title>Chapitre&nbsp;2</title><meta name="generator" content="DocBook XSL '
             'Stylesheets V1.79.2" /><link rel="stylesheet" type="text/css" href="docbook.css" /></head><body>'
             '<div class="navheader">Précédent Suivant</div><div class="chapter"><h2 class="title">Les paquets</h2>'
             '<p>Caf&eacute; cr&egrave;me&nbsp;: 2&nbsp;&euro; &amp; plus.</p><div class="note"><h3 class="title">'
             'Note</h3><p>Lisez ceci.</p></div></div><div class="navfooter">Sommaire</div></body></html>')
    broken = xhtml.replace("</p><div", "<div", 1)  # XHTML in name only: read as HTML, still quietly
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        page = extract_page(xhtml)
        assert extract_page(broken).title == "Chapitre 2"
    assert (page.title, page.lang) == ("Chapitre 2", "fr")
    assert page.text == "## Les paquets\nCafé crème : 2 € & plus.\nNote: Lisez ceci."


def _words(text: str) -> Counter:
    return Counter(w.casefold() for w in re.findall(r"\w+(?:[.']\w+)*", text))


def test_a_manual_of_tables_keeps_its_words_through_the_clean(tmp_path):
    texts = build_table_site(tmp_path / "site")
    pages = tmp_path / "pages.jsonl"
    with open(pages, "w") as out:
        for name in texts:
            html = (tmp_path / "site" / name).read_text()
            out.write(json.dumps({"url": f"http://manual.example/{name}", "html": html,
                                  "sha256": hashlib.sha256(html.encode()).hexdigest()}) + "\n")
    result = clean(pages, tmp_path / "clean", CleanConfig(workers=1))
    docs = {d["url"].rsplit("/", 1)[1]: d["text"] for d in read_jsonl(result.docs_file)}
    assert set(docs) == set(texts), result.report["dropped_examples"]
    want = sum((_words(t) for t in texts.values()), Counter())
    kept = sum(((_words(docs[n]) & _words(t)) for n, t in texts.items()), Counter())
    assert sum(kept.values()) / sum(want.values()) >= 0.95
    assert "| Package | Version | Size | License | Description |" in docs["chapter3.html"]
    assert "Note: The audio packages are rebuilt" in docs["chapter4.html"]


def test_extraction_fidelity_on_five_kinds_of_site():
    """bench/extract.py's set: memlm's word-level F1 ≥ 0.96, and at least trafilatura's when it is installed."""
    import importlib.util

    from bench.extract import memlm_text, pages, score, trafilatura_text

    items = pages()
    assert len(items) >= 20 and len({name.split("-")[0] for name, _, _ in items}) >= 4
    memlm = score(memlm_text, items)
    assert memlm["total"]["f1"] >= 0.96, memlm["sites"]
    if importlib.util.find_spec("trafilatura") is not None:
        assert memlm["total"]["f1"] >= score(trafilatura_text, items)["total"]["f1"]


def test_section_ids_and_code_classes_are_not_taken_for_furniture():
    _, text = extract("<html><body><main><section id='comments'><h2 id='navigation-menu'>Comments and menus</h2>"
                      "<p>Text.</p><pre><span class='hljs-comment'># keep me</span></pre></section>"
                      "<div id='comments'>Reply</div><article><header><h1>Headline</h1></header><p>Body.</p>"
                      "<footer class='entry-footer'>By someone</footer></article></main></body></html>")
    assert text == "## Comments and menus\nText.\n# keep me\n# Headline\nBody."


def test_page_to_page_link_bars_and_legal_notices_are_furniture():
    _, text = extract("<html><body><div class='header'><p>Next: <a href='b.html' rel='next'>Basics</a>, Up: "
                      "<a href='u.html' rel='up'>Using it</a> &nbsp; [<a href='i.html' rel='index'>Index</a>]</p></div>"
                      "<div class='legalnotice'><p>This document is free; you can redistribute it.</p></div>"
                      "<h3>2.1 The Basics</h3><p>Read the <a href='b.html' rel='next'>next page</a> after this one, "
                      "which explains how a call interface is prepared before the first call.</p>"
                      "<p>Next: <a href='b.html'>Basics</a> [<a href='i.html' rel='index'>Index</a>]</p></body></html>")
    assert text == ("### 2.1 The Basics\nRead the next page after this one, which explains how a call interface is "
                    "prepared before the first call.")


def test_what_a_browser_does_not_show_or_read_as_the_page_is_not_its_content():
    """A <template>'s article is not the page's article (CSS selectors do not see into templates), a ruby
    reading in code is not its text, an XHTML page served as HTML keeps its xml:lang, and a page of old
    markup nested 900 deep (unclosed <font>s) is read whole, past libxml2's default limit of 256 levels."""
    page = extract_page('<template><article><h2>{{title}}</h2><p>{{summary}}</p></article></template>'
                        '<article><h1>Real</h1><p>The body of the article.</p></article>')
    assert page.text == "# Real\nThe body of the article."
    assert extract_page('<pre><ruby>漢<rt>kan</rt></ruby> x = 1</pre>').text == "漢 x = 1"
    xhtml_as_html = ('<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "x.dtd">'
                     '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="de"><body><p>Hallo</p></body></html>')
    assert extract_page(xhtml_as_html).lang == "de"
    deep = extract_page("<p>before</p>" + "<font>" * 900 + "deep" + "</font>" * 900 + "<p>after</p>")
    assert deep.text.split() == ["before", "deep", "after"]


def test_pages_nested_as_deep_as_the_parser_reads_are_extracted_whole():
    """Nesting past Python's recursion limit (1,000 frames) but within the parser's 2,048 levels: each of
    extraction's walks (furniture, blocks, and the inline text that table cells and code are read with)
    goes down it without recursing."""
    depth = 1500
    nested = ("<main><h1>Top</h1>" + "<div class='section'>" * depth + "<h2>Deep <span>heading</span></h2>"
              + "<p>Deep " + "<em>" * 10 + "te<!-- a comment's tail is text -->xt" + "</em>" * 10 + " here.</p>"
              + "<div class='note'><p class='admonition-title'>Note</p><p>Mind the depth.</p></div>"
              + "<table><tr><th>key</th><th>value</th></tr><tr><td>depth</td><td>" + "<b>" * 30 + "<!-- c -->" + str(depth)
              + "</b>" * 30 + "</td></tr></table>"
              + "<pre>" + "<span>" * 300 + "x = <?pi?>1" + "</span>" * 300 + "</pre>"
              + "</div>" * depth + "<p>After.</p></main>")
    assert extract_page(nested).text.split("\n") == [
        "# Top", "## Deep heading", "Deep text here.", "Note: Mind the depth.",
        "| key | value |", "| --- | --- |", f"| depth | {depth} |", "x = 1", "After."]
    # Inline text deep inside a block that sits high: a table's cell and code are read by their own walk.
    deep_cell = "<table><tr><td>" + "<b>" * depth + "cell <!-- c -->text" + "</b>" * depth + "</td></tr></table>"
    assert extract_page(deep_cell).text == "| cell text |"
    deep_code = "<pre>" + "<span>" * depth + "y = <?pi?>2" + "</span>" * depth + "</pre>"
    assert extract_page(deep_code).text == "y = 2"
