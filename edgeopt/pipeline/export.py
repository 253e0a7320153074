"""Export stage: PyTorch -> ONNX (dynamo exporter, legacy on failure), check, slim, parity vs PyTorch."""

from __future__ import annotations

import contextlib
import io
import re
import time
import warnings
from pathlib import Path

import numpy as np

from edgeopt.errors import ExportError, ParityError, require
from edgeopt.core.fsutil import sha256_file
from edgeopt.pipeline.intake import LoadedModel, run_torch
from edgeopt.data.torchfeed import to_torch
from edgeopt.core.parity import figures as _figures
from edgeopt.core.parity import parity, tolerance_for
from edgeopt.config.recipe import ExportConfig
from edgeopt.core.spec import IOSpec

ONNX_FILE = "model.onnx"
TWO_GB = 2 * 1024**3


SPECIFIC_OP_PATTERNS = (
    r"operator '((?:aten|prim|torchvision)::[A-Za-z0-9_]+)'",  # legacy: Exporting the operator 'aten::x' ...
    r"[Nn]o (?:ONNX )?(?:function|decomposition)s? (?:found |registered )?for (?:<OpOverload\(op=')?((?:aten|torchvision)[.:]+[A-Za-z0-9_]+)",
    r"Unsupported FX nodes: \{'((?:aten|torchvision)::[A-Za-z0-9_]+)",
)
GENERIC_OP_PATTERNS = (r"((?:aten|torchvision|prim)::[A-Za-z0-9_]+)", r"torch\.ops\.((?:aten|torchvision)\.[A-Za-z0-9_]+)")


def failing_operators(text: str) -> list[str]:
    """Operator names an exporter error blames: the explicit "operator X is not supported" first."""
    for patterns in (SPECIFIC_OP_PATTERNS, GENERIC_OP_PATTERNS):
        found: list[str] = []
        for pat in patterns:
            for m in re.finditer(pat, text):
                op = m.group(1).replace(".", "::", 1) if "::" not in m.group(1) else m.group(1)
                if op not in found:
                    found.append(op)
        if found:
            return found
    return []


def export_sizes(spec: IOSpec) -> dict[str, int]:
    """Sizes for the example inputs: avoid 1 on dynamic axes, which the exporter would specialise."""
    return {n: min(d.max, max(d.opt, 2 * d.multiple_of)) for n, d in spec.dims.items()}


def example_args(spec: IOSpec) -> tuple:
    """Example torch inputs for torch.export / torch.onnx.export, at :func:`export_sizes`."""
    return to_torch(spec.random_feed(np.random.default_rng(0), sizes=export_sizes(spec)), spec)


def torch_dynamic_shapes(torch, spec: IOSpec):
    dims = {n: torch.export.Dim(n, min=d.min, max=d.max) if d.multiple_of == 1 else
            d.multiple_of * torch.export.Dim(f"{n}_div_{d.multiple_of}", min=d.min // d.multiple_of,
                                             max=d.max // d.multiple_of)
            for n, d in spec.dims.items()}
    # The flat module's forward takes *args: its dynamic shapes are keyed by that parameter's name.
    return {"args": tuple({ax: dims[name] for ax, name in t.dynamic_axes.items()} or None for t in spec.inputs)}


def _export_dynamo(torch, model: LoadedModel, args, path: Path, cfg: ExportConfig):
    spec = model.spec
    torch.onnx.export(
        model.module, args, str(path), dynamo=True, opset_version=cfg.opset,
        input_names=[t.name for t in spec.inputs], output_names=list(spec.outputs),
        dynamic_shapes=torch_dynamic_shapes(torch, spec) if spec.dims else None,
        external_data=_too_big(model.module), optimize=True, verbose=False, report=False,
    )


def _export_legacy(torch, model: LoadedModel, args, path: Path, cfg: ExportConfig):
    spec = model.spec
    axes = {t.name: dict(t.dynamic_axes) for t in spec.inputs if t.dynamic_axes}
    torch.onnx.export(
        model.scripted if model.scripted is not None else model.module, args, str(path), dynamo=False, opset_version=cfg.opset, do_constant_folding=True,
        input_names=[t.name for t in spec.inputs], output_names=list(spec.outputs), dynamic_axes=axes or None,
    )


def _too_big(module) -> bool:
    return sum(p.numel() * p.element_size() for p in module.parameters()) >= TWO_GB


def _quiet():
    """The exporters print pages of progress and warnings; keep them out of the user's terminal."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def export_onnx(model: LoadedModel, out_dir: Path, cfg: ExportConfig, log=print) -> dict:
    """Write ``out_dir/model.onnx`` (plus ``.data`` when > 2 GB). Returns the export record."""
    torch = require("torch", "torch", "export to ONNX")
    require("onnx", "torch", "export to ONNX")
    path = Path(out_dir) / ONNX_FILE
    args = example_args(model.spec)
    order = {"auto": ("dynamo", "legacy"), "dynamo": ("dynamo",), "legacy": ("legacy",)}[cfg.exporter]
    errors: dict[str, str] = {}
    if model.scripted is not None:  # torch.export cannot trace a ScriptModule
        order = ("legacy",)
        errors["dynamo"] = "skipped: the model is TorchScript, which only the legacy exporter takes"
    record: dict = {}
    for name in order:
        t0 = time.perf_counter()
        try:
            with _quiet():
                (_export_dynamo if name == "dynamo" else _export_legacy)(torch, model, args, path, cfg)
            record = {"exporter": name, "seconds": round(time.perf_counter() - t0, 2)}
            break
        except Exception as exc:  # noqa: BLE001 - exporters raise many types
            from edgeopt.core.fsutil import enospc_in

            if enospc_in(exc) is not None:
                raise  # a full disk, not the model: staged_dir turns it into DiskFullError
            errors[name] = _root_cause(exc)
            log(f"{name} exporter failed: {_first_line(errors[name])}")
            for p in Path(out_dir).glob("*"):
                p.unlink()
    if not record:
        ops = failing_operators(" ".join(errors.values()))
        which = f"the operator(s) {', '.join(ops)}" if ops else "an operator the exporters do not handle"
        raise ExportError(
            f"ONNX export failed on {which}. " + " | ".join(f"{k}: {_first_line(v)}" for k, v in errors.items()),
            "Rewrite that part of forward() with supported operations, try another opset (--opset), "
            "or export the ONNX yourself and pass the .onnx file as the model source.")
    if "dynamo" in errors:
        record["fallback_reason"] = _first_line(errors["dynamo"])
    record.update(check_and_slim(path, cfg))
    record.update({"requested_opset": cfg.opset})
    return record


def _root_cause(exc: BaseException) -> str:
    """The innermost error of the chain, where the exporters say what actually failed; the full
    text of every link is kept for the operator search."""
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    root = chain[-1]
    return f"{type(root).__name__}: {root}" + "".join(f"\n{type(e).__name__}: {e}" for e in chain[:-1])


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[0] if lines else text)[:400]


def check_and_slim(path: Path, cfg: ExportConfig) -> dict:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"The exported ONNX fails onnx.checker: {exc}", "Report this model; try --exporter legacy.") from exc
    m = onnx.load(str(path))
    produced = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    out = {"opset": produced, "ir_version": m.ir_version, "checker": "passed", "slim": None}
    if produced != cfg.opset:
        out["opset_note"] = f"asked for opset {cfg.opset}, the exporter produced {produced}"
    if cfg.slim:
        try:
            import onnxslim

            before = len(m.graph.node)
            with _quiet():
                slim = onnxslim.slim(m)
            onnx.checker.check_model(slim)
            onnx.save(slim, str(path), save_as_external_data=slim.ByteSize() >= TWO_GB)
            out["slim"] = {"tool": "onnxslim", "nodes_before": before, "nodes_after": len(slim.graph.node)}
        except ImportError:
            out["slim"] = {"skipped": "onnxslim is not installed"}
        except Exception as exc:  # noqa: BLE001 - keep the unslimmed model, say so
            out["slim"] = {"skipped": f"onnxslim failed: {_first_line(str(exc))}"}
    out["sha256"] = sha256_file(path)
    return out


def check_export_parity(model: LoadedModel, onnx_path: Path, feeds, refs, overrides: dict | None = None) -> dict:
    """The exported ONNX, run by ONNX Runtime without optimisation, against PyTorch: fail on mismatch."""
    from edgeopt.backends.onnxruntime.runner import run_onnx

    require("onnxruntime", "onnxruntime", "check the exported ONNX against PyTorch")
    got = run_onnx(onnx_path, feeds, model.spec)
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
    if model.module is not None:  # an adapter's model as trained (unmerged) when the export is its merge
        return run_torch(model.reference_module(), feeds, model.spec)
    from edgeopt.backends.onnxruntime.runner import run_onnx

    return run_onnx(model.onnx_path, feeds, model.spec)
