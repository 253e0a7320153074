"""The options of the compression stage: one small dataclass, parsed once from the recipe."""

from __future__ import annotations

from dataclasses import dataclass, fields

from edgeopt.errors import UserInputError


@dataclass(frozen=True)
class CompressionConfig:
    max_drop: float = 1.0  # allowed task-metric drop vs FP32, in points (absolute) or % (relative)
    drop_type: str = "absolute"  # absolute | relative
    min_cosine: float = 0.99  # without labels: minimum cosine similarity of outputs vs FP32
    candidates: tuple[str, ...] = ()  # ONNX Runtime recipes to try (default: by model kind; the backend checks names)
    accuracy_control: bool = True  # when over budget, let NNCF keep the most sensitive layers in float
    subset_size: int = 300  # calibration samples NNCF uses at most
    ac_max_iterations: int | None = None  # accuracy control: at most this many layer groups reverted to float
    ac_ranking_subset: int | None = None  # accuracy control: judge-set samples used to rank layers (default all)
    preset: str | None = None  # NNCF preset: performance | mixed (default: by model kind)
    timing_s: float = 0.4  # seconds of quick timing per candidate
    float_head: str = "auto"  # keep a detector's post-processing in float: auto (detectors) | on | off
    float_nodes: tuple[str, ...] = ()  # more ONNX nodes every INT8 recipe leaves in float: names or name prefixes
    reduce_range: str = "auto"  # ONNX Runtime recipes: 7-bit weights, auto (x86 CPUs without VNNI) | on | off
    mixed_precision: bool = True  # when over budget, put back in float the fewest layers that cost most, measured
    mixed_time_s: float = 600.0  # mixed precision: at most this many seconds per backend

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
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise UserInputError(f"Recipe section [compression] has unknown keys {unknown}.",
                                 f"Allowed keys: {', '.join(sorted(allowed))}.")
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
        return {f.name: getattr(self, f.name) for f in fields(self)}
