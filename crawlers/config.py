"""Settings of the crawl stage (the `crawl:` section of the memlm config)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_SITE_DIR = Path("/usr/share/doc/python3.11/html")
# Hosts crawled without delay or throttling: a folder served on this machine.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class CrawlConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start_urls: list[str] = Field(
        default_factory=list,
        description="Where the crawl starts. Empty: serve `site_dir` on 127.0.0.1 and start at its index and "
        "at every HTML file in it (a file dropped into the folder is crawled before anything links to it).",
    )
    site_dir: Path | None = Field(
        default=DEFAULT_SITE_DIR,
        description="A folder of HTML served locally when `start_urls` is empty (the offline default).",
    )
    serve_port: int = Field(
        default=8731, ge=0, le=65535,
        description="Port for serving `site_dir`. Fixed by default so that page URLs, and so the "
        "train/validation split, stay the same from run to run; 0 picks a free port.",
    )
    allowed_domains: list[str] = Field(
        default_factory=list, description="Domains to stay on. Empty: the domains of the start URLs."
    )
    allow: list[str] = Field(default_factory=list, description="URL regexes to follow (empty: all).")
    deny: list[str] = Field(
        default_factory=lambda: [r"/_sources/", r"/_static/", r"/_images/", r"/_downloads/", r"\?"],
        description="URL regexes never to follow.",
    )
    max_pages: int = Field(default=600, ge=1, description="Stop after storing this many HTML pages.")
    max_depth: int = Field(default=8, ge=0, description="Link depth limit from the start URLs (0: no limit).")
    max_redirects: int = Field(default=10, ge=0, description="A longer redirect chain (or a loop) is recorded, not followed.")
    obey_robots: bool = Field(default=True, description="Obey each host's robots.txt.")
    http_cache: bool = Field(default=True, description="Keep responses and revalidate them on the next crawl "
                             "(conditional requests: unchanged pages cost a 304).")
    download_maxsize_mb: float = Field(default=8.0, gt=0, description="Responses larger than this are skipped.")
    download_timeout_s: float = Field(default=20.0, gt=0)
    concurrency: int = Field(default=16, ge=1, le=256, description="Requests in flight in all.")
    # Politeness toward other people's servers; a folder served on this machine is crawled at full speed.
    concurrency_per_host: int = Field(
        default=4, ge=1, le=256, description=f"Requests in flight per host other than {', '.join(LOCAL_HOSTS)}.")
    download_delay_s: float = Field(
        default=1.0, ge=0, description=f"Seconds between two requests to one host other than "
        f"{', '.join(LOCAL_HOSTS)} (±50% jitter); AutoThrottle never goes below it.")
    autothrottle: bool = Field(
        default=True, description="Scrapy's AutoThrottle: a host's delay follows its latency, so that a slow "
        "server gets fewer requests (hosts other than 127.0.0.1 and localhost).")
    autothrottle_target_concurrency: float = Field(
        default=2.0, gt=0, description="Requests AutoThrottle aims to have in flight per remote host.")
    autothrottle_max_delay_s: float = Field(default=30.0, gt=0, description="AutoThrottle's longest delay.")
    user_agent: str = Field(default="memlm (+https://github.com/memlm/memlm)", min_length=1,
                            description="The User-Agent header of every request, robots.txt included.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Scrapy's log level; its log goes to `scrapy.log` in the crawl folder and "
        "to memlm's log while the crawl runs.")

    @model_validator(mode="after")
    def _needs_a_start(self) -> "CrawlConfig":
        if not self.start_urls and self.site_dir is None:
            raise ValueError("set crawl.start_urls to a site, or crawl.site_dir to a folder of HTML to serve")
        return self
