"""INT8 for ONNX Runtime: try the QDQ recipes that matter, measure speed and accuracy of each, keep the
fastest within the accuracy budget, and record why it won.

Measured on a 2-core AVX-512-VNNI CPU: u8 activations + s8 per-channel weights is the fast recipe for CNNs;
ORT's s8-activation default can be slower than FP32 (ORT fuses fewer nodes), and NNCF's QDQ graph is re-laid
out for ORT's kernels (per-tensor u8 activations: rewrite.nncf_for_onnxruntime) without which it ran at 0.4x FP32;
models with
hard-swish and squeeze-excitation (MobileNetV3) need the same recipe on a rewritten graph ("-fused", see
rewrite.py) to beat FP32; dynamic weight-only quantization is often the right choice for transformers.
Nothing is assumed: every candidate is timed and scored, by the INT8 loop (compress/int8.py) this quantizer
serves.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

from edgeopt.errors import UserInputError
from edgeopt.core.fsutil import working_dir
from edgeopt.compress import INT8_RECIPES_VERSION, head
from edgeopt.compress.common import (
    FeedReader,
    config_of,
    nncf_model_type,
    nncf_module,
    nncf_preset,
    preset_name,
    quiet_logging,
    quiet_nncf,
)
from edgeopt.compress.judging import judging_of
from edgeopt.compress.mixed import MixedInput
from edgeopt.compress import ptq
from edgeopt.compress.quantizer import BaseQuantizer, NncfInput, Skip

# Every recipe [compression] candidates may name.
# The stronger post-training options of NNCF's recipe (compress/ptq.py: "nncf-qdq-bc", "nncf-qdq-sq50") are tried by
# a recovery step when the defaults miss the budget.
NNCF_QDQ = "nncf-qdq"
# NNCF's recipe with the outputs of the convolutions ONNX Runtime would leave in float quantized too
# (rewrite.quantize_outputs: YOLOv8's SiLU layers). Not a default: on the real YOLOv8 it ran 1.21x its FP32 where
# nncf-qdq ran 0.79x, but lost 8.87 mAP50 points (refused); a recipe may name it.
NNCF_OUTPUTS = "nncf-qdq-outputs"
STRONGER = tuple(f"{NNCF_QDQ}-{o.suffix}" for o in ptq.OPTIONS)
ORT_CANDIDATES = ("ort-qdq-u8s8", "ort-qdq-u8s8-percentile", "ort-qdq-u8s8-entropy", "ort-qdq-u8s8-fused", NNCF_QDQ,
                  NNCF_OUTPUTS, "ort-qdq-s8s8", "ort-dynamic", *STRONGER)
FUSED = "ort-qdq-u8s8-fused"

DEFAULTS = {
    "transformer": ("ort-dynamic", "ort-qdq-u8s8", "nncf-qdq"),
    # MinMax ranges clip nothing and so waste resolution on outliers: real-weight CNNs lose top-1 with them that
    # percentile ranges (or NNCF's) keep, at the same speed (the same u8/s8 QDQ layout).
    "cnn": ("ort-qdq-u8s8", "ort-qdq-u8s8-percentile", "ort-qdq-u8s8-fused", "nncf-qdq"),
    "detector": ("ort-qdq-u8s8", "ort-qdq-u8s8-fused", "nncf-qdq"),
    "generic": ("ort-qdq-u8s8", "ort-qdq-u8s8-fused", "nncf-qdq", "ort-dynamic"),
}


def _preprocess(src: Path, work: Path) -> Path:
    """Shape inference + graph clean-up ONNX Runtime recommends before quantization; skipped if it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst = work / "pre.onnx"
    if dst.exists():
        return dst
    try:
        # Symbolic shape inference saves temporary models into the working directory: keep them in ours.
        with contextlib.redirect_stdout(None), working_dir(work):
            quant_pre_process(str(Path(src).resolve()), str(dst.resolve()), skip_symbolic_shape=False)
        return dst
    except Exception:  # noqa: BLE001 - large or unusual graphs: quantize the model as exported
        return src


CALIBRATION = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")  # CPU features whose int8 dot products add in 32 bits


def reduce_range(cfg) -> tuple[bool, str]:
    """Whether the static recipes quantize weights to 7 bits, and why. ONNX Runtime's u8 x s8 kernels on x86
    CPUs without VNNI (AVX2, AVX-512F) add pairs of products in 16 bits (VPMADDUBSW), which saturates with full
    8-bit weights; its documentation's remedy is reduce_range. Measured on a real-weight MobileNetV2 (AVX2,
    top-1 agreement with FP32 on 200 photo crops): MinMax 55.5% -> 63.0%, percentile 69.5% -> 74.0%."""
    from edgeopt.core.hostinfo import cpu_info

    if cfg.reduce_range != "auto":
        return cfg.reduce_range == "on", f'[compression] reduce_range = "{cfg.reduce_range}"'
    info = cpu_info()
    has = [f for f in VNNI if f in info["flags"]]
    if info["arch"] in ("x86_64", "AMD64", "i386", "i686") and not has:
        return True, ("this x86 CPU has no VNNI: ONNX Runtime's u8 x s8 kernels add pairs of products in 16 bits "
                      "and saturate with full 8-bit weights, so weights get 7 bits")
    return False, f"this CPU has {has[0]}: no saturation" if has else f"{info['arch']}: no 16-bit pair sums"


def _ort_static(src, dst, feeds, activation: str, symmetric: bool, method: str = "minmax", exclude=(),
                reduce: bool = False):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = 99.99
    quantize_static(str(src), str(dst), FeedReader(feeds), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8 if activation == "u8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce,
                    calibrate_method=getattr(CalibrationMethod, CALIBRATION[method]),
                    nodes_to_exclude=list(exclude), extra_options=extra)


def _ort_dynamic(src, dst, exclude=()):
    """Weights per output channel: on a real all-MiniLM-L6-v2 (AVX2) per-tensor weights gave a mean-pooled
    embedding cosine of 0.962 vs FP32 on 200 held-out sentences, per-channel 0.992, at the same speed; 7-bit
    weights did not help here (0.878 per-tensor, 0.991 per-channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gemm", "Attention", "LSTM", "GRU"],
                     nodes_to_exclude=list(exclude))


NNCF_LAYOUT = "per-tensor activations, u8, float layers folded"  # rewrite.nncf_for_onnxruntime; cache key
OUTPUTS_VERSION = 1  # rewrite.quantize_outputs; cache key


def _ort_layout():
    """NNCF's advanced parameters for ONNX Runtime: one scale per activation tensor (QLinearConv takes no
    per-channel input; rewrite.py)."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    return AdvancedQuantizationParameters(activations_quantization_params=QuantizationParameters(per_channel=False))


def _for_ort(q):
    """NNCF's Q/DQ ONNX in ONNX Runtime's fusable layout (in place), returned."""
    nncf_for_ort_counts(q)
    return q


def nncf_for_ort_counts(q) -> dict:
    """NNCF's Q/DQ ONNX in ONNX Runtime's fusable layout (in place): what changed."""
    from edgeopt.backends.onnxruntime.rewrite import nncf_for_onnxruntime

    return nncf_for_onnxruntime(q)


def _nncf_qdq(src, dst, feeds, kw: dict, option=None) -> None:
    import onnx

    nncf = nncf_module()
    quiet_nncf()
    q = nncf.quantize(onnx.load(str(src)), nncf.Dataset(feeds), **ptq.nncf_arguments(option, kw, _ort_layout()))
    onnx.save(_for_ort(q), str(dst))


def _nncf_outputs(src, dst, feeds, kw: dict, plain: Path) -> int:
    """NNCF's recipe (``plain``, when this build made it already) with the outputs of the convolutions ONNX Runtime
    would run in float quantized (rewrite.quantize_outputs); Skip when there are none."""
    import onnx

    from edgeopt.backends.onnxruntime.rewrite import quantize_outputs

    if not plain.is_file():
        _nncf_qdq(src, plain, feeds, kw)
    model = onnx.load(str(plain))
    count = quantize_outputs(model, feeds)
    if not count:
        raise Skip("every quantized convolution already ends in a quantized output: nothing to add")
    onnx.save(model, str(dst))
    return count


def _onnx_infer(model):
    """A feed -> outputs function over an in-memory ONNX model (NNCF's accuracy control hands us those)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feed: dict(zip(names, sess.run(names, feed)))


class OrtQuantizer(BaseQuantizer):
    """ONNX Runtime's side of the INT8 loop (compress/quantizer.py): QDQ candidates in ONNX files under ``work``."""

    name, title = "onnxruntime", "ONNX Runtime"
    versions = ("onnxruntime", "nncf", "onnx")

    def __init__(self, req, work: Path):
        self.req, self.work, self.cfg = req, Path(work), config_of(req)
        self.onnx_path = Path(req.onnx_path)
        self._sources: dict[str, tuple[Path, dict]] = {}
        self.reduce, self.reduce_why = reduce_range(self.cfg)
        req.log(f"int8: static recipes quantize weights to {7 if self.reduce else 8} bits ({self.reduce_why})")

    def candidates(self, kind: str, cfg) -> tuple[str, ...]:
        bad = [c for c in cfg.candidates if c not in ORT_CANDIDATES]
        if bad:
            raise UserInputError(f"[compression] candidates {bad} are unknown.", f"Use any of {list(ORT_CANDIDATES)}.")
        return tuple(cfg.candidates) or DEFAULTS.get(kind, DEFAULTS["generic"])

    def stronger(self, kind: str) -> tuple[str, ...]:
        """NNCF's recipe with a stronger post-training option (compress/ptq.py), for the recovery step."""
        return ptq.names_for(NNCF_QDQ, kind)

    def params(self, name: str) -> dict:
        p = {"preset": preset_name(self.cfg, self.req.model_kind)}
        if name.startswith("ort-qdq"):
            p["reduce_range"] = self.reduce
        if name == "ort-dynamic":
            p["weights"] = "per-channel"
        if name == FUSED:
            p["rewrites"] = INT8_RECIPES_VERSION
        if ptq.base_of(name) in (NNCF_QDQ, NNCF_OUTPUTS):
            p["layout"] = NNCF_LAYOUT
        if name == NNCF_OUTPUTS:
            p["outputs"] = OUTPUTS_VERSION
        return {**p, **ptq.params_for(name)}

    def _source(self, name: str) -> tuple[Path, dict]:
        """The graph ``name`` quantizes (pre-processed; for the "-fused" recipe rewritten) and the rewrites."""
        if name not in self._sources:
            src, notes = _preprocess(self.onnx_path, self.work), {}
            if name == FUSED:
                src, notes["rewrites"] = _prepared(src, self.work)
                if not any(notes["rewrites"].values()):
                    raise Skip("nothing in this graph for its rewrites to change")
            self._sources[name] = (src, notes)
        self.onnx_path = self._sources[name][0]  # what a failure is explained against
        return self._sources[name]

    def float_nodes(self, name: str, keep_head: bool, names: tuple[str, ...]) -> list[str]:
        """The post-processing of the graph ``name`` quantizes (compress/head.py) and the nodes ``names`` picks."""
        src = self._source(name)[0]
        found = head.onnx_float_head_of(src) if keep_head else []
        if names:
            import onnx

            every = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node]
            found += [n for n in head.named(every, names) if n not in set(found)]
        return found

    def nncf_kwargs(self, feeds, exclude) -> dict:
        nncf = nncf_module()
        kind = self.req.model_kind
        kw = dict(preset=nncf_preset(nncf, self.cfg, kind)[0], target_device=nncf.TargetDevice.CPU,
                  subset_size=min(self.cfg.subset_size, len(feeds)), model_type=nncf_model_type(nncf, kind))
        if exclude:
            kw["ignored_scope"] = nncf.IgnoredScope(names=list(exclude), validate=False)
        return kw

    def quantize(self, name: str, feeds, exclude) -> tuple[Path, dict]:
        src, notes = self._source(name)
        notes = json.loads(json.dumps(notes))
        dst = self.work / f"{name}.onnx"
        with contextlib.redirect_stdout(None), quiet_logging():
            if name in ("ort-qdq-u8s8", FUSED):
                _ort_static(src, dst, feeds, "u8", symmetric=False, exclude=exclude, reduce=self.reduce)
                if name == FUSED:
                    _int8_hard_swish(dst, notes["rewrites"])
            elif name in ("ort-qdq-u8s8-percentile", "ort-qdq-u8s8-entropy"):
                _ort_static(src, dst, feeds, "u8", symmetric=False, method=name.rsplit("-", 1)[1], exclude=exclude,
                            reduce=self.reduce)
            elif name == "ort-qdq-s8s8":
                _ort_static(src, dst, feeds, "s8", symmetric=True, exclude=exclude, reduce=self.reduce)
            elif name == "ort-dynamic":
                _ort_dynamic(src, dst, exclude)
            elif ptq.base_of(name) == NNCF_QDQ:
                _nncf_qdq(src, dst, feeds, self.nncf_kwargs(feeds, exclude), ptq.option_of(name))
                notes.update(ptq.notes_for(name))
            elif name == NNCF_OUTPUTS:
                notes["outputs_quantized"] = _nncf_outputs(src, dst, feeds, self.nncf_kwargs(feeds, exclude),
                                                           self.work / f"{NNCF_QDQ}.onnx")
        return dst, notes

    def save(self, model: Path, folder: Path) -> None:
        shutil.copy2(model, folder / "model.onnx")

    def load(self, folder: Path) -> Path:
        return folder / "model.onnx"

    def open(self, model: Path):
        """An ONNX Runtime runner with the target's options: candidates run as the artifact will."""
        from edgeopt.backends.onnxruntime.runner import OrtRunner

        return OrtRunner(Path(model), self.req.spec, self.req.target.options)

    def open_fp32(self):
        return self.open(self.req.onnx_path)

    def record(self) -> dict:
        return {"reduce_range": {"static_recipes": self.reduce, "why": self.reduce_why}}

    def int8_left(self, model: Path) -> bool:
        return len(float_layers(model)) < compute_layer_count(model)

    def describe(self, model: Path) -> dict:
        return {"float_layers": float_layers(model)}

    def from_qdq(self, path: Path) -> Path:
        """A Q/DQ ONNX made by QAT (compress/qat.py) in ONNX Runtime's fusable layout: the relayout NNCF's Q/DQ
        ONNX gets (rewrite.nncf_for_onnxruntime: int8 activations as uint8, float layers' weights folded)."""
        import onnx

        model = onnx.load(str(path))
        nncf_for_ort_counts(model)
        dst = self.work / "qat.onnx"
        onnx.save(model, str(dst))
        return dst

    def nncf_input(self, feeds) -> NncfInput:
        """The pre-processed ONNX for NNCF's algorithms (accuracy control), its float nodes left out."""
        import onnx

        j = judging_of(self.req)
        src = _preprocess(self.req.onnx_path, self.work)
        self._sources.setdefault("nncf-qdq", (src, {}))
        keep = head.wanted_for(j.model_kind, getattr(j.task, "type", None), self.cfg.float_head)
        exclude = self.float_nodes("nncf-qdq", keep, tuple(self.cfg.float_nodes or ()))

        def adopt(q) -> Path:
            dst = self.work / "nncf-qdq-ac.onnx"
            onnx.save(_for_ort(q), str(dst))
            return dst

        kw = {**self.nncf_kwargs(feeds, exclude), "advanced_quantization_parameters": _ort_layout()}
        return NncfInput("nncf-qdq", onnx.load(str(src)), kw, _onnx_infer, adopt, exclude)

    def mixed_input(self, state) -> MixedInput | None:
        """Mixed precision (compress/mixed.py) starts from the most accurate candidate that ran; its float twin
        is the graph it quantized (node names match)."""
        import onnx

        ran = [r for r in state.results if r["candidate"] in state.models and "error" not in r
               and (r.get("accuracy") or r.get("cosine") is not None)]
        if not ran:
            return None
        base = max(ran, key=lambda r: ((r.get("accuracy") or {}).get("value", 0.0), r.get("cosine") or 0.0))
        name = base["candidate"]
        src = self._sources[name][0] if name in self._sources else _preprocess(self.req.onnx_path, self.work)

        def adopt(q) -> Path:
            dst = self.work / f"{name}-mixed.onnx"
            onnx.save(q, str(dst))
            return dst

        return MixedInput(f"{name}-mixed", onnx.load(str(state.models[name])), onnx.load(str(src)), _onnx_infer,
                          adopt)


def quantize_for_onnxruntime(req, out_path: Path) -> dict:
    """INT8 for ONNX Runtime through the INT8 loop; the winner is written to ``out_path``."""
    from edgeopt.compress.int8 import run_int8

    with tempfile.TemporaryDirectory(prefix="edgeopt-int8-") as tmp:
        model, meta = run_int8(OrtQuantizer(req, Path(tmp)), req)
        shutil.copy(model, out_path)
    return meta


def _prepared(src: Path, work: Path) -> tuple[Path, dict]:
    """The pre-processed model with the exact float rewrites of rewrite.prepare_for_int8, and their counts."""
    import onnx

    from edgeopt.backends.onnxruntime.rewrite import prepare_for_int8

    model = onnx.load(str(src))
    counts = prepare_for_int8(model)
    dst = work / "pre-fused.onnx"
    onnx.save(model, str(dst))
    return dst, counts


def _int8_hard_swish(path: Path, rewrites: dict) -> None:
    import onnx

    from edgeopt.backends.onnxruntime.rewrite import hard_swish_in_int8

    model = onnx.load(str(path))
    rewrites["HardSwish in int8 (QLinearAdd + QLinearMul)"] = hard_swish_in_int8(model)
    onnx.save(model, str(path))


def compute_layer_count(path: Path) -> int:
    """Conv/MatMul/Gemm nodes: the layers INT8 is for."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return sum(n.op_type in ("Conv", "MatMul", "Gemm") for n in m.graph.node)


def float_layers(path: Path) -> list[str]:
    """Conv/MatMul/Gemm nodes whose inputs are not dequantized: the layers kept in float."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    producers = {o: n.op_type for n in m.graph.node for o in n.output}
    return [n.name for n in m.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")
            and producers.get(n.input[0]) != "DequantizeLinear"]
