"""``edgeopt select OUT``: the fastest artifact that meets every budget, and why each other one lost.

Budgets (all optional, one small dataclass): the accuracy drop against the PyTorch baseline in points, the
p99 latency at the chosen batch, the target, the size on disk and the parity cosine. Among the artifacts
with status ``ok`` that meet all of them, the one with the lowest median latency at that batch wins. An
artifact flagged "slower than fp32 sibling" gets no special treatment: the speed ranking already puts it
behind its sibling.

When nothing qualifies, :class:`NoArtifactQualifiesError` (exit code 9) is raised with every artifact's
reasons, so ``edgeopt select`` can gate a CI job. Figures come from the manifest only (no backend loads).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from edgeopt.config.budgets import Budgets
from edgeopt.errors import EdgeoptError, UserInputError
from edgeopt.core.manifest import load_consistent
from edgeopt.report.tables import artifact_rows
from edgeopt.core.records import ArtifactRecord, records_of


class NoArtifactQualifiesError(EdgeoptError):
    """No artifact meets the selection budgets. ``result`` holds the full selection with every reason."""

    exit_code = 9

    def __init__(self, problem: str, fix: str | None = None, result: dict | None = None):
        super().__init__(problem, fix)
        self.result = result or {}



def select(out_dir: str | Path, max_drop: float | None = None, p99_ms: float | None = None,
           target: str | None = None, max_size_mb: float | None = None, min_cosine: float | None = None,
           batch: int = 1) -> dict:
    """Pick the fastest artifact in ``out_dir`` that meets every budget (see :class:`Budgets`).

    Returns ``{"selected": id, "artifact": {...}, "budgets": {...}, "batch": B, "candidates": [...]}`` where
    each candidate has its figures, ``qualifies`` and ``reasons`` (why it lost; empty for the winner).
    Raises :class:`NoArtifactQualifiesError` when none qualifies.
    """
    m = load_consistent(Path(out_dir)).data
    return select_manifest(m, Budgets(max_drop=max_drop, p99_ms=p99_ms, target=target, max_size_mb=max_size_mb,
                                      min_cosine=min_cosine, batch=batch))


def select_manifest(m: dict, budgets: Budgets) -> dict:
    """:func:`select` on a manifest already in memory (``edgeopt build`` ends with this)."""
    b = budgets.batch
    artifacts = records_of(m)
    if budgets.target is not None and not any(a.target == budgets.target for a in artifacts):
        known = sorted({a.target for a in artifacts})
        raise UserInputError(f"No artifact in this build is for target {budgets.target!r}.",
                             f"Pick one of {known}, or build it: edgeopt build --target {budgets.target}.")
    rows = {r["id"]: r for r in artifact_rows(m)}
    base_acc = ((m.get("baseline") or {}).get("accuracy") or {}).get("value")
    candidates = []
    for a in artifacts:
        row = rows[a.id]
        lat = a.latency_at(b)
        c = {"id": a.id, "target": a.target, "precision": a.precision, "status": a.status,
             "median_ms": lat["median_ms"] if lat else None, "p99_ms": lat.get("p99_ms") if lat else None,
             "size_mb": row["size_mb"], "accuracy": row["accuracy"], "drop": row["drop"],
             "cosine": (a.parity or {}).get("cosine"), "flags": list(a.flags or []),
             "qualifies": False, "reasons": _budget_reasons(a, c_lat=lat, row=row, budgets=budgets, base_acc=base_acc)}
        c["qualifies"] = not c["reasons"]
        judged = judged_drop(a.accuracy)
        if judged:  # the INT8 judge's drop vs FP32 on the judge set, with its interval and how sure it is
            c["drop_vs_fp32"] = judged
        candidates.append(c)
    fit = sorted((c for c in candidates if c["qualifies"]), key=lambda c: (c["median_ms"], c["id"]))
    winner = fit[0] if fit else None
    for c in fit[1:]:
        c["qualifies"] = True
        c["reasons"] = [f"slower than {winner['id']}: median {c['median_ms']:.3f} ms vs {winner['median_ms']:.3f} ms "
                        f"at batch {b}"]
    order = {c["id"]: i for i, c in enumerate(fit)}
    candidates.sort(key=lambda c: (0 if c["qualifies"] else 1, order.get(c["id"], 0),
                                   c["median_ms"] if c["median_ms"] is not None else float("inf"), c["id"]))
    result = {"selected": winner["id"] if winner else None, "batch": b,
              "budgets": {k: v for k, v in asdict(budgets).items() if v is not None},
              "artifact": _summary(next(a for a in artifacts if a.id == winner["id"])) if winner else None,
              "candidates": candidates}
    if winner is None:
        lines = [f"  {c['id']}: {'; '.join(c['reasons'])}" for c in candidates]
        raise NoArtifactQualifiesError(
            f"No artifact meets the budgets ({budgets.describe()}):\n"
            + "\n".join(lines or ["  (the build has no artifacts)"]),
            "Loosen a budget, or build more targets/precisions (`edgeopt targets` lists what runs here), then "
            "select again.", result)
    return result


def judged_drop(acc: dict | None) -> dict | None:
    """The judge's drop of an artifact's task metric vs the FP32 model (points), its bootstrap interval and
    decision (within | over | undecided), as the build recorded them; None without."""
    acc = acc or {}
    if acc.get("drop_points") is None:
        return None
    out = {"points": acc["drop_points"], "budget": acc.get("budget_points"), "decision": acc.get("decision")}
    if "drop_low" in acc:
        out.update(low=acc["drop_low"], high=acc["drop_high"])
    if acc.get("decision_note"):
        out["note"] = acc["decision_note"]
    return out


def _budget_reasons(a: ArtifactRecord, c_lat: dict | None, row: dict, budgets: Budgets,
                    base_acc: float | None) -> list[str]:
    """Why ``a`` cannot be selected under ``budgets`` (every budget it misses, with the numbers)."""
    b = budgets.batch
    reasons = []
    if budgets.target is not None and a.target != budgets.target:
        reasons.append(f"target {a.target}, not {budgets.target}")
    if not a.ok:
        why = f": {a.reason}" if a.reason else ""
        reasons.append(f"status {a.status}{why}")
        return reasons  # no figures to compare
    if c_lat is None:
        profiled = sorted(r["batch"] for r in a.latency or ())
        reasons.append(f"not profiled at batch {b}" + (f" (profiled at {profiled})" if profiled else
                                                        " (the build ran without profiling)"))
    elif budgets.p99_ms is not None:
        p99 = c_lat.get("p99_ms")
        if p99 is None:
            reasons.append(f"no p99 figure at batch {b}")
        elif p99 > budgets.p99_ms:
            reasons.append(f"p99 {p99:.3f} ms > {budgets.p99_ms:g} ms budget at batch {b}")
    if budgets.max_drop is not None:
        if row["accuracy"] is None:
            reasons.append("no accuracy figure, so the --max-drop budget cannot be checked (the recipe has no "
                           "[evaluation] data)")
        elif base_acc is None:
            reasons.append("no PyTorch baseline accuracy to measure the drop against (the build ran without the "
                           "baseline or without [evaluation] data)")
        elif row["drop"] > budgets.max_drop:
            reasons.append(f"accuracy drop {row['drop']:.2f} pt > {budgets.max_drop:g} pt budget "
                           f"({row['accuracy'] * 100:.2f}% vs baseline {base_acc * 100:.2f}%)")
    if budgets.max_size_mb is not None:
        if row["size_mb"] is None:
            reasons.append("no files recorded, so the size budget cannot be checked")
        elif row["size_mb"] > budgets.max_size_mb:
            reasons.append(f"size {row['size_mb']:.2f} MB > {budgets.max_size_mb:g} MB budget")
    if budgets.min_cosine is not None:
        cos = (a.parity or {}).get("cosine")
        if (a.parity or {}).get("judged_by") == "detections":
            # its detections did not match element-wise, so the cosine over the raw tensors says nothing
            reasons.append("parity judged by detections (mAP), not by a cosine, so the --min-cosine budget does "
                           "not apply: use --max-drop")
        elif cos is None:
            reasons.append("no parity cosine recorded, so the --min-cosine budget cannot be checked")
        elif cos < budgets.min_cosine:
            reasons.append(f"parity cosine {cos:.6f} < {budgets.min_cosine:g} budget")
    return reasons


def _summary(a: ArtifactRecord) -> dict:
    rec = a.to_dict()
    return {k: rec.get(k) for k in ("id", "target", "backend", "device", "precision", "status", "flags", "files")
            if rec.get(k) is not None}
