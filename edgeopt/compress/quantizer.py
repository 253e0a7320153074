"""The small object a backend hands the INT8 loop (:mod:`edgeopt.compress.int8`): everything about INT8 that is
the framework's, nothing about caching, timing, judging or picking (the loop's).

A backend writes one class with these members (``BaseQuantizer`` gives the optional ones a default):

- ``name``: keys the cache and names the backend in messages (``title``: how messages say it).
- ``versions``: the libraries whose versions key its calibration cache (``("onnxruntime", "nncf", "onnx")``).
- ``failure``: how a candidate's quantization failure starts ("quantization failed").
- ``candidates(kind, cfg)``: the candidate names to try for a model kind (``cfg``: CompressionConfig).
- ``params(candidate, feeds)``: what else keys one candidate's cache entry (preset, device, rewrites ...).
- ``float_nodes(candidate, head, names)``: the node names to keep in float in the graph this candidate
  quantizes: the post-processing when ``head`` (``compress.head``), and the nodes ``names`` (prefixes) pick.
  May raise :class:`Skip` (nothing for this candidate to do on this graph).
- ``quantize(candidate, feeds, exclude) -> (model, notes)``: one candidate with these calibration feeds,
  ``exclude`` left in float; ``model`` is whatever the backend's ``open``/``save`` understand.
- ``save(model, folder)`` / ``load(folder)``: the calibration cache entry's files.
- ``open(model)`` / ``open_fp32()``: a :class:`~edgeopt.backends.base.Runner` (not activated) over the candidate /
  the FP32 model, running as the artifact will: what the loop times and scores.
- ``timed``: False where this host cannot time what ships (a device package): the first candidate within the
  budget, in order, wins; candidates are then quantized one at a time.
- optional ``variants(candidate, model, runner) -> {label: Runner}``: runtime settings of the same model raced
  beside it; ``choose(candidate, timed) -> (choice or None, label)``: which of them runs it.
  Optional ``exact(candidate, timed) -> (choice, label) or None``: the most exact variant; the loop judges it
  too when the one ``choose`` took for speed is over budget, and ships it when it is within.
- optional ``record() -> dict``: what the manifest's ``int8`` record says beside the loop's figures.
- optional ``int8_left(model) -> bool`` and ``describe(model) -> dict``: for recovery candidates (is there any
  INT8 left; which layers stayed float).
- optional ``nncf_input(feeds) -> NncfInput``: the NNCF-quantizable form of the model (accuracy control).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


class Skip(Exception):
    """Raised by ``float_nodes``/``quantize`` when a candidate has nothing to do on this graph (not a failure)."""


@dataclass
class Candidate:
    """One quantized model the loop times, judges and records."""

    name: str
    model: Any
    notes: dict = field(default_factory=dict)  # recorded with its result (calibration_cache, float_head ...)
    recovered: bool = False  # made by a recovery step: checked for INT8 left, described


@dataclass
class NncfInput:
    """What NNCF's algorithms take for this backend: the model in NNCF's form, the keyword arguments of
    ``nncf.quantize`` (preset, target device, model type, ignored scope), how a model NNCF returns (or hands
    the validation function) runs a feed, and how a quantized model NNCF returns becomes the backend's model."""

    name: str  # the recovered candidate's name stem: "nncf-qdq" -> "nncf-qdq-ac"
    model: Any
    kwargs: dict
    infer_for: Callable[[Any], Callable[[dict], dict]]
    adopt: Callable[[Any], Any]
    exclude: list[str] = field(default_factory=list)


class BaseQuantizer:
    """Defaults for the optional members."""

    name = ""
    title = ""
    versions: tuple[str, ...] = ()
    failure = "quantization failed"
    timed = True
    onnx_path: Path | None = None  # the model failures are explained against

    def variants(self, candidate: str, model, runner) -> dict:
        return {}

    def record(self) -> dict:
        return {}

    def int8_left(self, model) -> bool:
        return True

    def describe(self, model) -> dict:
        return {}
