"""Cleaning with real lxml and spaCy, the stable split, and the tokenizer."""
from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from corpus.extract import extract
from corpus.config import SplitConfig
from corpus.jsonl import read_jsonl
from corpus.split import document_url, side_of, split
from tests.site import build_site

FURNITURE = ("NAVTOKEN", "SIDEBARTOKEN", "FOOTERTOKEN", "HEADERTOKEN", "SCRIPTTOKEN", "color:red", "¶")


def test_extract_keeps_the_body_and_drops_the_furniture(site):
    root, _ = site
    title, text = extract((root / "lists.html").read_text())
    assert title == "Working with lists"
    assert text.startswith("# Working with lists\n")
    assert "## Example" in text
    assert "def use_lists(value):\n    return [value] * 2" in text  # code keeps its lines and indentation
    assert "\n- " in text  # list items
    for marker in FURNITURE:
        assert marker not in text


def test_extract_falls_back_to_body_and_normalizes_unicode():
    title, text = extract("<html><body><p>Cafe\u0301   au\n lait</p><nav>menu</nav></body></html>")
    assert title == ""
    assert text == "Caf\u00e9 au lait"


@pytest.mark.integration
def test_clean_runs_every_step_and_counts_what_each_dropped(corpus, crawled):
    _, parts = corpus
    report = parts["clean"].report
    docs = list(read_jsonl(parts["clean"].docs_file))
    urls = {d["url"].rsplit("/", 1)[1] for d in docs}
    assert "short.html" not in urls and "deutsch.html" not in urls
    assert len({"lists.html", "copy-of-lists.html"} & urls) == 1
    assert len({"strings.html", "near-copy-of-strings.html"} & urls) == 1
    assert report["dropped"] == {"duplicate": 1, "near_duplicate": 1, "gopher_quality": 1, "language": 1}
    assert report["dropped_examples"]["language"][0]["detail"].startswith("de")
    assert report["languages_in"] == {"en": report["pages_in"] - 1, "de": 1}
    assert report["pages_in"] == crawled.manifest["pages"]
    assert report["docs_out"] == len(docs) == report["pages_in"] - 4
    assert report["spacy_pipelines"] == {"en": "blank:en"}
    # The boilerplate line inside every page's content is found by counting it across the site.
    assert report["lines_removed"]["boilerplate"] >= 15
    assert report["leakage"]["before"] > 0.05 and report["leakage"]["after"] <= 0.01
    assert report["pii_replaced"] == {"email": 1, "phone": 1, "ip": 1, "card": 1, "secret": 1}
    contact = next(d["text"] for d in docs if d["url"].endswith("contact.html"))
    assert "<EMAIL>" in contact and "example-corp" not in contact and "4111" not in contact
    for doc in docs:
        assert doc["n_sentences"] >= 3 and doc["n_words"] >= 20 and doc["lang"] == "en"
        assert not any(marker in doc["text"] for marker in (*FURNITURE, "BOILERTOKEN"))


@pytest.mark.integration
def test_a_clean_after_a_recrawl_redoes_only_what_changed_and_gives_what_a_fresh_clean_gives(crawled, tmp_path):
    import hashlib

    from corpus.clean import clean
    from corpus.config import CleanConfig

    config = CleanConfig(workers=1)
    out = tmp_path / "clean"
    first = clean(crawled.pages_file, out, config)
    first_docs = (out / "docs.jsonl").read_text()
    assert first.report["pages_filtered_again"] == first.report["pages_in"] > 0
    again = clean(crawled.pages_file, out, config)
    assert again.report["pages_extracted_again"] == again.report["pages_filtered_again"] == 0
    assert (out / "docs.jsonl").read_text() == first_docs

    # One page gains a paragraph: it alone is extracted and filtered again.
    kept_url = json.loads(first_docs.splitlines()[0])["url"]
    pages = list(read_jsonl(crawled.pages_file))
    changed = next(p for p in pages if document_url(p.get("final_url") or p["url"]) == kept_url)
    changed["html"] = changed["html"].replace(
        "</p>", "</p><p>A paragraph added since the last crawl says that tuples cannot be changed once made.</p>", 1)
    changed["sha256"] = hashlib.sha256(changed["html"].encode()).hexdigest()
    recrawled = tmp_path / "pages.jsonl"
    recrawled.write_text("".join(json.dumps(p) + "\n" for p in pages))
    # On two worker processes, which changes nothing in what a page comes to.
    incremental = clean(recrawled, out, CleanConfig(workers=2))
    fresh = clean(recrawled, tmp_path / "fresh", config)
    assert incremental.report["pages_extracted_again"] == incremental.report["pages_filtered_again"] == 1
    assert (out / "docs.jsonl").read_text() == (tmp_path / "fresh" / "docs.jsonl").read_text() != first_docs
    for part in ("dropped", "lines_removed", "pii_replaced", "leakage", "languages_out"):
        assert incremental.report[part] == fresh.report[part], part


def test_split_is_stable_when_pages_are_added(tmp_path):
    cfg = SplitConfig(val_fraction=0.3)
    make = lambda n: [{"url": f"http://site.example/page{i}.html", "text": "x"} for i in range(n)]  # noqa: E731
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("".join(json.dumps(d) + "\n" for d in make(40)))
    second.write_text("".join(json.dumps(d) + "\n" for d in make(80)))
    a = split(first, tmp_path / "sa", cfg)
    b = split(second, tmp_path / "sb", cfg)
    val_a = {d["url"] for d in read_jsonl(a.files["val"])}
    val_b = {d["url"] for d in read_jsonl(b.files["val"])}
    assert val_a and val_a == {u for u in val_b if int(u.split("page")[1].split(".")[0]) < 40}
    assert 0.15 < len(val_b) / 80 < 0.45
    # Port and scheme do not move a page; the salt does.
    assert side_of("http://h.example:8000/p", cfg) == side_of("https://h.example/p", cfg)
    sides = {u: side_of(u, cfg) for u in (f"http://h/{i}" for i in range(50))}
    assert sides != {u: side_of(u, SplitConfig(val_fraction=0.3, salt="other")) for u in sides}


def test_split_refuses_an_empty_side(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"url": "http://h/only", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match="split is empty.*val_fraction"):
        split(docs, tmp_path / "s", SplitConfig(val_fraction=0.01))


@pytest.mark.integration
def test_tokenizer_round_trips_text_and_token_files_match_the_manifest(corpus):
    _, parts = corpus
    tokens = parts["tokens"]
    tokenizer = Tokenizer.from_file(str(tokens.tokenizer_file))
    for text in ["The interpreter returns a new value.", "def f(x):\n    return [x] * 2  # ünïcödé ✓"]:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
    manifest = tokens.manifest
    for name in ("train", "val"):
        ids = np.memmap(tokens.bin_files[name], dtype=manifest["dtype"], mode="r")
        assert len(ids) == manifest["splits"][name]["tokens"]
        assert int(ids.max()) < manifest["vocab_size"]
        assert (ids == manifest["eot_id"]).sum() == manifest["splits"][name]["docs"]
    first_doc = next(read_jsonl(parts["split"].files["train"]))["text"]
    ids = np.memmap(tokens.bin_files["train"], dtype=manifest["dtype"], mode="r")
    end = int(np.argmax(ids == manifest["eot_id"]))
    assert tokenizer.decode(ids[:end].tolist()) == first_doc


def test_build_site_is_deterministic(tmp_path):
    build_site(tmp_path / "a")
    build_site(tmp_path / "b")
    assert (tmp_path / "a" / "lists.html").read_text() == (tmp_path / "b" / "lists.html").read_text()
