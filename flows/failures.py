"""How a stage that stopped reaches the person who ran it. A known reason (an empty split, a clean that kept
nothing, a site that did not answer, a refused setting) is one line with its cause and fix; Prefect's
task and flow tracebacks of the failure go to the run's log file instead of the terminal. Anything else
is a bug and keeps its traceback."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

RUN_LOG = "memlm.log"
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def expected_failures() -> tuple[type[BaseException], ...]:
    """Errors whose message already names the cause and the fix (imported late: --help stays fast)."""
    from corpus.clean import CleanError
    from corpus.split import EmptySplitError
    from crawlers.run import CrawlError
    from crawlers.site_server import SiteServerError
    from flows.config import ConfigError
    from flows.servers import ServerError
    from flows.stages import MissingStageError
    from model.checkpoint import CheckpointError
    from model.data import ShortTokenFileError
    from model.hardware import DeviceError
    from model.launch import LaunchError
    from model.pyfunc import RegisteredModelError
    from model.techniques import TechniqueError
    from model.train import MemoryBudgetError

    # Only memlm's own: a ValueError or a missing file from anywhere else is a bug and keeps its traceback.
    return (CleanError, EmptySplitError, CrawlError, SiteServerError, ConfigError, ServerError, MissingStageError,
            CheckpointError, ShortTokenFileError, DeviceError, RegisteredModelError, TechniqueError, MemoryBudgetError,
            LaunchError)


class _NotTheFailure(logging.Filter):
    """Lets through everything but the flow and task runs' reports of a failure (memlm reports it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(RUN_LOGGERS):
            return True
        return record.levelno < logging.ERROR and not record.getMessage().startswith("Finished in state Failed")


@contextlib.contextmanager
def failures_to_run_log(run_dir: Path) -> Iterator[Path]:
    """Everything Prefect logs goes to RUN_DIR/memlm.log; the terminal no longer shows failure tracebacks."""
    log_file = Path(run_dir) / RUN_LOG
    log_file.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(log_file, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"))
    prefect_logger = logging.getLogger("prefect")
    consoles = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    quiet = _NotTheFailure()
    prefect_logger.addHandler(to_file)
    for handler in consoles:
        handler.addFilter(quiet)
    try:
        yield log_file
    finally:
        for handler in consoles:
            handler.removeFilter(quiet)
        prefect_logger.removeHandler(to_file)
        to_file.close()
