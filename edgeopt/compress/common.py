"""Pieces shared by the INT8 recipes: calibration feeds, NNCF datasets and presets."""

from __future__ import annotations

import contextlib

from edgeopt.errors import CompileError, require
from edgeopt.config.compression import CompressionConfig


def config_of(req) -> CompressionConfig:
    """The compression options of a compile request (its judging inputs'), or the defaults."""
    judging = getattr(req, "judging", None)
    return judging.compression if judging is not None else CompressionConfig()


def calibration_feeds(req, limit: int | None = None) -> list[dict]:
    """The calibration feeds every INT8 candidate of ``req`` is calibrated on: at most ``limit``
    ([compression] subset_size: the one sample budget)."""
    if req.calibration is None:
        raise CompileError(
            f"{getattr(req.target, 'name', 'This')} int8 needs calibration data, and the recipe gives none.",
            "Add [calibration] source = \"...\" (a .npz, an image folder, a module:function) to the recipe.")
    feeds = list(req.calibration)
    return feeds[:limit] if limit else feeds


def nncf_module():
    nncf = require("nncf", "nncf", "quantize with NNCF")
    return nncf


MIXED_KINDS = ("transformer", "detector")  # asymmetric activations by default (NNCF's mixed preset)


def preset_name(cfg: CompressionConfig, kind: str) -> str:
    """NNCF's preset: [compression] preset, else mixed (asymmetric activations) for transformers and detectors and
    performance (symmetric) for the rest. Detectors: YOLO-style SiLU activations are not symmetric around 0, and
    Ultralytics' own OpenVINO INT8 export uses mixed; on a real YOLOv8 (openvino-cpu, mAP50 vs FP32 on 24
    photo crops) mixed lost 2.49 points where performance lost 4.39. Part of every calibration cache key."""
    return cfg.preset or ("mixed" if kind in MIXED_KINDS else "performance")


def nncf_preset(nncf, cfg: CompressionConfig, kind: str):
    name = preset_name(cfg, kind)
    return {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}[name], name


def nncf_restorer(cfg: CompressionConfig) -> dict:
    """Keyword arguments bounding NNCF's accuracy control ([compression] ac_max_iterations, ac_ranking_subset):
    empty when neither is set (NNCF's defaults: no limit, rank on the whole judge set)."""
    if cfg.ac_max_iterations is None and cfg.ac_ranking_subset is None:
        return {}
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    kw = {"ranking_subset_size": cfg.ac_ranking_subset}
    if cfg.ac_max_iterations is not None:
        kw["max_num_iterations"] = cfg.ac_max_iterations
    return {"advanced_accuracy_restorer_parameters": AdvancedAccuracyRestorerParameters(**kw)}


def nncf_model_type(nncf, kind: str):
    return nncf.ModelType.TRANSFORMER if kind == "transformer" else None


def nncf_device(nncf, device: str):
    return {"CPU": nncf.TargetDevice.CPU, "GPU": nncf.TargetDevice.GPU, "NPU": nncf.TargetDevice.NPU}.get(
        device, nncf.TargetDevice.ANY)


@contextlib.contextmanager
def quiet_logging(level: int = 40):
    """ONNX Runtime's quantizer logs on the root logger (one line per LayerNorm weight on a ViT): keep the
    root logger at ERROR for the block."""
    import logging

    root = logging.getLogger()
    old = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(old)


def quiet_nncf():
    """NNCF logs progress bars and INFO lines on stdout; keep them in the log level the user chose."""
    import logging

    logging.getLogger("nncf").setLevel(logging.WARNING)


class FeedReader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of feeds (used by every ORT-quantized recipe)."""

    def __init__(self, feeds):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - some calibrators call it
        pass
