"""Progress and messages on stderr (stdout stays clean for --json), mirrored into OUT/logs/."""

from __future__ import annotations

import time
from pathlib import Path


class Reporter:
    def __init__(self, quiet: bool = False, verbose: bool = False):
        self.quiet, self.verbose = quiet, verbose
        self._log = None
        self._t0 = time.perf_counter()
        self._console = None
        self._progress = None
        self._task = None

    def start_progress(self, total: int) -> None:
        """A progress bar over ``total`` steps on an interactive terminal (log lines elsewhere)."""
        if self.quiet or not self.console.is_terminal:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                  TimeElapsedColumn(), console=self.console, transient=True)
        self._task = self._progress.add_task("edgeopt", total=total)
        self._progress.start()

    def stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = self._task = None

    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        return self._console

    def attach_log(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(path, "a", encoding="utf-8")
        self._write(f"=== edgeopt run {time.strftime('%Y-%m-%d %H:%M:%S')}")

    def detach_log(self) -> None:
        self.stop_progress()
        if self._log:
            self._log.close()
            self._log = None

    def record(self, line: str) -> None:
        """Into the log file only."""
        self._write(line)

    def _write(self, line: str) -> None:
        if self._log:
            try:
                self._log.write(line + "\n")
                self._log.flush()
            except OSError:  # a full disk must not turn a clear error into a traceback; stop logging
                self._log = None

    def _stamp(self) -> str:
        return f"{time.perf_counter() - self._t0:6.1f}s"

    def step(self, msg: str) -> None:
        self._write(f"[{self._stamp()}] {msg}")
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=msg[:60])
        if not self.quiet:
            from rich.text import Text

            self.console.print(Text.assemble((self._stamp(), "dim"), " ", (msg, "bold")))

    def info(self, msg: str) -> None:
        self._write(f"[{self._stamp()}]   {msg}")
        if not self.quiet:
            self.console.print(f"         {msg}", markup=False)

    def warn(self, msg: str) -> None:
        self._write(f"WARNING {msg}")
        from rich.text import Text

        self.console.print(Text.assemble(("warning: ", "yellow"), msg))

    def error(self, msg: str) -> None:
        self._write(f"ERROR {msg}")
        from rich.text import Text

        self.console.print(Text.assemble(("error: ", "red"), msg))
