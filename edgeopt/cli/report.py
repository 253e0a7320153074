"""``edgeopt report`` and ``edgeopt select``: thin layers over :mod:`edgeopt.report.html` and :mod:`edgeopt.ship.select`.
Registered on the main group in ``edgeopt.cli`` (``COMMANDS``)."""

from __future__ import annotations

import click

from edgeopt.cli.common import echo, emit_json, handle_errors


@click.command(name="report")
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False),
              help="Folder to write into (default: OUT/report).")
@click.option("--json", "json_out", is_flag=True, help="Print the paths written as JSON.")
@handle_errors
def report_cmd(out, output, json_out):
    """Write OUT/report/report.md and one self-contained report.html (plots embedded) from OUT's manifest."""
    from edgeopt.report.html import report

    res = report(out, output)
    if json_out:
        emit_json(res)
        return
    echo(f"report: {res['html']} (self-contained)")
    echo(f"        {res['markdown']} (+ {len(res['images'])} PNG files beside it)")


@click.command(name="select")
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--max-drop", type=float, help="Largest accuracy drop allowed, in points below the PyTorch baseline.")
@click.option("--p99-ms", type=float, help="Largest p99 latency allowed, in ms, at --batch.")
@click.option("-t", "--target", help="Only this target's artifacts.")
@click.option("--max-size-mb", type=float, help="Largest model size on disk, in MB.")
@click.option("--min-cosine", type=float, help="Smallest parity cosine against PyTorch allowed.")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch the latency figures are read at.")
@click.option("--json", "json_out", is_flag=True, help="Print the selection (or why nothing qualified) as JSON.")
@handle_errors
def select_cmd(out, max_drop, p99_ms, target, max_size_mb, min_cosine, batch, json_out):
    """Pick the fastest artifact in OUT that meets every budget; exit 9 when none does (a CI gate)."""
    from edgeopt.ship.select import NoArtifactQualifiesError, select

    try:
        res = select(out, max_drop=max_drop, p99_ms=p99_ms, target=target, max_size_mb=max_size_mb,
                     min_cosine=min_cosine, batch=batch)
    except NoArtifactQualifiesError as exc:
        if json_out:
            emit_json(exc.result)
        raise
    if json_out:
        emit_json(res)
        return
    print_selection(res)


def print_selection(res: dict) -> None:
    from edgeopt.report.tables import fit_table, terminal_width, wrap

    b = res["batch"]
    width = terminal_width()

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    rows, notes = [], []
    for c in res["candidates"]:
        verdict = "selected" if c["id"] == res["selected"] else ("fits, slower" if c["qualifies"] else "out")
        note = ""
        judged = c.get("drop_vs_fp32") or {}
        why = [*c["reasons"]] + ([f"judged vs FP32: drop {judged['points']:.2f} points"
                                  + (f" ({judged['low']:.2f}..{judged['high']:.2f})" if "low" in judged else "")
                                  + f", {judged.get('decision')}"]
                                 if judged and c["precision"] != "fp32" else [])
        if why:
            notes.append(f"[{len(notes) + 1}] {c['id']}: {'; '.join(why)}")
            note = f"[{len(notes)}]"
        rows.append([c["id"], verdict, f(c["median_ms"], ".3f"), f(c["p99_ms"], ".3f"), f(c["drop"], "+.2f"),
                     f(c["cosine"], ".6f"), f(c["size_mb"], ".2f"), note])
    headers = ["artifact", "verdict", f"b{b} ms", f"b{b} p99", "drop", "cosine", "MB", "why"]
    echo(f"selection at batch {b}")
    for line in fit_table(headers, rows, width, optional=("MB", "cosine"),
                          right={f"b{b} ms", f"b{b} p99", "drop", "cosine", "MB"}):
        echo(line)
    for n in notes:
        for line in wrap(n, width, "    "):
            echo(line)
    echo(f"selected: {res['selected']}")


COMMANDS = (report_cmd, select_cmd)
