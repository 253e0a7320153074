"""The options of the compression stage: one small dataclass, parsed once from the recipe."""

from __future__ import annotations

from dataclasses import dataclass, fields

from edgeopt.errors import UserInputError
from edgeopt.core.checks import boolean, integer, key, list_of, number, reject_unknown, text


@dataclass(frozen=True)
class CompressionConfig:
    # points of true top-1 / mAP50 with labels; without, of the same metric estimated from FP32's outputs
    # (expected top-1 under FP32's probabilities, mAP50 against FP32's detections): edgeopt.core.tasks
    max_drop: float = key(1.0, check=number(0, 100),
                          doc="allowed task-metric drop vs FP32, in points (absolute) or % (relative)")
    drop_type: str = key("absolute", check=text(16), doc="absolute | relative")
    min_cosine: float = key(0.99, check=number(-1, 1),
                            doc="without labels: minimum cosine similarity of outputs vs FP32")
    candidates: tuple[str, ...] = key((), check=list_of(text(64), 0, 32),
                                      doc="ONNX Runtime recipes to try (default: by model kind; the backend checks "
                                      "names)")
    accuracy_control: bool = key(True, check=boolean,
                                 doc="when over budget, let NNCF keep the most sensitive layers in float")
    subset_size: int = key(300, check=integer(1, 1_000_000), doc="calibration samples NNCF uses at most")
    ac_max_iterations: int | None = key(None, check=integer(1, 1_000_000),
                                        doc="accuracy control: at most this many layer groups reverted to float")
    ac_ranking_subset: int | None = key(None, check=integer(1, 1_000_000),
                                        doc="accuracy control: judge-set samples used to rank layers (default all)")
    preset: str | None = key(None, check=text(16), doc="NNCF preset: performance | mixed (default: by model kind)")
    timing_s: float = key(0.4, check=number(0, 600), doc="seconds of quick timing per candidate")
    float_head: str = key("auto", check=text(8),
                          doc="keep a detector's post-processing in float: auto (detectors) | on | off")
    float_nodes: tuple[str, ...] = key((), check=list_of(text(1024), 0, 4096),
                                       doc="more ONNX nodes every INT8 recipe leaves in float: names or name prefixes")
    reduce_range: str = key("auto", check=text(8),
                            doc="ONNX Runtime recipes: 7-bit weights, auto (x86 CPUs without VNNI) | on | off")
    stronger_ptq: bool = key(True, check=boolean, doc="when over budget, first try NNCF's stronger post-training "
                             "options (full bias correction, SmoothQuant)")
    mixed_precision: bool = key(True, check=boolean, doc="when over budget, put back in float the fewest layers "
                                "that cost most, measured")
    mixed_time_s: float = key(600.0, check=number(0, 86400, above=True),
                              doc="mixed precision: at most this many seconds per backend")

    def __post_init__(self):
        if self.drop_type not in ("absolute", "relative"):
            raise UserInputError(f"[compression] drop_type {self.drop_type!r} is unknown.", "Use absolute or relative.")
        if self.max_drop < 0 or not 0 < self.min_cosine <= 1:
            raise UserInputError("[compression] max_drop must be >= 0 and min_cosine in (0, 1].",
                                 "For example max_drop = 1.0, min_cosine = 0.99.")
        if self.float_head not in ("auto", "on", "off"):
            raise UserInputError(f"[compression] float_head {self.float_head!r} is unknown.",
                                 'Use "auto" (detectors), "on" or "off".')
        for name in ("ac_max_iterations", "ac_ranking_subset"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise UserInputError(f"[compression] {name} = {v!r} is not a positive integer.",
                                     f"For example {name} = 10, or leave it out (no limit).")
        if not isinstance(self.float_nodes, tuple) or not all(isinstance(n, str) and n for n in self.float_nodes):
            raise UserInputError("[compression] float_nodes must be a list of node names or name prefixes.",
                                 'For example float_nodes = ["/head/"] (every node whose name starts with /head/).')
        if self.reduce_range not in ("auto", "on", "off"):
            raise UserInputError(f"[compression] reduce_range {self.reduce_range!r} is unknown.",
                                 'Use "auto" (on for x86 CPUs without VNNI), "on" or "off".')
        if not 0 < self.mixed_time_s <= 86400:
            raise UserInputError(f"[compression] mixed_time_s = {self.mixed_time_s!r} is out of range.",
                                 "Give seconds in (0, 86400], for example mixed_time_s = 600.")
        if self.preset not in (None, "performance", "mixed"):
            raise UserInputError(f"[compression] preset {self.preset!r} is unknown.", "Use performance or mixed.")

    @classmethod
    def from_dict(cls, data: dict | None) -> "CompressionConfig":
        data = dict(data or {})
        reject_unknown("compression", data, cls)
        for key in ("candidates", "float_nodes"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        return cls(**data)

    def allowed_drop(self, fp32_value: float) -> float:
        """The budget in metric units (metric values are fractions: 1 point = 0.01)."""
        if self.drop_type == "relative":
            return fp32_value * self.max_drop / 100.0
        return self.max_drop / 100.0

    def to_dict(self) -> dict:
        """Plain JSON data (lists, not tuples): what a manifest record holds is what reading it back gives."""
        return {f.name: list(v) if isinstance(v, tuple) else v for f in fields(self) for v in [getattr(self, f.name)]}
