"""Progress and messages on stderr (stdout stays clean for --json), mirrored into OUT/logs/."""

from __future__ import annotations

import time
from pathlib import Path


TERMINAL = None  # while third-party output is captured (capture_chatter): where edgeopt's own messages go


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

            self._console = (Console(file=TERMINAL, highlight=False) if TERMINAL is not None
                             else Console(stderr=True, highlight=False))
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

    @property
    def width(self) -> int:
        from edgeopt.report.tables import terminal_width

        return terminal_width()

    def step(self, msg: str) -> None:
        """One line per step, cut to the terminal's width (the log keeps it whole)."""
        from edgeopt.report.tables import shorten

        self._write(f"[{self._stamp()}] {msg}")
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=msg[:40])
        if not self.quiet:
            from rich.text import Text

            stamp = self._stamp()
            self.console.print(Text.assemble((stamp, "dim"), " ", (shorten(msg, self.width - len(stamp) - 1), "bold")),
                               soft_wrap=True)

    def info(self, msg: str) -> None:
        from edgeopt.report.tables import shorten

        self._write(f"[{self._stamp()}]   {msg}")
        if not self.quiet:
            self.console.print("  " + shorten(msg, self.width - 2), markup=False, highlight=False,
                               soft_wrap=True)

    def _wrapped(self, label: str, style: str, msg: str) -> None:
        """Warnings and errors in full, word-wrapped: a value is never split across lines."""
        from rich.text import Text

        from edgeopt.report.tables import wrap

        lines = wrap(label + msg, self.width, indent="  ")
        self.console.print(Text.assemble((label, style), lines[0][len(label):]), soft_wrap=True)
        for line in lines[1:]:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def warn(self, msg: str) -> None:
        self._write(f"WARNING {msg}")
        self._wrapped("warning: ", "yellow", msg)

    def error(self, msg: str) -> None:
        self._write(f"ERROR {msg}")
        self._wrapped("error: ", "red", msg)


class capture_chatter:
    """Third-party output during a build (torch's warnings, NNCF's progress bars and errors, C++ logs on the
    process' stdout/stderr) goes into ``OUT/logs/build.log`` instead of the terminal; edgeopt's own messages
    still reach the terminal (the reporter writes to ``TERMINAL``). With ``show`` (``-v``) it is also printed
    on stderr when the run ends.

    File-descriptor level, so libraries that print from C++ or hold on to the original streams are caught
    too: fds 1 and 2, ``sys.stdout`` and ``sys.stderr`` point at a temporary file for the duration, and so do
    Python warnings and last-resort log records; edgeopt's messages go to the old stderr (``TERMINAL``).
    """

    def __init__(self, out: str | Path, show: bool = False):
        self.out, self.show = Path(out), show

    def __enter__(self):
        import logging
        import os
        import sys
        import tempfile
        import warnings

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        self._tmp = tempfile.TemporaryFile()
        self._saved_fds = {fd: os.dup(fd) for fd in (1, 2)}
        self._saved = (sys.stdout, sys.stderr, warnings.showwarning, logging.lastResort)
        # edgeopt's messages keep going where stderr went: the same stream object unless it is fd 2 itself.
        err = sys.stderr
        if _fileno(err) == 2:
            err = open(os.dup(2), "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                       errors="replace")
            self._own_err = err
        else:
            self._own_err = None
        for fd in (1, 2):
            os.dup2(self._tmp.fileno(), fd)
        self._cap = open(os.dup(self._tmp.fileno()), "w", buffering=1, encoding="utf-8", errors="replace")
        global TERMINAL
        self._terminal = TERMINAL
        sys.stdout = sys.stderr = self._cap  # a library that looks up sys.stderr later writes into the log
        TERMINAL = err

        def showwarning(message, category, filename, lineno, file=None, line=None):
            self._cap.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = showwarning
        logging.lastResort = logging.StreamHandler(self._cap)
        return self

    def __exit__(self, *exc):
        import logging
        import os
        import sys
        import warnings

        try:
            self._cap.flush()
        except (OSError, ValueError):
            pass
        for fd, saved in self._saved_fds.items():
            os.dup2(saved, fd)
            os.close(saved)
        sys.stdout, sys.stderr, warnings.showwarning, logging.lastResort = self._saved
        global TERMINAL
        TERMINAL = self._terminal
        for f in (self._cap, self._own_err):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self._tmp.seek(0)
        text = self._tmp.read().decode("utf-8", "replace")
        self._tmp.close()
        if self.show and text.strip():  # -v: shown as well, after the run's own lines
            sys.stderr.write("--- output of third-party libraries during this run ---\n" + text
                             + ("" if text.endswith("\n") else "\n"))
        log = self.out / "logs" / "build.log"
        if text.strip() and log.parent.is_dir():
            try:
                with open(log, "a", encoding="utf-8") as f:
                    f.write("--- output of third-party libraries during this run (shown with -v) ---\n" + text
                            + ("" if text.endswith("\n") else "\n"))
            except OSError:
                pass
        return False


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
