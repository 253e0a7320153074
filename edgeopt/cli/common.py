"""What every ``edgeopt`` command shares: the error handler, the JSON printer, the progress reporter and the
batch-list parser."""

from __future__ import annotations

import json
import sys
import traceback
from functools import wraps
from pathlib import Path

import click

from edgeopt.errors import EdgeoptError, UserInputError
from edgeopt.core.untrusted import printable_lines


def echo(text="", err: bool = False, indent: str = "    ") -> None:
    """click.echo, word-wrapped to the terminal's width when writing to a terminal (or when $COLUMNS says
    one): a value is never split, and a continuation line is indented below its first. Piped, lines stay whole
    (for grep and logs)."""
    import os

    from edgeopt.report.tables import terminal_width, wrap

    stream = sys.stderr if err else sys.stdout
    if not (os.environ.get("COLUMNS") or getattr(stream, "isatty", lambda: False)()):
        click.echo(text, err=err)
        return
    width = terminal_width()
    for part in str(text).split("\n"):
        lead = part[:len(part) - len(part.lstrip())]
        for line in (wrap(part, width, lead + indent) if len(part) > width else [part]):
            click.echo(line, err=err)


def emit_json(obj) -> None:
    from edgeopt.core.fsutil import json_default

    click.echo(json.dumps(obj, indent=2, default=json_default))


def stdout_guard(json_out: bool):
    """With --json, stdout carries the JSON alone: whatever a framework prints while we work goes to stderr."""
    import contextlib

    return contextlib.redirect_stdout(sys.stderr) if json_out else contextlib.nullcontext()


def handle_errors(fn):
    """User mistakes become one clear paragraph and an exit code; tracebacks only with --verbose."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        try:
            _check_path_encoding(kwargs)
            return fn(*args, **kwargs)
        except EdgeoptError as exc:  # messages may quote untrusted names: control characters are shown escaped
            click.echo(f"error: {printable_lines(exc.problem)}", err=True)
            if exc.fix:
                click.echo(f"fix: {printable_lines(exc.fix)}", err=True)
            if (ctx.obj or {}).get("verbose"):
                traceback.print_exc()
            sys.exit(exc.exit_code)
        except OSError as exc:  # a write outside staged_dir/write_*_atomic hit a full disk
            from edgeopt.core.fsutil import disk_full_error, enospc_in, unwritable_error

            if enospc_in(exc) is None:
                unwritable = unwritable_error(exc)
                if unwritable is None:
                    raise
                click.echo(f"error: {printable_lines(unwritable.problem)}", err=True)
                click.echo(f"fix: {unwritable.fix}", err=True)
                sys.exit(unwritable.exit_code)
            full = disk_full_error(exc, Path(exc.filename).parent if exc.filename else Path.cwd())
            click.echo(f"error: {full.problem}", err=True)
            click.echo(f"fix: {full.fix}", err=True)
            sys.exit(full.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing half-written was kept; run the same command again to resume.", err=True)
            sys.exit(130)

    return wrapper


def _check_path_encoding(kwargs: dict) -> None:
    """Refuse a path argument that is not valid UTF-8 (a folder name from another encoding): Python keeps it
    as surrogate escapes, and the backends' native code (ONNX Runtime, OpenVINO, onnx) cannot open such paths,
    which used to surface as a wrong cause ("the exported ONNX fails onnx.checker") or a traceback."""
    for name, value in kwargs.items():
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(v, (str, Path)):
                try:
                    str(v).encode("utf-8")
                except UnicodeEncodeError:
                    from edgeopt.errors import UserInputError

                    raise UserInputError(
                        f"The path {printable_lines(str(v).encode('utf-8', 'backslashreplace').decode())} "
                        f"(given as {name}) is not valid UTF-8; the runtimes cannot open files there.",
                        "Rename the folder (or choose another) with a UTF-8 name.") from None


def chatter_to_log(output):
    """Third-party output during a build goes to OUT/logs/build.log; -v shows it."""
    from edgeopt.report.progress import capture_chatter

    o = click.get_current_context().find_root().obj or {}
    return capture_chatter(output, show=o.get("verbose", False))


def reporter():
    from edgeopt.report.progress import Reporter

    o = click.get_current_context().find_root().obj or {}
    return Reporter(quiet=o.get("quiet", False), verbose=o.get("verbose", False))


def parse_batches(text: str) -> tuple[int, ...]:
    """``--batch 1,8`` -> (1, 8); anything else is a clear error."""
    try:
        out = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        out = ()
    if not out or any(b < 1 for b in out):
        raise UserInputError(f"--batch {text!r} is not a list of batch sizes.", "Write --batch 1,8.")
    return out
