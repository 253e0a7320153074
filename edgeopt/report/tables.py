"""Human tables for the terminal (rich). Figures come from the manifest only."""

from __future__ import annotations


def _ms(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if v < 1 else f"{v:.2f}")


def latency_at(rec: dict, batch: int) -> dict | None:
    return next((r for r in rec.get("latency") or [] if r["batch"] == batch), None)


def same_run(manifest: dict, rec: dict) -> bool:
    """Whether ``rec``'s timings and the baseline's come from one interleaved run: only then is a ratio shown.
    (Manifests written before timing runs were recorded carry no run ids and are shown as they were.)"""
    base = manifest.get("baseline") or {}
    if "timing" not in manifest and "timing_run" not in rec and "timing_run" not in base:
        return True
    return rec.get("timing_run") is not None and rec.get("timing_run") == base.get("timing_run")


def speedup_cell(row: dict, batch: int) -> str:
    """``2.38x (2.10-2.61)``: the speed-up over torch eager and its interval, "-" when none was measured in
    the same run."""
    sp = (row.get("speedup") or {}).get(str(batch))
    if sp is None:
        return "-"
    ci = (row.get("interval") or {}).get(str(batch))
    return f"{sp:.2f}x" + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else "")


def median_cell(lat: dict | None) -> str:
    """The median in ms, with "!" when the row's timings were unstable (a busy machine)."""
    return _ms(lat and lat.get("median_ms")) + (" !" if lat and lat.get("unstable") else "")


def _unstable_note(latency: list) -> str:
    bad = [str(r["batch"]) for r in latency or [] if r.get("unstable")]
    return f"unstable timings at batch {','.join(bad)}" if bad else ""


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def artifact_rows(manifest: dict) -> list[dict]:
    """One row per artifact (and the torch baseline) with the figures the final table shows."""
    base = manifest.get("baseline")
    rows = []
    ref_acc = (base or {}).get("accuracy") or {}
    if base:
        rows.append({"id": base["name"], "precision": "fp32", "status": "baseline", "size_mb": None,
                     "accuracy": ref_acc.get("value"), "drop": None, "latency": base["latency"],
                     "speedup": {str(r["batch"]): 1.0 for r in base["latency"]}, "interval": {}, "parity": None,
                     "parity_cell": None, "note": _unstable_note(base["latency"])})
    for a in manifest.get("artifacts", []):
        acc = (a.get("accuracy") or {}).get("value")
        size = sum(f["bytes"] for f in a.get("files", []) if not f["path"].endswith(".json")) / 1e6
        rows.append({
            "id": a["id"], "precision": a["precision"], "status": a["status"], "size_mb": size if a.get("files") else None,
            "accuracy": acc, "drop": (ref_acc.get("value") - acc) * 100 if acc is not None and ref_acc.get("value") is not None else None,
            "latency": a.get("latency") or [],
            "speedup": (a.get("speedup_vs_torch") or {}) if same_run(manifest, a) else {},
            "interval": (a.get("speedup_interval") or {}) if same_run(manifest, a) else {},
            "parity": (a.get("parity") or {}).get("max_abs"), "parity_cell": _parity_cell(a),
            "note": a.get("reason") or _join("; ".join(a.get("flags", [])), _unstable_note(a.get("latency"))),
        })
    return rows


def wide_console():
    """A console that does not squeeze wide tables when stdout is a pipe or a file."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=220)


def _parity_cell(a: dict) -> str | None:
    """Max abs error where the precision is judged by it (fp32, fp16); the cosine for bf16 and int8."""
    p = a.get("parity") or {}
    if p.get("max_abs") is None:
        return None
    return f"cos {p['cosine']:.4f}" if p.get("tolerance", {}).get("atol") is None else f"{p['max_abs']:.1e}"


def print_summary(manifest: dict, console=None) -> None:
    from rich.table import Table

    console = console or wide_console()
    batches = sorted({r["batch"] for a in manifest.get("artifacts", []) for r in a.get("latency") or []} |
                     {r["batch"] for r in (manifest.get("baseline") or {}).get("latency", [])})
    model = manifest.get("model", {})
    t = Table(title=f"edgeopt: {model.get('name', '?')}  ({manifest['host']['cpu']['model']})", title_justify="left")
    for col in ("artifact", "status", "size MB", "top-1", "drop pt", "parity"):
        t.add_column(col, justify="left" if col in ("artifact", "status") else "right")
    for b in batches:
        t.add_column(f"b{b} median ms", justify="right")
        t.add_column(f"b{b} p99 ms", justify="right")
        t.add_column(f"b{b} vs torch", justify="right")
    t.add_column("note")
    for row in artifact_rows(manifest):
        cells = [row["id"], row["status"], "-" if row["size_mb"] is None else f"{row['size_mb']:.2f}",
                 "-" if row["accuracy"] is None else f"{row['accuracy'] * 100:.2f}",
                 "-" if row["drop"] is None else f"{row['drop']:+.2f}",
                 row["parity_cell"] or "-"]
        for b in batches:
            lat = next((r for r in row["latency"] if r["batch"] == b), None)
            cells += [median_cell(lat), _ms(lat and lat["p99_ms"]), speedup_cell(row, b)]
        cells.append(row["note"] or "")
        t.add_row(*cells)
    console.print(t)
    for line in timing_notes(manifest):
        console.print(line)
    pr = manifest.get("pruning")
    if pr:
        line = (f"pruning ({pr['config']['method']}, ratio {pr['config']['ratio']}): MACs {pr['macs_before'] / 1e6:.2f}M -> "
                f"{pr['macs_after'] / 1e6:.2f}M, params {pr['params_before'] / 1e3:.0f}k -> {pr['params_after'] / 1e3:.0f}k, "
                f"sparsity {pr['sparsity'] * 100:.1f}%")
        accs = [(k, pr.get(k)) for k in ("accuracy_before", "accuracy_pruned", "accuracy_finetuned")]
        if any(v is not None for _, v in accs):
            line += "; top-1 " + " -> ".join(f"{label} {v * 100:.2f}%" for (k, v), label in
                                              zip(accs, ("original", "pruned", "fine-tuned")) if v is not None)
        console.print(line)
        if pr.get("note"):
            console.print(pr["note"])


def timing_notes(manifest: dict) -> list[str]:
    """What the latency columns mean for this manifest: the run, the machine's load, the marks."""
    run = manifest.get("timing")
    if not run:
        return []
    lines = [f"Latency: {run['method']} ({run['rounds']} rounds); (a-b) after a speed-up is its "
             f"{run['confidence'] * 100:.0f}% interval, {run['interval']}; ! = unstable timings."]
    machine = run.get("machine") or {}
    if machine.get("busy"):
        from edgeopt.core.profile import describe_load

        lines.append(f"The machine was busy while timing: {describe_load(machine)}.")
    return lines


def layer_rows(prof: dict, top: int = 10) -> list[list[str]]:
    """Cells of a per-layer profile's slowest ``top`` layers: layer, type, precision, ms, share."""
    return [[(r["name"] if len(r["name"]) <= 40 else r["name"][:19] + "..." + r["name"][-18:]), r["type"],
             r["precision"], _ms(r["ms"]), f"{r['share'] * 100:.1f}%"] for r in prof.get("layers", [])[:top]]


def layer_summary(prof: dict) -> str:
    """One line: where the time goes by operator type and precision."""
    parts = [f"{t['type']} {t['precision']} {t['share'] * 100:.0f}%" for t in prof.get("by_type", [])[:6]]
    return (f"{prof.get('layer_count', 0)} layers, {_ms(prof.get('layers_ms'))} ms of "
            f"{_ms(prof.get('total_ms'))} ms per run ({prof.get('runs')} runs, {prof.get('source')}): "
            + ", ".join(parts))


def print_layers(aid: str, prof: dict, top: int = 10, console=None) -> None:
    from rich.table import Table

    console = console or wide_console()
    if prof.get("unsupported"):
        console.print(f"{aid}: no per-layer profile ({prof['unsupported']})")
        return
    t = Table(title=f"{aid}: slowest layers at batch {prof.get('batch', '?')}", title_justify="left")
    for c in ("layer", "type", "precision", "ms", "share"):
        t.add_column(c, justify="left" if c in ("layer", "type", "precision") else "right")
    for row in layer_rows(prof, top):
        t.add_row(*row)
    console.print(t)
    console.print(layer_summary(prof))
    if prof.get("trace"):
        console.print(f"trace: {prof['trace']} (chrome://tracing or https://ui.perfetto.dev)")
