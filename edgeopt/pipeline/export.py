"""The export stage: PyTorch -> ONNX (reused while the model and settings are unchanged; see
:mod:`edgeopt.pipeline.exporter`), parity against PyTorch on the host's reference executor, the reference samples
and outputs every artifact is checked against, and the model's record (with the tokenizer it ships)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeopt import __version__
from edgeopt.config.recipe import Recipe
from edgeopt.core.fsutil import file_record, sha256_file, sha256_json, staged_dir, write_bytes_atomic, write_json_atomic
from edgeopt.core.hostinfo import version_of
from edgeopt.core.manifest import Manifest
from edgeopt.core.parity import figures as _figures
from edgeopt.core.parity import in_words, parity, parity_summary, tolerance_for
from edgeopt.core.reference import REFERENCE_FILE, parity_feeds, save_reference
from edgeopt.errors import ParityError
from edgeopt.pipeline.context import EXPORT_DIR, EXPORT_RECORD, BuildContext, Exported, LoadedModel
from edgeopt.pipeline.exporter import export_onnx
from edgeopt.pipeline.flat import run_torch
from edgeopt.pipeline.record import files_intact, read_json
from edgeopt.pipeline.sources import onnx_source_digest


REAL_REFERENCE_SAMPLES = 16  # real samples in the reference data: what a bundle's self-test scores the task on


def stage_export(ctx: BuildContext, manifest: Manifest, previous: Manifest | None = None) -> Exported:
    """Export the (pruned) model to OUT/export/, reused while its key holds; the reference samples and outputs;
    the export, model and reference records of the manifest."""
    r = ctx.recipe
    model = ctx.model
    export_key = sha256_json({"model": model.sha256, "spec": model.spec.to_dict(), "export": r.export.__dict__,
                              "torch": version_of("torch"), "edgeopt": __version__, "source": model.source})
    out = ctx.out / EXPORT_DIR
    prev = (previous.data.get("export") if previous else None) or read_json(out / EXPORT_RECORD) or {}
    if model.onnx_path is not None:
        onnx_path = model.onnx_path
        record = {"exporter": "none (ONNX given)", "sha256": model.sha256}  # covers its external data files
    elif prev.get("key") == export_key and files_intact(ctx.out, prev.get("files", [])):
        ctx.reporter.info("Reusing the exported ONNX (model and settings unchanged)")
        record = prev
        onnx_path = out / "model.onnx"
    else:
        ctx.reporter.step(f"Exporting to ONNX (opset {r.export.opset})")
        with staged_dir(out) as stage:
            record = export_onnx(model, stage, r.export, log=ctx.reporter.info)
            record["key"] = export_key
            record["files"] = [{**file_record(p, stage), "path": f"{EXPORT_DIR}/{p.relative_to(stage).as_posix()}"}
                               for p in sorted(stage.rglob("*")) if p.is_file()]
            # The record travels with the ONNX (same rename), so a rerun after kill -9 or Ctrl-C reuses the
            # export even though the interrupted run never wrote its manifest.
            write_json_atomic(stage / EXPORT_RECORD, record)
        onnx_path = out / "model.onnx"
    record["key"] = export_key
    onnx_sha256 = model.sha256 if model.onnx_path is not None else onnx_source_digest(onnx_path)
    # Reference samples: random within the declared ranges, plus real ones from the evaluation data.
    real_ds = ctx.data.real
    real = real_ds.feeds(min(REAL_REFERENCE_SAMPLES, len(real_ds))) if real_ds is not None else []
    feeds = parity_feeds(model.spec, r.parity.samples, r.parity.seed, real)
    real_from = len(feeds) - len(real)
    ctx.reporter.step("Computing reference outputs")
    refs = reference_outputs(model, feeds)
    save_reference(ctx.out / REFERENCE_FILE, feeds, refs)
    if model.module is not None:
        record["parity"] = parity_summary(check_export_parity(model, onnx_path, feeds, refs, r.parity.tolerances))
        ctx.reporter.info(f"Exported ONNX matches PyTorch: {in_words(record['parity'])}")
    manifest.data["export"] = record
    manifest.data["model"] = {**model.describe(), "preprocess": r.shipped_preprocess(),
                              **({"read_from_model": list(r.read_from_model)} if r.read_from_model else {}),
                              "labels": list(r.model.labels or model.labels or ()) or None, "tokenizer": ship_tokenizer(r, model, ctx.out)}
    manifest.data["reference"] = {"real_from": real_from, "path": REFERENCE_FILE,
                                  "sha256": sha256_file(ctx.out / REFERENCE_FILE), "samples": len(feeds),
                                  "source": "pytorch" if model.module is not None else "onnx"}
    return Exported(onnx_path=onnx_path, onnx_sha256=onnx_sha256, export_sha256=record.get("sha256"), feeds=feeds,
                    refs=refs, real_from=real_from)


TOKENIZER_FILE = "tokenizer.json"


TOKENIZER_PATH = "reference/tokenizer.json"  # travels with the reference data in bundles


def tokenizer_folder(r: Recipe) -> Path | None:
    """The Hugging Face folder holding the model's ``tokenizer.json``: the text data's tokenizer, else the
    ``hf:`` model folder (the same folder when saved with save_pretrained)."""
    cands = [getattr(d, "tokenizer", None) for d in (r.evaluation, r.calibration)]
    src = r.resolve(r.model.source) or ""
    if src.startswith("hf:"):
        cands.append(src[3:])
    for c in cands:
        if c and (Path(c) / TOKENIZER_FILE).is_file():
            return Path(c)
    return None


def ship_tokenizer(r: Recipe, model: LoadedModel, out: Path) -> dict | None:
    """Copy the model's fast-tokenizer file into OUT (bundles carry it, so the torch-free runtime goes from
    text to the model's inputs), with the sequence length the inputs take."""
    folder = tokenizer_folder(r)
    if folder is None:
        return None
    spec = model.spec
    ints = [t for t in spec.inputs if np.issubdtype(np.dtype(t.dtype), np.integer) and len(t.shape) == 2]
    if not ints:
        return None
    seq = ints[0].shape[1]
    length = seq if isinstance(seq, int) else spec.dims[seq].opt
    write_bytes_atomic(out / TOKENIZER_PATH, (folder / TOKENIZER_FILE).read_bytes())
    return {"path": TOKENIZER_PATH, "sha256": sha256_file(out / TOKENIZER_PATH), "max_length": int(length),
            "fixed_length": isinstance(seq, int), "inputs": [t.name for t in ints]}


def check_export_parity(model: LoadedModel, onnx_path: Path, feeds, refs, overrides: dict | None = None) -> dict:
    """The exported ONNX, run by the host's reference executor, against PyTorch: fail on mismatch."""
    from edgeopt.backends import host_reference

    got = host_reference().require("check the exported ONNX against PyTorch").run(onnx_path, feeds)
    rep = parity(refs, got, tolerance_for("fp32", overrides), model.kind)
    if not rep["passed"] and "detections" in rep and model.module is not None:
        raise ParityError(*_detections_differ(model, feeds, refs, rep))
    if not rep["passed"]:
        raise ParityError(
            f"The exported ONNX differs from PyTorch: {rep['reason']} ({_figures(rep)}).",
            "Try the other exporter (--exporter legacy or dynamo), another opset, or loosen "
            "[parity.tolerances.fp32] if the difference is expected.")
    return rep


NOISE = 1e-6  # relative noise on every layer's output: about what another runtime's float rounding does


def selection_sensitivity(model: LoadedModel, feeds, refs) -> dict | None:
    """How far PyTorch's own detections move under rounding-level noise: every leaf module's float output
    multiplied by (1 + 1e-6 x a seeded normal), the detection agreement of that run with ``refs``. None when
    the model cannot be run so (or its outputs are not detections)."""
    import torch

    from edgeopt.core.detection import agreement

    gen = torch.Generator().manual_seed(0)

    def noisy(module, args, out):
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.device.type == "cpu":
            return out * (1 + NOISE * torch.randn(out.shape, generator=gen, dtype=out.dtype))
        return None

    leaves = [m for m in model.module.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(noisy) for m in leaves]
    try:
        return agreement(refs, run_torch(model.module, feeds, model.spec))
    except Exception:  # noqa: BLE001 - a diagnosis only: the parity failure stands either way
        return None
    finally:
        for h in hooks:
            h.remove()


def _detections_differ(model: LoadedModel, feeds, refs, rep: dict) -> tuple[str, str]:
    """The error of an export whose detections differ from PyTorch's beyond the tolerance, with the cause
    told apart: a model whose own detections move under rounding-level input noise (discrete selections on
    near-tied scores: top-k, NMS, score thresholds) or a stable model (then the export is the suspect)."""
    d = rep["detections"]
    drop = max(d["drop50"], d["drop50_95"])
    problem = f"The exported ONNX's detections differ from PyTorch's: {rep['reason']}."
    own = selection_sensitivity(model, feeds, refs)
    allow = f"[parity.tolerances.fp32] max_map_drop = {int(np.ceil(drop)) + 1} (points against PyTorch)"
    if own is not None and max(own["drop50"], own["drop50_95"]) > 0:
        rep["pytorch_under_noise"] = own
        own_drop = max(own["drop50"], own["drop50_95"])
        how = (f"by about as much ({own_drop:.2f} points; the export's {drop:.2f})" if own_drop >= 0.75 * drop
               else f"({own_drop:.2f} points; the export's {drop:.2f} may include more)")
        problem += (f" PyTorch's own detections move too under rounding-level noise (one part in a million on every "
                    f"layer's output): mAP50 {own['map50'] * 100:.2f}, mAP50:95 {own['map50_95'] * 100:.2f} against "
                    "its own. The model's discrete selections (top-k, NMS, score thresholds) flip on near-tied "
                    "scores, as with random or untrained weights, so another runtime's float rounding alone changes "
                    f"its detections {how}.")
        fix = (f"Check with the trained weights; if the model is meant to be this sensitive, allow it with {allow}.")
    else:
        problem += (" PyTorch's own detections do not move under rounding-level noise (one part in a million on "
                    "every layer's output), so the export itself is the likely cause.")
        fix = ("Try the other exporter (--exporter legacy or dynamo) or another opset; if the difference is "
               f"expected, allow it with {allow}.")
    return problem, fix


def reference_outputs(model: LoadedModel, feeds) -> list[dict]:
    """The reference outputs on ``feeds``: PyTorch's, or the host's reference executor's for an ONNX source."""
    if model.module is not None:  # an adapter's model as trained (unmerged) when the export is its merge
        return run_torch(model.reference_module(), feeds, model.spec)
    from edgeopt.backends import host_reference

    return host_reference().run(model.onnx_path, feeds)
