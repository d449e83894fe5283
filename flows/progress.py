"""Progress bars for long stages (rich), as callbacks the stage functions take."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator:
    """Yields `update(done, total, info=None)`; `info` (a dict) is shown after the bar."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total, info="")

        def update(done: int, total: int | None = None, info: dict | None = None) -> None:
            text = "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in (info or {}).items())
            bar.update(task, completed=done, total=total, info=text)

        yield update
