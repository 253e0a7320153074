"""The comparison report of a sweep: one row per job (model x target x precision) with the figures of its build,
the pick of ``select`` per model, the jobs that were retried or failed and why, and the boards' device results.
Terminal lines (80 columns), Markdown and one self-contained HTML file (the look of ``edgeopt report``)."""

from __future__ import annotations

import json
from pathlib import Path

from edgeopt.core.fsutil import write_text_atomic
from edgeopt.report.html import CSP, STYLE, esc, html_table, md_table
from edgeopt.report.tables import artifact_rows, fit_table, wrap

HEADER = ["model", "artifact", "status", "metric", "drop", "b1 ms", "x torch", "MB", "tries", "node"]
OPTIONAL = ("node", "tries", "MB", "x torch")


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def job_rows(out: Path, summary: dict) -> list[list[str]]:
    rows = []
    for j in summary.get("jobs", []):
        art = None
        if j.get("out") and (Path(out) / j["out"] / "manifest.json").is_file():
            m = json.loads((Path(out) / j["out"] / "manifest.json").read_text())
            art = next((r for r in artifact_rows(m) if r["id"] == j.get("artifact")), None)
        lat = next((r for r in (art or {}).get("latency") or [] if r.get("batch") == 1), None)
        x = ((art or {}).get("speedup") or {}).get("1")
        node = (j.get("where") or {}).get("node") or (j.get("where") or {}).get("host") or "-"
        status = (art or {}).get("status") or j.get("artifact_status") or j.get("status")
        rows.append([j["model"], j.get("artifact") or f"{j['target']}-{j['precision']}", str(status),
                     _num((art or {}).get("accuracy") and art["accuracy"] * 100, ".2f"),
                     _num((art or {}).get("drop"), "+.2f"), _num(lat and lat.get("median_ms"), ".3f"),
                     _num(x, ".2f") + ("x" if x else ""), _num((art or {}).get("size_mb"), ".2f"),
                     str(j.get("attempts") or "-"), str(node)[:8]])
    return rows


def notes(summary: dict) -> list[str]:
    """Selections per model, retried and failed jobs, shared exports, device results."""
    lines = []
    for name, s in (summary.get("models") or {}).items():
        lines.append(f"select {name}: {s['selected']}" if s.get("selected") else f"select {name}: none ({s.get('why')})")
    for j in summary.get("jobs", []):
        if j.get("retried"):
            lines.append(f"retried {j['id']}: {j['retried']}")
        if j.get("status") != "ok":
            lines.append(f"{j.get('status')} {j['id']}: {j.get('problem') or 'not run'}")
        elif j.get("artifact_status") not in (None, "ok") and j.get("reason"):
            lines.append(f"{j['artifact_status']} {j['id']}: {j['reason']}")
    for e in summary.get("exports") or []:
        lines.append(f"export of {', '.join(e['models'])}: {e['status']}"
                     + (f", {e['seconds']:.1f} s, shared by every job of these models" if e.get("seconds") else "")
                     + (f" ({e['problem']})" if e.get("problem") else ""))
    for f in summary.get("farm") or []:
        lat = next((r for r in f.get("latency") or [] if r.get("batch") == 1), None)
        lines.append(f"board {f['board']}: {f.get('job', f['model'])} {f.get('artifact', '')}: {f['status']}"
                     + (f", b1 {lat['median_ms']:.3f} ms" if lat else "") + (f" ({f['problem']})" if f.get("problem") else ""))
    if summary.get("profile", True):
        lines.append("Latencies of different jobs come from different timing runs (jobs that ran side by side on a "
                     "node slowed each other; a build withholds speed-ups it timed on a busy machine).")
    return lines


def sweep_lines(out: Path, summary: dict, width: int | None = 80) -> list[str]:
    title = (f"edgeopt sweep: {summary['name']} ({summary['mode']}, {len(summary.get('jobs', []))} jobs, "
             f"{summary.get('seconds', 0):.0f} s)")
    lines = [*wrap(title, width or 10**6), *fit_table(HEADER, job_rows(out, summary), width, optional=OPTIONAL,
                                                       right=range(3, 9))]
    for i, n in enumerate(notes(summary), 1):
        lines += wrap(f"{i}. {n}", width or 10**6, "   ")
    return lines


def write_sweep_report(out: Path, summary: dict) -> dict:
    out = Path(out)
    rows = job_rows(out, summary)
    title = f"edgeopt sweep: {summary['name']}"
    md = [f"# {title}", "", f"{summary['mode']}, {len(rows)} jobs, {summary.get('seconds', 0):.0f} s, edgeopt "
          f"{summary.get('edgeopt_version')}, {summary.get('created')}.", "", *md_table(HEADER, rows), "",
          *[f"- {n}" for n in notes(summary)], ""]
    html = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>", f"<h1>{esc(title)}</h1>",
            f'<p class="sub">{esc(md[2])}</p>', '<h2 id="jobs">Jobs</h2>', html_table(HEADER, rows, left=3),
            '<h2 id="notes">Selection, retries, failures, devices</h2><ul>',
            *[f"<li>{esc(n)}</li>" for n in notes(summary)], "</ul></body></html>", ""]
    dest = out / "report"
    write_text_atomic(dest / "report.md", "\n".join(md))
    write_text_atomic(dest / "report.html", "\n".join(html))
    return {"markdown": str(dest / "report.md"), "html": str(dest / "report.html")}
