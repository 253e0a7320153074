"""INT8 for OpenVINO: NNCF post-training quantization on the IR, preset and model type by model kind, target
device from the target file; the INT8 loop (compress/int8.py) times, judges and records it, and runs NNCF's
accuracy control when it is over budget. The float remainder's inference precision is raced beside it."""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgeopt.compress import head, ptq
from edgeopt.compress.common import config_of, nncf_device, nncf_model_type, nncf_module, nncf_preset, quiet_nncf
from edgeopt.compress.judging import judging_of
from edgeopt.compress.mixed import MixedInput
from edgeopt.compress.quantizer import BaseQuantizer, NncfInput
from edgeopt.core.onnxgraph import activations_to_u8

NOISE = 0.05  # runtime settings whose quick timings are this close are a tie, won by the exact f32
NNCF_OV = "nncf-ov"


OV_HEAVY = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData", "MatMul",
            "Bias"}
OV_ALWAYS_FLOAT = {"NonMaxSuppression", "MulticlassNms", "MatrixNms", "NMSRotated", "ROIAlign", "ROIAlignRotated",
                   "ROIPooling", "PSROIPooling", "TopK", "If", "Loop", "TensorIterator",
                   "ExperimentalDetectronROIFeatureExtractor", "ExperimentalDetectronDetectionOutput",
                   "ExperimentalDetectronGenerateProposalsSingleImage", "DetectionOutput", "Proposal"}


def read_qdq(path: Path, core=None):
    """An ov.Model from a Q/DQ ONNX file (Q/DQ pairs become FakeQuantize), its int8 activations re-spelled uint8
    first (:func:`edgeopt.core.onnxgraph.activations_to_u8`: the same values). OpenVINO compiles the signed
    spelling wrongly in places: on YOLOv8's C2f blocks (a Split of a Q/DQ tensor concatenated with a Q/DQ sum,
    one shared scale and zero point -120) the Concat came out 56% off ONNX Runtime's, and the class scores of the
    whole model near 0; unsigned, 1.2%."""
    import onnx
    import openvino as ov

    core = core or ov.Core()
    model = onnx.load(str(path))
    if not activations_to_u8(model):
        return core.read_model(str(path))
    with tempfile.TemporaryDirectory(prefix="edgeopt-ov-qdq-") as tmp:
        onnx.save(model, str(Path(tmp) / "qdq.onnx"))
        return core.read_model(str(Path(tmp) / "qdq.onnx"))


def float_head(model) -> list[str]:
    """Friendly names of an ov.Model's post-processing (compress/head.py): NNCF's ignored scope."""
    from edgeopt.compress.head import walk_head

    heavy_types = OV_HEAVY - {"Bias"}

    def op(n) -> str:
        t = n.get_type_name()
        if t == "Add" and any(v.get_node().get_type_name() in heavy_types for v in n.input_values()):
            return "Bias"  # a layer's bias: part of the layer
        return t

    nodes = list(model.get_ordered_ops())
    found = walk_head(nodes, list(model.get_results()), lambda n: [v.get_node() for v in n.input_values()], op,
                      lambda n: n.get_friendly_name(), OV_HEAVY, OV_ALWAYS_FLOAT,
                      pass_through={"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Convert"})
    return [n.get_friendly_name() for n in found
            if n.get_type_name() not in ("Parameter", "Constant", "Result", "ShapeOf")]


def untangled(model):
    """``model`` with If/Loop bodies that own their constants. The ONNX frontend shares Constant nodes between
    the main graph and the bodies, where NNCF cannot build their graphs ("Could not find a node ... in
    NNCFGraph"); an IR written and read back holds separate copies."""
    import openvino as ov

    if not any(op.get_type_name() in ("If", "Loop", "TensorIterator") for op in model.get_ordered_ops()):
        return model
    with tempfile.TemporaryDirectory(prefix="edgeopt-ov-") as tmp:
        ov.save_model(model, f"{tmp}/model.xml", compress_to_fp16=False)
        import numpy as np

        xml = Path(tmp, "model.xml").read_text()
        weights = np.fromfile(Path(tmp, "model.bin"), dtype=np.uint8)  # in memory: the folder goes
        return ov.Core().read_model(xml, ov.Tensor(weights))


def _ov_infer(compiled_model):
    """A feed -> outputs function over the compiled model NNCF's accuracy control hands us."""
    names = [o.get_any_name() for o in compiled_model.outputs]

    def infer(feed):
        res = compiled_model(feed)
        return {n: res[o] for n, o in zip(names, compiled_model.outputs)}

    return infer


class OvQuantizer(BaseQuantizer):
    """OpenVINO's side of the INT8 loop (compress/quantizer.py): one candidate, NNCF on the ov.Model."""

    name, title = "openvino", "OpenVINO"
    versions = ("openvino", "nncf", "onnx")
    failure = "NNCF could not quantize this model for OpenVINO"

    def __init__(self, req, model):
        self.req, self.cfg, self.model = req, config_of(req), untangled(model)
        self.onnx_path = Path(req.onnx_path)
        self.nncf = nncf_module()
        quiet_nncf()
        self.preset, self.preset_name = nncf_preset(self.nncf, self.cfg, req.model_kind)

    def candidates(self, kind: str, cfg) -> tuple[str, ...]:
        return (NNCF_OV,)

    def stronger(self, kind: str) -> tuple[str, ...]:
        """NNCF with a stronger post-training option (compress/ptq.py), for the recovery step."""
        return ptq.names_for(NNCF_OV, kind)

    def params(self, name: str) -> dict:
        return {"preset": self.preset_name, "device": self.req.target.device, **ptq.params_for(name)}

    def float_nodes(self, name: str, keep_head: bool, names: tuple[str, ...]) -> list[str]:
        found = float_head(self.model) if keep_head else []
        if names:
            every = [op.get_friendly_name() for op in self.model.get_ordered_ops()]
            found += [n for n in head.named(every, names) if n not in set(found)]
        return found

    def _kwargs(self, feeds, exclude) -> dict:
        nncf, kind = self.nncf, self.req.model_kind
        kw = dict(preset=self.preset, target_device=nncf_device(nncf, self.req.target.device),
                  subset_size=min(self.cfg.subset_size, len(feeds)), model_type=nncf_model_type(nncf, kind))
        if exclude:
            kw["ignored_scope"] = nncf.IgnoredScope(names=list(exclude), validate=False)
        return kw

    def quantize(self, name: str, feeds, exclude):
        kw = ptq.nncf_arguments(ptq.option_of(name), self._kwargs(feeds, exclude))
        return self.nncf.quantize(self.model, self.nncf.Dataset(feeds), **kw), ptq.notes_for(name)

    def save(self, model, folder: Path) -> None:
        import openvino as ov

        ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)

    def load(self, folder: Path):
        import openvino as ov

        return ov.Core().read_model(str(folder / "model.xml"))

    def _runner(self, model, precision: str, **extra):
        from edgeopt.backends.openvino.runner import OvRunner, runtime_config

        config = {**runtime_config(precision, self.req.target.options), **extra}
        return OvRunner(model, self.req.spec, self.req.target.device, config)

    def open(self, model):
        return self._runner(model, "int8")

    def open_fp32(self):
        return self._runner(self.model, "fp32")

    def variants(self, name: str, model, runner) -> dict:
        """The float remainder's precision: the device's default (bf16 on CPUs that have it) against f32."""
        hint = runner.properties().get("INFERENCE_PRECISION_HINT", "")
        self._hint = hint
        if "f32" in hint.lower():
            return {}
        return {f"{name} precision f32": self._runner(model, "int8", INFERENCE_PRECISION_HINT="f32")}

    def choose(self, name: str, timed: dict) -> tuple[dict | None, str]:
        return self._choice(name, timed) if f"{name} precision f32" in timed else (None, name)

    def exact(self, name: str, timed: dict) -> tuple[dict, str] | None:
        """The f32 float remainder, where ``choose`` took the device default for speed."""
        return self._choice(name, timed, force_f32=True) if f"{name} precision f32" in timed else None

    def _choice(self, name: str, timed: dict, force_f32: bool = False) -> tuple[dict, str]:
        """The float remainder's precision from the race: f32 when it is faster or within NOISE (or forced)."""
        from edgeopt.backends.openvino.runner import runtime_config

        f32, hint = f"{name} precision f32", getattr(self, "_hint", "")
        default = runtime_config("int8", self.req.target.options)
        d, f = timed[name]["latency_ms_b1"], timed[f32]["latency_ms_b1"]
        faster = f <= d * (1 + NOISE)
        pick_f32 = faster or force_f32
        choice = {"setting": "INFERENCE_PRECISION_HINT", "chosen": "f32" if pick_f32 else f"device default ({hint})",
                  "config": {**default, "INFERENCE_PRECISION_HINT": "f32"} if pick_f32 else default,
                  "figures": {f"default ({hint})": timed[name], "f32": timed[f32]},
                  "why": (f"the float remainder of the INT8 model ran {d:.3f} ms at batch 1 with the device default "
                          f"({hint}) and {f:.3f} ms with f32, timed in the same interleaved rounds; "
                          + ("f32 is faster or within 5% (a tie goes to the exact f32)" if faster else
                             "the default is more than 5% faster"))}
        return choice, f32 if pick_f32 else name

    def record(self) -> dict:
        return {"preset": self.preset_name, "model_type": self.req.model_kind, "target_device": self.req.target.device}

    def int8_left(self, model) -> bool:
        return any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())

    def from_qdq(self, path: Path):
        """A Q/DQ ONNX made by QAT (compress/qat.py): OpenVINO reads it (:func:`read_qdq`)."""
        return read_qdq(path)

    def nncf_input(self, feeds) -> NncfInput:
        j = judging_of(self.req)
        keep = head.wanted_for(j.model_kind, getattr(j.task, "type", None), self.cfg.float_head)
        exclude = self.float_nodes("nncf-ov", keep, tuple(self.cfg.float_nodes or ()))
        return NncfInput("nncf-ov", self.model, self._kwargs(feeds, exclude), _ov_infer, lambda q: q, exclude)

    def mixed_input(self, state) -> MixedInput:
        """Mixed precision (compress/mixed.py) for OpenVINO: NNCF's Q/DQ ONNX of the model (same preset, device and
        float nodes, named as in the ONNX), each try compiled by OpenVINO from the Q/DQ ONNX (Q/DQ pairs become
        FakeQuantize); the result is adopted as an ov.Model held in memory. With the NNCF option of the most
        accurate candidate judged so far (a stronger post-training option, compress/ptq.py, when one did best)."""
        import onnx
        import openvino as ov

        ran = [r for r in state.results if r["candidate"] in state.models and "error" not in r
               and (r.get("accuracy") or r.get("cosine") is not None)]
        ranked = sorted(ran, key=lambda r: ((r.get("accuracy") or {}).get("value", 0.0), r.get("cosine") or 0.0),
                        reverse=True)
        order = list(dict.fromkeys([r["candidate"] for r in ranked] + [NNCF_OV]))  # the plain one last

        j = judging_of(self.req)
        float_model = onnx.load(str(self.req.onnx_path))
        keep = head.wanted_for(j.model_kind, getattr(j.task, "type", None), self.cfg.float_head)
        exclude = (head.onnx_float_head_of(self.req.onnx_path) if keep else []) + head.named(
            [n.name for n in float_model.graph.node], tuple(self.cfg.float_nodes or ()))
        # NNCF's ONNX backend cannot always make what its OpenVINO backend made: its full bias correction fails on
        # an LRASPP head (two corrected convolutions summed into the output: "Failed to find node output or a
        # constant initializer producing output"). Then the next most accurate candidate's option, and so on.
        qdq, failed = None, []
        for best in order:
            try:
                qdq = self.nncf.quantize(float_model, self.nncf.Dataset(state.feeds), **ptq.nncf_arguments(
                    ptq.option_of(best), self._kwargs(state.feeds, exclude)))
                break
            except Exception as exc:  # noqa: BLE001 - the next option, the error kept for the log
                if best == order[-1]:
                    raise
                failed.append(best)
                state.log(f"mixed precision: NNCF's Q/DQ ONNX of {best} could not be made ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}); trying the next "
                          "most accurate candidate's option")
        core = ov.Core()
        self._tmp = tempfile.TemporaryDirectory(prefix="edgeopt-ov-mixed-")
        folder = Path(self._tmp.name)

        def to_ov(m):
            onnx.save(m, str(folder / "try.onnx"))
            return read_qdq(folder / "try.onnx", core)

        from edgeopt.backends.openvino.runner import runtime_config

        # The float nodes of each try in f32: the device default (bf16 on CPUs with AMX) rounds them too, and on
        # the real MobileNetV2 here every node but one back in "float" still lost 6 agreement points. The loop
        # then races the result's f32 and default settings like every candidate's.
        config = {**runtime_config("int8", self.req.target.options), "INFERENCE_PRECISION_HINT": "f32"}

        def infer_for(m):
            return _ov_infer(core.compile_model(to_ov(m), self.req.target.device, config))

        def adopt(m):
            import numpy as np

            ov.save_model(to_ov(m), str(folder / "mixed.xml"), compress_to_fp16=False)
            xml = (folder / "mixed.xml").read_text()  # held in memory: nothing of it left in the folder
            return core.read_model(xml, ov.Tensor(np.fromfile(folder / "mixed.bin", dtype=np.uint8)))

        return MixedInput(f"{best}-mixed", qdq, float_model, infer_for, adopt)


def quantize_for_openvino(req, model):
    """Returns (quantized ov.Model, metadata), through the INT8 loop."""
    from edgeopt.compress.int8 import run_int8

    return run_int8(OvQuantizer(req, model), req)
