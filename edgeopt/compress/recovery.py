"""Recovery steps: what the INT8 loop (:mod:`edgeopt.compress.int8`) tries, in order, when no candidate met the
accuracy budget. A step is any object with

- ``name``: what the log says;
- ``applies(state) -> bool``: whether it can run on this loop (``state``: :class:`~edgeopt.compress.int8.LoopState`:
  the calibration ``feeds``, the ``judging`` inputs, ``judge(infer)`` (the one scoring function), the backend's
  ``quantizer``, the ``results`` of every candidate tried so far and their ``models``, and ``make(name)``, a backend's
  candidate by name through the calibration cache);
- ``run(state) -> list[Candidate]``: new candidates (``recovered=True``), which the loop times, judges and records
  like any other. A step that fails records why with ``state.fail(name, message, full_text)`` and returns [].

The loop runs the steps until a candidate is within budget: the stronger post-training options (compress/ptq.py),
mixed precision by measured sensitivity (compress/mixed.py), quantization-aware training when the recipe has
[qat] (compress/qat.py), then NNCF's accuracy control.
"""

from __future__ import annotations

from typing import Protocol

from edgeopt.compress.failure import clip
from edgeopt.compress.common import nncf_module, nncf_restorer, quiet_nncf
from edgeopt.compress.guard import accuracy_control_drop, can_control_accuracy, task_validator
from edgeopt.compress.mixed import MixedPrecision
from edgeopt.compress.ptq import StrongerPtq
from edgeopt.compress.qat import Qat
from edgeopt.compress.quantizer import Candidate


class RecoveryStep(Protocol):
    name: str

    def applies(self, state) -> bool: ...

    def run(self, state) -> list[Candidate]: ...


class NncfAccuracyControl:
    """NNCF's quantize_with_accuracy_control: keeps the layers whose INT8 costs the task metric most in float
    until the budget is met (bounded by [compression] ac_max_iterations / ac_ranking_subset). Needs real samples,
    the FP32 figure, and a quantizer with ``nncf_input``."""

    name = "NNCF accuracy control"

    def applies(self, state) -> bool:
        return (state.judging.compression.accuracy_control and can_control_accuracy(state.judging)
                and hasattr(state.quantizer, "nncf_input"))

    def run(self, state) -> list[Candidate]:
        cfg, j = state.judging.compression, state.judging
        state.log("no int8 candidate meets the budget: NNCF accuracy control keeps the most sensitive layers in float")
        name = "accuracy-control"
        try:
            inp = state.quantizer.nncf_input(state.feeds)
            name = f"{inp.name}-ac"
            nncf = nncf_module()
            quiet_nncf()
            q = nncf.quantize_with_accuracy_control(
                inp.model, nncf.Dataset(state.feeds), nncf.Dataset(j.judge_set.feeds), task_validator(j, inp.infer_for),
                max_drop=accuracy_control_drop(j, cfg), drop_type=nncf.DropType.ABSOLUTE, **inp.kwargs,
                **nncf_restorer(cfg))
            model = inp.adopt(q)
        except Exception as exc:  # noqa: BLE001 - accuracy control can give up; the numbers so far stand
            state.fail(name, clip(exc), str(exc))
            return []
        notes = {"calibration_cache": "off"}
        if inp.exclude:
            from edgeopt.compress.head import summary

            notes["float_head"] = summary(inp.exclude)
        return [Candidate(name, model, notes, recovered=True)]


# The stronger post-training options first (a few more candidates, compress/ptq.py), then mixed precision: bounded
# in time ([compression] mixed_time_s), where accuracy control on a real MobileNetV2 did not finish in 26 minutes
# on 2 cores. QAT ([qat], bounded by its time_s) before accuracy control: it keeps every layer in INT8, where
# accuracy control puts layers back in float.
DEFAULT_STEPS: tuple[RecoveryStep, ...] = (StrongerPtq(), MixedPrecision(), Qat(), NncfAccuracyControl())
