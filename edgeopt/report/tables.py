"""Human tables for the terminal (rich). Figures come from the manifest only."""

from __future__ import annotations


def _ms(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if v < 1 else f"{v:.2f}")


def latency_at(rec: dict, batch: int) -> dict | None:
    return next((r for r in rec.get("latency") or [] if r["batch"] == batch), None)


def metric_label(manifest: dict) -> str:
    """The task metric's column name ("top-1", "agree", "emb cos", "mAP50", "cos"); "top-1" when none was measured."""
    for rec in [manifest.get("baseline") or {}, *manifest.get("artifacts", [])]:
        if (rec.get("accuracy") or {}).get("label"):
            return rec["accuracy"]["label"]
    return "top-1"


def quality_cell(acc: dict | None) -> str:
    """A task metric as the table shows it: percent for accuracy-like metrics, the value for cosines."""
    if not acc or acc.get("value") is None:
        return "-"
    return f"{acc['value']:.4f}" if acc.get("budget") == "cosine" else f"{acc['value'] * 100:.2f}"


def artifact_rows(manifest: dict) -> list[dict]:
    """One row per artifact (and the torch baseline) with the figures the final table shows. ``drop``: points of
    the task metric below the baseline's (for cosine metrics, hundredths of cosine)."""
    base = manifest.get("baseline")
    rows = []
    ref_acc = (base or {}).get("accuracy") or {}
    if base:
        rows.append({"id": base["name"], "precision": "fp32", "status": "baseline", "size_mb": None,
                     "accuracy": ref_acc.get("value"), "quality": quality_cell(ref_acc), "drop": None,
                     "latency": base["latency"],
                     "speedup": {str(r["batch"]): 1.0 for r in base["latency"]}, "parity": None,
                     "parity_cell": None, "note": ""})
    for a in manifest.get("artifacts", []):
        rec = a.get("accuracy") or {}
        acc = rec.get("value")
        size = sum(f["bytes"] for f in a.get("files", []) if not f["path"].endswith(".json")) / 1e6
        rows.append({
            "id": a["id"], "precision": a["precision"], "status": a["status"], "size_mb": size if a.get("files") else None,
            "accuracy": acc, "quality": quality_cell(rec),
            "drop": (ref_acc.get("value") - acc) * 100 if acc is not None and ref_acc.get("value") is not None else None,
            "latency": a.get("latency") or [], "speedup": a.get("speedup_vs_torch") or {},
            "parity": (a.get("parity") or {}).get("max_abs"), "parity_cell": _parity_cell(a), "note": a.get("reason") or "; ".join(a.get("flags", [])),
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
    for col in ("artifact", "status", "size MB", metric_label(manifest), "drop pt", "parity"):
        t.add_column(col, justify="left" if col in ("artifact", "status") else "right")
    for b in batches:
        t.add_column(f"b{b} median ms", justify="right")
        t.add_column(f"b{b} p99 ms", justify="right")
        t.add_column(f"b{b} vs torch", justify="right")
    t.add_column("note")
    for row in artifact_rows(manifest):
        cells = [row["id"], row["status"], "-" if row["size_mb"] is None else f"{row['size_mb']:.2f}",
                 row["quality"],
                 "-" if row["drop"] is None else f"{row['drop']:+.2f}",
                 row["parity_cell"] or "-"]
        for b in batches:
            lat = next((r for r in row["latency"] if r["batch"] == b), None)
            sp = row["speedup"].get(str(b))
            cells += [_ms(lat and lat["median_ms"]), _ms(lat and lat["p99_ms"]), "-" if sp is None else f"{sp:.2f}x"]
        cells.append(row["note"] or "")
        t.add_row(*cells)
    console.print(t)
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
