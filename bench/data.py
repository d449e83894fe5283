"""Data benchmark: crawl pages/s against a plain Scrapy CrawlSpider, and cleaning + tokenization MB/s.

The site is the locally served Python documentation (Debian's python3.11-doc), the same for both
crawlers in one invocation. The plain spider is what a Scrapy user writes first: CrawlSpider, the stock
LinkExtractor with the same deny patterns, and the page's text extracted in the callback. Both run in
their own `scrapy` process with the same settings (16 concurrent requests, robots.txt, depth 8, the
same page limit); both times are wall clock of that process. Cleaning runs memlm's clean stage with 1
and then 2 worker processes on the memlm crawl's pages; tokenization trains the BPE and encodes.

    python bench/data.py                        # table on stdout
    python bench/data.py --json runs/bench/data.json --max-pages 600
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLAIN_SPIDER = '''
import json, re
from scrapy.linkextractors import LinkExtractor
from scrapy.spiders import CrawlSpider, Rule


class PlainSpider(CrawlSpider):
    name = "plain"

    def __init__(self, start=None, deny=None, *args, **kwargs):
        self.start_urls = [start]
        self.allowed_domains = ["127.0.0.1"]
        self.rules = (Rule(LinkExtractor(deny=json.loads(deny)), callback="parse_page", follow=True),)
        super().__init__(*args, **kwargs)

    def parse_start_url(self, response):
        return self.parse_page(response)

    def parse_page(self, response):
        if b"text/html" not in response.headers.get(b"Content-Type", b""):
            return
        yield {"url": response.url, "chars": len(" ".join(response.xpath("//body//text()").getall()))}
'''


def crawl_plain(start: str, deny: list[str], max_pages: int, out: Path) -> dict:
    spider = out / "plain_spider.py"
    spider.write_text(PLAIN_SPIDER)
    items = out / "plain.jsonl"
    items.unlink(missing_ok=True)
    settings = {"ROBOTSTXT_OBEY": True, "CONCURRENT_REQUESTS": 16, "CONCURRENT_REQUESTS_PER_DOMAIN": 16,
                "DEPTH_LIMIT": 8, "CLOSESPIDER_ITEMCOUNT": max_pages, "LOG_LEVEL": "WARNING",
                "DOWNLOAD_TIMEOUT": 20, "RETRY_TIMES": 2,
                "TELNETCONSOLE_ENABLED": False, "REMOTE_CONTROL_ENABLED": False, "DEPTH_PRIORITY": 1,
                "SCHEDULER_DISK_QUEUE": "scrapy.squeues.PickleFifoDiskQueue",
                "SCHEDULER_MEMORY_QUEUE": "scrapy.squeues.FifoMemoryQueue"}
    cmd = [sys.executable, "-m", "scrapy", "runspider", str(spider), "-a", f"start={start}",
           "-a", f"deny={json.dumps(deny)}", "-O", f"{items}:jsonlines"]
    for key, value in settings.items():
        cmd += ["-s", f"{key}={value}"]
    started = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True, cwd=out)
    elapsed = time.monotonic() - started
    urls = {json.loads(line)["url"] for line in open(items)}
    return {"name": "scrapy CrawlSpider + LinkExtractor", "pages": len(urls), "seconds": round(elapsed, 1),
            "pages_per_s": round(len(urls) / elapsed, 1), "urls": urls}


def crawl_memlm(start: str, deny: list[str], max_pages: int, out: Path) -> dict:
    from crawlers.config import CrawlConfig
    from crawlers.run import crawl

    config = CrawlConfig(start_urls=[start], site_dir=None, deny=deny, max_pages=max_pages)
    started = time.monotonic()
    result = crawl(config, out / "memlm-crawl")
    elapsed = time.monotonic() - started
    urls = {json.loads(line)["final_url"] for line in open(result.pages_file)}
    return {"name": "memlm crawl", "pages": len(urls), "seconds": round(elapsed, 1),
            "pages_per_s": round(len(urls) / elapsed, 1), "urls": urls, "pages_file": result.pages_file}


def html_megabytes(pages_file: Path) -> float:
    return sum(len(json.loads(line)["html"].encode()) for line in open(pages_file)) / 1e6


def clean_rate(pages_file: Path, workers: int, out: Path) -> dict:
    from corpus.clean import clean
    from corpus.config import CleanConfig

    mb = html_megabytes(pages_file)
    started = time.monotonic()
    result = clean(pages_file, out / f"clean-{workers}", CleanConfig(workers=workers))
    elapsed = time.monotonic() - started
    return {"name": f"clean, {workers} process{'es' if workers > 1 else ''}", "workers": workers,
            "html_mb": round(mb, 2), "seconds": round(elapsed, 1), "mb_per_s": round(mb / elapsed, 3),
            "mb_per_s_per_core": round(mb / elapsed / workers, 3), "docs_out": result.report["docs_out"],
            "extract_s": result.report["extract_s"], "docs_file": result.docs_file}


def tokenize_rate(docs_file: Path, html_mb: float, out: Path) -> dict:
    from corpus.config import TokenizeConfig
    from corpus.tokenize import encode_split, train_tokenizer

    text_mb = sum(len(json.loads(line)["text"].encode()) for line in open(docs_file)) / 1e6
    started = time.monotonic()
    tokenizer = train_tokenizer(docs_file, TokenizeConfig())
    encode_split(tokenizer, docs_file, out / "tokens.bin")
    elapsed = time.monotonic() - started
    return {"name": "tokenize (BPE training + encoding)", "text_mb": round(text_mb, 2), "seconds": round(elapsed, 1),
            "mb_per_s": round(text_mb / elapsed, 3), "html_mb_per_s": round(html_mb / elapsed, 3)}


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from crawlers.config import DEFAULT_SITE_DIR, CrawlConfig
    from crawlers.site_server import serve_site

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site-dir", type=Path, default=DEFAULT_SITE_DIR)
    parser.add_argument("--max-pages", type=int, default=600)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--skip-plain", action="store_true", help="do not run the plain Scrapy crawl")
    args = parser.parse_args()
    if not args.site_dir.is_dir():
        parser.error(f"{args.site_dir} does not exist: apt-get install python3.11-doc, or pass --site-dir")
    deny = CrawlConfig().deny
    out = Path(tempfile.mkdtemp(prefix="memlm-bench-data-"))
    with serve_site(args.site_dir) as base:
        start = base + "index.html"
        plain = None if args.skip_plain else crawl_plain(start, deny, args.max_pages, out)
        ours = crawl_memlm(start, deny, args.max_pages, out)
    cleans = [clean_rate(ours["pages_file"], w, out) for w in (1, 2)]
    tokens = tokenize_rate(cleans[-1]["docs_file"], cleans[-1]["html_mb"], out)

    console = Console(width=120)
    crawl_table = Table(title=f"crawl: {args.site_dir} served on 127.0.0.1, up to {args.max_pages} pages")
    for col in ("crawler", "pages", "seconds", "pages/s"):
        crawl_table.add_column(col, justify="left" if col == "crawler" else "right")
    for row in filter(None, [plain, ours]):
        crawl_table.add_row(row["name"], str(row["pages"]), f"{row['seconds']:.1f}", f"{row['pages_per_s']:.1f}")
    console.print(crawl_table)
    result = {"site_dir": str(args.site_dir), "max_pages": args.max_pages, "cores": os.cpu_count(),
              "crawl": {"memlm": {k: v for k, v in ours.items() if k not in ("urls", "pages_file")}}}
    if plain:
        same = plain["urls"] == ours["urls"]
        speedup = ours["pages_per_s"] / plain["pages_per_s"]
        console.print(f"memlm / plain pages/s: {speedup:.2f}x; same pages found: {same} "
                      f"({len(plain['urls'] & ours['urls'])} in common, {len(plain['urls'] - ours['urls'])} only plain, "
                      f"{len(ours['urls'] - plain['urls'])} only memlm)")
        result["crawl"]["plain"] = {k: v for k, v in plain.items() if k != "urls"}
        result["crawl"].update(speedup=round(speedup, 2), same_pages=same,
                               only_plain=sorted(plain["urls"] - ours["urls"])[:20],
                               only_memlm=sorted(ours["urls"] - plain["urls"])[:20])
    clean_table = Table(title="cleaning and tokenization")
    for col in ("stage", "input MB", "seconds", "MB/s", "MB/s per core"):
        clean_table.add_column(col, justify="left" if col == "stage" else "right")
    for row in cleans:
        clean_table.add_row(row["name"], f"{row['html_mb']:.1f} HTML", f"{row['seconds']:.1f}", f"{row['mb_per_s']:.3f}",
                            f"{row['mb_per_s_per_core']:.3f}")
    clean_table.add_row(tokens["name"], f"{tokens['text_mb']:.1f} text", f"{tokens['seconds']:.1f}",
                        f"{tokens['mb_per_s']:.3f}", "")
    console.print(clean_table)
    console.print(f"clean scaling 1 -> 2 processes: {cleans[0]['seconds'] / cleans[1]['seconds']:.2f}x")
    result["clean"] = [{k: v for k, v in row.items() if k != "docs_file"} for row in cleans]
    result["clean_scaling_2_over_1"] = round(cleans[0]["seconds"] / cleans[1]["seconds"], 2)
    result["tokenize"] = tokens
    print(json.dumps(result, indent=2, default=str))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
