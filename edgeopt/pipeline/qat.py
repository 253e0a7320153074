"""The build's QAT source ([qat]): the torch model and the labelled training data live here, in the pipeline; the
INT8 loop (compress) is handed this source on its judging and calls it when post-training INT8 and mixed precision
missed the budget. It trains once per build (every backend adopts the same Q/DQ ONNX), and the result is kept in
the calibration cache, keyed by everything that changes it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from edgeopt.compress.qat import VERSION, QatResult
from edgeopt.config.recipe import ExportConfig
from edgeopt.core.fsutil import sha256_file
from edgeopt.core.records import Status
from edgeopt.errors import ExportError, UserInputError
from edgeopt.pipeline.context import BuildContext, Plan

QAT_FILE = "model.onnx"
BROKEN_COSINE = 0.9  # the exported Q/DQ ONNX against its torch model: below this it is broken, not rounded


class BuildQat:
    """``source(log) -> QatResult`` (compress.qat.QatSource) for one build: trains on the first call, then
    returns the same result (or raises the same error)."""

    def __init__(self, ctx: BuildContext):
        from edgeopt.pipeline.pruning import training_config

        self.ctx, self.cfg = ctx, ctx.recipe.qat
        if ctx.model.module is None:
            raise UserInputError("[qat] needs the PyTorch model; the model source is an ONNX file.",
                                 "Give the factory or checkpoint the ONNX was made from, or drop [qat].")
        training_config(ctx, self.cfg, "qat")  # a bad [qat] source or preprocess fails the build now
        self.result: QatResult | None = None
        self.error: Exception | None = None

    def record(self) -> dict | None:
        """What the manifest's ``qat`` record says: the config, and what QAT did or why it failed (None: not
        called in this build)."""
        if self.result is None and self.error is None:
            return None
        out = {"config": self.cfg.to_dict()}
        if self.result is not None:
            out.update(ran=True, **self.result.record)
        elif self.error is not None:
            out.update(ran=False, error=str(self.error))
        return out

    def __call__(self, log: Callable[[str], None]) -> QatResult:
        if self.result is None and self.error is None:
            try:
                self.result = self._run(log)
            except Exception as exc:  # noqa: BLE001 - remembered: the next backend gets the same answer
                self.error = exc
        if self.error is not None:
            raise self.error
        log(f"qat: reusing this build's QAT result ({self.result.record.get('cache')})")
        return self.result

    def _run(self, log) -> QatResult:
        from edgeopt.compress.cache import calibration_key, lookup, notes_of, store
        from edgeopt.compress.common import preset_name
        from edgeopt.pipeline.pruning import load_training

        ctx, cfg = self.ctx, self.cfg
        start = time.monotonic()
        train, pre = load_training(ctx, cfg, "qat")
        calibration = ctx.data.calibration
        compression = ctx.recipe.compression
        params = {"qat": {**cfg.to_dict(), "preprocess": pre}, "train": train.sha256, "kind": ctx.model.kind,
                  "preset": preset_name(compression, ctx.model.kind), "subset": compression.subset_size,
                  "opset": ctx.recipe.export.opset, "version": VERSION}
        key = calibration_key(ctx.exported.onnx_sha256, getattr(calibration, "sha256", None), "qat", params,
                              ("torch", "nncf", "onnx"))
        hit = lookup(key)
        if hit is not None:
            log(f"qat: reusing the QAT result from the cache ({key[:12]})")
            return QatResult(hit / QAT_FILE, {**notes_of(hit), "cache": "hit"})
        log(f"qat: quantization-aware training, {cfg.epochs} epoch(s) at most, {cfg.time_s:g} s at most")
        path, record = self._train(train, log, start)
        record.update(seconds=round(time.monotonic() - start, 2), time_s=cfg.time_s, train_preprocess=pre)
        folder = store(key, lambda f: f.joinpath(QAT_FILE).write_bytes(path.read_bytes()), record)
        log(f"qat: {record['epochs_done']} epoch(s), {record['batches']} batches in {record['seconds']:.1f} s "
            f"(stopped: {record['stopped']}; last loss {record['final_loss']})")
        return QatResult(folder / QAT_FILE, {**record, "cache": "miss"})

    def _train(self, train, log, start: float) -> tuple[Path, dict]:
        import tempfile

        from edgeopt.compress.qat import quantization_aware_training

        ctx, cfg = self.ctx, self.cfg
        model = ctx.model
        feeds = list(ctx.data.calibration)
        stripped, record = quantization_aware_training(model.module, model.spec, feeds, train, cfg,
                                                       ctx.recipe.compression, model.kind, log,
                                                       deadline=start + cfg.time_s)
        self._tmp = tempfile.TemporaryDirectory(prefix="edgeopt-qat-")
        folder = Path(self._tmp.name)
        record["export"] = export_qdq(replace(model, module=stripped, scripted=None), folder, ctx, log)
        return folder / QAT_FILE, record


def export_qdq(model, folder: Path, ctx: BuildContext, log) -> dict:
    """The QAT model (PyTorch fake quantizers) as a Q/DQ ONNX through the project's exporter, checked against the
    same torch model on the build's reference samples.

    The legacy exporter: torch's FakeQuantize branches on a tensor's value (observer_enabled), which torch.export
    (the dynamo exporter) cannot trace; the legacy exporter writes each fake quantizer as a QuantizeLinear /
    DequantizeLinear pair. No onnxslim: constant folding would fold the weights' Q/DQ into float weights. The check:
    the ONNX (host reference executor) against the torch model it came from, on the build's reference samples,
    gating breakage only (missing, non-finite or misshapen outputs, cosine under BROKEN_COSINE), as the compile
    stage gates an INT8 artifact judged on real samples: both run the same quantized arithmetic, but a rounding
    tie that lands on the other step moves every layer after it, and the task metric judges the result. The
    figures are recorded. Measured on the real MobileNetV2 fine-tuned on digits (benchmarks/RESULTS.md): each
    fake quantizer after nncf.strip matches NNCF's own to the step (weights: no step differs but ties, 0.7% on the
    first layer's half-range weights; activations: 5e-6 of the values), yet the whole network differs from the
    NNCF model by cosine 0.989 before training, and the stripped torch model differs from *itself* by cosine
    0.9988 when its input moves by a relative 1e-7 (0.994 at 1e-6; FP32: 1.0): per-tensor INT8 MobileNetV2 is
    that sensitive to float rounding, and tidy_qdq's rewrites are exact (the Q/DQ ONNX before and after them gives
    the same top-1 on 1,000 held-out digits in ONNX Runtime's reference path)."""
    from edgeopt.backends import host_reference
    from edgeopt.core.parity import in_words, parity, parity_summary, tolerance_for
    from edgeopt.pipeline.export import reference_outputs
    from edgeopt.pipeline.exporter import export_onnx

    import onnx

    from edgeopt.compress.qat import tidy_qdq

    record = export_onnx(model, folder, ExportConfig(opset=ctx.recipe.export.opset, exporter="legacy", slim=False),
                         log)
    onnx_model = onnx.load(str(folder / QAT_FILE))
    record["rewrites"] = tidy_qdq(onnx_model)
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, str(folder / QAT_FILE))
    feeds = ctx.exported.feeds
    refs = reference_outputs(replace(model, as_trained=None), feeds)
    got = host_reference().require("check the QAT model's ONNX").run(folder / QAT_FILE, feeds)
    rep = parity(refs, got, tolerance_for("int8", ctx.recipe.parity.tolerances), model.kind)
    record["parity"] = parity_summary(rep)
    reason = rep.get("reason") or ""
    if any(w in reason for w in ("missing", "non-finite", "shape")) or (rep.get("cosine") or 0.0) < BROKEN_COSINE:
        raise ExportError(f"the QAT model's Q/DQ ONNX differs from the QAT model in PyTorch: {reason}",
                          "Report this model; try another opset ([export] opset).")
    record["sha256"] = sha256_file(folder / QAT_FILE)
    log(f"qat: Q/DQ ONNX exported ({record['exporter']}), parity with the QAT model: {in_words(rep)}")
    return record


def qat_source(ctx: BuildContext, plans: list[Plan]) -> BuildQat | None:
    """The build's QAT source: with [qat] and an INT8 artifact to build (here or in a package), else None."""
    if ctx.recipe.qat is None or not any(p.precision == "int8" and p.status in (Status.PLANNED, Status.NOT_BUILT_HERE)
                                         for p in plans):
        return None
    return BuildQat(ctx)
