"""Input/output specification: names, shapes with named dynamic axes, dtypes, value ranges.

Numpy only: this module is used on devices without torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from edgeopt.errors import UserInputError

DTYPES: dict[str, type] = {
    "float32": np.float32,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "bool": np.bool_,
    "uint8": np.uint8,
}


def check_dtype(name: str, where: str) -> str:
    if name not in DTYPES:
        raise UserInputError(
            f"{where}: unknown dtype {name!r}.", f"Use one of: {', '.join(DTYPES)}."
        )
    return name


MAX_SIZE = 2**31 - 1  # one axis
MAX_RANK = 16
MAX_EXACT = 2**53  # a value range beyond this is not exact in a float (TOML numbers, JSON manifests)


def _is_size(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIZE


@dataclass(frozen=True)
class Dim:
    """A named dynamic axis with the range an artifact must support (min <= opt <= max), every size a
    multiple of ``multiple_of`` (a detector's stride: H and W multiples of 32)."""

    name: str
    min: int
    opt: int
    max: int
    multiple_of: int = 1

    def __post_init__(self):
        if not all(_is_size(v) for v in (self.min, self.opt, self.max)):
            raise UserInputError(
                f"Dynamic axis {self.name!r}: min, opt and max must be integers from 1 to {MAX_SIZE}, got "
                f"min={self.min!r} opt={self.opt!r} max={self.max!r}.",
                "Fix the range, for example batch = {min = 1, opt = 1, max = 32}.")
        if not (1 <= self.min <= self.opt <= self.max):
            raise UserInputError(
                f"Dynamic axis {self.name!r}: need 1 <= min <= opt <= max, got "
                f"min={self.min} opt={self.opt} max={self.max}.",
                "Fix the range, for example batch = {min = 1, opt = 1, max = 32}.",
            )
        k = self.multiple_of
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise UserInputError(f"Dynamic axis {self.name!r}: multiple_of = {k!r} is not a positive integer.",
                                 "For example multiple_of = 32.")
        bad = [f"{w}={v}" for w, v in (("min", self.min), ("opt", self.opt), ("max", self.max)) if v % k]
        if bad:
            raise UserInputError(f"Dynamic axis {self.name!r}: {', '.join(bad)} not a multiple of {k}.",
                                 f"Use sizes that are multiples of {k}, for example min = {k}, max = {k * 20}.")

    def sizes(self) -> list[int]:
        """min, opt and max (distinct): the sizes parity samples cover."""
        return sorted({self.min, self.opt, self.max})


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # ints, or names of Dims
    dtype: str = "float32"
    range: tuple[float, float] | None = None  # values of random samples: [low, high)

    @property
    def np_dtype(self):
        return DTYPES[self.dtype]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def value_range(self) -> tuple[float, float]:
        if self.range is not None:
            return self.range
        if self.dtype == "bool":
            return (0, 2)
        if self.dtype.startswith(("int", "uint")):
            return (0, 100)
        return (0.0, 1.0)


@dataclass(frozen=True)
class IOSpec:
    inputs: tuple[TensorSpec, ...]
    dims: dict = field(default_factory=dict)  # name -> Dim
    outputs: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.inputs:
            raise UserInputError("The model has no inputs declared.", "Declare at least one [[inputs]] entry.")
        names = [t.name for t in self.inputs]
        if len(set(names)) != len(names):
            raise UserInputError(f"Input names repeat: {names}.", "Give every input a unique name.")
        for t in self.inputs:
            for d in t.shape:
                if isinstance(d, str) and d not in self.dims:
                    raise UserInputError(
                        f"Input {t.name!r} uses dynamic axis {d!r} but no range is declared for it.",
                        f"Add [dims.{d}] with min, opt and max (CLI: --dim {d}=1:1:8).",
                    )
                if isinstance(d, int) and d < 1:
                    raise UserInputError(f"Input {t.name!r} has a dimension {d} < 1.", "Use positive sizes.")

    # ---- shapes -------------------------------------------------------------------------------
    def _first_axis(self) -> str | int | None:
        """Axis 0 of every input when they all share it (a dim name or a size), else None."""
        firsts = {t.shape[0] if t.shape else None for t in self.inputs}
        return next(iter(firsts)) if len(firsts) == 1 else None

    @property
    def batch_dim(self) -> str | None:
        """The dynamic axis that is axis 0 of every input, if there is one."""
        d = self._first_axis()
        return d if isinstance(d, str) else None

    def fixed_batch(self) -> int | None:
        d = self._first_axis()
        return d if isinstance(d, int) else None

    def batch_range(self) -> tuple[int, int]:
        b = self.batch_dim
        if b:
            return self.dims[b].min, self.dims[b].max
        fb = self.fixed_batch() or 1
        return fb, fb

    def shape_of(self, t: TensorSpec, sizes: dict[str, int] | None = None, which: str = "opt") -> tuple[int, ...]:
        sizes = sizes or {}
        out = []
        for d in t.shape:
            if isinstance(d, str):
                out.append(int(sizes.get(d, getattr(self.dims[d], which))))
            else:
                out.append(d)
        return tuple(out)

    def sizes_for_batch(self, batch: int | None) -> dict[str, int]:
        if batch is None:
            return {}
        b = self.batch_dim
        if b is None:
            fb = self.fixed_batch()
            if fb is not None and fb != batch:
                raise UserInputError(
                    f"The model's batch is fixed at {fb}; batch {batch} was asked for.",
                    "Declare the batch axis as dynamic (for example shape = [\"batch\", ...] and [dims.batch]) "
                    "or only ask for the fixed batch.",
                )
            return {}
        lo, hi = self.dims[b].min, self.dims[b].max
        if not lo <= batch <= hi:
            raise UserInputError(
                f"Batch {batch} is outside the declared range {lo}..{hi} of axis {b!r}.",
                f"Ask for a batch within {lo}..{hi} or widen [dims.{b}].",
            )
        return {b: batch}

    # ---- samples ------------------------------------------------------------------------------
    def random_feed(self, rng: np.random.Generator, batch: int | None = None,
                    sizes: dict[str, int] | None = None) -> dict[str, np.ndarray]:
        sizes = {**(sizes or {}), **self.sizes_for_batch(batch)}
        feed = {}
        for t in self.inputs:
            shape = self.shape_of(t, sizes)
            lo, hi = t.value_range()
            if t.dtype == "bool":
                arr = rng.integers(0, 2, size=shape).astype(bool)
            elif np.issubdtype(t.np_dtype, np.integer):
                arr = rng.integers(int(lo), max(int(hi), int(lo) + 1), size=shape).astype(t.np_dtype)
            else:
                arr = rng.uniform(lo, hi, size=shape).astype(t.np_dtype)
            feed[t.name] = arr
        return feed

    def check_feed(self, feed: dict[str, np.ndarray], where: str = "inference") -> None:
        """Raise a clear error when names, dtypes, ranks or fixed/dynamic sizes do not match the spec."""
        want = [t.name for t in self.inputs]
        missing = [n for n in want if n not in feed]
        extra = [n for n in feed if n not in want]
        if missing or extra:
            raise UserInputError(
                f"{where}: inputs do not match the model: missing {missing}, unexpected {extra}.",
                f"Pass exactly these inputs: {want}.",
            )
        seen: dict[str, int] = {}
        for t in self.inputs:
            arr = np.asarray(feed[t.name])
            if arr.dtype != t.np_dtype:
                raise UserInputError(
                    f"{where}: input {t.name!r} has dtype {arr.dtype}, the model takes {t.dtype}.",
                    f"Convert it, for example arr.astype(numpy.{t.dtype}).",
                )
            if arr.ndim != len(t.shape):
                raise UserInputError(
                    f"{where}: input {t.name!r} has shape {arr.shape}, the model takes {self.describe(t)}.",
                    "Reshape the input to the declared rank.",
                )
            for axis, (d, n) in enumerate(zip(t.shape, arr.shape)):
                if isinstance(d, int) and d != n:
                    raise UserInputError(
                        f"{where}: input {t.name!r} has shape {arr.shape}; axis {axis} must be {d}.",
                        f"Give {t.name!r} the shape {self.describe(t)}.",
                    )
                if isinstance(d, str):
                    dim = self.dims[d]
                    if not dim.min <= n <= dim.max:
                        raise UserInputError(
                            f"{where}: input {t.name!r} axis {axis} ({d}) is {n}, outside {dim.min}..{dim.max}.",
                            f"Keep {d} within {dim.min}..{dim.max}, or rebuild with a wider range.",
                        )
                    if n % dim.multiple_of:
                        raise UserInputError(
                            f"{where}: input {t.name!r} axis {axis} ({d}) is {n}, not a multiple of "
                            f"{dim.multiple_of}.", f"Pad or resize {d} to a multiple of {dim.multiple_of}.")
                    if seen.setdefault(d, n) != n:
                        raise UserInputError(
                            f"{where}: axis {d!r} is {seen[d]} in one input and {n} in {t.name!r}.",
                            f"Give every input the same {d} size.",
                        )

    @staticmethod
    def describe(t: TensorSpec) -> str:
        return f"{t.dtype}[{','.join(str(d) for d in t.shape)}]"

    # ---- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "inputs": [
                {"name": t.name, "shape": list(t.shape), "dtype": t.dtype,
                 **({"range": list(t.range)} if t.range is not None else {})}
                for t in self.inputs
            ],
            "dims": {n: {"min": d.min, "opt": d.opt, "max": d.max,
                         **({"multiple_of": d.multiple_of} if d.multiple_of != 1 else {})}
                     for n, d in self.dims.items()},
            "outputs": list(self.outputs),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "IOSpec":
        """From a manifest's or recipe's model section (untrusted: wrong types are a clear error)."""
        if not isinstance(data, dict):
            raise UserInputError("The model's I/O spec is not a table.", "Declare [[inputs]] and [dims.*].")
        raw_dims, raw_inputs, outputs = data.get("dims") or {}, data.get("inputs"), data.get("outputs") or ()
        if not isinstance(raw_dims, dict) or not all(isinstance(d, dict) for d in raw_dims.values()):
            raise UserInputError("The dynamic axes (dims) are not a table of {min, opt, max} tables.",
                                 "Write [dims.batch] min = 1, opt = 1, max = 32.")
        if not isinstance(raw_inputs, (list, tuple)) or not all(isinstance(i, dict) for i in raw_inputs):
            raise UserInputError("The inputs are not a list of tables.", 'Write [[inputs]] name = "x" shape = [...].')
        if not isinstance(outputs, (list, tuple)) or not all(isinstance(o, str) and o for o in outputs):
            raise UserInputError(f"The outputs {outputs!r} are not a list of names.", 'Write outputs = ["logits"].')
        dims = {}
        for n, d in raw_dims.items():
            if "min" not in d or "max" not in d:
                raise UserInputError(f"Dynamic axis {n!r} needs min and max.", f"[dims.{n}] min = 1, opt = 1, max = 32")
            dims[n] = Dim(n, d["min"], d.get("opt", d["min"]), d["max"], d.get("multiple_of", 1))
        inputs = tuple(tensor_from_dict(i) for i in raw_inputs)
        return cls(inputs=inputs, dims=dims, outputs=tuple(outputs))

    def with_outputs(self, names) -> "IOSpec":
        return IOSpec(self.inputs, self.dims, tuple(names))


def tensor_from_dict(d: dict) -> TensorSpec:
    if not isinstance(d, dict):
        raise UserInputError(f"An input is {type(d).__name__}, not a table.", 'Write [[inputs]] name = "x" shape = [...].')
    name = d.get("name")
    if not name or not isinstance(name, str) or len(name) > 255 or not name.isprintable():
        raise UserInputError(f"An input has no usable name ({name!r}).",
                             "Give every [[inputs]] entry a name (printable, at most 255 characters).")
    shape = d.get("shape")
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_RANK:
        raise UserInputError(f"Input {name!r} has no shape list of at most {MAX_RANK} axes.",
                             'Write shape = ["batch", 3, 224, 224].')
    for x in shape:
        if not (_is_size(x) or (isinstance(x, str) and x and len(x) <= 64 and x.isprintable())):
            raise UserInputError(f"Input {name!r}: shape entry {x!r} is neither a size from 1 to {MAX_SIZE} nor "
                                 "the name of a dynamic axis.", 'Write shape = ["batch", 3, 224, 224].')
    dtype = d.get("dtype", "float32")
    dtype = check_dtype(dtype if isinstance(dtype, str) else repr(dtype), f"input {name!r}")
    rng = d.get("range")
    if rng is not None:
        _check_range(name, dtype, rng)
    return TensorSpec(name=name, shape=tuple(shape), dtype=dtype, range=tuple(rng) if rng is not None else None)


def _check_range(name: str, dtype: str, rng) -> None:
    """[low, high): finite numbers, low < high, within what ``dtype`` holds (and exact in a float)."""
    import math

    ok = (isinstance(rng, (list, tuple)) and len(rng) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in rng)
          and rng[0] < rng[1])
    if not ok:
        raise UserInputError(f"Input {name!r}: range must be [low, high) with finite low < high, got {rng!r}.",
                             "For example range = [0, 1].")
    if dtype == "bool":
        lo, hi = 0, 2
    elif np.issubdtype(DTYPES[dtype], np.integer):
        info = np.iinfo(DTYPES[dtype])
        lo, hi = max(int(info.min), -MAX_EXACT), min(int(info.max), MAX_EXACT)
    else:
        lo = -(hi := min(float(np.finfo(DTYPES[dtype]).max), 1e9))
    if not (lo <= rng[0] and rng[1] <= hi):
        raise UserInputError(f"Input {name!r}: range {list(rng)} is outside what {dtype} samples may hold "
                             f"({lo:g} to {hi:g}).", f"Give a range within {lo:g} to {hi:g}, for example [0, 1].")


_INPUT_RE = re.compile(r"^(?P<name>[A-Za-z_][\w.]*):(?P<dtype>\w+)\[(?P<shape>[^\]]*)\](?:@(?P<lo>-?[\d.e+-]+),(?P<hi>-?[\d.e+-]+))?$")


def parse_input_arg(text: str) -> TensorSpec:
    """``input_ids:int64[batch,seq]`` or ``image:float32[batch,3,224,224]@0,1`` (optional value range)."""
    m = _INPUT_RE.match(text.replace(" ", ""))
    if not m:
        raise UserInputError(
            f"Cannot read input spec {text!r}.",
            "Write NAME:DTYPE[DIM,...], for example image:float32[batch,3,224,224] "
            "or input_ids:int64[batch,seq]@0,30522.",
        )
    shape = tuple(int(s[:12]) if s.isdigit() else s for s in m["shape"].split(",") if s)
    try:
        rng = (float(m["lo"]), float(m["hi"])) if m["lo"] is not None else None
    except ValueError:
        raise UserInputError(f"Cannot read the value range of {text!r}.", "Write @LOW,HIGH, for example @0,1.") from None
    return tensor_from_dict({"name": m["name"], "dtype": m["dtype"], "shape": list(shape), "range": rng})


def parse_dim_arg(text: str) -> Dim:
    """``batch=1:8:32`` (min:opt:max) or ``batch=1:32`` (opt = min)."""
    m = re.match(r"^([A-Za-z_]\w*)=(\d+):(\d+)(?::(\d+))?$", text.replace(" ", ""))
    if not m:
        raise UserInputError(f"Cannot read dynamic axis {text!r}.", "Write NAME=MIN:OPT:MAX, for example batch=1:8:32.")
    lo, b, c = int(m[2][:12]), int(m[3][:12]), m[4]  # longer digit strings are over MAX_SIZE anyway
    return Dim(m[1], lo, b, int(c[:12])) if c is not None else Dim(m[1], lo, lo, b)
