"""A static HTTP server for a folder of HTML on 127.0.0.1 (the offline default site)."""
from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        pass


class SiteServerError(OSError):
    """A folder that cannot be served: missing, or its port taken; the message says what to do."""


def make_server(site_dir: Path, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise SiteServerError(f"site folder {site_dir} does not exist")
    handler = functools.partial(_QuietHandler, directory=str(site_dir))
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise SiteServerError(
            f"cannot serve {site_dir} on {host}:{port} ({exc.strerror}); "
            "free the port or set crawl.serve_port (0 picks a free one)"
        ) from exc
    server.daemon_threads = True
    return server


@contextlib.contextmanager
def serve_site(site_dir: Path, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `site_dir` in a background thread; yields the base URL ending in '/'."""
    server = make_server(site_dir, host, port)
    thread = threading.Thread(target=server.serve_forever, name="memlm-site", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
