"""The split: site-relative identity for pages served from this machine, and sections for sites too
small to split by page; a 12-page site served on 127.0.0.1 trains end to end."""
from __future__ import annotations

import json

import pytest

from corpus.config import SplitConfig
from corpus.jsonl import read_jsonl
from corpus.split import document_url, sections, split


def test_pages_served_from_this_machine_are_known_by_their_path():
    assert document_url("http://127.0.0.1:41234/docs/a.html?b=2&a=1#x") == "/docs/a.html?a=1&b=2"
    assert document_url("http://localhost:8000/") == document_url("http://127.0.0.1:9/") == "/"
    assert document_url("https://Docs.Example.org:443/a.html") == "https://docs.example.org/a.html"


def _doc(i: int, sections_: int = 5) -> dict:
    lines, headings = [f"# Page {i}", "Intro text."], [0]
    for s in range(sections_):
        headings.append(len(lines))
        lines += [f"## Part {s}", f"Text of part {s} on page {i}.", "# a code comment, not a heading"]
    return {"id": f"p{i}", "url": f"https://site.example/p{i}.html", "title": f"Page {i}", "lang": "en",
            "text": "\n".join(lines), "headings": headings}


def test_sections_follow_the_heading_path():
    doc = _doc(1, 2)
    doc["text"] += "\n## Part 0\nAgain."
    doc["headings"].append(len(doc["text"].split("\n")) - 2)
    assert [path for path, _ in sections(doc)] == ["Page 1", "Page 1 / Part 0", "Page 1 / Part 1",
                                                   "Page 1 / Part 0 (2)"]
    assert "\n".join(text for _, text in sections(doc)) == doc["text"]


def _sides(result) -> dict[tuple[str, str], str]:
    return {(d["url"], path): side for side, file in result.files.items() for d in read_jsonl(file)
            for path in d["sections"]}


def test_a_small_site_splits_by_section_and_new_pages_move_no_section(tmp_path):
    config = SplitConfig()  # 8% of 12 pages is less than one page
    for n in (12, 13, 30):
        (tmp_path / f"docs{n}.jsonl").write_text("".join(json.dumps(_doc(i)) + "\n" for i in range(n)))
    first = split(tmp_path / "docs12.jsonl", tmp_path / "s12", config)
    assert first.manifest["unit"] == "section" and first.manifest["docs"]["val"] > 0
    assert sum(first.manifest["sections"].values()) == 12 * 6
    old = _sides(first)
    for n in (13, 30):
        grown = _sides(split(tmp_path / f"docs{n}.jsonl", tmp_path / f"s{n}", config))
        assert {k: grown[k] for k in old} == old
    # Every line of every page is on exactly one side.
    lines = sorted(line for f in first.files.values() for d in read_jsonl(f) for line in d["text"].split("\n"))
    assert lines == sorted(line for i in range(12) for line in _doc(i)["text"].split("\n"))
    assert split(tmp_path / "docs30.jsonl", tmp_path / "p", SplitConfig(min_val_pages=2)).manifest["unit"] == "page"


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_flows")
def test_a_twelve_page_site_trains_end_to_end_and_its_split_ignores_the_port(tmp_path):
    from corpus.clean import clean
    from crawlers.config import CrawlConfig
    from crawlers.run import crawl
    from flows.pipeline import pipeline_flow
    from tests.conftest import small_config
    from tests.small_site import build_small_site

    site = tmp_path / "site"
    build_small_site(site)
    config = small_config(tmp_path, "", crawl={"start_urls": [], "site_dir": str(site), "serve_port": 0},
                          split={"val_fraction": 0.08})
    outcomes = {o.name: o for o in pipeline_flow(config=config)}
    split_manifest = json.loads((config.run_dir / "split" / "manifest.json").read_text())
    assert split_manifest["pages"] == 12 and split_manifest["unit"] == "section"
    assert split_manifest["docs"]["val"] > 0
    assert outcomes["train"].summary["val_loss"] > 0 and outcomes["evaluate"].summary["bits_per_byte"] > 0
    docs = list(read_jsonl(config.run_dir / "clean" / "docs.jsonl"))
    assert all(d["url"].startswith("/") for d in docs)

    # Another port (0 picks a free one): the same documents, so the same split.
    again = crawl(CrawlConfig(start_urls=[], site_dir=site, serve_port=0), tmp_path / "crawl2")
    cleaned = clean(again.pages_file, tmp_path / "clean2", config.clean)
    assert sorted(read_jsonl(cleaned.docs_file), key=lambda d: d["url"]) == sorted(docs, key=lambda d: d["url"])

    # A thirteenth page: its sections join, no old section changes sides.
    build_small_site(site, pages=13)
    grown = crawl(CrawlConfig(start_urls=[], site_dir=site, serve_port=0), tmp_path / "crawl3")
    grown_docs = clean(grown.pages_file, tmp_path / "clean3", config.clean).docs_file
    old = _sides(split(config.run_dir / "clean" / "docs.jsonl", tmp_path / "split-again", config.split))
    new = _sides(split(grown_docs, tmp_path / "split3", config.split))
    assert len(new) > len(old) and {k: new[k] for k in old} == old
