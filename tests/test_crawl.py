"""The crawl over a real HTTP server on 127.0.0.1 with real Scrapy."""
from __future__ import annotations

import json
from urllib.parse import urlsplit

import numpy as np
import pytest

from crawlers.config import CrawlConfig
from crawlers.digests import PAGE_DIGESTS_FILE, content_digest
from crawlers.run import CrawlError, _html_files, crawl
from crawlers.store import SCRAPY_MANIFEST_FILE

pytestmark = pytest.mark.integration


def stored_paths(pages_file) -> list[str]:
    return sorted(urlsplit(json.loads(line)["final_url"]).path.lstrip("/") for line in open(pages_file))


def test_crawl_stores_exactly_the_allowed_html_pages(crawled, site):
    _, expected = site
    assert stored_paths(crawled.pages_file) == expected["stored"]


def test_crawl_manifest_counts_what_was_skipped_and_why(crawled):
    m = crawled.manifest
    assert m["pages"] == len(list(open(crawled.pages_file)))
    assert m["pages_by_status"] == {"200": m["pages"]}
    assert m["skipped"]["robots_disallowed"] == 1
    assert m["skipped"]["http_404"] == 1
    assert m["skipped"]["not_html"] == 1
    assert m["skipped"]["offsite"] >= 2
    table = np.load(crawled.manifest_file.parent / m["page_digests_file"], allow_pickle=False)
    assert len(table) == m["pages"] and content_digest(table) == m["content_digest"]
    assert not (crawled.manifest_file.parent / SCRAPY_MANIFEST_FILE).exists()


def test_page_records_hold_the_raw_page_and_its_digest(crawled):
    import hashlib

    record = json.loads(open(crawled.pages_file).readline())
    assert {"url", "final_url", "status", "fetched_at", "content_type", "encoding", "sha256", "html"} <= set(record)
    assert record["content_type"] == "text/html"
    assert record["sha256"] == hashlib.sha256(record["html"].encode(record["encoding"])).hexdigest()


def test_page_limit_and_depth_limit(site_url, tmp_path):
    limited = crawl(CrawlConfig(start_urls=[site_url + "index.html"], max_pages=3, site_dir=None), tmp_path / "a")
    assert limited.manifest["pages"] == 3
    shallow = crawl(CrawlConfig(start_urls=[site_url + "lists.html"], max_depth=1, site_dir=None), tmp_path / "b")
    # lists.html links to the two navigation pages and one neighbour; depth 1 stops there.
    assert stored_paths(shallow.pages_file) == ["about.html", "dictionaries.html", "index.html", "lists.html"]


def test_unreachable_start_url_fails_with_a_clear_error(tmp_path):
    with pytest.raises(CrawlError, match="no pages"):
        crawl(CrawlConfig(start_urls=["http://127.0.0.1:9/"], max_pages=2, download_timeout_s=2, site_dir=None),
              tmp_path)


def test_missing_site_dir_says_how_to_fix_it(tmp_path):
    with pytest.raises(CrawlError, match="site_dir .* does not exist.*start_urls"):
        crawl(CrawlConfig(site_dir=tmp_path / "nope"), tmp_path / "out")


def test_a_recrawl_revalidates_instead_of_downloading_again(site_url, tmp_path):
    config = CrawlConfig(start_urls=[site_url + "index.html"], max_pages=50, site_dir=None)
    first = crawl(config, tmp_path)
    second = crawl(config, tmp_path)
    assert first.manifest["not_modified"] == 0
    # Every page came back as 304 Not Modified and was taken from the HTTP cache.
    assert second.manifest["not_modified"] >= second.manifest["pages"] == first.manifest["pages"]
    assert second.manifest["content_digest"] == first.manifest["content_digest"]


def test_a_crawl_stopped_before_its_manifest_resumes_and_fetches_nothing_twice(site_url, tmp_path):
    config = CrawlConfig(start_urls=[site_url + "index.html"], max_pages=50, site_dir=None)
    first = crawl(config, tmp_path)
    # As if killed after Scrapy had stored every page, before the parent wrote the digests and the manifest.
    first.manifest_file.unlink()
    (tmp_path / PAGE_DIGESTS_FILE).unlink()
    second = crawl(config, tmp_path)
    assert second.manifest["resumed_with_pages"] == first.manifest["pages"] == second.manifest["pages"]
    assert "duplicate_url" not in second.manifest["skipped"]  # no stored page was fetched again
    assert second.manifest["content_digest"] == first.manifest["content_digest"]


def test_a_file_dropped_into_a_served_folder_is_crawled_unlinked(site, tmp_path):
    import shutil

    folder = tmp_path / "site"
    shutil.copytree(site[0], folder)
    (folder / "unlinked.html").write_text((folder / "about.html").read_text())
    result = crawl(CrawlConfig(site_dir=folder, serve_port=0, max_pages=50), tmp_path / "crawl")
    assert "unlinked.html" in stored_paths(result.pages_file)
    assert "private/secret.html" not in stored_paths(result.pages_file)  # robots.txt still rules


def test_a_folders_files_are_listed_in_path_order(tmp_path):
    for name in ("a.html", "a/b.html", "a-b.html", "a/c/d.htm", "b.html", "notes.txt", "z/y.xhtml.html", "ab.html",
                 "x.html/in.html"):  # a folder named like a page is a folder
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("<p>x</p>")
    expected = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.htm*") if p.is_file())
    assert list(_html_files(tmp_path)) == expected and len(expected) == 8
