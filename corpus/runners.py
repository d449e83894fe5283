"""Where the cleaning passes run: worker processes on this machine (`clean.runner: processes`), or a Dask
cluster through Prefect's Dask task runner (`clean.runner: dask`), an existing one at `clean.dask_address`
or a local one. Either way a pass is a function over chunks of records, and the results come back in
the order of the chunks, so that the parent settles duplicates in page order and the documents are the
same whatever ran them.

The runner cuts the pages into chunks. The processes runner sends `clean.batch_size` pages at a time (a
chunk costs a pickle there). On Dask each chunk is a shard and one Prefect task, and a Prefect task run
costs about half a second of calls to the Prefect API (0.45 s measured on this 2-core machine), so shards
are large: `clean.shard_pages` pages, or by default the pass's pages over four shards per Dask worker
(four, so that the workers end a pass together), and never more than `clean.shard_chars` characters of
HTML or text (what the parent, the scheduler and a worker hold of a shard). At most two shards per Dask
worker are in flight, so that the parent holds a bounded number of pages."""
from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from functools import partial

from corpus.config import CleanConfig
from corpus.workers import ensure_worker, run_chunk, start_dedicated_worker, start_worker

Chunk = list
# run(step, items, boilerplate): the step's results per chunk of the items, in the order of the items.
RunPass = Callable[[Callable[[Chunk], list], Iterable[dict], frozenset], Iterator[list]]
SHARDS_PER_WORKER = 4


def workers_of(config: CleanConfig) -> int:
    return config.workers or os.cpu_count() or 1


def shard_pages(config: CleanConfig, pages: int, workers: int) -> int:
    """Pages per Dask shard: `clean.shard_pages`, or four shards per worker for a pass over `pages`."""
    return config.shard_pages or max(config.batch_size, math.ceil(pages / (workers * SHARDS_PER_WORKER)))


def chunks(items: Iterable[dict], pages: int, max_chars: float = math.inf) -> Iterator[Chunk]:
    """`items` in chunks of `pages`, a chunk cut early when its HTML and text pass `max_chars`."""
    chunk: Chunk = []
    chars = 0
    for item in items:
        chunk.append(item)
        chars += _chars_of(item)
        if len(chunk) == pages or chars >= max_chars:
            yield chunk
            chunk, chars = [], 0
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
                                                                         chunks(items, config.batch_size))
    else:
        start_worker(config)
        yield lambda step, items, boilerplate=frozenset(): map(partial(run_chunk, step, boilerplate),
                                                               chunks(items, config.batch_size))


def clean_shard(step: Callable[[Chunk], list], shard: Chunk, config: CleanConfig,
                boilerplate: frozenset[bytes]) -> list:
    """One shard of a pass on a Dask worker (the body of the Prefect task `clean-shard`)."""
    ensure_worker(config, boilerplate)
    return step(shard)


@contextlib.contextmanager
def _dask_runner(config: CleanConfig, pages: int) -> Iterator[RunPass]:
    from distributed import Client, LocalCluster
    from prefect import task
    from prefect.cache_policies import NO_CACHE
    from prefect_dask import DaskTaskRunner

    shard_task = task(clean_shard, name="clean-shard", cache_policy=NO_CACHE, persist_result=False)
    with contextlib.ExitStack() as stack:
        address = config.dask_address
        if address is None:
            # The workers report to this process's Prefect API (a temporary server if none is set),
            # instead of each starting a temporary server of its own.
            cluster = stack.enter_context(LocalCluster(n_workers=workers_of(config), threads_per_worker=1,
                                                       processes=True, dashboard_address=None,
                                                       env={"PREFECT_API_URL": prefect_api_url()}))
            address = cluster.scheduler_address
        with Client(address) as client:
            addresses = list(client.scheduler_info()["workers"])
            if config.dask_address is None:
                # Workers of our own: spaCy without torch, as the processes runner's. A task on each (not
                # client.run, which would hold the worker's event loop for the import).
                client.gather([client.submit(start_dedicated_worker, config, workers=[address], pure=False)
                               for address in addresses])
        workers = max(len(addresses), 1)
        runner = stack.enter_context(DaskTaskRunner(address=address))
        per_shard = shard_pages(config, pages, workers)

        def run(step: Callable[[Chunk], list], items: Iterable[dict],
                boilerplate: frozenset[bytes] = frozenset()) -> Iterator[list]:
            futures: deque = deque()
            for shard in chunks(items, per_shard, config.shard_chars):
                futures.append(runner.submit(shard_task, parameters={
                    "step": step, "shard": shard, "config": config, "boilerplate": boilerplate}))
                if len(futures) >= 2 * workers:
                    yield futures.popleft().result()
            while futures:
                yield futures.popleft().result()

        yield run


def prefect_api_url() -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url)
