"""The on-device runtime: ``edgeopt.load(bundle)`` -> a model that runs named numpy arrays.

Needs numpy and the one backend the chosen artifact runs on (no torch, no ONNX tooling), on Python 3.10+.
Nothing heavy is imported at module level here or in anything this module imports.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edgeopt.ship.bundle import (
    Bundle,
    IncompatibleError,
    Limits,
    SignatureError,
    SignatureNotCheckedWarning,
    check_compatibility,
    open_bundle,
    open_runner,
    refuse_incompatible,
    run_self_test,
    select_records,
)
from edgeopt.errors import IntegrityError, UserInputError
from edgeopt.core.records import ArtifactRecord


def batch1_median_ms(rec: ArtifactRecord) -> float:
    """The manifest's batch-1 median latency of an artifact (inf when it was not profiled)."""
    for row in rec.latency or ():
        if row["batch"] == 1 and row.get("median_ms") is not None:
            return float(row["median_ms"])
    return math.inf


def candidates(b: Bundle, target: str | None = None) -> list[ArtifactRecord]:
    """The "ok" artifacts (of ``target``: a target name or an artifact id), fastest first by the manifest's
    batch-1 median latency; manifest order breaks ties."""
    return sorted(select_records(b, target), key=batch1_median_ms)


def load(bundle_or_folder: str | Path, target: str | None = None, verify: bool = True, *, public_key=None,
         threads: int | None = None, cache_dir: str | Path | None = None, limits: Limits = Limits(),
         require_signature: bool | None = None) -> "Model":
    """Open a bundle (``.edgeopt.tar.gz``, bundle folder or OUT folder), pick the artifact for this device
    (or ``target``), and return a ready :class:`Model`.

    The pick: the fastest (batch-1 median in the manifest) "ok" artifact whose backend is installed, whose
    device is present and which loads here. With ``verify`` (the default): every file's sha256, the
    manifest's consistency, the signature when ``public_key`` is given, and the self-test (the reference
    inputs through the chosen artifact must give the reference outputs within the tolerance of its
    precision). An archive is always extracted safely, and what the bundle says is checked before it is
    used (file names inside their folders, runtime settings from an allow-list).

    ``require_signature`` (default: the environment variable EDGEOPT_REQUIRE_SIGNATURE): refuse a bundle
    without a signature that ``public_key`` verifies. A signature present but not checked (no key given)
    raises a :class:`SignatureNotCheckedWarning` and is recorded in ``model.verification["signature"]``.
    """
    b = open_bundle(bundle_or_folder, public_key=public_key, check=verify, limits=limits, cache_dir=cache_dir,
                    require_signature=require_signature)
    try:
        return _load_from(b, target, verify, threads)
    except IntegrityError as exc:  # an artifact-level refusal: the archive's extracted copy goes too
        if b.kind == "archive" and b.archive_sha256 and not isinstance(exc, SignatureError):
            from edgeopt.ship.bundle.extract import discard_refused

            discard_refused(b.root, b.archive_sha256)
        raise


def _load_from(b, target, verify, threads) -> "Model":
    tried = []
    for rec in candidates(b, target):
        c = check_compatibility(b, rec)
        if not c.ok:
            tried.append((rec.id, c.reason, c.fix))
            continue
        try:
            runner, art = open_runner(b, rec, threads=threads)
        except IncompatibleError as exc:
            tried.append((rec.id, exc.problem, exc.fix))
            continue
        try:
            verification = {"files_checked": b.files_checked, "signature": b.signature,
                            "signature_state": b.signature_state, "self_test": None, "warnings": list(c.warnings)}
            if verify:
                verification["self_test"] = run_self_test(b, rec, runner=runner)
        except BaseException:
            runner.close()
            raise
        return Model(b, rec, art, runner, verification)
    raise refuse_incompatible(b, tried)


def _follows_batch(name: str, feeds: list[dict], outs: list[dict]) -> bool:
    """Whether axis 0 of output ``name`` has the batch size of the inputs in every reference sample."""
    return all(name in o and o[name].ndim > 0 and o[name].shape[0] == next(iter(f.values())).shape[0]
               for f, o in zip(feeds, outs))


class Model:
    """A loaded artifact. ``infer`` takes a dict of named arrays (or one array for a one-input model) and
    returns a dict of named numpy outputs. Close it (or use ``with``) to free the backend's memory."""

    def __init__(self, b: Bundle, record: ArtifactRecord, art: dict, runner, verification: dict | None):
        self.bundle = b
        self.record = record
        self.runner = runner
        self.verification = verification
        self.spec = runner.spec
        self.id: str = record.id
        self.target: str = record.target
        self.backend: str = record.backend
        self.precision: str = record.precision
        self.backend_version: str | None = art.get("backend_version")

    # ---- metadata ---------------------------------------------------------------------------
    @property
    def manifest(self) -> dict:
        return self.bundle.manifest

    @property
    def root(self) -> Path:
        return self.bundle.root

    @property
    def name(self) -> str | None:
        return self.bundle.model.get("name")

    @property
    def inputs(self) -> list[dict]:
        """[{name, shape (ints and dynamic axis names), dtype, dims: {axis name: [min, max]}}]."""
        out = []
        for t in self.spec.inputs:
            dims = {d: [self.spec.dims[d].min, self.spec.dims[d].max] for d in t.shape if isinstance(d, str)}
            out.append({"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "dims": dims})
        return out

    @property
    def outputs(self) -> list[dict]:
        """[{name, dtype, shape}], from the reference outputs; axis 0 is named after the batch axis when it
        follows the batch."""
        feeds, outs = self.bundle.reference()
        rows = []
        for name in self.spec.outputs or list(outs[0]):
            ref = outs[0].get(name)
            shape = list(ref.shape) if ref is not None else None
            if shape and self.spec.batch_dim and _follows_batch(name, feeds, outs):
                shape[0] = self.spec.batch_dim
            rows.append({"name": name, "dtype": str(ref.dtype) if ref is not None else None, "shape": shape})
        return rows

    @property
    def labels(self) -> list | None:
        pre = self.bundle.model.get("preprocess") or {}
        return self.bundle.model.get("labels") or (pre.get("labels") if isinstance(pre, dict) else None)

    # ---- running ----------------------------------------------------------------------------
    def infer(self, feed: dict[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        if not self.runner.active:
            raise UserInputError(f"The model {self.id} is closed.", "Load it again: edgeopt.load(BUNDLE).")
        return self.runner.infer(feed)

    __call__ = infer

    def preprocess(self, image, input: str | None = None):
        """An image (path, PIL image, HxWxC uint8 array) or a list of them -> the model's input array with a
        batch axis, through the preprocessing spec stored in the manifest (resize, crop, mean/std, layout).
        For a text model (the bundle carries its tokenizer): a sentence or a list of them -> the feed dict
        (input_ids, attention_mask, ...) padded to the length the model was built for."""
        if self.bundle.model.get("tokenizer"):
            return self.tokenize(image)
        pre, name = self._preprocess_spec(input)
        items = image if isinstance(image, (list, tuple)) else [image]
        if not items:
            raise UserInputError("preprocess() got an empty list.", "Pass one image or a list of images.")
        return np.stack([pre.apply(im) for im in items])

    def tokenize(self, text) -> dict[str, np.ndarray]:
        """A sentence or a list of sentences -> the model's integer inputs, with the tokenizer the bundle ships
        (the ``tokenizers`` library: pip install tokenizers)."""
        texts = [text] if isinstance(text, str) else list(text) if isinstance(text, (list, tuple)) else None
        if not texts or not all(isinstance(t, str) for t in texts):  # a dict would give its keys: refused
            raise UserInputError("tokenize() takes a sentence or a list of sentences.", 'model.preprocess("a sentence")')
        tok, info = self._tokenizer()
        enc = tok.encode_batch(texts)
        fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
        feed = {}
        for name in info["inputs"]:
            field = fields.get(name)
            if field is None:
                raise UserInputError(f"The model's input {name!r} is not something a tokenizer gives.",
                                     f"Build the feed yourself: infer({{{name!r}: ...}}).")
            feed[name] = np.array([getattr(e, field) for e in enc], dtype=np.int64)
        return feed

    def embed(self, text) -> np.ndarray:
        """Sentences (or the feed ``preprocess`` made of them) -> L2-normalised embeddings [n, dim], pooled as
        the build judged them ([task] pooling)."""
        from edgeopt.core.tasks import Outputs, TaskConfig, pooled

        cfg = (self.bundle.manifest.get("task") or {}).get("config") or {}
        task = TaskConfig.from_dict({k: v for k, v in cfg.items() if k in ("output", "pooling", "mask_input")})
        feed = dict(text) if isinstance(text, dict) else self.tokenize(text)
        return pooled(task, Outputs([feed], [self.infer(feed)]))

    def _tokenizer(self):
        if getattr(self, "_tok", None) is None:
            import importlib.util

            info = self.bundle.model["tokenizer"]
            if importlib.util.find_spec("tokenizers") is None:
                raise UserInputError("This text model needs the tokenizers library to turn text into token ids.",
                                     "pip install tokenizers (or 'edgeopt[text]').")
            from tokenizers import Tokenizer

            from edgeopt.ship.bundle import safe_relpath

            path = self.bundle.root / safe_relpath(info["path"], "manifest")
            tok = Tokenizer.from_file(str(path))
            length = int(info["max_length"])
            pad = next((t for t in ("[PAD]", "<pad>") if tok.token_to_id(t) is not None), None)
            tok.enable_truncation(max_length=length)
            tok.enable_padding(length=length if info.get("fixed_length", True) else None,
                               pad_id=tok.token_to_id(pad) if pad else 0, pad_token=pad or "[PAD]")
            self._tok = (tok, info)
        return self._tok

    def _preprocess_spec(self, input: str | None):
        from edgeopt.data.preprocess import Preprocess

        spec = self.bundle.model.get("preprocess")
        names = [t.name for t in self.spec.inputs]
        if not spec:
            raise UserInputError(f"The bundle of {self.name!r} records no preprocessing spec.",
                                 f"Pass arrays to infer() shaped as the model takes them ({self._describe_inputs()}), "
                                 "or rebuild with a [preprocess] section in the recipe and bundle again.")
        if isinstance(spec, dict) and set(spec) and set(spec) <= set(names):  # one spec per input name
            name = input or (names[0] if len(spec) == 1 and names[0] in spec else None)
            if name not in spec:
                raise UserInputError(f"Preprocessing is recorded for inputs {sorted(spec)}.",
                                     "Name one of them: model.preprocess(image, input=NAME).")
            return Preprocess.from_dict(spec[name], where=f"preprocess.{name}"), name
        if input is not None and input not in names:
            raise UserInputError(f"The model has no input {input!r}.", f"Its inputs: {names}.")
        return Preprocess.from_dict(spec), input or names[0]

    def _describe_inputs(self) -> str:
        return ", ".join(f"{t['name']}: {t['dtype']}[{','.join(map(str, t['shape']))}]" for t in self.inputs)

    # ---- detection --------------------------------------------------------------------------
    @property
    def task(self):
        """The task the model was built and judged for (``edgeopt.core.tasks.TaskConfig``), from the manifest;
        None when the bundle records none."""
        from edgeopt.core.tasks import TaskConfig

        rec = self.manifest.get("task")
        cfg = rec.get("config") if isinstance(rec, dict) else None
        return TaskConfig.from_dict(cfg) if isinstance(cfg, dict) else None

    def postprocess(self, outputs: dict[str, np.ndarray], original_size=None, input: str | None = None) -> list[dict]:
        """A detector's outputs -> one dict per image: ``boxes`` [n, 4] (x1, y1, x2, y2 in the original image's
        pixels, clipped to it), ``scores`` [n], ``labels`` [n] (and ``names`` when the bundle has labels).

        Decoding follows the bundle's ``[task]`` (torchvision-style outputs as they are; a YOLO-style raw head
        decoded with its score threshold and class-wise NMS). ``original_size``: (height, width) of the image
        given to :meth:`preprocess`, or a list of them, one per image; the preprocessing recorded in the
        bundle (letterbox, resize, crop) is undone. Without it, boxes stay in the input's pixels."""
        from edgeopt.core.detection import decode

        task = self.task
        if task is not None and task.type == "segmentation":
            return self._segment(task, outputs, original_size, input)
        if task is None or task.type != "detection":
            raise UserInputError(f"The bundle of {self.name!r} is not a detector's (task: "
                                 f"{getattr(task, 'type', None)}).", 'Build it with [task] type = "detection".')
        dets = decode(task, [outputs])
        sizes = original_size if isinstance(original_size, list) else [original_size] * len(dets)
        if len(sizes) != len(dets):
            raise UserInputError(f"{len(sizes)} original sizes for {len(dets)} images of detections.",
                                 "Give one (height, width) per image.")
        pre = None
        if original_size is not None:
            try:
                pre, _ = self._preprocess_spec(input)
            except UserInputError:
                pre = None  # no preprocessing recorded: the input is the image, resized to the input's size
        names = self.labels
        out = []
        for d, size in zip(dets, sizes):
            boxes = d.boxes.astype(np.float32).copy()
            if size is not None:
                h0, w0 = (int(v) for v in size)
                if pre is not None:
                    sy, sx, dy, dx = pre.geometry((h0, w0))
                else:
                    hw = self._input_hw(input)
                    sy, sx, dy, dx = hw[0] / h0, hw[1] / w0, 0.0, 0.0
                boxes[:, [0, 2]] = np.clip((boxes[:, [0, 2]] - dx) / sx, 0, w0)
                boxes[:, [1, 3]] = np.clip((boxes[:, [1, 3]] - dy) / sy, 0, h0)
            item = {"boxes": boxes, "scores": d.scores, "labels": d.labels}
            if names:
                item["names"] = [str(names[i]) if 0 <= i < len(names) else str(i) for i in d.labels.tolist()]
            out.append(item)
        return out

    def _segment(self, task, outputs: dict[str, np.ndarray], original_size, input: str | None) -> list[dict]:
        """A segmentation model's outputs -> one dict per image: ``mask`` [H, W] of class indices (the argmax of
        the per-class scores) in the original image's size when ``original_size`` is given (the recorded
        preprocessing undone, nearest neighbour; pixels it cropped away are 255), and ``names`` (the bundle's
        labels) when it has them."""
        from edgeopt.core.segmentation import masks, to_original

        name = task.output or next(iter(outputs))
        if name not in outputs:
            raise UserInputError(f"The outputs have no {name!r} (they have {sorted(outputs)}).",
                                 "Pass the dict infer() returned.")
        found = masks(outputs[name], name)
        sizes = original_size if isinstance(original_size, list) else [original_size] * len(found)
        if len(sizes) != len(found):
            raise UserInputError(f"{len(sizes)} original sizes for {len(found)} masks.",
                                 "Give one (height, width) per image.")
        out = []
        for mask, size in zip(found, sizes):
            if size is not None:
                h0, w0 = (int(v) for v in size)
                try:
                    pre, _ = self._preprocess_spec(input)
                except UserInputError:
                    pre = None  # no preprocessing recorded: the input is the image, resized to the input's size
                hw = self._input_hw(input)
                geometry = pre.geometry((h0, w0)) if pre is not None else (hw[0] / h0, hw[1] / w0, 0.0, 0.0)
                mask = to_original(mask, (h0, w0), geometry, hw)
            item = {"mask": mask}
            if self.labels:
                item["names"] = [str(n) for n in self.labels]
            out.append(item)
        return out

    def _input_hw(self, input: str | None) -> tuple[int, int]:
        t = next((t for t in self.spec.inputs if t.name == (input or self.spec.inputs[0].name)), None)
        dims = [d if isinstance(d, int) else self.spec.dims[d].opt for d in (t.shape if t else ())]
        if len(dims) != 4:
            raise UserInputError("The model's input is not an image batch.", "Pass original_size=None.")
        return (dims[1], dims[2]) if dims[3] in (1, 3) and dims[1] not in (1, 3) else (dims[2], dims[3])

    # ---- life cycle -------------------------------------------------------------------------
    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self.runner.active else "closed"
        return f"<edgeopt.Model {self.name} artifact={self.id} backend={self.backend} {state}>"


__all__ = ["IncompatibleError", "Model", "SignatureNotCheckedWarning", "batch1_median_ms", "candidates", "load"]
