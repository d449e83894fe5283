"""Where the cleaning passes run: worker processes on this machine (`clean.runner: processes`), or a Dask
cluster through Prefect's Dask task runner (`clean.runner: dask`), an existing one at `clean.dask_address`
or a local one. Either way a pass is a function over chunks of records, and the results come back in
the order of the chunks, so that the parent settles duplicates in page order and the documents are the
same whatever ran them.

On Dask each chunk is a shard of `clean.shard_pages` pages and one Prefect task (Prefect keeps every task
run's state for the whole run: tasks per shard, not per page), and at most two shards per Dask worker
are in flight, so that the parent holds a bounded number of pages."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from functools import partial

from corpus.config import CleanConfig
from corpus.workers import ensure_worker, run_chunk, start_pool_worker, start_worker

Chunk = list
# run(step, chunks, boilerplate): the step's results per chunk, in the order of the chunks.
RunPass = Callable[[Callable[[Chunk], list], Iterable[Chunk], frozenset], Iterator[list]]


def workers_of(config: CleanConfig) -> int:
    return config.workers or os.cpu_count() or 1


def chunk_size(config: CleanConfig) -> int:
    return config.shard_pages if config.runner == "dask" else config.batch_size


@contextlib.contextmanager
def pass_runner(config: CleanConfig) -> Iterator[RunPass]:
    """A function that maps a pass over chunks; the workers start once, for both passes."""
    if config.runner == "dask":
        with _dask_runner(config) as run:
            yield run
    elif workers_of(config) > 1:
        with multiprocessing.get_context("spawn").Pool(workers_of(config), start_pool_worker, (config,)) as pool:
            yield lambda step, chunks, boilerplate=frozenset(): pool.imap(partial(run_chunk, step, boilerplate), chunks)
    else:
        start_worker(config)
        yield lambda step, chunks, boilerplate=frozenset(): map(partial(run_chunk, step, boilerplate), chunks)


def clean_shard(step: Callable[[Chunk], list], shard: Chunk, config: CleanConfig,
                boilerplate: frozenset[bytes]) -> list:
    """One shard of a pass on a Dask worker (the body of the Prefect task `clean-shard`)."""
    ensure_worker(config, boilerplate)
    return step(shard)


@contextlib.contextmanager
def _dask_runner(config: CleanConfig) -> Iterator[RunPass]:
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
            in_flight = 2 * max(len(client.scheduler_info()["workers"]), 1)
        runner = stack.enter_context(DaskTaskRunner(address=address))

        def run(step: Callable[[Chunk], list], shards: Iterable[Chunk],
                boilerplate: frozenset[bytes] = frozenset()) -> Iterator[list]:
            futures: deque = deque()
            for shard in shards:
                futures.append(runner.submit(shard_task, parameters={
                    "step": step, "shard": shard, "config": config, "boilerplate": boilerplate}))
                if len(futures) >= in_flight:
                    yield futures.popleft().result()
            while futures:
                yield futures.popleft().result()

        yield run


def prefect_api_url() -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url)
