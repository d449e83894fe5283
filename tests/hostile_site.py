"""A hostile website on 127.0.0.1: broken statuses, slow pages, redirect chains and loops, lying charsets,
binary bytes as HTML, an oversized page, an endless calendar, robots.txt rules, session-id links and
links off the site. It counts the requests each path receives."""
from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

PROSE = ("Hostile sites still carry real text. This paragraph has enough ordinary words, with the usual "
         "stop words of English prose, for the page to be a plain article. ")
CP1252_TEXT = "Un café naïve à la crème — “résumé” de l'été, déjà vu, façade."
GBK_TEXT = "这是一个中文测试页面，编码是GBK，但是服务器说它是UTF-8。北京今天天气很好。"
SJIS_TEXT = "これは日本語のテストページです。文字コードはシフトJISで、宣言はありません。東京の天気は晴れです。"
SLOW_SECONDS = 4.0
HUGE_BYTES = 300_000
MANY_PAGES, MANY_DELAY_S = 40, 0.15


def page(title: str, body: str, links: list[str] = (), head: str = "") -> str:
    anchors = "".join(f'<li><a href="{href}">{href}</a></li>' for href in links)
    return (f"<!doctype html><html><head>{head}<title>{title}</title></head><body><main><h1>{title}</h1>"
            f"<p>{body}</p><ul>{anchors}</ul></main></body></html>")


INDEX_LINKS = [
    "good.html", "missing.html", "error500.html", "busy503.html", "slow.html",
    "chain/1", "loop/a", "file.pdf", "binary.html", "cp1252.html", "gbk.html", "sjis.html", "huge.html",
    "calendar/2026-01.html", "private/secret.html",
    "article.html?sessionid=abc123", "article.html?sessionid=def456&utm_source=x", "article.html;jsessionid=XYZ",
    "http://offsite.invalid/page.html", "mailto:someone@example.org", "javascript:void(0)", "#top",
]

# Pages stored when the crawl goes as it should (calendar pages depend on the depth limit).
STORED = ["article.html", "chain/final.html", "cp1252.html", "gbk.html", "good.html", "index.html", "sjis.html"]
EXPECTED_FAILURES = {
    "missing.html": "http_404", "error500.html": "http_500", "busy503.html": "http_503", "slow.html": "timeout",
    "loop/a": "redirect_limit", "file.pdf": "not_html", "binary.html": "binary", "huge.html": "too_large",
    "private/secret.html": "robots_disallowed",
}


class HostileHandler(BaseHTTPRequestHandler):
    hits: Counter
    lock: threading.Lock

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def send(self, status: int, body: bytes, ctype: str = "text/html; charset=utf-8", headers: dict = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in dict(headers).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, to: str) -> None:
        self.send(302, b"", headers={"Location": to})

    def do_GET(self) -> None:  # noqa: C901 - one branch per hostile behaviour is the point
        path = urlsplit(self.path).path.lstrip("/")
        with self.lock:
            self.hits[path] += 1
        if path == "robots.txt":
            return self.send(200, b"User-agent: *\nDisallow: /private/\n", "text/plain")
        if path in ("", "index.html"):
            return self.send(200, page("Index", PROSE, INDEX_LINKS).encode())
        if path == "good.html":
            return self.send(200, page("Good", PROSE * 3, ["index.html"]).encode())
        if path == "article.html":
            return self.send(200, page("Article", PROSE * 3, ["article.html?sid=again", "good.html"]).encode())
        if path == "error500.html":
            return self.send(500, b"<h1>Internal error</h1>")
        if path == "busy503.html":
            return self.send(503, b"<h1>Busy</h1>", headers={"Retry-After": "0"})
        if path == "slow.html":
            time.sleep(SLOW_SECONDS)
            with contextlib.suppress(ConnectionError):  # the crawler gave up long ago
                self.send(200, page("Slow", PROSE).encode())
            return None
        if path.startswith("chain/"):
            step = path.split("/")[1]
            if step == "final.html":
                return self.send(200, page("End of the chain", PROSE * 2).encode())
            return self.redirect("/chain/" + (str(int(step) + 1) if int(step) < 3 else "final.html"))
        if path == "loop/a":
            return self.redirect("/loop/b")
        if path == "loop/b":
            return self.redirect("/loop/a")
        if path == "file.pdf":
            return self.send(200, b"%PDF-1.4 not really", "application/pdf")
        if path == "binary.html":
            return self.send(200, os.urandom(1000) + b"\x00" * 100, "text/html")
        if path == "cp1252.html":  # no charset anywhere
            return self.send(200, page("Café", CP1252_TEXT + " " + PROSE).encode("cp1252"), "text/html")
        if path == "gbk.html":  # the header lies, the meta tag tells the truth
            body = page("中文", GBK_TEXT * 3, head='<meta charset="gbk">').encode("gbk")
            return self.send(200, body, "text/html; charset=utf-8")
        if path == "sjis.html":  # nothing declared
            return self.send(200, page("日本語", SJIS_TEXT * 3).encode("shift_jis"), "text/html")
        if path == "huge.html":
            return self.send(200, page("Huge", "x" * HUGE_BYTES).encode())
        if path.startswith("many/"):  # a plain site that is slow to crawl, for the kill-and-resume test
            time.sleep(MANY_DELAY_S)
            return self.send(200, page(f"Page {path}", PROSE, ["../many.html"]).encode())
        if path == "many.html":
            return self.send(200, page("Many", PROSE, [f"many/{i}.html" for i in range(MANY_PAGES)]).encode())
        if path.startswith("calendar/"):
            year, month = map(int, path.split("/")[1].removesuffix(".html").split("-"))
            nxt = f"{year + month // 12}-{month % 12 + 1:02d}.html"
            return self.send(200, page(f"Calendar {year}-{month:02d}", PROSE, [nxt]).encode())
        return self.send(404, b"<h1>Not found</h1>")


@contextlib.contextmanager
def serve_hostile_site() -> Iterator[tuple[str, Counter]]:
    """Yields (base URL ending in '/', hits per path)."""
    handler = type("Handler", (HostileHandler,), {"hits": Counter(), "lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", handler.hits
    finally:
        server.shutdown()
        server.server_close()
