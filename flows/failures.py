"""How a stage that stopped reaches the person who ran it. A known reason (an empty split, a clean that kept
nothing, a site that did not answer, a refused setting) is one line with its cause and fix; Prefect's
task and flow tracebacks of the failure go to the run's log file instead of the terminal. Anything else
is a bug and keeps its traceback."""
from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

RUN_LOG = "memlm.log"
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


# Errors whose message already names the cause and the fix. Only memlm's own: a ValueError or a missing
# file from anywhere else is a bug and keeps its traceback.
EXPECTED_FAILURES = (
    "corpus.clean.CleanError", "corpus.split.EmptySplitError", "crawlers.run.CrawlError",
    "crawlers.site_server.SiteServerError", "flows.config.ConfigError", "flows.servers.ServerError",
    "flows.stages.MissingStageError", "model.checkpoint.CheckpointError", "model.data.ShortTokenFileError",
    "model.hardware.DeviceError", "model.launch.LaunchError", "model.pyfunc.RegisteredModelError",
    "model.techniques.TechniqueError", "model.train.MemoryBudgetError",
)


def expected_failures() -> tuple[type[BaseException], ...]:
    """The expected failures' classes among the modules this process has imported: an error can only have
    been raised by a class whose module was loaded, and importing the rest (torch, DCP: seconds) would
    only delay the one line that says what went wrong."""
    loaded = []
    for dotted in EXPECTED_FAILURES:
        module, name = dotted.rsplit(".", 1)
        if module in sys.modules:
            loaded.append(getattr(sys.modules[module], name))
    return tuple(loaded)


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
