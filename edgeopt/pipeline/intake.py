"""Model intake: turn what the user gave (factory + checkpoint, TorchScript, torch.export program,
Hugging Face transformers folder, or an ONNX file) into one flat ``nn.Module`` with named outputs.

Needs torch; imported lazily by the stages that export or run the PyTorch reference.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeopt.errors import ModelLoadError, UserInputError, require
from edgeopt.core.fsutil import not_a_file, sha256_file, sha256_json, sha256_tree
from edgeopt.config.recipe import ModelConfig
from edgeopt.core.spec import IOSpec
from edgeopt.data.torchfeed import to_torch

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "params")


@dataclass
class LoadedModel:
    name: str
    source: str
    sha256: str
    spec: IOSpec  # with output names filled in
    kind: str
    module: object | None = None  # flat torch module (None for an ONNX source)
    onnx_path: Path | None = None  # set when the source is already ONNX
    scripted: object | None = None  # a TorchScript module: exported as it is, by the legacy exporter
    adapter: dict | None = None  # a PEFT adapter applied to the base model (pipeline.adapters)
    labels: tuple[str, ...] | None = None  # class names the model itself carries (a Hugging Face config)
    as_trained: tuple | None = None  # (flat adapted model, unmerged; the merged module exported from it)
    notes: list | None = None  # what loading found out, for the build log
    source_facts: dict | None = None  # read from a training tool's checkpoint (Ultralytics): task, classes, size

    def describe(self) -> dict:
        out = {"name": self.name, "source": self.source, "sha256": self.sha256, "kind": self.kind,
               **self.spec.to_dict()}
        if self.adapter is not None:
            out["adapter"] = self.adapter
        if self.source_facts is not None:
            out["checkpoint_facts"] = self.source_facts
        return out

    def reference_module(self):
        """The module every artifact is checked against: the adapted model as trained (unmerged) while the
        exported module is still its merge (pruning replaces it), else the exported module itself."""
        if self.as_trained is not None and self.as_trained[1] is self.module:
            return self.as_trained[0]
        return self.module


# ------------------------------------------------------------------------------------------------
# sources
# ------------------------------------------------------------------------------------------------

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


def _load_module(cfg: ModelConfig, source: str, adapter: str | None = None):
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
        if cfg.allow_pickle:  # unpickling an Ultralytics checkpoint imports ultralytics: keep it offline
            import os

            os.environ.setdefault("YOLO_OFFLINE", "1")
        ckpt = _read_checkpoint(torch, p, cfg.allow_pickle) if p.suffix in (".pt", ".pth") else None
        from edgeopt.pipeline import ultralytics

        if not ultralytics.is_checkpoint(ckpt):
            raise ModelLoadError(f"{p} is neither a TorchScript file nor an Ultralytics checkpoint.",
                                 "A checkpoint goes in [model] checkpoint beside a factory source (file.py:factory).")
        module, facts = ultralytics.load_checkpoint(ckpt, p)
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


# ------------------------------------------------------------------------------------------------
# flat outputs
# ------------------------------------------------------------------------------------------------

def _flatten(obj, prefix: str, out: list):
    import torch

    if obj is None:
        return
    if isinstance(obj, torch.Tensor):
        out.append((prefix or "output", obj))
    elif hasattr(obj, "items"):  # dict, transformers ModelOutput
        for k, v in obj.items():
            _flatten(v, f"{prefix}_{k}" if prefix else str(k), out)
    elif isinstance(obj, (list, tuple)):
        if len(obj) == 1 and not isinstance(obj[0], torch.Tensor):
            _flatten(obj[0], prefix, out)
        else:
            base = prefix or "output"
            for i, v in enumerate(obj):
                _flatten(v, f"{base}_{i}", out)
    else:
        raise UserInputError(f"The model returns a {type(obj).__name__}, which edgeopt cannot name as outputs.",
                             "Return tensors, or tuples/lists/dicts of tensors.")


def make_flat_module(model, spec: IOSpec, call: str):
    """Wrap ``model`` so it takes the spec's inputs positionally and returns a tuple of tensors."""
    import torch

    names = [t.name for t in spec.inputs]

    class Flat(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def train(self, mode: bool = True):
            self.training = mode
            try:
                self.inner.train(mode)
            except NotImplementedError:  # torch.export programs have no train/eval switch
                pass
            return self

        def _named(self, *args) -> list:
            if call == "keywords":
                res = self.inner(**dict(zip(names, args)))
            elif call == "list":
                res = self.inner(list(args[0].unbind(0)))
            else:
                res = self.inner(*args)
            flat: list = []
            _flatten(res, "", flat)
            return flat

        def forward(self, *args):
            return tuple(t for _, t in self._named(*args))

        def output_names(self, *args) -> list[str]:
            return [n for n, _ in self._named(*args)]

    return Flat(model).eval()



def run_torch(module, feeds: list[dict[str, np.ndarray]], spec: IOSpec) -> list[dict[str, np.ndarray]]:
    import torch

    outs = []
    with torch.inference_mode():
        for f in feeds:
            res = module(*to_torch(f, spec))
            outs.append({n: r.detach().cpu().numpy() for n, r in zip(spec.outputs, res)})
    return outs


# ------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------

def load_model(cfg: ModelConfig, spec: IOSpec, source: str, checkpoint: str | None = None,
               adapter: str | None = None) -> LoadedModel:
    """Load, apply the checkpoint (and the PEFT adapter), check the input spec against the model, name the
    outputs."""
    check_list_batch(cfg, spec)
    p = Path(source)
    if p.suffix == ".onnx":
        if (why := not_a_file(p)) is not None:
            raise ModelLoadError(f"ONNX file {p} {why}.", "Check the path in [model] source.")
        if adapter:
            raise UserInputError("[model] adapter needs a PyTorch base model; the source is an ONNX file.",
                                 "Give the base model the adapter was trained on (hf:FOLDER or file.py:factory).")
        return _load_onnx_source(cfg, spec, p)
    model, files, default_name = _load_module(cfg, source, adapter)
    if checkpoint:
        import torch

        ck = Path(checkpoint)
        _apply_checkpoint(model, _state_dict_of(_read_checkpoint(torch, ck, cfg.allow_pickle), ck), ck)
        files.append(ck)
    try:
        model.eval()
    except NotImplementedError:  # a torch.export program is already in inference form
        pass
    is_hf = type(model).__module__.startswith("transformers")
    call = "keywords" if (is_hf and cfg.call == "positional") else cfg.call
    labels, kind, notes = None, cfg.kind, []
    facts = getattr(model, "edgeopt_source", None)  # what a training tool's checkpoint says about itself
    if isinstance(facts, dict):
        from edgeopt.pipeline.ultralytics import check_input_size

        notes += check_input_size(facts, spec)
        labels = tuple(facts["classes"]) or None
        if kind == "generic":
            kind = facts["kind"]
        notes.append(f"Ultralytics {facts['task']} checkpoint: {len(facts['classes'])} classes, trained at "
                     f"{'x'.join(map(str, facts['imgsz'] or ['?']))}, stride {facts['stride']}; model kind {kind}"
                     + (f", [task] format {facts['head_format']}" if facts["head_format"] else ""))
    if is_hf:
        from edgeopt.pipeline.hf import labels_of

        labels = labels_of(model)
    adapter_record, as_trained = None, None
    if adapter:
        from edgeopt.pipeline.adapters import apply_adapter, merge_error

        adapted, model, adapter_record = apply_adapter(model, Path(adapter))
        adapter_record["base"] = source
        files += [f for f in sorted(Path(adapter).rglob("*")) if f.is_file()]
        as_trained = make_flat_module(adapted, spec, call)
    flat = make_flat_module(model, spec, call)
    names = _probe_outputs(flat, spec, source)
    if as_trained is not None:
        if adapter_record["merged"]:
            adapter_record["merge_error"] = merge_error(as_trained, flat, spec)
        as_trained = (as_trained, flat)
    if cfg.outputs or spec.outputs:
        wanted = list(cfg.outputs or spec.outputs)
        if len(wanted) != len(names):
            raise UserInputError(f"{len(wanted)} output names were given ({wanted}) but the model returns "
                                 f"{len(names)} tensors ({names}).", "Give one name per returned tensor, or none.")
        names = wanted
    import torch

    scripted = model if isinstance(model, torch.jit.ScriptModule) else None
    # The weights themselves are hashed: a factory that initialises randomly gives another model each time.
    digest = sha256_json({"files": sha256_tree(files) if files else "", "state": state_digest(model)})
    return LoadedModel(name=cfg.name or default_name, source=source, sha256=digest,
                       spec=spec.with_outputs(names), kind=kind, module=flat, scripted=scripted,
                       adapter=adapter_record, labels=labels, as_trained=as_trained, notes=notes,
                       source_facts=facts if isinstance(facts, dict) else None)


def check_list_batch(cfg: ModelConfig, spec: IOSpec) -> None:
    """A model called with a list of images (``call = "list"``, torchvision's detectors) is traced image by
    image: the exported graph splits the batch into as many images as the example had, and fails on any
    other batch size. Refuse a dynamic batch before exporting; a fixed batch (any size) works."""
    b = spec.batch_dim
    if cfg.call == "list" and b is not None and spec.dims[b].max > 1:
        d = spec.dims[b]
        raise UserInputError(
            f"[model] call = \"list\" with a dynamic batch ({b} = {d.min}..{d.max}): the exported graph of a "
            "model that takes a list of images splits the batch into exactly as many images as it was traced "
            "with, so it would fail at every other batch size.",
            f"Fix the batch in [[inputs]] shape (for example [1, 3, H, W], or [{d.max}, 3, H, W] for batches of "
            f"{d.max}) and build one artifact per batch size you need.")


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


def _probe_outputs(flat, spec: IOSpec, source: str) -> list[str]:
    import torch

    feed = spec.random_feed(np.random.default_rng(0))
    try:
        with torch.inference_mode():
            return flat.output_names(*to_torch(feed, spec))
    except UserInputError:
        raise
    except Exception as exc:
        shapes = ", ".join(f"{t.name}: {IOSpec.describe(t)}" for t in spec.inputs)
        raise UserInputError(
            f"The model does not accept the declared inputs ({shapes}): {type(exc).__name__}: {exc}",
            "Fix [[inputs]] (names, order, shapes, dtypes) to match the model's forward().") from exc


def _load_onnx_source(cfg: ModelConfig, spec: IOSpec, path: Path) -> LoadedModel:
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
