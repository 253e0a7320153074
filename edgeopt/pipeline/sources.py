"""Where a model comes from: a factory (+ checkpoint), a TorchScript file, a torch.export program, a Hugging Face
transformers folder, or an ONNX file (with its external data files). The intake (:mod:`edgeopt.pipeline.intake`)
turns what these give into one flat module with named outputs.

torch is imported inside functions.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import zipfile
from pathlib import Path

from edgeopt.errors import ModelLoadError, UserInputError, require
from edgeopt.core.fsutil import not_a_file, sha256_file, sha256_json
from edgeopt.config.recipe import ModelConfig
from edgeopt.core.spec import IOSpec
from edgeopt.pipeline.context import LoadedModel

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "params")

def _import_factory(source: str):
    target, _, attr = source.rpartition(":")
    if not target or not attr:
        raise ModelLoadError(f"Model source {source!r} names no factory.",
                             "Write path/to/file.py:factory or package.module:factory.")
    files = []
    if target.endswith(".py"):
        path = Path(target)
        if (why := not_a_file(path)) is not None:
            raise ModelLoadError(f"Model file {path} {why}.", "Check the path in [model] source.")
        mod_name = f"edgeopt_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        sys.path.insert(0, str(path.parent.resolve()))
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise ModelLoadError(f"Importing {path} failed: {type(exc).__name__}: {exc}",
                                 "Fix the error in the model file.") from exc
        finally:
            sys.path.pop(0)
        files.append(path)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ModelLoadError(f"Cannot import module {target!r}: {exc}",
                                 "Install the package that provides it, or give path/to/file.py:factory.") from exc
        if getattr(module, "__file__", None):
            files.append(Path(module.__file__))
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ModelLoadError(f"{target} has no callable {attr!r}.",
                             f"Name one of its callables: {', '.join(public[:12]) or '(none)'}.")
    return fn, files


def _read_checkpoint(torch, path: Path, allow_pickle: bool):
    if (why := not_a_file(path)) is not None:
        raise ModelLoadError(f"Checkpoint {path} {why}.", "Give the path of a torch.save file.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError or RuntimeError
        msg = str(exc)
        if not allow_pickle and ("weights_only" in msg or "Unpickl" in type(exc).__name__ or "GLOBAL" in msg):
            raise ModelLoadError(
                f"Checkpoint {path} holds pickled Python objects, not just tensors; loading it would run "
                "arbitrary code from the file.",
                "Save a state_dict instead (torch.save(model.state_dict(), path)), or, if you trust the file, "
                "pass --allow-pickle (recipe: [model] allow_pickle = true).") from exc
        if not allow_pickle:
            raise ModelLoadError(f"Checkpoint {path} cannot be read: {exc}", "Check that it is a torch.save file.") from exc
    return torch.load(path, map_location="cpu", weights_only=False)


def _state_dict_of(obj, path: Path) -> dict:
    import torch

    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                return _state_dict_of(obj[key], path)
    raise ModelLoadError(f"Checkpoint {path} holds no state_dict (found {type(obj).__name__}).",
                         f"Save model.state_dict(), or a dict with it under one of {STATE_DICT_KEYS}.")


def _apply_checkpoint(model, state: dict, path: Path) -> None:
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape_bad = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape_bad:
        def few(xs):
            return ", ".join(xs[:8]) + (f" (+{len(xs) - 8} more)" if len(xs) > 8 else "") if xs else "none"
        raise ModelLoadError(
            f"Checkpoint {path} does not match the model. Missing keys: {few(missing)}. "
            f"Unexpected keys: {few(unexpected)}. Shape mismatches: {few(shape_bad)}.",
            "Use the factory that built the checkpoint's model (same architecture and number of classes).")
    model.load_state_dict(state, strict=True)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def load_module(cfg: ModelConfig, source: str, adapter: str | None = None):
    """(module, files that define it, default name)."""
    torch = require("torch", "torch", "load a PyTorch model")
    head, sep, tail = source.partition(":")
    if head == "hf" and sep:
        from edgeopt.pipeline.adapters import head_classes, read_adapter_config
        from edgeopt.pipeline.hf import load_hf

        path = Path(tail)
        acfg = read_adapter_config(Path(adapter)) if adapter else None
        model, _ = load_hf(path, acfg, head_classes(Path(adapter)) if adapter else None)
        return model, [p for p in path.rglob("*") if p.is_file()], path.name
    p = Path(source)
    if p.suffix == ".pt2" and p.is_file():
        try:
            return torch.export.load(str(p)).module(), [p], p.stem
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"{p} is not a loadable torch.export program: {exc}",
                                 "Write it with torch.export.save(torch.export.export(model, args), path).") from exc
    if p.suffix in (".pt", ".pth", ".ts", ".torchscript") and p.is_file() and not sep:
        if _is_torchscript(p):
            return torch.jit.load(str(p), map_location="cpu"), [p], p.stem
        from edgeopt.pipeline import ultralytics

        module, facts = ultralytics.load_checkpoint(_training_checkpoint(torch, cfg, p), p)
        module.edgeopt_source = facts  # read by load_model: kind, task, class names, image size
        return module, [p], p.stem
    fn, files = _import_factory(source)
    try:
        model = fn()
    except Exception as exc:
        raise ModelLoadError(f"The factory {source} raised {type(exc).__name__}: {exc}",
                             "Make the factory callable with no arguments.") from exc
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"The factory {source} returned {type(model).__name__}, not a torch.nn.Module.",
                             "Return the model instance (an nn.Module) from the factory.")
    return model, files, getattr(fn, "__name__", "model")



def _training_checkpoint(torch, cfg: ModelConfig, p: Path) -> dict:
    """The checkpoint a training tool wrote (Ultralytics' best.pt), read with the recipe's trust."""
    if cfg.allow_pickle:  # unpickling an Ultralytics checkpoint imports ultralytics: keep it offline
        import os

        os.environ.setdefault("YOLO_OFFLINE", "1")
    ckpt = _read_checkpoint(torch, p, cfg.allow_pickle) if p.suffix in (".pt", ".pth") else None
    from edgeopt.pipeline import ultralytics

    if not ultralytics.is_checkpoint(ckpt):
        raise ModelLoadError(f"{p} is neither a TorchScript file nor an Ultralytics checkpoint.",
                             "A checkpoint goes in [model] checkpoint beside a factory source (file.py:factory).")
    return ckpt


def checkpoint_inputs(cfg: ModelConfig, source: str) -> tuple[list[dict], dict]:
    """([[inputs]], [preprocess]) as tables, read from a training tool's checkpoint given as the source (the
    recipe declares no [[inputs]])."""
    torch = require("torch", "torch", "read a PyTorch checkpoint")
    p = Path(source)
    if (why := not_a_file(p)) is not None:
        raise ModelLoadError(f"Model file {p} {why}.", "Check the path in [model] source.")
    if _is_torchscript(p):
        raise UserInputError(f"{p} is a TorchScript file, which does not say what inputs it takes.",
                             'Declare them: [[inputs]] name = "input" shape = [1, 3, 224, 224].')
    from edgeopt.pipeline import ultralytics

    return ultralytics.inputs_of(_training_checkpoint(torch, cfg, p), p)


def load_checkpoint(model, checkpoint: Path, allow_pickle: bool) -> None:
    """Apply the state_dict in ``checkpoint`` to ``model`` (strict: a clear error on any mismatch)."""
    import torch

    _apply_checkpoint(model, _state_dict_of(_read_checkpoint(torch, checkpoint, allow_pickle), checkpoint), checkpoint)


# ------------------------------------------------------------------------------------------------
# ONNX sources
# ------------------------------------------------------------------------------------------------

def load_onnx_source(cfg: ModelConfig, spec: IOSpec, path: Path) -> LoadedModel:
    onnx = require("onnx", "torch", "read an ONNX model")
    try:
        m = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(str(path))  # by path: external data files are found beside the model
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError, checker errors
        raise ModelLoadError(f"{path} is not a valid ONNX model (corrupt or truncated?): {str(exc)[:300]}",
                             "Export it again, or copy it again from where it was made.") from exc
    graph_inputs = [i.name for i in m.graph.input if i.name not in {x.name for x in m.graph.initializer}]
    want = [t.name for t in spec.inputs]
    if graph_inputs != want:
        raise UserInputError(f"The ONNX model's inputs are {graph_inputs}; the recipe declares {want}.",
                             "Declare the same inputs, in the same order.")
    outputs = [o.name for o in m.graph.output]
    return LoadedModel(name=cfg.name or path.stem, source=str(path), sha256=onnx_source_digest(path, m),
                       spec=spec.with_outputs(outputs), kind=cfg.kind, onnx_path=path)


def external_data_files(path: Path, model=None) -> list[str]:
    """The external data files an ONNX file refers to (locations relative to its folder), each checked to stay
    inside that folder and to exist: a clear error otherwise."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    from edgeopt.core.untrusted import relpath_problem

    path = Path(path)
    model = model if model is not None else onnx.load(str(path), load_external_data=False)
    found = set()
    for t in _get_all_tensors(model):
        if uses_external_data(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            problem = relpath_problem(loc)
            if problem:
                raise ModelLoadError(f"{path}: tensor {t.name!r} keeps its data in {loc!r}: {problem}.",
                                     "Keep external data files in the model's folder (onnx.save_model with a plain "
                                     "location such as weights.bin).")
            if not (path.parent / loc).is_file():
                raise ModelLoadError(f"{path}: tensor {t.name!r} keeps its data in {loc}, which is missing.",
                                     f"Copy {loc} beside {path.name} (it holds the model's weights).")
            found.add(loc)
    return sorted(found)


def onnx_source_digest(path: Path, model=None) -> str:
    """sha256 of an ONNX file together with every external data file it refers to (whatever their names): a
    changed weights file changes the model key, so nothing built from the old weights is reused."""
    path = Path(path)
    files = external_data_files(path, model)
    if not files:
        return sha256_file(path)
    return sha256_json({"onnx": sha256_file(path), "external_data": [(f, sha256_file(path.parent / f)) for f in files]})


def state_digest(model) -> str:
    """sha256 over every parameter and buffer (names, dtypes, shapes, bytes)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())  # raw bytes of any dtype (bf16 included)
    return h.hexdigest()
