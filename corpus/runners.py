"""Where the cleaning passes run: worker processes on this machine (`clean.runner: processes`), or a Dask
cluster through Prefect's Dask task runner (`clean.runner: dask`), an existing one at `clean.dask_address`
or a local one. Either way a pass is a function over chunks of records, and the results come back in
the order of the chunks, so that the parent settles duplicates in page order and the documents are the
same whatever ran them.

The runner cuts the pages into chunks. The processes runner sends `clean.batch_size` pages at a time (a
chunk costs a pickle there). On Dask each chunk is a shard and one Prefect task, and a Prefect task run
costs about 0.16 s of CPU, 0.1 of it in its worker (`bench/data.py --task-cost`; more for a
worker's first), so shards are large: `clean.shard_pages` pages, or by default guided sizes (see
`shard_size`): small ones first, one per worker, so that every worker starts at once; then growing to
1/(2 x workers) of the pages not yet sent; small ones again last, so that no worker idles long at the end
of a pass waiting for another's last shard. On 2 workers that is 16 shards a pass of 10,000 pages and 27
of 100,000 (more when `clean.shard_chars` cuts shards short). A shard never
holds more than `clean.shard_chars` characters of HTML or text (what the parent, the scheduler and a
worker hold of it), and at most two shards per Dask worker are in flight, so that the parent holds a
bounded number of pages."""
from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from functools import partial

from corpus.config import CleanConfig
from corpus.workers import ensure_worker, run_chunk, start_dedicated_worker, start_worker

Chunk = list
# run(step, items, boilerplate): the step's results per chunk of the items, in the order of the items.
RunPass = Callable[[Callable[[Chunk], list], Iterable[dict], frozenset], Iterator[list]]
# A guided shard is at most 1/(GUIDED_SHARE * workers) of the pages left (and at most the pages sent
# so far), and at least the smaller of SMALLEST_SHARD_PAGES and 1/(SMALLEST_SHARE * workers) of the
# pass's pages, never under a batch.
GUIDED_SHARE = 2
SMALLEST_SHARE = 16
SMALLEST_SHARD_PAGES = 256


def workers_of(config: CleanConfig) -> int:
    return config.workers or os.cpu_count() or 1


def shard_size(config: CleanConfig, pages: int, workers: int) -> Callable[[int], int]:
    """Pages of the next Dask shard of a pass over `pages`, given how many were sent: `clean.shard_pages`,
    or guided. Guided, each worker's first shard is the smallest, so that every worker starts as soon as the
    parent has read a few pages (it reads a shard whole before sending it); then a shard is at most the
    pages sent so far (doubling) and 1/(2 x workers) of the pages left; the last ones are the smallest
    again, so that the workers end the pass together. The smallest is bounded in pages, not a share of the
    pass, lest the wait at a pass's start and end grow with the corpus."""
    if config.shard_pages:
        return lambda sent: config.shard_pages
    smallest = max(config.batch_size, min(SMALLEST_SHARD_PAGES, math.ceil(pages / (workers * SMALLEST_SHARE))))

    def size(sent: int) -> int:
        if sent < workers * smallest:
            return smallest
        return max(smallest, min(sent, math.ceil((pages - sent) / (workers * GUIDED_SHARE))))

    return size


def chunks(items: Iterable[dict], size: Callable[[int], int], max_chars: float = math.inf) -> Iterator[Chunk]:
    """`items` in chunks of `size(items already chunked)` items, a chunk cut early when its HTML and text
    pass `max_chars`."""
    chunk: Chunk = []
    chars = sent = 0
    pages = size(0)
    for item in items:
        chunk.append(item)
        chars += _chars_of(item)
        if len(chunk) == pages or chars >= max_chars:
            yield chunk
            sent += len(chunk)
            chunk, chars, pages = [], 0, size(sent)
    if chunk:
        yield chunk


def _chars_of(item: dict) -> int:
    """A page's HTML (pass 1) or an extracted record's text (pass 2)."""
    return len(item.get("html") or "") + sum(len(block[1]) for block in item.get("blocks") or ())


@contextlib.contextmanager
def pass_runner(config: CleanConfig, pages: int) -> Iterator[RunPass]:
    """A function that maps a pass over the `pages` items, in chunks; the workers start once, for both passes."""
    if config.runner == "dask":
        with _dask_runner(config, pages) as run:
            yield run
    elif workers_of(config) > 1:
        with multiprocessing.get_context("spawn").Pool(workers_of(config), start_dedicated_worker, (config,)) as pool:
            yield lambda step, items, boilerplate=frozenset(): pool.imap(partial(run_chunk, step, boilerplate),
                                                                         chunks(items, lambda sent: config.batch_size))
    else:
        start_worker(config)
        yield lambda step, items, boilerplate=frozenset(): map(partial(run_chunk, step, boilerplate),
                                                               chunks(items, lambda sent: config.batch_size))


class Unvisited:
    """A task parameter that Prefect and Dask pass on without looking inside. Prefect walks every list,
    dict and dataclass of a task's parameters in search of futures, in this process and again in the
    worker, and over a shard's pages that walk took longer than the shard's work. Its own `quote` and
    `opaque` annotations, which should stop the walk, reach a Dask worker as plain tuples (Prefect 3.9,
    prefect-dask 0.3), so they cannot be used; a frozenset (the boilerplate) is not walked. Dask names a
    task by a hash of its arguments (prefect-dask submits with pure=True); a shard's name is drawn once
    instead, since a Prefect task run's arguments hold its own random id anyway."""

    __slots__ = ("value", "token")

    def __init__(self, value):
        self.value = value
        self.token = uuid.uuid4().hex

    def __dask_tokenize__(self) -> str:
        return self.token


def clean_shard(step: Callable[[Chunk], list], shard: Unvisited, config: CleanConfig,
                boilerplate: frozenset[bytes]) -> list:
    """One shard of a pass on a Dask worker (the body of the Prefect task `clean-shard`)."""
    ensure_worker(config, boilerplate)
    return step(shard.value)


@contextlib.contextmanager
def _dask_runner(config: CleanConfig, pages: int) -> Iterator[RunPass]:
    from distributed import Client
    from prefect import task
    from prefect.cache_policies import NO_CACHE
    from prefect_dask import DaskTaskRunner

    shard_task = task(clean_shard, name="clean-shard", cache_policy=NO_CACHE, persist_result=False)
    with contextlib.ExitStack() as stack:
        address = config.dask_address or stack.enter_context(local_cluster(workers_of(config)))
        with Client(address) as client:
            addresses = list(client.scheduler_info()["workers"])
            if config.dask_address is None:
                # Workers of our own: spaCy without torch, as the processes runner's. A task on each (not
                # client.run, which would hold the worker's event loop for the import).
                client.gather([client.submit(start_dedicated_worker, config, workers=[address], pure=False)
                               for address in addresses])
        workers = max(len(addresses), 1)
        runner = stack.enter_context(DaskTaskRunner(address=address))

        def run(step: Callable[[Chunk], list], items: Iterable[dict],
                boilerplate: frozenset[bytes] = frozenset()) -> Iterator[list]:
            shards = chunks(items, shard_size(config, pages, workers), config.shard_chars)
            futures: deque = deque()

            def top_up() -> None:
                while len(futures) < 2 * workers and (shard := next(shards, None)) is not None:
                    futures.append(runner.submit(shard_task, parameters={
                        "step": step, "shard": Unvisited(shard), "config": config, "boilerplate": boilerplate}))

            top_up()
            while futures:
                done = futures.popleft().result()
                top_up()  # before the caller takes its time over `done`, lest a worker run out of shards
                yield done

        yield run


@contextlib.contextmanager
def local_cluster(workers: int) -> Iterator[str]:
    """A Dask cluster of `workers` single-threaded processes on this machine, for memlm alone; its address."""
    import dask
    from distributed import LocalCluster

    # Dask's MALLOC_TRIM_THRESHOLD_ for its workers turns off glibc's adaptive mmap threshold, so that
    # every large numpy or spaCy buffer is mapped and unmapped afresh: 9.8 s of system time against 3.8
    # without it, cleaning 10,000 pages on 2 workers (1.9 on the processes runner; timed by hand). Its
    # statistical profiler samples each worker's stack every 10 ms: 8% of a shard's time (a profile).
    nanny_sets = list(dask.config.get("distributed.nanny.pre-spawn-environ"))
    # The workers report to this process's Prefect API (a temporary server if none is set), instead of each
    # starting a temporary server of its own.
    api_url = prefect_api_url()
    with dask.config.set({"distributed.worker.profile.enabled": False,
                          "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}), \
            _variables_kept([*nanny_sets, "PYTHONHASHSEED"]) as restore, \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                         env={"PREFECT_API_URL": api_url}) as cluster:
        restore()
        yield cluster.scheduler_address


@contextlib.contextmanager
def _variables_kept(names: list[str]) -> Iterator[Callable[[], None]]:
    """Put these environment variables of this process back as they were, when called and at the end: a
    Dask nanny sets its workers' variables (OMP_NUM_THREADS=1, PYTHONHASHSEED...) in its own process as it
    starts them, and every process started from here afterwards would inherit them."""
    saved = {name: os.environ.get(name) for name in names}

    def restore() -> None:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    try:
        yield restore
    finally:
        restore()


def prefect_api_url() -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url)
