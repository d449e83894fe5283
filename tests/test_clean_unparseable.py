"""A page the HTML parser cannot take is dropped as `unparseable` by the worker that parses it, with the
parser's error in the report, and the clean goes on with the other pages."""
from __future__ import annotations

import json

import pytest

from corpus.clean import clean

pytestmark = pytest.mark.integration

# Inputs that really make the lxml parse fail (checked by the test): a lone UTF-16 surrogate, which a JSON page
# record can carry ("\udcff") and UTF-8 cannot encode, and nesting deeper than libxml2's limit of 2,048 levels
# (with huge_tree), past which it would drop the rest of the page.
BROKEN = {"surrogate.html": ("<html><body><p>\udcff half of a character</p></body></html>", "UnicodeEncodeError"),
          "nested.html": ("<html><body>" + "<b>" * 3000 + "deep</body></html>", "UnparseableHTML")}


@pytest.mark.parametrize("workers", [2, 1], ids=["worker-processes", "in-process"])
def test_pages_the_parser_cannot_take_are_dropped_as_unparseable(crawled, tmp_path, site_url, workers):
    from corpus.extract import extract_page
    from tests.conftest import small_config

    for html, error in BROKEN.values():
        with pytest.raises(Exception) as caught:
            extract_page(html)
        assert type(caught.value).__name__ == error
    pages = [json.loads(line) for line in crawled.pages_file.read_text().splitlines()]
    template = next(p for p in pages if p.get("html"))
    for name, (html, _) in BROKEN.items():
        url = site_url + name
        pages.append({**template, "url": url, "final_url": url, "sha256": name, "html": html})
    pages_file = tmp_path / "pages.jsonl"
    pages_file.write_text("".join(json.dumps(p) + "\n" for p in pages))
    config = small_config(tmp_path, site_url).clean.model_copy(update={"workers": workers})

    result = clean(pages_file, tmp_path / "clean", config)
    report = result.report
    assert report["dropped"].get("unparseable") == 2
    details = {e["url"].rsplit("/", 1)[1]: e["detail"] for e in report["dropped_examples"]["unparseable"]}
    assert {name: details[name].split(":")[0] for name in BROKEN} == {n: e for n, (_, e) in BROKEN.items()}
    assert report["docs_out"] > 0
    kept = {json.loads(line)["url"] for line in result.docs_file.read_text().splitlines()}
    assert not any(url.endswith(tuple(BROKEN)) for url in kept)
