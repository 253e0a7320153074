"""Human tables for the terminal (rich). Figures come from the manifest only."""

from __future__ import annotations

from edgeopt.core.records import ArtifactRecord, Status, records_of


def ms(v) -> str:
    """Milliseconds for a table cell: 3 decimals below 1 ms, 2 above; "-" when not measured."""
    return "-" if v is None else (f"{v:.3f}" if v < 1 else f"{v:.2f}")


def latency_at(rec: dict, batch: int) -> dict | None:
    return next((r for r in rec.get("latency") or [] if r["batch"] == batch), None)


def same_run(manifest: dict, rec: ArtifactRecord) -> bool:
    """Whether ``rec``'s timings and the baseline's come from one interleaved run: only then is a ratio shown.
    (Manifests written before timing runs were recorded carry no run ids and are shown as they were.)"""
    base = manifest.get("baseline") or {}
    if "timing" not in manifest and rec.timing_run is None and "timing_run" not in base:
        return True
    return rec.timing_run is not None and rec.timing_run == base.get("timing_run")


def speedup_cell(row: dict, batch: int) -> str:
    """``2.38x (2.10-2.61)``: the speed-up over torch eager and its interval, "-" when none was measured in
    the same run."""
    sp = (row.get("speedup") or {}).get(str(batch))
    if sp is None:
        return "busy" if row.get("withheld") else "-"
    ci = (row.get("interval") or {}).get(str(batch))
    return f"{sp:.2f}x" + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else "")


def median_cell(lat: dict | None) -> str:
    """The median in ms, with "!" when the row's timings were unstable (a busy machine): the row's mark."""
    return ms(lat and lat.get("median_ms")) + (" !" if lat and lat.get("unstable") else "")


def energy_at(lat: dict | None) -> dict | None:
    """A latency row's energy figures (average mW, mJ per inference), where the profile measured them."""
    return (lat or {}).get("energy") or None


def energy_cell(lat: dict | None) -> str:
    e = energy_at(lat)
    return "-" if e is None else f"{e['mj_per_inference']:.3g}"


def power_cell(lat: dict | None) -> str:
    e = energy_at(lat)
    return "-" if e is None else f"{e['mean_mw']:.0f}"


def has_energy(manifest: dict) -> bool:
    rows = [r for a in records_of(manifest) for r in a.latency or ()]
    return any(energy_at(r) for r in rows)


def energy_note(run: dict | None) -> str | None:
    """One line saying where the energy figures come from and at which power mode."""
    power = (run or {}).get("energy")
    if not power:
        return None
    mode = power.get("nvpmodel") or {}
    parts = [f"Energy: {power['source']} ({power.get('basis') or ', '.join(power.get('rails') or [])}); "
             "mJ = millijoules per inference (per item of the batch) at the average power (mW) of its timed runs"]
    if mode:
        parts.append(f"nvpmodel {mode.get('name') or mode.get('id')}")
    if power.get("clocks_locked") is not None:
        parts.append("clocks locked (jetson_clocks)" if power["clocks_locked"] else "clocks NOT locked")
    return "; ".join(parts) + "."


def metric_label(manifest: dict) -> str:
    """The task metric's column name ("top-1", "agree", "emb cos", "mAP50", "cos"); "top-1" when none was measured."""
    tables = [(manifest.get("baseline") or {}).get("accuracy"), *(a.accuracy for a in records_of(manifest))]
    return next((acc["label"] for acc in tables if (acc or {}).get("label")), "top-1")


def quality_cell(acc: dict | None) -> str:
    """A task metric as the table shows it: percent for accuracy-like metrics, the value for cosines."""
    if not acc or acc.get("value") is None:
        return "-"
    return f"{acc['value']:.4f}" if acc.get("budget") == "cosine" else f"{acc['value'] * 100:.2f}"


def judged_note(acc: dict | None) -> str:
    """The INT8 judge's drop vs the FP32 model with its bootstrap interval and how sure the verdict is:
    'vs FP32: drop 0.55 points (95% 0.12..1.02), within'; '' for an artifact without one or with no drop."""
    from edgeopt.core.tasks import drop_text

    acc = acc or {}
    if acc.get("drop_points") is None or (acc["drop_points"] == 0 and acc.get("drop_high", 0) == 0):
        return ""
    text = f"vs FP32: {drop_text(acc)}, {acc.get('decision', '?')}"
    if acc.get("decision") == "undecided" and acc.get("samples_to_decide"):
        text += f" (about {acc['samples_to_decide']} samples would decide)"
    return text


def artifact_rows(manifest: dict) -> list[dict]:
    """One row per artifact (and the torch baseline) with the figures the final table shows. ``drop``: points of
    the task metric below the baseline's (for cosine metrics, hundredths of cosine)."""
    base = manifest.get("baseline")
    rows = []
    ref_acc = (base or {}).get("accuracy") or {}
    if base:
        rows.append({"id": base["name"], "precision": "fp32", "status": Status.BASELINE, "size_mb": None,
                     "accuracy": ref_acc.get("value"), "quality": quality_cell(ref_acc), "drop": None,
                     "latency": base["latency"],
                     "speedup": {str(r["batch"]): 1.0 for r in base["latency"]}, "interval": {}, "parity": None,
                     "parity_cell": None, "note": ""})
    for a in records_of(manifest):
        rec = a.accuracy or {}
        acc = rec.get("value")
        size = sum(f.bytes or 0 for f in a.files if not f.path.endswith(".json")) / 1e6
        rows.append({
            "id": a.id, "precision": a.precision, "status": a.status, "size_mb": size if a.files else None,
            "accuracy": acc, "quality": quality_cell(rec),
            "drop": (ref_acc.get("value") - acc) * 100 if acc is not None and ref_acc.get("value") is not None else None,
            "latency": list(a.latency or ()),
            "speedup": (a.speedup_vs_torch or {}) if same_run(manifest, a) else {},
            "interval": (a.speedup_interval or {}) if same_run(manifest, a) else {},
            "withheld": bool(a.extra.get("speedup_withheld")) and same_run(manifest, a),
            "parity": (a.parity or {}).get("max_abs"), "parity_cell": _parity_cell(a),
            "note": "; ".join(filter(None, [a.reason or "; ".join(a.flags or ()), judged_note(rec)])),
        })
    return rows


def wide_console():
    """A console that does not squeeze wide tables when stdout is a pipe or a file."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=220)


def terminal_width() -> int:
    """The terminal's width ($COLUMNS first); 80 when stdout is not a terminal and nothing says otherwise."""
    import shutil

    return max(40, shutil.get_terminal_size((80, 24)).columns)


def shorten(line: str, width: int) -> str:
    """One line cut to ``width`` characters at a word boundary, ending in "..." when cut."""
    if len(line) <= width:
        return line
    cut = line[:max(0, width - 3)]
    if " " in cut[width // 2:]:
        cut = cut[:cut.rindex(" ")].rstrip(",;: ")
    return cut + "..."


def wrap(text: str, width: int, indent: str = "  ") -> list[str]:
    """Word-wrapped lines, never breaking inside a word or number; continuation lines indented."""
    import textwrap

    return textwrap.wrap(text, width=width, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False) or [""]


def fit_table(headers: list[str], rows: list[list[str]], width: int | None = None, optional=(),
              right=()) -> list[str]:
    """A plain-text table that fits ``width`` (None: no limit): the columns named in ``optional`` are dropped,
    in that order, until it fits; cells are never cut. Returns its lines."""
    cols = list(range(len(headers)))

    def widths(keep):
        return {c: max(len(headers[c]), *(len(r[c]) for r in rows)) if rows else len(headers[c]) for c in keep}

    def total(keep):
        w = widths(keep)
        return sum(w.values()) + 2 * (len(keep) - 1)

    keep = cols
    for name in optional:
        if width is None or total(keep) <= width:
            break
        keep = [c for c in keep if headers[c] != name]
    w = widths(keep)

    def line(cells):
        return "  ".join(cells[c].rjust(w[c]) if headers[c] in right else cells[c].ljust(w[c]) for c in keep).rstrip()

    return [line(headers), "  ".join("-" * w[c] for c in keep)] + [line(r) for r in rows]


def _quality(row: dict) -> str:
    if row.get("quality") is not None:
        return row["quality"]
    return "-" if row["accuracy"] is None else f"{row['accuracy'] * 100:.2f}"


SHORT_STATUS = {Status.BASELINE: "base", Status.NOT_BUILT_HERE: "device", Status.FAILED: "FAILED",
                Status.SKIPPED: "skipped", Status.OK: "ok"}


def _parity_cell(a: ArtifactRecord) -> str | None:
    """Max abs error where the precision is judged by it (fp32, fp16); the cosine for bf16 and int8; mAP50
    against PyTorch's detections for a detector whose detections differ element-wise."""
    p = a.parity or {}
    if p.get("max_abs") is None:
        return None
    if p.get("judged_by") == "detections":  # detections that differ element-wise, judged by mAP50 vs PyTorch
        return f"mAP {p['detections']['map50'] * 100:.1f}"
    return f"cos {p['cosine']:.4f}" if p.get("tolerance", {}).get("atol") is None else f"{p['max_abs']:.1e}"


def summary_lines(manifest: dict, width: int | None = None, wide: bool = False) -> list[str]:
    """The build's table as text lines. Compact (default): what fits ``width``: size, the task metric in
    percent, its drop in points, and per batch the median latency and the speed-up over PyTorch eager; columns
    that do not fit are dropped (the first batch's stay). ``wide``: every column (parity, p99) and no limit.
    Reasons and flags follow the table as numbered notes, word-wrapped."""
    batches = sorted({r["batch"] for a in records_of(manifest) for r in a.latency or ()} |
                     {r["batch"] for r in (manifest.get("baseline") or {}).get("latency", [])})
    model = manifest.get("model", {})
    cpu = (manifest.get("host") or {}).get("cpu", {})
    metric = metric_label(manifest)
    headers = ["artifact", "status", "MB", metric if metric in ("emb cos", "cos") else f"{metric} %", "drop"] + (["parity"] if wide else [])
    energy = has_energy(manifest)
    for b in batches:
        headers += [f"b{b} ms"] + ([f"b{b} p99"] if wide else []) + [f"b{b} x"] + ([f"b{b} mJ"] if energy else [])
    headers.append("note")
    rows, notes = [], []
    for row in artifact_rows(manifest):
        cells = [row["id"], row["status"] if wide else SHORT_STATUS.get(row["status"], row["status"]),
                 "-" if row["size_mb"] is None else f"{row['size_mb']:.2f}", _quality(row),
                 "-" if row["drop"] is None else f"{row['drop']:+.2f}"] + ([row["parity_cell"] or "-"] if wide else [])
        for b in batches:
            lat = next((r for r in row["latency"] if r["batch"] == b), None)
            cells += [median_cell(lat)] + ([ms(lat and lat["p99_ms"])] if wide else []) + [speedup_cell(row, b)]
            cells += [energy_cell(lat)] if energy else []
        if row["note"]:
            notes.append(f"[{len(notes) + 1}] {row['id']}: {row['note']}")
            cells.append(f"[{len(notes)}]")
        else:
            cells.append("")
        rows.append(cells)
    if not notes:
        headers.pop()
        rows = [r[:-1] for r in rows]
    optional = [] if wide else ([h for b in reversed(batches[1:]) for h in (f"b{b} mJ", f"b{b} x", f"b{b} ms")]
                                + ["MB", "drop"] + ([f"b{batches[0]} mJ"] if energy and batches else []))
    right = set(headers) - {"artifact", "status", "note"}
    title = f"edgeopt: {model.get('name', '?')} ({cpu.get('model', '?')})"
    lines = [title if wide or width is None else shorten(title, width)]
    lines += fit_table(headers, rows, None if wide else width, optional, right)
    lim = None if wide else width
    for n in notes + timing_notes(manifest):
        lines += wrap(n, lim) if lim else [n]
    pr = manifest.get("pruning")
    if pr:
        line = (f"pruning ({pr['config']['method']}, ratio {pr['config']['ratio']}): MACs "
                f"{pr['macs_before'] / 1e6:.2f}M -> {pr['macs_after'] / 1e6:.2f}M, params "
                f"{pr['params_before'] / 1e3:.0f}k -> {pr['params_after'] / 1e3:.0f}k, sparsity {pr['sparsity'] * 100:.1f}%")
        accs = [(k, pr.get(k)) for k in ("accuracy_before", "accuracy_pruned", "accuracy_finetuned")]
        if any(v is not None for _, v in accs):
            line += f"; {metric} " + " -> ".join(f"{label} {v * 100:.2f}%" for (k, v), label in
                                               zip(accs, ("original", "pruned", "fine-tuned")) if v is not None)
        for text in (line, pr.get("note")):
            if text:
                lines += wrap(text, lim) if lim else [text]
    return lines


def print_summary(manifest: dict, console=None, wide: bool = False) -> None:
    """The table on stdout: compact to the terminal's width (80 when piped), or every column with ``wide``."""
    import click

    for line in summary_lines(manifest, terminal_width(), wide):
        click.echo(line)


def timing_notes(manifest: dict) -> list[str]:
    """What the latency columns mean for this manifest: the run, the machine's load, the marks."""
    run = manifest.get("timing")
    if not run:
        return []
    lines = [f"Latency: {run['method']} ({run['rounds']} rounds); (a-b) after a speed-up is its "
             f"{run['confidence'] * 100:.0f}% interval, {run['interval']}; ! = unstable timings."]
    machine = run.get("machine") or {}
    from edgeopt.core.profile import describe_load, ratios_withheld

    if machine.get("busy"):
        lines.append(f"The machine was busy while timing: {describe_load(machine)}.")
    note = energy_note(run)
    if note:
        lines.append(note)
    warning = (run.get("energy") or {}).get("warning")
    if warning:
        lines.append(f"Energy warning: {warning}.")
    withheld = ratios_withheld(run)
    if withheld and (manifest.get("baseline") or {}).get("timing_run") == run.get("id"):
        lines.append(f"busy = speed-up over torch eager not shown: {withheld}, which slows PyTorch eager far "
                     "more than the runtimes. Rebuild on a quiet machine for the ratios.")
    return lines


def layer_rows(prof: dict, top: int = 10) -> list[list[str]]:
    """Cells of a per-layer profile's slowest ``top`` layers: layer, type, precision, ms, share."""
    return [[(r["name"] if len(r["name"]) <= 40 else r["name"][:19] + "..." + r["name"][-18:]), r["type"],
             r["precision"], ms(r["ms"]), f"{r['share'] * 100:.1f}%"] for r in prof.get("layers", [])[:top]]


def layer_summary(prof: dict) -> str:
    """One line: where the time goes by operator type and precision."""
    parts = [f"{t['type']} {t['precision']} {t['share'] * 100:.0f}%" for t in prof.get("by_type", [])[:6]]
    return (f"{prof.get('layer_count', 0)} layers, {ms(prof.get('layers_ms'))} ms of "
            f"{ms(prof.get('total_ms'))} ms per run ({prof.get('runs')} runs, {prof.get('source')}): "
            + ", ".join(parts))


def layer_lines(aid: str, prof: dict, top: int = 10, width: int | None = None) -> list[str]:
    """A per-layer profile as text lines that fit ``width``: title, the slowest layers, where the time goes."""
    if prof.get("unsupported"):
        return [f"{aid}: no per-layer profile ({prof['unsupported']})"]
    lines = ["", f"{aid}: slowest layers at batch {prof.get('batch', '?')}"]
    lines += fit_table(["layer", "type", "precision", "ms", "share"], layer_rows(prof, top), width,
                       optional=("type",), right={"ms", "share"})
    text = layer_summary(prof)
    lines += wrap(text, width) if width else [text]
    if prof.get("trace"):
        lines.append(f"trace: {prof['trace']}")
    return lines
