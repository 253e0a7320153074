"""PyTorch -> ONNX: the dynamo exporter (the legacy one on failure), the checker, onnxslim; the operator an
exporter blames when it fails. The export stage (:mod:`edgeopt.pipeline.export`) runs it and checks parity."""

from __future__ import annotations

import contextlib
import io
import re
import time
import warnings
from pathlib import Path

import numpy as np

from edgeopt.errors import ExportError, require
from edgeopt.core.fsutil import sha256_file
from edgeopt.data.torchfeed import to_torch
from edgeopt.config.recipe import ExportConfig
from edgeopt.core.spec import IOSpec
from edgeopt.pipeline.context import LoadedModel

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
