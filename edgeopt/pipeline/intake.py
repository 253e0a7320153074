"""The intake stage: the recipe's data (evaluation set, calibration set, the samples held out of calibration to
judge on) and its model (factory + checkpoint, TorchScript, torch.export program, Hugging Face transformers
folder, or an ONNX file: see :mod:`edgeopt.pipeline.sources`) as one flat ``nn.Module`` with named outputs,
checked against each other before anything is written.

torch is imported inside functions.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from edgeopt.errors import ModelLoadError, UserInputError
from edgeopt.core.fsutil import not_a_file, sha256_json, sha256_tree
from edgeopt.core.manifest import Manifest
from edgeopt.config.recipe import ModelConfig, Recipe
from edgeopt.core.spec import IOSpec, tensor_from_dict
from edgeopt.data.dataset import Dataset
from edgeopt.data.torchfeed import to_torch
from edgeopt.pipeline.context import BuildContext, BuildData, LoadedModel
from edgeopt.pipeline.flat import make_flat_module
from edgeopt.pipeline.sources import (
    external_data_files,
    load_checkpoint,
    load_module,
    load_onnx_source,
    onnx_source_digest,
    state_digest,
)

__all__ = ["complete_inputs", "external_data_files", "hold_out", "load_data", "load_model", "onnx_source_digest",
           "read_from_model_note", "stage_intake", "with_model_task", "data_with_preprocess"]


def load_data(ctx: BuildContext, manifest: Manifest, calibrate: bool) -> BuildData:
    """The evaluation set and (when ``calibrate``: INT8 or pruning) the calibration set, with their summaries in
    the manifest. Without an evaluation set, the last part of the calibration set is held out to judge on."""
    r = ctx.recipe
    if r.evaluation is None and r.calibration is None:
        return BuildData()
    from edgeopt.data.dataset import load_dataset

    evaluation = calibration = holdout = None
    if r.evaluation is not None:
        evaluation = load_dataset(r.evaluation, r.spec, purpose="evaluation")
        manifest.data["evaluation"] = evaluation.summary()
        for w in evaluation.warnings:
            ctx.reporter.warn(w)
    if r.calibration is not None and calibrate:
        calibration = load_dataset(r.calibration, r.spec, purpose="calibration")
        for w in calibration.warnings:
            ctx.reporter.warn(w)
        if evaluation is None:
            calibration, holdout = hold_out(calibration)
            if holdout is None:
                ctx.reporter.warn("No [evaluation] data and too few calibration samples to hold some out: "
                                  "artifacts are judged on the parity samples only. Add [evaluation] data.")
        manifest.data["calibration"] = calibration.summary()
    return BuildData(evaluation=evaluation, calibration=calibration, holdout=holdout)


def hold_out(ds: Dataset) -> tuple[Dataset, Dataset | None]:
    """(calibration, held-out) split of a calibration set when there is no evaluation set: the last fifth (at
    most 200 samples, at least 2 left to calibrate on), never used for calibration. (ds, None) when too small."""
    n = len(ds)
    k = min(200, n // 5)
    if k < 2:
        return ds, None

    def part(sl, what):
        return Dataset.from_arrays({name: a[sl] for name, a in ds.arrays.items()},
                                   None if ds.labels is None else ds.labels[sl], source=f"{ds.source} ({what})",
                                   requested=ds.requested, classes=ds.classes, purpose="calibration")

    return part(slice(0, n - k), f"first {n - k}"), part(slice(n - k, n), f"last {k}, held out")


def complete_inputs(recipe: Recipe) -> Recipe:
    """A recipe without ``[[inputs]]`` (a training tool's checkpoint as the source: Ultralytics' best.pt) with the
    inputs the checkpoint tells, and, when the recipe has no ``[preprocess]``, the preprocessing its tool uses
    (on the data sections that have none of their own). ``read_from_model`` says which were read."""
    if recipe.spec is not None:
        return recipe
    from edgeopt.data.dataset import Preprocess
    from edgeopt.pipeline.sources import checkpoint_inputs

    inputs, pre = checkpoint_inputs(recipe.model, recipe.resolve(recipe.model.source))
    spec = IOSpec(inputs=tuple(tensor_from_dict(i) for i in inputs), outputs=recipe.model.outputs)
    read, sections = ["inputs"], {}
    if recipe.preprocess is None and recipe.shipped_preprocess() is None:
        sections["preprocess"] = pre = Preprocess.from_dict(pre)
        read.append("preprocess")
        sections.update(data_with_preprocess(recipe, pre))
    return replace(recipe, spec=spec, read_from_model=tuple(read), **sections)


def data_with_preprocess(recipe: Recipe, pre) -> dict:
    """The recipe's data sections (calibration, evaluation) that have no preprocessing of their own, with ``pre``:
    the images a checkpoint's tool prepared are read the way it prepares them (:func:`complete_inputs`; the CLI's
    --calib / --eval on a checkpoint)."""
    return {key: replace(data, preprocess=pre) for key in ("calibration", "evaluation")
            if (data := getattr(recipe, key)) is not None and data.preprocess is None}


def read_from_model_note(recipe: Recipe) -> str | None:
    """What the log says of :func:`complete_inputs`' work (None when the recipe declared its inputs)."""
    if not recipe.read_from_model:
        return None
    t = recipe.spec.inputs[0]
    text = f"[[inputs]] {t.name} {list(t.shape)} read from the checkpoint (the size it was trained at)"
    if "preprocess" in recipe.read_from_model:
        pre = recipe.preprocess.to_dict()
        keys = ", ".join(f"{k} = {str(pre[k]).lower()}" for k in ("resize", "center_crop", "letterbox") if pre.get(k))
        text += f"; [preprocess] {keys}, as its training tool prepares images"
    return text + " (not in the recipe)"


def stage_intake(ctx: BuildContext) -> LoadedModel:
    """Load the model and check the input spec (and the evaluation labels) against it: before anything is
    written."""
    r = ctx.recipe
    ctx.reporter.step("Loading the model")
    if len(r.model.adapter) > 1:  # build() builds each on its own
        raise UserInputError(f"[model] adapter lists {len(r.model.adapter)} adapters; one build takes one.",
                             "Call edgeopt.pipeline.build.build(), which builds one artifact set per adapter.")
    model = load_model(r.model, r.spec, r.resolve(r.model.source), r.resolve(r.model.checkpoint),
                       adapter=r.resolve(r.model.adapter[0]) if r.model.adapter else None, nms=ctx.nms)
    if model.adapter is not None:
        from edgeopt.pipeline.adapters import describe_adapter

        model = replace(model, notes=(*model.notes, describe_adapter(model.adapter)))
    for note in model.notes:
        ctx.reporter.info(note)
    evaluation = ctx.data.evaluation
    if evaluation is not None and evaluation.labels is not None and r.task.type != "segmentation":
        from edgeopt.pipeline.export import reference_outputs

        first = next(iter(reference_outputs(model, evaluation.feeds(1))[0].values()))
        evaluation.check_labels(int(first.shape[-1]))  # labels beyond the model's classes: stop here
    return model


def with_model_task(ctx: BuildContext) -> BuildContext:
    """The recipe's ``[task]`` with the keys the model tells (a torchvision detector's format, background class
    and thresholds) where the recipe leaves them out: the recipe's own keys win. The model's notes say which."""
    model = ctx.model
    told = (model.detector or {}).get("task") or {}
    fill = {k: v for k, v in told.items() if k not in ctx.recipe.task_given}
    if not fill:
        return ctx
    r = ctx.recipe
    note = ("[task] " + ", ".join(f"{k} = {v!r}".replace("'", '"') for k, v in fill.items())
            + " (not in the recipe; from the model)")
    ctx.reporter.info(note)
    model = replace(model, notes=(*model.notes, note), detector={**model.detector, "task_filled": sorted(fill)})
    return replace(ctx, recipe=replace(r, task=replace(r.task, **fill)), model=model)


def load_model(cfg: ModelConfig, spec: IOSpec, source: str, checkpoint: str | None = None,
               adapter: str | None = None, nms: dict | None = None) -> LoadedModel:
    """Load, apply the checkpoint (and the PEFT adapter), check the input spec against the model, name the
    outputs. A torchvision detector is exported in the form ``nms`` says (:func:`edgeopt.pipeline.plan.
    detector_nms`; default: NMS in the graph)."""
    check_list_batch(cfg, spec)
    p = Path(source)
    if p.suffix == ".onnx":
        if (why := not_a_file(p)) is not None:
            raise ModelLoadError(f"ONNX file {p} {why}.", "Check the path in [model] source.")
        if adapter:
            raise UserInputError("[model] adapter needs a PyTorch base model; the source is an ONNX file.",
                                 "Give the base model the adapter was trained on (hf:FOLDER or file.py:factory).")
        return load_onnx_source(cfg, spec, p)
    model, files, default_name = load_module(cfg, source, adapter)
    if checkpoint:
        ck = Path(checkpoint)
        load_checkpoint(model, ck, cfg.allow_pickle)
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
    from edgeopt.pipeline.detectors import prepare, torchvision_detector

    detector, exported = None, model
    if not is_hf and not adapter and torchvision_detector(model):
        exported, call, detector = prepare(model, spec, nms or {"where": "graph", "why": "no target asked"})
        if call == "list":
            check_list_batch(replace(cfg, call="list"), spec)
        kind = "detector" if kind == "generic" else kind
        notes.append(f"torchvision {detector['family']} detector: "
                     + ("exported whole, NMS in the graph, called with a list of images" if detector["nms"] == "graph"
                        else f"exported without its NMS (boxes, per-class scores) for {', '.join(detector['targets'])}")
                     + f" ({detector['why']})")
    adapter_record, as_trained = None, None
    if adapter:
        from edgeopt.pipeline.adapters import apply_adapter, merge_error

        adapted, model, adapter_record = apply_adapter(model, Path(adapter))
        adapter_record["base"] = source
        files += [f for f in sorted(Path(adapter).rglob("*")) if f.is_file()]
        as_trained = make_flat_module(adapted, spec, call)
    flat = make_flat_module(exported, spec, call)
    names = _probe_outputs(flat, spec, source)
    if detector is not None and detector["nms"] == "outside" and not (cfg.outputs or spec.outputs):
        names = list(detector["outputs"])
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
    if detector is not None:
        detector = {**detector, "outputs": list(names)}
    import torch

    scripted = model if isinstance(model, torch.jit.ScriptModule) else None
    # The weights themselves are hashed: a factory that initialises randomly gives another model each time.
    digest = sha256_json({"files": sha256_tree(files) if files else "", "state": state_digest(model),
                          **({"nms": detector["nms"]} if detector else {})})
    return LoadedModel(name=cfg.name or default_name, source=source, sha256=digest,
                       spec=spec.with_outputs(names), kind=kind, module=flat, scripted=scripted,
                       adapter=adapter_record, labels=labels, as_trained=as_trained, notes=tuple(notes),
                       source_facts=facts if isinstance(facts, dict) else None, detector=detector)


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
