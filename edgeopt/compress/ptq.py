"""Stronger post-training options: NNCF's post-training pipeline with one option changed, tried as extra INT8
candidates when no plain candidate met the accuracy budget (a recovery step, run before mixed precision).

- **Full bias correction** (``-bc``: ``fast_bias_correction=False``): NNCF's BiasCorrection runs each
  corrected layer's subgraph on float and on quantized inputs and moves the bias by the mean difference of
  their outputs, where the default FastBiasCorrection takes one statistic per layer. Slower (a pass per layer
  over a fifth of the calibration subset), for CNNs and detectors.
- **SmoothQuant strength** (``-sq50``: ``smooth_quant_alphas.matmul = 0.5``): with ``ModelType.TRANSFORMER``
  NNCF already smooths every MatMul's activation outliers into its weights at alpha 0.95; 0.5 (the SmoothQuant
  paper's default) moves less of the range into the weights. For transformers.

Per-channel: every recipe already quantizes weights per output channel (ONNX Runtime's ``per_channel=True``,
NNCF's CPU configuration), and activations per channel only where the backend runs it in INT8 (NNCF's CPU
configuration for depthwise convolutions on OpenVINO; ONNX Runtime's QLinearConv takes one input scale, so
``nncf-qdq`` asks for per-tensor activations: backends/onnxruntime/rewrite.py). There is no faster per-channel
layout left to try, so it is not an option here.

A backend offers the options through its quantizer's optional ``stronger(kind) -> names`` (the candidate names,
each quantized by its ``quantize`` and keyed in the calibration cache by its ``params``). What each changed is
recorded with its result (``ptq_option``); each is timed, judged by the guard and picked like every candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Option:
    """One stronger post-training option: the suffix of its candidate names, the model kinds it is tried for,
    what it changes (recorded) and the NNCF settings it changes (part of the candidate's cache key)."""

    suffix: str
    kinds: tuple[str, ...]
    what: str
    settings: dict = field(default_factory=dict)


OPTIONS = (
    Option("bc", ("cnn", "detector", "generic"), "full bias correction (NNCF BiasCorrection, not the fast one)",
           {"fast_bias_correction": False}),
    Option("sq50", ("transformer",), "SmoothQuant alpha 0.5 on MatMuls (NNCF's default for transformers: 0.95)",
           {"smooth_quant_alphas": {"matmul": 0.5, "convolution": -1}}),
)


def names_for(base: str, kind: str) -> tuple[str, ...]:
    """The stronger candidates of NNCF recipe ``base`` ("nncf-qdq", "nncf-ov") for a model kind."""
    return tuple(f"{base}-{o.suffix}" for o in OPTIONS if kind in o.kinds)


def option_of(name: str) -> Option | None:
    """The option a candidate name carries ("nncf-ov-bc" -> full bias correction), None for a plain one."""
    return next((o for o in OPTIONS if name.endswith(f"-{o.suffix}")), None)


def base_of(name: str) -> str:
    o = option_of(name)
    return name[:-len(o.suffix) - 1] if o else name


def nncf_arguments(option: Option | None, kwargs: dict, advanced=None) -> dict:
    """``nncf.quantize``'s keyword arguments ``kwargs`` (``advanced``: an AdvancedQuantizationParameters to extend,
    or None) with ``option``'s settings applied; a copy."""
    kw = dict(kwargs)
    if option is None:
        if advanced is not None:
            kw["advanced_parameters"] = advanced
        return kw
    s = option.settings
    if "fast_bias_correction" in s:
        kw["fast_bias_correction"] = s["fast_bias_correction"]
    if "smooth_quant_alphas" in s:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

        advanced = advanced if advanced is not None else AdvancedQuantizationParameters()
        advanced.smooth_quant_alphas = AdvancedSmoothQuantParameters(**s["smooth_quant_alphas"])
    if advanced is not None:
        kw["advanced_parameters"] = advanced
    return kw


def notes_for(name: str) -> dict:
    """What a candidate's record says its option changed (``ptq_option``); empty for a plain candidate."""
    o = option_of(name)
    return {"ptq_option": {"option": o.suffix, "what": o.what, "settings": o.settings}} if o else {}


def params_for(name: str) -> dict:
    """What a candidate's option adds to its calibration-cache key."""
    o = option_of(name)
    return {"ptq_option": o.settings} if o else {}


class StrongerPtq:
    """Recovery step: the backend's stronger post-training candidates (``quantizer.stronger(kind)``) of the NNCF
    recipes tried, made through the calibration cache and judged like every candidate. [compression]
    stronger_ptq = false turns it off."""

    name = "stronger post-training options"

    def _names(self, state) -> list[str]:
        q = state.quantizer
        if not hasattr(q, "stronger"):
            return []
        # stronger variants of the NNCF recipes that were tried: a recipe naming its candidates
        # ([compression] candidates without nncf-qdq) gets no other recipe
        tried = {r["candidate"] for r in state.results}
        return [n for n in q.stronger(state.judging.model_kind) if n not in tried and base_of(n) in tried]

    def applies(self, state) -> bool:
        return bool(state.judging.compression.stronger_ptq) and bool(self._names(state))

    def run(self, state) -> list:
        names = self._names(state)
        state.log(f"no int8 candidate meets the budget: trying the stronger post-training options "
                  f"({', '.join(names)})")
        return [c for c in (state.make(n) for n in names) if c is not None]
