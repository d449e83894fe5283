"""URLs as the crawler keys them, and the links of a page.

One page has one key: the fragment goes, session identifiers and tracking parameters go, the query is
sorted. The link extractor reads `href`s straight from lxml's tree and joins them with a cache of the
page's base: the stock LinkExtractor canonicalizes and tests every one of a documentation page's
~600 links with much heavier machinery, and was four fifths of a crawl's time here."""
from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import lxml.html

# Query parameters that name a visit rather than a page.
SESSION_PARAMS = re.compile(
    r"^(?:sid|session|sessionid|session_id|jsessionid|phpsessid|aspsessionid\w*|cfid|cftoken|"
    r"utm_\w+|fbclid|gclid|mc_cid|mc_eid|ref|_ga)$",
    re.I,
)
# ";jsessionid=..." path parameters (Java servlets) and the like.
PATH_SESSION = re.compile(r";(?:jsessionid|phpsessid|sid)=[^/?#]*", re.I)
SKIPPED_SCHEMES = ("javascript:", "mailto:", "tel:", "data:", "ftp:", "file:")


def canonical_url(url: str) -> str:
    """The key of the page `url` names."""
    scheme, netloc, path, query, _fragment = urlsplit(url.strip())
    scheme, netloc = scheme.lower(), netloc.lower()
    if (scheme, netloc[-3:]) == ("http", ":80") or (scheme, netloc[-4:]) == ("https", ":443"):
        netloc = netloc.rsplit(":", 1)[0]
    path = PATH_SESSION.sub("", path) or "/"
    if query:
        pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if not SESSION_PARAMS.match(k)]
        query = urlencode(sorted(pairs))
    return urlunsplit((scheme, netloc, path, query, ""))


def page_links(html: str | bytes, page_url: str) -> Iterator[str]:
    """The canonical http(s) URLs of a page's `<a href>` and `<area href>` links, each once."""
    try:
        root = lxml.html.document_fromstring(html)
    except (ValueError, lxml.etree.ParserError):
        return
    base = page_url
    for href in root.xpath("//base/@href")[:1]:
        base = urljoin(page_url, href.strip())
    seen_hrefs: set[str] = set()
    found: set[str] = set()
    for href in root.xpath("//a/@href | //area/@href"):
        href = href.strip()
        if not href or href.startswith("#") or href in seen_hrefs or href.lower().startswith(SKIPPED_SCHEMES):
            continue
        seen_hrefs.add(href)
        url = urljoin(base, href)
        if url.startswith(("http://", "https://")) and (url := canonical_url(url)) not in found:
            found.add(url)
            yield url


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def on_domains(url: str, domains: list[str]) -> bool:
    """Whether `url`'s host is one of `domains` or below one (ports do not matter)."""
    host = host_of(url)
    return any(host == d or host.endswith("." + d) for d in domains)
