"""``edgeopt report OUT``: one Markdown file and one self-contained HTML file from ``OUT/manifest.json``.

The report shows the artifact table (the rows of the terminal summary, :func:`edgeopt.report.tables.artifact_rows`),
latency per artifact (median with p90/p99 whiskers), throughput across the batch sweep, accuracy (or parity
cosine) versus latency with the Pareto frontier, parity figures, and the host/device fingerprint.

The HTML embeds its images as ``data:`` URIs and its CSS inline and refers to nothing outside itself (its
Content-Security-Policy forbids loading anything else), so it can be mailed or archived as one file. The
Markdown refers to the PNG files written beside it. Every file is written atomically.

Figures come from the manifest only. matplotlib is imported when a report is drawn, and used through its
object API (no pyplot, no global backend switch).
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path

from edgeopt.errors import BackendMissingError
from edgeopt.core.fsutil import write_bytes_atomic, write_text_atomic
from edgeopt.core.manifest import load_consistent
from edgeopt.report.tables import (
    artifact_rows,
    energy_at,
    energy_cell,
    has_energy,
    latency_at,
    layer_rows,
    layer_summary,
    median_cell,
    ms,
    power_cell,
    speedup_cell,
    timing_notes,
)
from edgeopt.core.records import Status, records_of

REPORT_DIR = "report"
MARKDOWN = "report.md"
HTML = "report.html"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

BASELINE_COLOR = "#7f7f7f"
FAILED_COLOR = "#d62728"
# tab10 without its grey (the baseline) and red (failed artifacts): one colour per artifact in every plot.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")


@dataclass
class Plot:
    name: str  # file stem: NAME.png beside the Markdown
    title: str
    caption: str
    png: bytes


# ------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------

def report(out_dir: str | Path, output: str | Path | None = None) -> dict:
    """Write ``report.md``, ``report.html`` and the plots' PNG files for the build in ``out_dir``.

    ``output`` is the folder to write into (default ``OUT/report``). Returns the paths written:
    ``{"markdown": ..., "html": ..., "images": [...], "folder": ...}``.
    """
    out = Path(out_dir)
    m = load_consistent(out).data
    dest = Path(output) if output is not None else out / REPORT_DIR
    table = table_rows(m)
    plots = draw_plots(m)
    images = []
    for p in plots:
        write_bytes_atomic(dest / f"{p.name}.png", p.png)
        images.append(dest / f"{p.name}.png")
    md_path, html_path = dest / MARKDOWN, dest / HTML
    write_text_atomic(md_path, render_markdown(m, table, plots))
    write_text_atomic(html_path, render_html(m, table, plots))
    return {"folder": dest, "markdown": md_path, "html": html_path, "images": images}


# ------------------------------------------------------------------------------------------------
# table
# ------------------------------------------------------------------------------------------------

def _num(v, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def batches_of(m: dict) -> list[int]:
    rows = [r for a in records_of(m) for r in a.latency or ()]
    rows += (m.get("baseline") or {}).get("latency") or []
    return sorted({r["batch"] for r in rows})


def metric_name(m: dict) -> str:
    acc = ((m.get("baseline") or {}).get("accuracy")
           or next((a.accuracy for a in records_of(m) if a.accuracy), None) or {})
    return acc.get("metric", "accuracy")


def table_rows(m: dict) -> dict:
    """Header and formatted cells of the artifact table, shared by the Markdown and the HTML."""
    batches = batches_of(m)
    by_id = {a.id: a for a in records_of(m)}
    header = ["artifact", "precision", "status", "size MB", f"{metric_name(m)} %", "drop pt", "parity max abs",
              "parity cosine"]
    energy = has_energy(m)
    for b in batches:
        header += [f"b{b} median ms", f"b{b} p99 ms", f"b{b} vs torch"]
        header += [f"b{b} mW", f"b{b} mJ/inference"] if energy else []
    header.append("notes")
    rows = []
    for row in artifact_rows(m):
        rec = by_id.get(row["id"])
        parity = (rec.parity if rec is not None else None) or {}
        cells = [row["id"], row["precision"], row["status"], _num(row["size_mb"], ".2f"),
                 _num(None if row["accuracy"] is None else row["accuracy"] * 100, ".2f"), _num(row["drop"], "+.2f"),
                 _num(parity.get("max_abs"), ".2e"), _num(parity.get("cosine"), ".6f")]
        for b in batches:
            lat = next((r for r in row["latency"] if r["batch"] == b), None)
            cells += [median_cell(lat), ms(lat and lat.get("p99_ms")), speedup_cell(row, b)]
            cells += [power_cell(lat), energy_cell(lat)] if energy else []
        cells.append(row["note"] or "")
        rows.append({"id": row["id"], "status": row["status"], "cells": cells})
    return {"header": header, "rows": rows, "batches": batches}


# ------------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------------

def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib comes with edgeopt[report]
        raise BackendMissingError("matplotlib", "report", "draw the report's plots") from exc
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # No metadata: the PNG carries no software name or link, only pixels.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def artifact_colors(m: dict) -> dict[str, str]:
    """One colour per artifact id, the same in every plot; grey for the baseline, red for an artifact not ok."""
    colors = {(m.get("baseline") or {}).get("name", "torch-eager-fp32"): BASELINE_COLOR}
    for i, a in enumerate(records_of(m)):
        colors[a.id] = PALETTE[i % len(PALETTE)] if a.ok else FAILED_COLOR
    return colors


def latency_series(m: dict) -> list[dict]:
    """The torch baseline and every artifact that has latency rows."""
    out = []
    base = m.get("baseline")
    if base and base.get("latency"):
        out.append({"id": base["name"], "precision": "fp32", "status": Status.BASELINE, "baseline": True,
                    "latency": base["latency"], "accuracy": (base.get("accuracy") or {}).get("value"), "cosine": 1.0})
    for a in records_of(m):
        if a.latency:
            out.append({"id": a.id, "precision": a.precision, "status": a.status, "baseline": False,
                        "latency": list(a.latency), "accuracy": (a.accuracy or {}).get("value"),
                        "cosine": (a.parity or {}).get("cosine")})
    return out


def draw_plots(m: dict) -> list[Plot]:
    series = latency_series(m)
    colors = artifact_colors(m)
    plots = []
    for draw in (plot_latency, plot_energy, plot_throughput, plot_tradeoff, plot_parity):
        p = draw(m, series, colors)
        if p is not None:
            plots.append(p)
    return plots


def _first_batch(series: list[dict]) -> int | None:
    bs = sorted({r["batch"] for s in series for r in s["latency"]})
    return 1 if 1 in bs else (bs[0] if bs else None)


def plot_latency(m: dict, series: list[dict], colors: dict[str, str]) -> Plot | None:
    b = _first_batch(series)
    if b is None:
        return None
    items = [(s, latency_at(s, b)) for s in series]
    items = [(s, r) for s, r in items if r is not None]
    fig = _figure(8.5, 1.2 + 0.55 * len(items))
    ax = fig.add_subplot()
    ys = list(range(len(items)))[::-1]
    med = [r["median_ms"] for _, r in items]
    ax.barh(ys, med, color=[colors.get(s["id"], FAILED_COLOR) for s, _ in items], height=0.6,
            label="median")
    p90 = [r.get("p90_ms", r["median_ms"]) for _, r in items]
    p99 = [r.get("p99_ms", r["median_ms"]) for _, r in items]
    ax.errorbar(med, ys, xerr=[[0] * len(items), [max(0.0, q - md) for q, md in zip(p99, med)]], fmt="none",
                ecolor="black", elinewidth=1.2, capsize=5, label="p99 whisker")
    ax.plot(p90, ys, linestyle="none", marker="|", markersize=14, markeredgewidth=2.2, color="black", label="p90")
    for y, md, q in zip(ys, med, p99):
        ax.annotate(f"{ms(md)} ms", (q, y), xytext=(8, -4), textcoords="offset points", fontsize=8)
    ax.set_yticks(ys, [s["id"] for s, _ in items])
    ax.set_xlabel(f"latency at batch {b} (ms)")
    ax.set_xlim(0, max(p99) * 1.3 if p99 else 1)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    ax.set_title(f"Latency per artifact, batch {b}")
    return Plot("latency", f"Latency per artifact (batch {b})",
                f"Bars: median; tick: p90; whisker: p99, over the timed runs at batch {b}.", _png(fig))


def plot_energy(m: dict, series: list[dict], colors: dict[str, str]) -> Plot | None:
    """Beside latency: millijoules per inference at the first batch size, each bar labelled with its average
    power; only where the profile measured energy (a Jetson's rails, or RAPL)."""
    b = _first_batch(series)
    items = [(s, energy_at(latency_at(s, b))) for s in series] if b is not None else []
    items = [(s, e) for s, e in items if e is not None]
    if not items:
        return None
    fig = _figure(8.5, 1.2 + 0.55 * len(items))
    ax = fig.add_subplot()
    ys = list(range(len(items)))[::-1]
    mj = [e["mj_per_inference"] for _, e in items]
    ax.barh(ys, mj, color=[colors.get(s["id"], FAILED_COLOR) for s, _ in items], height=0.6)
    for y, (_, e) in zip(ys, items):
        ax.annotate(f"{e['mj_per_inference']:.3g} mJ at {e['mean_mw']:.0f} mW", (e["mj_per_inference"], y),
                    xytext=(8, -4), textcoords="offset points", fontsize=8)
    ax.set_yticks(ys, [s["id"] for s, _ in items])
    ax.set_xlabel(f"energy per inference at batch {b} (mJ)")
    ax.set_xlim(0, max(mj) * 1.6 if max(mj) > 0 else 1)
    ax.grid(axis="x", alpha=0.3)
    power = (m.get("timing") or {}).get("energy") or {}
    mode = (power.get("nvpmodel") or {}).get("name")
    ax.set_title(f"Energy per inference, batch {b}" + (f" (nvpmodel {mode})" if mode else ""))
    return Plot("energy", f"Energy per inference (batch {b})",
                f"Bars: millijoules per inference (per item) over the timed runs at batch {b}, from "
                f"{power.get('source', 'the power readings')}; the label gives the average power.", _png(fig))


def plot_throughput(m: dict, series: list[dict], colors: dict[str, str]) -> Plot | None:
    if not series:
        return None
    fig = _figure(8.5, 4.5)
    ax = fig.add_subplot()
    batches = sorted({r["batch"] for s in series for r in s["latency"]})
    for s in series:
        rows = sorted(s["latency"], key=lambda r: r["batch"])
        ax.plot([r["batch"] for r in rows], [r.get("throughput_per_s") or r["batch"] * 1000.0 / r["median_ms"]
                                             for r in rows], marker="o",
                linestyle="--" if s["baseline"] else "-", label=s["id"], color=colors.get(s["id"], FAILED_COLOR))
    if len(batches) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (items/s, from the median)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Throughput across the batch sweep")
    return Plot("throughput", "Throughput across the batch sweep",
                f"Items per second at batch {', '.join(map(str, batches))} (batch / median latency).", _png(fig))


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Ids of the points (id, latency, quality) that no other point beats on both: lower or equal latency
    and higher or equal quality, one of them strictly."""
    front = []
    for pid, lat, q in points:
        dominated = any((l2 <= lat and q2 >= q) and (l2 < lat or q2 > q) for _, l2, q2 in points)
        if not dominated:
            front.append(pid)
    return front


def tradeoff_points(m: dict, series: list[dict]) -> tuple[str, str, list[tuple[str, float, float]], int | None]:
    """(quality name, axis label, [(id, batch-1 median ms, quality)], batch): accuracy when the build measured
    it, else the parity cosine (the torch baseline is the reference: cosine 1)."""
    b = _first_batch(series)
    usable = [s for s in series if s["status"] in (Status.OK, Status.BASELINE) and latency_at(s, b) is not None]
    if any(s["accuracy"] is not None for s in usable if not s["baseline"]):
        key, name, label = "accuracy", "Accuracy", f"{metric_name(m)} (%)"
    else:
        key, name, label = "cosine", "Parity cosine", "parity cosine against PyTorch"
    pts = []
    for s in usable:
        q = s[key]
        if q is not None:
            pts.append((s["id"], latency_at(s, b)["median_ms"], q * 100 if key == "accuracy" else q))
    return name, label, pts, b


def plot_tradeoff(m: dict, series: list[dict], colors: dict[str, str]) -> Plot | None:
    name, label, pts, b = tradeoff_points(m, series)
    if not pts:
        return None
    front = pareto_front(pts)
    fig = _figure(8.5, 5.0)
    ax = fig.add_subplot()
    for i, (pid, lat, q) in enumerate(sorted(pts, key=lambda p: p[1])):
        on = pid in front
        ax.scatter([lat], [q], s=90 if on else 45, color=colors.get(pid, FAILED_COLOR),
                   edgecolors="black" if on else "none", linewidths=1.5, zorder=3)
        # Staggered labels: points of equal quality and close latency do not print over each other.
        ax.annotate(pid, (lat, q), xytext=(6, (8, -16, 20, -28)[i % 4]), textcoords="offset points", fontsize=8)
    fp = sorted((p for p in pts if p[0] in front), key=lambda p: p[1])
    ax.step([p[1] for p in fp], [p[2] for p in fp], where="post", color="black", linewidth=1.2, alpha=0.7,
            label="Pareto frontier", zorder=2)
    ax.set_xlabel(f"median latency at batch {b} (ms)")
    ax.set_ylabel(label)
    qs = [p[2] for p in pts]
    span = max(qs) - min(qs)
    pad = span * 0.25 if span > 0 else (0.5 if name == "Accuracy" else 1e-6)
    ax.set_ylim(min(qs) - pad, max(qs) + pad)
    ax.set_xlim(0, max(p[1] for p in pts) * 1.25)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{name} versus latency")
    return Plot("tradeoff", f"{name} versus latency (batch {b})",
                f"Outlined points lie on the Pareto frontier (no other artifact is both faster and better): "
                f"{', '.join(p[0] for p in fp)}.", _png(fig))


def plot_parity(m: dict, series: list[dict], colors: dict[str, str]) -> Plot | None:
    items = [(a, a.parity) for a in records_of(m) if (a.parity or {}).get("max_abs") is not None]
    if not items:
        return None
    fig = _figure(8.5, 1.4 + 0.55 * len(items))
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    ys = list(range(len(items)))[::-1]
    bar_colors = [colors.get(a.id, FAILED_COLOR) for a, _ in items]
    floor = 1e-12
    ax1.barh(ys, [max(p["max_abs"], floor) for _, p in items], color=bar_colors, height=0.6)
    ax2.barh(ys, [max(1.0 - p["cosine"], floor) if p.get("cosine") is not None else floor for _, p in items],
             color=bar_colors, height=0.6)
    for y, (_, p) in zip(ys, items):
        tol = p.get("tolerance") or {}
        if tol.get("atol") is not None:
            ax1.plot([tol["atol"]], [y], marker="|", markersize=16, markeredgewidth=2, color="black")
        if tol.get("min_cosine") is not None:
            ax2.plot([max(1.0 - tol["min_cosine"], floor)], [y], marker="|", markersize=16, markeredgewidth=2,
                     color="black")
    ax1.set_yticks(ys, [a.id for a, _ in items])
    for ax, name in ((ax1, "max |artifact - PyTorch|"), (ax2, "1 - cosine")):
        ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Parity against the PyTorch reference (worst over the reference samples)")
    return Plot("parity", "Parity against PyTorch",
                "Worst case over the reference samples; the black tick is the precision's tolerance "
                "(atol; 1 - min cosine). Red: artifact not ok.", _png(fig))


# ------------------------------------------------------------------------------------------------
# fingerprint
# ------------------------------------------------------------------------------------------------

DEVICE_META_KEYS = ("device", "gpu", "compute_capability", "tensorrt", "weights")


def host_lines(m: dict) -> list[tuple[str, str]]:
    h = m.get("host") or {}
    cpu = h.get("cpu") or {}
    lines = [("host", str(h.get("hostname", "?"))), ("OS", str(h.get("os", "?"))),
             ("Python", str(h.get("python", "?"))),
             ("CPU", f"{cpu.get('model', '?')} ({cpu.get('arch', '?')}, {cpu.get('usable_cores', '?')} usable of "
                     f"{cpu.get('logical_cores', '?')} logical cores)"),
             ("CPU features", ", ".join(cpu.get("flags") or []) or "none recorded"),
             ("libraries", ", ".join(f"{k} {v}" for k, v in (h.get("libraries") or {}).items()) or "none recorded"),
             ("edgeopt", str(m.get("edgeopt_version", "?"))), ("built", str(m.get("created", "?"))),
             ("recipe", str(m.get("recipe", "?")))]
    model = m.get("model") or {}
    if model:
        lines.insert(0, ("model", f"{model.get('name', '?')} ({model.get('kind', '?')}), source "
                                  f"{model.get('source', '?')}, sha256 {str(model.get('sha256', '?'))[:16]}"))
    base = m.get("baseline")
    if base:
        lines.append(("baseline", f"{base.get('name')} (torch {base.get('torch', '?')}, "
                                  f"{base.get('threads', '?')} threads)"))
    return lines


def device_rows(m: dict) -> list[tuple[str, str]]:
    """Per artifact, what it was built for and ran on: target, backend, device; the GPU / TensorRT record of
    an engine; the runtime's threads and the peak memory when profiled."""
    rows = []
    for a in records_of(m):
        meta = a.meta or {}
        parts = [f"target {a.target}", f"backend {a.backend}"]
        parts += [f"{k.replace('_', ' ')} {meta[k]}" for k in DEVICE_META_KEYS if meta.get(k) not in (None, "")]
        fp = a.extra.get("device_fingerprint") or a.extra.get("device_info")
        if isinstance(fp, dict):
            parts += [f"{k} {v}" for k, v in fp.items()]
        if a.threads is not None:
            parts.append(f"{a.threads} threads")
        if a.peak_rss_mb is not None:
            parts.append(f"peak RSS {a.peak_rss_mb:.0f} MB")
        if not a.ok:
            parts.append(f"status {a.status}")
        rows.append((a.id, ", ".join(parts)))
    return rows


def parity_detail(m: dict) -> list[list[str]]:
    rows = []
    for a in records_of(m):
        p = a.parity or {}
        for out, o in (p.get("outputs") or {}).items():
            tol = p.get("tolerance") or {}
            rows.append([a.id, out, _num(o.get("max_abs"), ".2e"), _num(o.get("max_rel"), ".2e"),
                         _num(o.get("cosine"), ".6f"), _num(o.get("ref_max_abs"), ".3g"),
                         f"atol {tol.get('atol')}, rtol {tol.get('rtol')}, min cosine {tol.get('min_cosine')}",
                         "passed" if p.get("passed") else (p.get("reason") or "failed")])
    return rows


PARITY_HEADER = ["artifact", "output", "max abs", "max rel", "cosine", "max |reference|", "tolerance", "result"]


# ------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------

def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
    return lines


def _title(m: dict) -> str:
    return f"edgeopt report: {(m.get('model') or {}).get('name', 'model')}"


LAYER_HEADER = ["layer", "type", "precision", "ms", "share"]


def layer_sections(m: dict, top: int = 10) -> list[tuple[str, str, list[list[str]]]]:
    """(artifact id, summary line, rows of its slowest layers) for every artifact with a per-layer profile
    (``edgeopt profile OUT --layers``)."""
    return [(a.id, f"batch {a.layers.get('batch', '?')}: " + layer_summary(a.layers), layer_rows(a.layers, top))
            for a in records_of(m) if (a.layers or {}).get("layers")]


def render_markdown(m: dict, table: dict, plots: list[Plot]) -> str:
    lines = [f"# {_title(m)}", "", f"Built {m.get('created', '?')} on {(m.get('host') or {}).get('hostname', '?')} "
             f"with edgeopt {m.get('edgeopt_version', '?')}. Figures from `manifest.json`.", "",
             "## Artifacts", ""]
    lines += md_table(table["header"], [r["cells"] for r in table["rows"]])
    lines += ["", "Drop: accuracy points below the PyTorch baseline. vs torch: speed-up of the median over "
                  "PyTorch eager at that batch.", *timing_notes(m), ""]
    for p in plots:
        lines += [f"## {p.title}", "", f"![{p.title}]({p.name}.png)", "", p.caption, ""]
    detail = parity_detail(m)
    if detail:
        lines += ["## Parity per output", ""] + md_table(PARITY_HEADER, detail) + [""]
    for aid, summary, rows in layer_sections(m):
        lines += [f"## Slowest layers: {aid}", "", summary, ""] + md_table(LAYER_HEADER, rows) + [""]
    lines += ["## Host", ""] + md_table(["", ""], [[k, v] for k, v in host_lines(m)]) + [""]
    dev = device_rows(m)
    if dev:
        lines += ["## Devices", ""] + md_table(["artifact", "built for / ran on"], [[k, v] for k, v in dev]) + [""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# HTML
# ------------------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto; max-width: 1180px;
       color: #1b1b1b; background: #ffffff; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
p.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f3f5f7; }
td.l, th.l { text-align: left; }
td.note { text-align: left; white-space: normal; max-width: 320px; }
tr.baseline td { background: #f7f7f7; font-style: italic; }
tr.failed td { background: #fdecea; }
tr.skipped td, tr.not-built-here td { color: #777; }
.scroll { overflow-x: auto; }
figure { margin: 12px 0 24px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
table.kv td:first-child { font-weight: 600; text-align: left; }
table.kv td { text-align: left; white-space: normal; }
"""


def esc(s) -> str:
    return html.escape(str(s), quote=True)


def html_table(header: list[str], rows: list[list[str]], left: int = 1, cls: str = "", row_classes=None,
                note_last: bool = False) -> str:
    out = [f'<div class="scroll"><table class="{cls}">', "<thead><tr>"]
    out += [f'<th class="{"l" if i < left else ""}">{esc(h)}</th>' for i, h in enumerate(header)]
    out.append("</tr></thead><tbody>")
    for n, r in enumerate(rows):
        rc = (row_classes or [""] * len(rows))[n]
        out.append(f'<tr class="{esc(rc)}">')
        for i, c in enumerate(r):
            kind = "note" if note_last and i == len(r) - 1 else ("l" if i < left else "")
            out.append(f'<td class="{kind}">{esc(c)}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def render_html(m: dict, table: dict, plots: list[Plot]) -> str:
    title = _title(m)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{esc(title)}</h1>",
             f'<p class="sub">Built {esc(m.get("created", "?"))} on {esc((m.get("host") or {}).get("hostname", "?"))} '
             f'with edgeopt {esc(m.get("edgeopt_version", "?"))}. Figures from manifest.json.</p>',
             '<h2 id="artifacts">Artifacts</h2>',
             html_table(table["header"], [r["cells"] for r in table["rows"]], left=3, cls="artifacts",
                         row_classes=[r["status"].replace(" ", "-") for r in table["rows"]], note_last=True),
             '<p class="sub">Drop: accuracy points below the PyTorch baseline. vs torch: speed-up of the median over '
             "PyTorch eager at that batch. " + esc(" ".join(timing_notes(m))) + "</p>"]
    for p in plots:
        data = base64.b64encode(p.png).decode("ascii")
        parts += [f'<h2 id="{esc(p.name)}">{esc(p.title)}</h2>',
                  f'<figure><img alt="{esc(p.title)}" src="data:image/png;base64,{data}">'
                  f"<figcaption>{esc(p.caption)}</figcaption></figure>"]
    detail = parity_detail(m)
    if detail:
        parts += ['<h2 id="parity-detail">Parity per output</h2>', html_table(PARITY_HEADER, detail, left=2)]
    for aid, summary, rows in layer_sections(m):
        parts += [f'<h2 id="layers-{esc(aid)}">Slowest layers: {esc(aid)}</h2>', f'<p class="sub">{esc(summary)}</p>',
                  html_table(LAYER_HEADER, rows, left=3)]
    parts += ['<h2 id="host">Host</h2>', html_table(["", ""], [[k, v] for k, v in host_lines(m)], cls="kv")]
    dev = device_rows(m)
    if dev:
        parts += ['<h2 id="devices">Devices</h2>',
                  html_table(["artifact", "built for / ran on"], [[k, v] for k, v in dev], cls="kv")]
    parts.append("</body></html>\n")
    return "\n".join(parts)
