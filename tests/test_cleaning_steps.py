"""The cleaning steps one by one: each drops what it is for and keeps documentation, code included;
PII is replaced; charsets and URLs come out right; arbitrary HTML never makes the cleaner raise."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpus.clean import clean_page
from corpus.config import CleanConfig, PIIConfig
from corpus.extract import Block
from corpus.filters import Doc, c4_lines, fineweb_quality, gopher_quality, gopher_repetition
from corpus.pii import scrub
from crawlers.decode import NotText, decode_html
from crawlers.urls import canonical_url, page_links

CFG = CleanConfig()
SENTENCES = [
    "The list type stores a sequence of items and keeps them in the order they were added.",
    "Each method of the class returns a new object, so that the original value is left unchanged.",
    "When a file is opened in text mode, the reader decodes its bytes with the chosen encoding.",
    "An exception that is not handled stops the program and prints a traceback for the user.",
    "A generator produces its values one at a time, which saves memory on long sequences.",
    "The dictionary maps keys to values and finds an entry in constant time on average.",
]


def doc(*blocks: tuple[str, str], lang: str = "en") -> Doc:
    return Doc("http://h/p", "h", "t", lang, [Block(k, t) for k, t in blocks])


def good_doc() -> Doc:
    code = "def f(x):\n    return {k: v for k, v in x.items()}  # {braces} ... ###\n" * 5
    return doc(("heading", "# Working with data"), *[("text", s) for s in SENTENCES], ("code", code),
               ("item", "- A set keeps each of its members once, however often they are added."),
               ("text", "Slicing copies part of a sequence; the step argument skips over items as it goes."))


def test_a_documentation_page_with_code_passes_every_filter():
    d = good_doc()
    assert gopher_quality(d, CFG.gopher_quality) is None
    assert gopher_repetition(d, CFG.gopher_repetition) is None
    assert fineweb_quality(d, CFG.fineweb_quality) is None
    assert c4_lines(d, CFG.c4_lines) == (0, [], None)


@pytest.mark.parametrize("blocks, step, reason", [
    ([("text", "Too few words here.")], gopher_quality, "words <"),
    ([("text", " ".join(["a b c d e"] * 30))], gopher_quality, "mean word length"),
    ([("text", "### " * 40 + " ".join(SENTENCES))], gopher_quality, "symbol/word"),
    ([("item", "- " + s) for s in SENTENCES * 3], gopher_quality, "bullet lines"),
    ([("text", " ".join(SENTENCES) + " " + "123456 789012 345678 " * 40)], gopher_quality, "words with a letter"),
    ([("text", "Qwerty zxcvb asdfg hjkl uiop mnbv cxz lkjh gfds poiu ytre wqas dfgh jklz xcvb nmqw ertyu iopa "
               "sdfgh jklzx cvbnm qwert yuiop asdfg hjklz xcvbn mqwer tyuio pasdf ghjkl zxcvb nmqwe rtyui "
               "opasd fghjk lzxcv bnmqw ertyu iopas dfghj klzxc " * 2)], gopher_quality, "stop words"),
    ([("text", SENTENCES[0])] * 6 + [("text", s) for s in SENTENCES[1:]], gopher_repetition, "duplicated lines"),
    ([("text", " ".join([SENTENCES[0]] * 5 + SENTENCES[1:]))], gopher_repetition, "gram"),
    ([("text", f"Step {i} is done.") for i in range(30)] + [("text", " ".join(SENTENCES))], fineweb_quality,
     "short lines"),
])
def test_each_filter_drops_what_it_is_for(blocks, step, reason):
    config = {gopher_quality: CFG.gopher_quality, gopher_repetition: CFG.gopher_repetition,
              fineweb_quality: CFG.fineweb_quality}[step]
    found = step(doc(*blocks), config)
    assert found is not None and reason in found, found


def test_c4_removes_notices_and_keeps_text_about_the_same_words():
    d = doc(("text", "Please enable JavaScript to view this page."),
            ("text", "This site uses cookies. Read our privacy policy."),
            ("text", "The json module reads JavaScript Object Notation, a format that browsers and servers use "
                     "to exchange data, and it maps objects to dictionaries and arrays to lists in Python."),
            ("code", "document.cookie = 'enable JavaScript'"))
    removed, examples, reason = c4_lines(d, CFG.c4_lines)
    assert (removed, reason) == (2, None) and "enable JavaScript" in examples[0]
    assert [b.kind for b in d.blocks] == ["text", "code"]
    assert c4_lines(doc(("text", "Lorem ipsum dolor sit amet.")), CFG.c4_lines)[2] == "lorem ipsum"


def test_chinese_pages_are_judged_by_characters():
    zh = CFG.for_language("zh")
    text = "列表是最常用的数据结构之一。你可以向列表末尾添加元素，也可以用索引访问它们。" * 4
    d = doc(("text", text), ("text", "字典把键映射到值，查找一个键的平均时间是常数。" * 3), lang="zh")
    assert gopher_quality(d, zh.gopher_quality) is None
    assert fineweb_quality(d, zh.fineweb_quality) is None
    # With the English thresholds the same page would fail on mean word length.
    assert "mean word length" in gopher_quality(d, CFG.gopher_quality)


def test_pii_is_replaced_and_documentation_numbers_are_not():
    text = ("Mail jane.doe@corp.com or call +1 415-555-0132 or (212) 555-0199. Server 93.184.216.34; local "
            "192.168.1.4, documentation 192.0.2.1, section 4.8.3.1. Card 4111 1111 1111 1111, not 1234 5678 9012 "
            "3456. AKIAIOSFODNN7EXAMPLE and api_key = 'abcdEFGH1234ijklMNOP'. Released 2026-11-28, sizes 1024 2048.")
    out, counts = scrub(text, PIIConfig())
    assert counts == {"email": 1, "phone": 2, "ip": 1, "card": 1, "secret": 2}
    for kept in ("192.168.1.4", "192.0.2.1", "4.8.3.1", "1234 5678 9012 3456", "2026-11-28", "1024 2048", "api_key = '"):
        assert kept in out
    assert scrub(text, PIIConfig(enabled=False)) == (text, {})


def test_charsets_binary_and_urls():
    assert decode_html("Un café — “déjà vu”, naïve façade.".encode("cp1252"), "utf-8") == (
        "Un café — “déjà vu”, naïve façade.", "cp1252")
    assert decode_html("<meta charset=gb2312><p>中文页面，北京。</p>".encode("gbk"), None)[1] == "gb18030"
    with pytest.raises(NotText):
        decode_html(bytes(range(256)) * 4, "utf-8")
    assert canonical_url("HTTP://Example.org:80/a;jsessionid=1?b=2&sessionid=x&a=1#top") == "http://example.org/a?a=1&b=2"
    links = list(page_links('<base href="/docs/"><a href="x.html#s">x</a><a href="mailto:a@b">m</a>'
                            '<a href="javascript:void(0)">j</a><a href="x.html">again</a>', "http://h/index.html"))
    assert links == ["http://h/docs/x.html"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.text(),
    st.lists(st.sampled_from(["<html>", "<body>", "<p>", "</p>", "<pre>", "</pre>", "<main>", "<nav>", "<h1>",
                              "<li>", "<table><tr><td>", "<!--", "-->", "<script>", "<![CDATA[", "&amp;", "&#0;",
                              "<html lang='zz-'>", "<br/>", "\x00", "\ud7ff", "中文", " word ", "\n"]),
             max_size=60).map("".join),
))
def test_the_cleaner_never_raises_on_arbitrary_html(html):
    result = clean_page(html, "http://h/page.html", CFG)
    # Every page is either kept (with its exact-duplicate key) or dropped by one named step, never both.
    assert (result.dropped_by is None) != (result.dedup_key is None)
    if result.dropped_by is not None:
        assert result.dropped_by in {"language", "c4_lines", "empty", "max_chars", "gopher_quality",
                                     "gopher_repetition", "fineweb_quality"}
        assert result.dropped_by == "empty" or result.detail, "a filter that drops a page says why"
    else:
        assert len(result.dedup_key) == 64 and int(result.dedup_key, 16) >= 0
