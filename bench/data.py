"""Data benchmark: crawl pages/s against a plain Scrapy CrawlSpider, and cleaning + tokenization MB/s.

The site is the locally served Python documentation (Debian's python3.11-doc), the same for both
crawlers in one invocation. The plain spider is what a Scrapy user writes first: CrawlSpider, the stock
LinkExtractor with the same deny patterns, and the page's text extracted in the callback. Both run in
their own `scrapy` process with the same settings (16 concurrent requests, robots.txt, depth 8, the
same page limit); both times are wall clock of that process. Cleaning runs memlm's clean stage with 1
and then 2 worker processes on the memlm crawl's pages; tokenization trains the BPE and encodes.

    python bench/data.py                        # table on stdout
    python bench/data.py --json runs/bench/data.json --max-pages 600

At scale (`--scale`), a generated documentation site (tests/big_site.py) of each given size is written
to a temporary folder and served on 127.0.0.1; the crawl and the clean each run in a process of their
own, and their peak resident memory is the sum over that process and its children (Scrapy, the worker
processes), sampled every 0.1 s. The largest site's crawl is also killed with SIGKILL half way and
resumed; the first pages of the smallest crawl (`--sample-pages`) are cleaned by both runners (processes,
and Dask on a local cluster of as many workers) in two rotated rounds, and timed step by step on one core.

    python bench/data.py --scale 10000 100000 --sample-pages 10000 --json bench/results/data-scale-cpu.json

`--runners N` compares the runners alone, on a generated site of N pages, in `--rounds` rotated rounds.

    python bench/data.py --runners 10000 --rounds 3 --json bench/results/data-runners-cpu.json
    python bench/data.py --runners 100000 --rounds 2 --json bench/results/data-runners-100k-cpu.json

`--task-cost N` measures what one Prefect task run costs on memlm's Dask cluster, in CPU time of the
parent (client, scheduler, nannies), the Prefect server and the workers, over N task runs that do nothing.

    python bench/data.py --task-cost 100 --json bench/results/data-task-cost-cpu.json

`--entry-sizes N` measures, with tracemalloc, the bytes per entry of what cleaning keeps as the corpus
grows (boilerplate line counts, near-duplicate index, exact-duplicate hashes), built from N entries.

    python bench/data.py --entry-sizes 200000 --json bench/results/data-entry-sizes-cpu.json
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
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


class TreeMemory:
    """Peak of the summed resident memory of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.1):
        import psutil

        self.root, self.interval_s, self.peak = psutil.Process(pid), interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval_s)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_stage(args: list[str], kill_when: tuple[Path, int] | None = None) -> dict:
    """Run `bench/data.py --stage ...` in a process of its own; its JSON result with the tree's peak RSS.
    `kill_when` (pages file, pages): SIGKILL the stage and its Scrapy once the store holds that many."""
    import psutil

    from crawlers.store import count_complete_records

    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, __file__, "--stage", *args], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    meter = TreeMemory(proc.pid)
    if kill_when:
        pages_file, pages = kill_when
        while proc.poll() is None and count_complete_records(pages_file) < pages:
            time.sleep(0.2)
        for child in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
            child.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    peak = meter.stop()
    if kill_when:
        return {"killed_at_pages": count_complete_records(kill_when[0]), "peak_rss_mb": round(peak / 2**20, 1)}
    if proc.returncode != 0:
        raise RuntimeError(f"stage {args[0]} exited with {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(peak_rss_mb=round(peak / 2**20, 1), wall_s=round(time.monotonic() - started, 1))
    return result


def stage_main(args: list[str]) -> None:
    """One stage in this process: `crawl SITE OUT MAX_PAGES`, `clean PAGES OUT RUNNER WORKERS`."""
    stage = args[0]
    started = time.monotonic()
    if stage == "crawl":
        from crawlers.config import CrawlConfig
        from crawlers.run import crawl

        site, out, max_pages = Path(args[1]), Path(args[2]), int(args[3])
        config = CrawlConfig(site_dir=site, serve_port=0, max_pages=max_pages, max_depth=0, http_cache=False,
                             deny=[])
        manifest = crawl(config, out).manifest
        elapsed = time.monotonic() - started
        result = {"pages": manifest["pages"], "resumed_with_pages": manifest["resumed_with_pages"],
                  "seconds": round(elapsed, 1), "pages_per_s": round(manifest["pages"] / elapsed, 1)}
    else:
        from corpus.clean import clean
        from corpus.config import CleanConfig
        from corpus.jsonl import file_sha256
        from corpus.runners import prefect_api_url

        pages_file, out, runner, workers = Path(args[1]), Path(args[2]), args[3], int(args[4])
        mb = pages_file.stat().st_size / 1e6
        # The Dask runner is timed as in a flow run, whose Prefect API is up before its tasks run (a
        # temporary server, a child of this process, took 11 s to start here); the imports are not timed.
        started = time.monotonic()
        if runner == "dask":
            prefect_api_url()
        prefect_api_s = time.monotonic() - started
        cpu_before, started = cpu_seconds(), time.monotonic()
        report = clean(pages_file, out, CleanConfig(runner=runner, workers=workers)).report
        elapsed, cpu_s = time.monotonic() - started, cpu_seconds() - cpu_before
        result = {"runner": runner, "workers": workers, "pages": report["pages_in"], "docs_out": report["docs_out"],
                  "store_mb": round(mb, 2), "seconds": round(elapsed, 1), "pages_per_s": round(report["pages_in"] / elapsed, 1),
                  "mb_per_s": round(mb / elapsed, 3), "mb_per_s_per_core": round(mb / elapsed / workers, 3),
                  "cpu_s": round(cpu_s, 1),
                  "extract_s": report["extract_s"], "prefect_api_start_s": round(prefect_api_s, 1),
                  "memory": report["memory"],
                  "docs_sha256": file_sha256(out / "docs.jsonl")}
    print(json.dumps(result))


def cpu_seconds() -> float:
    """CPU time (user and system) of this process and of its children, ended ones (waited for) and running
    ones (the Prefect server)."""
    import resource

    import psutil

    ended = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    running = cpu_of(psutil.Process())
    running.pop(os.getpid())  # counted by RUSAGE_SELF
    return sum(u.ru_utime + u.ru_stime for u in ended) + sum(running.values())


def cpu_of(process) -> dict[int, float]:
    """pid -> CPU seconds (user and system) of `process` (psutil's) and of its descendants still running."""
    import psutil

    cpu = {}
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = p.cpu_times()
            cpu[p.pid] = times.user + times.system
    return cpu


def step_times(pages_file: Path, n_pages: int) -> dict:
    """Seconds each step of cleaning takes on one core, over the first `n_pages` pages (no reuse)."""
    from collections import Counter

    from corpus import filters
    from corpus.boilerplate import line_key
    from corpus.config import CleanConfig
    from corpus.extract import extract_page
    from corpus.extract_pass import extract_record
    from corpus.filter_pass import load_nlp, text_steps, word_and_sentence_counts
    from corpus.language import page_language
    from corpus.near_dedup import signature
    from corpus.pii import scrub

    config = CleanConfig(workers=1)
    pages = [json.loads(line) for line in itertools.islice(open(pages_file, encoding="utf-8"), n_pages)]
    html_mb = sum(len(p["html"].encode()) for p in pages) / 1e6
    times: Counter[str] = Counter()

    def timed(name, fn, *args):
        t = time.perf_counter()
        value = fn(*args)
        times[name] += time.perf_counter() - t
        return value

    records = []
    for page in pages:
        extracted = timed("extract: parse HTML and main content (lxml)", extract_page, page["html"])
        prose = "\n".join(b.text for b in extracted.blocks if b.is_prose)
        timed("language (py3langid)", page_language, extracted.lang, prose, config.languages)
        records.append(extract_record(page, config))
    times["line keys (boilerplate counts)"] += 0
    nlp = load_nlp("en", config)
    for record in records:
        t = time.perf_counter()
        {line_key(record["host"], line) for kind, text in record["blocks"] if kind != "code" for line in text.split("\n")}
        times["line keys (boilerplate counts)"] += time.perf_counter() - t
        doc, result = text_steps(record, config)
        for name, fn, section in (("c4_lines", filters.c4_lines, config.c4_lines),
                                  ("gopher_quality", filters.gopher_quality, config.gopher_quality),
                                  ("gopher_repetition", filters.gopher_repetition, config.gopher_repetition),
                                  ("fineweb_quality", filters.fineweb_quality, config.fineweb_quality)):
            timed(name, fn, doc, section)
        for block in doc.blocks:
            timed("pii", scrub, block.text, config.pii)
        text = doc.text
        timed("minhash signature (datasketch)", signature, text, doc.lang, config.near_dedup)
        parsed = timed("spaCy (blank + sentencizer)", nlp, text)
        timed("spaCy word and sentence counts", word_and_sentence_counts, parsed)
    timed("JSON decode of the page store", lambda: [json.loads(line) for line in itertools.islice(
        open(pages_file, encoding="utf-8"), n_pages)])
    total = sum(times.values())
    return {"pages": len(pages), "html_mb": round(html_mb, 2), "seconds": round(total, 2),
            "mb_per_s_one_core": round(html_mb / total, 3),
            "steps": {name: {"seconds": round(s, 2), "share": round(s / total, 3)}
                      for name, s in sorted(times.items(), key=lambda kv: -kv[1])}}


def entry_sizes(entries: int) -> dict:
    """Bytes per entry of what cleaning keeps per line or per document, measured with tracemalloc: the
    boilerplate line counts (one site, distinct lines added 20 a page), the near-duplicate index (distinct
    random signatures with URL-like keys) and the exact-duplicate hashes."""
    import gc
    import hashlib
    import tracemalloc

    import numpy as np

    from corpus.boilerplate import LineCounts
    from corpus.config import NearDedupConfig
    from corpus.near_dedup import NearDuplicateIndex
    from crawlers.hashset import HashSet

    NearDuplicateIndex(NearDedupConfig())  # imports (datasketch, scipy) before anything is measured

    def measured(build) -> dict:
        gc.collect()
        tracemalloc.start()
        held = build()
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del held
        return {"bytes_per_entry": round(current / entries, 1), "peak_bytes_per_entry": round(peak / entries, 1)}

    def line_counts():
        counts = LineCounts(Path(tempfile.mkdtemp(prefix="memlm-bench-entries-")) / "spill.sqlite", 10 * entries)
        for page in range(0, entries, 20):
            counts.add_page("docs.example.org", (hashlib.blake2b(str(i).encode(), digest_size=8).digest()
                                                 for i in range(page, min(page + 20, entries))))
        list(counts.repeated("docs.example.org"))  # merges what is pending
        return counts

    def near_duplicates():
        cfg = NearDedupConfig()
        index = NearDuplicateIndex(cfg)
        rng = np.random.default_rng(0)
        for i in range(entries):
            index.add(f"https://docs.example.org/chapter-{i // 100}/page-{i}.html",
                      rng.integers(0, 2**32, cfg.num_perm, dtype=np.uint32))
        for bucket in index.buckets:
            bucket.merge()
        return index

    def exact_hashes():
        exact = HashSet()
        for i in range(entries):
            exact.add(int.from_bytes(hashlib.sha256(str(i).encode()).digest()[:8], "little"))
        exact.merge()
        return exact

    result = {"entries": entries, "boilerplate_line_counts": measured(line_counts),
              "near_duplicate_index": measured(near_duplicates), "exact_duplicate_hashes": measured(exact_hashes)}
    result["note"] = ("tracemalloc over the structure built from `entries` distinct lines or documents, after it "
                      "was built and merged (current) and while building (peak); a URL key of the near-duplicate index "
                      "is about 60 characters")
    return result


def scale_main(sizes: list[int], json_out: Path | None, workers: int, sample_pages: int) -> None:
    from tests.big_site import build_big_site

    tmp = Path(tempfile.mkdtemp(prefix="memlm-bench-scale-"))
    result: dict = {"cores": os.cpu_count(), "workers": workers, "sizes": {}, "note":
                    "peak RSS: the stage's process and its children summed, sampled every 0.1 s"}
    for n in sizes:
        site = tmp / f"site-{n}"
        started = time.monotonic()
        paths = build_big_site(site, n)
        generated_s = time.monotonic() - started
        crawl = run_stage(["crawl", str(site), str(tmp / f"crawl-{n}"), str(len(paths))])
        pages_file = tmp / f"crawl-{n}" / "pages.jsonl"
        clean = run_stage(["clean", str(pages_file), str(tmp / f"clean-{n}"), "processes", str(workers)])
        result["sizes"][n] = {"files": len(paths), "generated_s": round(generated_s, 1), "crawl": crawl, "clean": clean}
        print(json.dumps({n: result["sizes"][n]}), flush=True)
        write_json(json_out, result)  # after each part, so that a run stopped early leaves what it measured
    smallest, largest = min(sizes), max(sizes)
    base, top = result["sizes"][smallest], result["sizes"][largest]
    result["ratios_largest_over_smallest"] = {
        stage: {"peak_rss": round(top[stage]["peak_rss_mb"] / base[stage]["peak_rss_mb"], 3),
                "pages_per_s": round(top[stage]["pages_per_s"] / base[stage]["pages_per_s"], 3)}
        for stage in ("crawl", "clean")}

    # A crawl killed half way and resumed, on the largest site.
    site, out = tmp / f"site-{largest}", tmp / "crawl-killed"
    files = top["files"]
    killed = run_stage(["crawl", str(site), str(out), str(files)], kill_when=(out / "pages.jsonl", files // 2))
    resumed = run_stage(["crawl", str(site), str(out), str(files)])
    urls = [json.loads(line[:line.index(', "html": ')] + "}")["final_url"] for line in open(out / "pages.jsonl")]
    result["kill_and_resume"] = {"site_files": files, "killed": killed, "resumed": resumed,
                                 "stored_pages": len(urls), "distinct_pages": len(set(urls))}
    del urls
    print(json.dumps(result["kill_and_resume"]), flush=True)
    write_json(json_out, result)

    # Runners on the same pages, the first `sample_pages` of the smallest crawl.
    sample = first_pages(tmp / f"crawl-{smallest}" / "pages.jsonl", tmp / "sample.jsonl", sample_pages)
    result["runners"] = compare_runners(sample, tmp, workers, rounds=2)
    print(json.dumps(result["runners"]), flush=True)
    write_json(json_out, result)
    result["step_times"] = step_times(sample, min(sample_pages, 400))
    write_json(json_out, result)
    from crawlers.config import DEFAULT_SITE_DIR

    if DEFAULT_SITE_DIR.is_dir():  # the same on real documentation pages (larger, table- and link-heavy)
        docs = run_stage(["crawl", str(DEFAULT_SITE_DIR), str(tmp / "crawl-python-docs"), "300"])
        result["step_times_python_docs"] = {"site_dir": str(DEFAULT_SITE_DIR), "crawl": docs,
                                            **step_times(tmp / "crawl-python-docs" / "pages.jsonl", 300)}
    print(json.dumps(result, indent=2))
    write_json(json_out, result)
    print_scale_table(result)


def worker_pid() -> int:
    return os.getpid()


def task_cost(tasks: int, workers: int) -> dict:
    """CPU milliseconds a Prefect task run costs through the Dask runner's machinery (memlm's local cluster,
    Prefect's Dask task runner, the shard task's options), by process, over `tasks` runs of a task that
    does nothing but name its worker, once every worker has run one (its first imports Prefect's task
    engine). Each process's idle loops over the same time are included (the Prefect server's, Dask's
    heartbeats), as they are in a clean."""
    import psutil
    from prefect import task
    from prefect.cache_policies import NO_CACHE
    from prefect_dask import DaskTaskRunner

    from corpus.runners import local_cluster

    def role(pid: int) -> str | None:
        if pid == os.getpid():
            return "parent (client, scheduler, nannies)"
        with contextlib.suppress(psutil.NoSuchProcess):
            cmdline = " ".join(psutil.Process(pid).cmdline())
            return "Prefect server" if "prefect.server" in cmdline else "workers" if "spawn_main" in cmdline else None
        return None

    def cpu_by_process() -> dict[int, tuple[str, float]]:
        return {pid: (name, cpu) for pid, cpu in cpu_of(psutil.Process()).items() if (name := role(pid))}

    named_task = task(worker_pid, name="noop", cache_policy=NO_CACHE, persist_result=False)
    with local_cluster(workers) as address, DaskTaskRunner(address=address) as runner:
        warmed: set[int] = set()
        while len(warmed) < workers:
            warmed |= {f.result() for f in [runner.submit(named_task, parameters={}) for _ in range(workers)]}
        before, started = cpu_by_process(), time.monotonic()
        ran_on = {f.result() for f in [runner.submit(named_task, parameters={}) for _ in range(tasks)]}
        elapsed, after = time.monotonic() - started, cpu_by_process()
    if before.keys() != after.keys() or not ran_on <= warmed:
        raise RuntimeError(f"processes changed while measuring (before {sorted(before)}, after {sorted(after)}, "
                           f"tasks ran on {sorted(ran_on)}): run again")
    per_task: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        per_task[name] = per_task.get(name, 0.0) + 1000 * (cpu - before[pid][1]) / tasks
    per_task = {name: round(ms, 1) for name, ms in per_task.items()}
    return {"tasks": tasks, "workers": workers, "seconds": round(elapsed, 2), "cpu_ms_per_task_run": per_task,
            "cpu_ms_per_task_run_total": round(sum(per_task.values()), 1)}


def write_json(path: Path | None, result: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str))


def first_pages(pages_file: Path, out: Path, n: int) -> Path:
    """The first `n` records of a page store, in a store of their own."""
    with open(pages_file, encoding="utf-8") as f, open(out, "w", encoding="utf-8") as out_f:
        out_f.writelines(itertools.islice(f, n))
    return out


def compare_runners(pages_file: Path, tmp: Path, workers: int, rounds: int) -> dict:
    """Both runners cleaning the same pages on `workers` workers in rotated rounds (processes and Dask, then
    Dask and processes, ...): speeds on this shared machine drift between runs."""
    runs: dict[str, list] = {"processes": [], "dask": []}
    for r in range(rounds):
        for runner in ("processes", "dask")[::1 if r % 2 == 0 else -1]:
            out = tmp / f"runner-{r}-{runner}"
            runs[runner].append(run_stage(["clean", str(pages_file), str(out), runner, str(workers)]))
            print(json.dumps({k: v for k, v in runs[runner][-1].items() if k != "memory"}), flush=True)
    by_round = [runs["dask"][r]["mb_per_s"] / runs["processes"][r]["mb_per_s"] for r in range(rounds)]
    mean = {runner: sum(run["mb_per_s"] for run in done) / rounds for runner, done in runs.items()}
    return {**runs, "same_docs": len({run["docs_sha256"] for done in runs.values() for run in done}) == 1,
            "dask_over_processes_mb_per_s": round(mean["dask"] / mean["processes"], 3),
            "dask_over_processes_by_round": [round(r, 3) for r in by_round],
            "dask_cpu_over_processes_cpu_by_round": [round(runs["dask"][r]["cpu_s"] / runs["processes"][r]["cpu_s"], 3)
                                                     for r in range(rounds)]}


def runners_main(pages: int, rounds: int, workers: int, json_out: Path | None) -> None:
    """The runners alone, on a generated site of `pages` pages, in more rounds than --scale runs."""
    from tests.big_site import build_big_site

    tmp = Path(tempfile.mkdtemp(prefix="memlm-bench-runners-"))
    paths = build_big_site(tmp / "site", pages)
    crawl = run_stage(["crawl", str(tmp / "site"), str(tmp / "crawl"), str(len(paths))])
    sample = first_pages(tmp / "crawl" / "pages.jsonl", tmp / "sample.jsonl", pages)
    result = {"cores": os.cpu_count(), "workers": workers, "site_files": len(paths), "crawl": crawl,
              "note": "each clean in its own process; the Dask runner's local cluster starts inside the timing, "
                      "the Prefect API before it (as in a flow run)",
              "runners": compare_runners(sample, tmp, workers, rounds)}
    write_json(json_out, result)
    print_runners_table(result["runners"], pages)


def print_runners_table(runners: dict, pages: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cleaning {pages:,} generated pages on {runners['processes'][0]['workers']} workers")
    for col in ("round", "runner", "seconds", "MB/s", "CPU s", "Dask / processes MB/s", "Dask / processes CPU"):
        table.add_column(col, justify="right")
    for r, (ratio, cpu) in enumerate(zip(runners["dask_over_processes_by_round"],
                                         runners["dask_cpu_over_processes_cpu_by_round"])):
        for runner in ("processes", "dask"):
            run = runners[runner][r]
            dask = runner == "dask"
            table.add_row(str(r + 1), runner, f"{run['seconds']:.1f}", f"{run['mb_per_s']:.3f}", f"{run['cpu_s']:.1f}",
                          f"{ratio:.3f}" if dask else "", f"{cpu:.3f}" if dask else "")
    Console(width=120).print(table)
    print(f"Dask / processes, mean MB/s: {runners['dask_over_processes_mb_per_s']}x; "
          f"same documents: {runners['same_docs']}")


def print_task_cost_table(cost: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"one Prefect task run on a local Dask cluster of {cost['workers']} workers "
                        f"({cost['tasks']} runs)")
    table.add_column("process")
    table.add_column("CPU ms a task run", justify="right")
    for role, ms in [*cost["cpu_ms_per_task_run"].items(), ("all", cost["cpu_ms_per_task_run_total"])]:
        table.add_row(role, f"{ms:.1f}")
    Console(width=120).print(table)


def print_scale_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"generated sites on 127.0.0.1, {result['workers']} cleaning workers")
    for col in ("site files", "stage", "pages", "seconds", "pages/s", "peak RSS (MiB)"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for size in result["sizes"].values():
        for stage in ("crawl", "clean"):
            row = size[stage]
            table.add_row(f"{size['files']:,}", stage, f"{row['pages']:,}", f"{row['seconds']:.1f}",
                          f"{row['pages_per_s']:.1f}", f"{row['peak_rss_mb']:.1f}")
    Console(width=120).print(table)
    for stage, ratio in result["ratios_largest_over_smallest"].items():
        print(f"{stage}: largest over smallest site: peak RSS {ratio['peak_rss']}x, pages/s {ratio['pages_per_s']}x")


def main() -> None:
    if sys.argv[1:2] == ["--stage"]:
        return stage_main(sys.argv[2:])
    from rich.console import Console
    from rich.table import Table

    from crawlers.config import DEFAULT_SITE_DIR, CrawlConfig
    from crawlers.site_server import serve_site

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site-dir", type=Path, default=DEFAULT_SITE_DIR)
    parser.add_argument("--max-pages", type=int, default=600)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--skip-plain", action="store_true", help="do not run the plain Scrapy crawl")
    parser.add_argument("--scale", type=int, nargs="+", metavar="PAGES",
                        help="instead: crawl and clean generated sites of these sizes (see the module's doc)")
    parser.add_argument("--runners", type=int, metavar="PAGES",
                        help="instead: both cleaning runners on a generated site of PAGES pages, in --rounds")
    parser.add_argument("--rounds", type=int, default=3, help="rotated rounds of the runners at --runners")
    parser.add_argument("--workers", type=int, default=2, help="cleaning workers at --scale and --runners")
    parser.add_argument("--sample-pages", type=int, default=1000,
                        help="pages of the smallest site cleaned by both runners and timed step by step")
    parser.add_argument("--entry-sizes", type=int, metavar="ENTRIES",
                        help="instead: bytes per entry of cleaning's line counts and duplicate indexes")
    parser.add_argument("--task-cost", type=int, metavar="TASKS",
                        help="instead: CPU time of one Prefect task run on memlm's Dask cluster, by process")
    args = parser.parse_args()
    if args.task_cost:
        cost = task_cost(args.task_cost, args.workers)
        write_json(args.json, cost)
        return print_task_cost_table(cost)
    if args.entry_sizes:
        sizes = entry_sizes(args.entry_sizes)
        table = Table(title=f"what cleaning keeps per entry ({args.entry_sizes:,} entries, tracemalloc)")
        for col in ("structure", "bytes an entry", "peak while built"):
            table.add_column(col, justify="left" if col == "structure" else "right")
        for name, row in sizes.items():
            if isinstance(row, dict):
                table.add_row(name, f"{row['bytes_per_entry']:.1f}", f"{row['peak_bytes_per_entry']:.1f}")
        Console(width=120).print(table)
        print(json.dumps(sizes, indent=2))
        write_json(args.json, sizes)
        return
    if args.runners:
        return runners_main(args.runners, args.rounds, args.workers, args.json)
    if args.scale:
        return scale_main(args.scale, args.json, args.workers, args.sample_pages)
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
    write_json(args.json, result)


if __name__ == "__main__":
    main()
