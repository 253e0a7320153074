"""The build recipe: a TOML file parsed once into small typed objects. The core never sees raw dicts.

```toml
[model]
name = "digits-cnn"
source = "model.py:build"          # file.py:factory | package.module:factory | model.onnx | model.pt2
checkpoint = "weights.pt"          # | torchscript.pt | hf:path/to/local/transformers/folder
kind = "cnn"                       # cnn | transformer | detector | generic (picks compression recipes)

targets = ["ort-cpu", "openvino-cpu"]  # top-level keys go before the first [section] (TOML)
precisions = ["fp32", "bf16"]

[[inputs]]
name = "image"
shape = ["batch", 1, 8, 8]
dtype = "float32"
range = [0.0, 1.0]                 # values for random samples

[dims.batch]
min = 1
opt = 1
max = 32

[options.tensorrt]                 # options for every target of a backend, or [options.TARGET] for one target:
nms = "plugin"                     # added to (and over) the target file's [options]
```
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from edgeopt.config.compression import CompressionConfig
from edgeopt.config.pruning import FinetuneConfig, PruningConfig
from edgeopt.config.qat import QatConfig
from edgeopt.config.budgets import Budgets
from edgeopt.config.schema import DIM, OPTIONS, TOLERANCE, check_inputs_fit, check_recipe, data_section
from edgeopt.core.checks import (SEED, Check, boolean, either, integer, key, keys_of, list_of, map_of, number,
                                 path_text, table_of, text)
from edgeopt.errors import UserInputError
from edgeopt.core.parity import DEFAULT_TOLERANCES, Tolerance
from edgeopt.core.profile import ProfileConfig
from edgeopt.core.tasks import TaskConfig
from edgeopt.core.resources import load_toml
from edgeopt.core.spec import Dim, IOSpec, tensor_from_dict
from edgeopt.core.targets import PRECISIONS

MODEL_KINDS = ("cnn", "transformer", "detector", "generic")


def _reject_unknown(section: str, data: dict, allowed) -> None:
    """Unknown keys of a section (``allowed``: a config dataclass, or the names), keys that belong at the top
    level named as such."""
    if isinstance(allowed, type):
        allowed = tuple(keys_of(allowed))
    unknown = sorted(set(data) - set(allowed))
    misplaced = [k for k in unknown if k in TOP_KEYS and section != "top level"]
    if misplaced:  # TOML puts every key written after a [section] header into that section
        raise UserInputError(f"Recipe section [{section}] has keys {misplaced} that belong at the top level.",
                             f"Move {', '.join(misplaced)} above the first [section] of the recipe (in TOML, a key "
                             "written after a [section] header belongs to that section).")
    if unknown:
        raise UserInputError(f"Recipe section [{section}] has unknown keys {unknown}.",
                             f"Allowed keys: {', '.join(sorted(allowed))}.")


def _section(cls, name: str, data: dict | None):
    data = dict(data or {})
    _reject_unknown(name, data, cls)
    return cls(**data)


@dataclass(frozen=True)
class ModelConfig:
    source: str = key(check=path_text,
                      doc="file.py:factory | package.module:factory | model.onnx | model.pt2 | hf:FOLDER")
    checkpoint: str | None = key(None, check=path_text, doc="state_dict for the factory's model | torchscript.pt")
    name: str | None = key(None, check=text(), doc="the model's name in reports and bundles")
    kind: str = key("generic", check=text(32), doc="cnn | transformer | detector | generic (picks compression recipes)")
    allow_pickle: bool = key(False, check=boolean, doc="full unpickling of a checkpoint: only when the user opts in")
    outputs: tuple[str, ...] = key((), check=list_of(text(), 0, 4096), doc="rename the flattened outputs")
    labels: tuple[str, ...] = key((), check=list_of(either(text(1000), number(), want="a label (text)"), 0, 1_000_000),
                                  doc="class names, shipped in bundles")
    call: str = key("positional", check=text(32),
                    doc="positional | keywords | list (torchvision detectors take a list of images)")
    adapter: tuple[str, ...] = key((), check=either(path_text, list_of(path_text, 1, 64),
                                                    want="a PEFT adapter folder or a list of them"),
                                   doc="PEFT adapter folder(s) on the base model: one artifact set per adapter")

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise UserInputError(f"Unknown model kind {self.kind!r}.", f"Use one of: {', '.join(MODEL_KINDS)}.")
        if self.call not in ("positional", "keywords", "list"):
            raise UserInputError(f"Unknown call style {self.call!r}.", "Use positional, keywords or list.")


@dataclass(frozen=True)
class ExportConfig:
    opset: int = key(18, check=integer(1, 100), doc="ONNX opset, 11 to 23")
    exporter: str = key("auto", check=text(16), doc="auto (dynamo, legacy on failure) | dynamo | legacy")
    slim: bool = key(True, check=boolean, doc="simplify the exported graph (onnxslim)")

    def __post_init__(self):
        if self.exporter not in ("auto", "dynamo", "legacy"):
            raise UserInputError(f"Unknown exporter {self.exporter!r}.", "Use auto, dynamo or legacy.")
        if not 11 <= int(self.opset) <= 23:
            raise UserInputError(f"Opset {self.opset} is out of range.", "Use an opset between 11 and 23 (default 18).")


@dataclass(frozen=True)
class ParityConfig:
    samples: int = key(3, check=integer(1, 1000),
                       doc="random samples at batch 1; one more at a batch > 1 when the batch is dynamic")
    seed: int = key(0, check=SEED, doc="seed of the random samples")
    tolerances: dict = key(factory=dict, check=map_of(TOLERANCE, "parity.tolerances"),
                           doc='per precision: [parity.tolerances.fp32] atol, rtol, min_cosine, max_map_drop')

    def __post_init__(self):
        for p, t in self.tolerances.items():
            if p not in DEFAULT_TOLERANCES:
                raise UserInputError(f"[parity.tolerances] names unknown precision {p!r}.", f"Use {list(PRECISIONS)}.")
            _reject_unknown(f"parity.tolerances.{p}", t, Tolerance)



@dataclass(frozen=True)
class Recipe:
    model: ModelConfig
    spec: IOSpec | None  # None: no [[inputs]], read from the model (pipeline.intake.complete_inputs) before use
    targets: tuple[str, ...] = ()  # empty: every target that can run here
    precisions: tuple[str, ...] = ("fp32", "bf16")
    export: ExportConfig = field(default_factory=ExportConfig)
    parity: ParityConfig = field(default_factory=ParityConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    calibration: object | None = None  # data.DataConfig
    evaluation: object | None = None  # data.DataConfig
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    pruning: object = None  # compress.prune.PruningConfig
    qat: QatConfig | None = None  # [qat]: quantization-aware training when post-training INT8 misses the budget
    preprocess: object = None  # data.Preprocess: how raw images become the model's input (shipped in bundles)
    select: object = None  # select.Budgets: `edgeopt build` ends by selecting the fastest artifact within them
    task: TaskConfig = field(default_factory=TaskConfig)  # what the model is for: how every artifact is judged
    task_given: tuple[str, ...] = ()  # the [task] keys the recipe writes (the others may come from the model)
    read_from_model: tuple[str, ...] = ()  # what the model told that the recipe left out: "inputs", "preprocess"
    options: dict = field(default_factory=dict)  # [options.BACKEND] / [options.TARGET]: target options, per recipe
    base_dir: Path = Path(".")
    path: str = ""

    def resolve(self, rel: str | None) -> str | None:
        """A path relative to the recipe's folder (module paths and ``hf:`` stay as they are)."""
        if rel is None:
            return None
        head, sep, tail = rel.partition(":")
        if head == "hf" and sep:
            p = self.base_dir / tail
            return f"hf:{p if p.exists() else tail}"
        if sep and head.endswith(".py"):
            return f"{self.base_dir / head}:{tail}"
        p = self.base_dir / rel
        return str(p) if p.exists() or not sep else rel

    def shipped_preprocess(self) -> dict | None:
        """The preprocessing recorded for the runtime: [preprocess], else that of the evaluation or
        calibration data (None when none is declared)."""
        for pre in (self.preprocess, getattr(self.evaluation, "preprocess", None),
                    getattr(self.calibration, "preprocess", None)):
            if pre is not None:
                return pre.to_dict()
        return None

    def target_options(self, target):
        """``target`` with this recipe's options added to its own: ``[options.<backend>]`` for every target of
        that backend, then ``[options.<target name>]`` (the more specific wins)."""
        extra = {**self.options.get(target.backend, {}), **self.options.get(target.name, {})}
        return replace(target, options={**target.options, **extra}) if extra else target

    def with_overrides(self, **kw) -> "Recipe":
        kw = {k: v for k, v in kw.items() if v not in (None, (), [])}
        return replace(self, **kw)


TOP_KEYS = ("model", "inputs", "dims", "outputs", "targets", "precisions", "export", "parity", "profile",
            "calibration", "evaluation", "compression", "pruning", "qat", "select", "preprocess", "task", "options")


def section_checks() -> dict[str, Check]:
    """The check of every [section], read from the keys its dataclass declares (edgeopt.core.checks.key)."""
    from edgeopt.data.dataset import DataConfig
    from edgeopt.data.preprocess import Preprocess

    pre = table_of(Preprocess)
    data = data_section(table_of(DataConfig, extra={"preprocess": pre}))
    finetune = table_of(FinetuneConfig, extra={"preprocess": pre})
    return {
        "model": table_of(ModelConfig, "[model]"), "dims": map_of(DIM, "dims"),
        "export": table_of(ExportConfig, "[export]"), "parity": table_of(ParityConfig, "[parity]"),
        "profile": table_of(ProfileConfig, "[profile]"), "calibration": data, "evaluation": data,
        "compression": table_of(CompressionConfig, "[compression]"),
        "pruning": table_of(PruningConfig, "[pruning]", extra={"finetune": finetune}),
        "qat": table_of(QatConfig, "[qat]", extra={"preprocess": pre}),
        "select": table_of(Budgets, "[select]"), "preprocess": pre, "options": OPTIONS,
    }


CHECKPOINT_SUFFIXES = (".pt", ".pth")


def reads_own_inputs(model: ModelConfig) -> bool:
    """Whether the model source may tell its own inputs, so the recipe may leave out [[inputs]]: a checkpoint file
    given as the source (Ultralytics' best.pt records the image size it was trained at), no factory beside it."""
    src = Path(str(model.source))
    return not model.checkpoint and ":" not in src.name and src.suffix in CHECKPOINT_SUFFIXES


def recipe_from_dict(data: dict, base_dir: Path, path: str = "") -> Recipe:
    check_recipe(data, section_checks())  # types, ranges and lengths of every key: a clear error, no traceback
    _reject_unknown("top level", data, TOP_KEYS)
    if "model" not in data or "source" not in data["model"]:
        raise UserInputError("The recipe has no [model] source.", 'Add [model] source = "model.py:build".')
    m = dict(data["model"])
    m["outputs"] = tuple(m.get("outputs", ()))
    m["labels"] = tuple(str(x) for x in m.get("labels", ()))
    if "adapter" in m:
        m["adapter"] = (m["adapter"],) if isinstance(m["adapter"], str) else tuple(m["adapter"])
    model = _section(ModelConfig, "model", m)
    if not data.get("inputs") and not reads_own_inputs(model):
        raise UserInputError("The recipe declares no [[inputs]].",
                             'Add [[inputs]] name = "input" shape = ["batch", 3, 224, 224] dtype = "float32".')
    dims = {}
    for n, d in data.get("dims", {}).items():
        _reject_unknown(f"dims.{n}", d, ("min", "opt", "max", "multiple_of"))
        if "min" not in d or "max" not in d:
            raise UserInputError(f"[dims.{n}] needs min and max.", f"[dims.{n}] min = 1, opt = 1, max = 32")
        dims[n] = Dim(n, d["min"], d.get("opt", d["min"]), d["max"], d.get("multiple_of", 1))
    spec = None  # read from the checkpoint before the build uses it
    if data.get("inputs"):
        for i in data["inputs"]:
            _reject_unknown("inputs", i, ("name", "shape", "dtype", "range"))
        spec = IOSpec(inputs=tuple(tensor_from_dict(i) for i in data["inputs"]), dims=dims,
                      outputs=tuple(data.get("outputs", ())) or model.outputs)
        check_inputs_fit(spec)
    precisions = tuple(data.get("precisions", Recipe.precisions))
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise UserInputError(f"Unknown precisions {bad}.", f"Use any of: {', '.join(PRECISIONS)}.")
    prof = dict(data.get("profile", {}))
    if "batches" in prof:
        prof["batches"] = tuple(int(b) for b in prof["batches"])
    recipe = Recipe(
        model=model, spec=spec, targets=tuple(data.get("targets", ())), precisions=precisions,
        export=_section(ExportConfig, "export", data.get("export")),
        parity=_section(ParityConfig, "parity", data.get("parity")),
        profile=_section(ProfileConfig, "profile", prof),
        compression=CompressionConfig.from_dict(data.get("compression")),
        pruning=PruningConfig.from_dict(data.get("pruning")),
        qat=QatConfig.from_dict(data.get("qat")),
        task=TaskConfig.from_dict(data.get("task")),
        task_given=tuple(str(k) for k in (data.get("task") or {})),
        select=Budgets.from_dict(data["select"]) if data.get("select") else None, base_dir=base_dir, path=path,
        options={str(k): dict(v) for k, v in (data.get("options") or {}).items()},
    )
    data_sections = {}
    for key in ("calibration", "evaluation"):
        if data.get(key):
            from edgeopt.data.dataset import DataConfig

            data_sections[key] = DataConfig.from_dict(data[key], base_dir)
    if data.get("preprocess"):
        from edgeopt.data.dataset import Preprocess

        data_sections["preprocess"] = pre = Preprocess.from_dict(data["preprocess"])
        for key in ("calibration", "evaluation"):  # image folders without their own preprocess use this one
            if key in data_sections and data_sections[key].preprocess is None:
                data_sections[key] = replace(data_sections[key], preprocess=pre)
    return replace(recipe, **data_sections)


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    return recipe_from_dict(load_toml(path), path.resolve().parent, str(path))
