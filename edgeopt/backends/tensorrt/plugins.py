"""TensorRT's standard plugins (libnvinfer_plugin, registered by ``init_libnvinfer_plugins``) by name and version,
with the TensorRT release each was added in, deprecated in and removed in. Data only.

Sources (read for this table; names and versions only): NVIDIA/TensorRT ``plugin/api/inferPlugin.cpp`` (the
creators ``initLibNvInferPlugins`` registers) and the plugin table of ``plugin/README.md`` at the tags v10.0.0 ...
v10.16, v11.0 and v11.1. TensorRT 11.0 no longer registers BatchTilePlugin_TRT, BatchedNMS_TRT,
BatchedNMSDynamic_TRT, Clip_TRT, CoordConvAC, CropAndResize, CropAndResizeDynamic version 1, CustomGeluPluginDynamic,
EfficientNMS_ONNX_TRT, LReLU_TRT, NMS_TRT, NMSDynamic_TRT, Normalize_TRT, Proposal, ProposalDynamic,
SpecialSlice_TRT and Split; it adds TopkLastDim. An ONNX node of a plugin name is looked up in the registry by
(op_type, attribute ``plugin_version`` (default "1"), attribute ``plugin_namespace`` (default "")), so a removed
plugin fails the parse ("Plugin not found, are the plugin name, version, and namespace correct?").
"""

from __future__ import annotations

Version = tuple[int, int]

_B: Version = (10, 0)  # present in the oldest release this table describes
_GONE: Version = (11, 0)

# (name, plugin_version) -> (added, deprecated or None, removed or None)
PLUGINS: dict[tuple[str, str], tuple[Version, Version | None, Version | None]] = {
    ("BatchTilePlugin_TRT", "1"): (_B, _B, _GONE),
    ("BatchedNMS_TRT", "1"): (_B, _B, _GONE),
    ("BatchedNMSDynamic_TRT", "1"): (_B, _B, _GONE),
    ("Clip_TRT", "1"): (_B, _B, _GONE),
    ("CoordConvAC", "1"): (_B, _B, _GONE),
    ("CropAndResize", "1"): (_B, _B, _GONE),
    ("CropAndResizeDynamic", "1"): (_B, (10, 14), _GONE),
    ("CropAndResizeDynamic", "2"): ((10, 14), None, None),
    ("CustomGeluPluginDynamic", "1"): (_B, _B, _GONE),
    ("DecodeBbox3DPlugin", "1"): (_B, (10, 14), None),
    ("DetectionLayer_TRT", "1"): (_B, (10, 14), None),
    ("DisentangledAttention_TRT", "1"): (_B, (10, 11), None),
    ("DisentangledAttention_TRT", "2"): ((10, 11), None, None),
    ("EfficientNMS_TRT", "1"): (_B, (10, 14), None),
    ("EfficientNMS_ONNX_TRT", "1"): (_B, _B, _GONE),
    ("EfficientNMS_Explicit_TF_TRT", "1"): (_B, (11, 0), None),
    ("EfficientNMS_Implicit_TF_TRT", "1"): (_B, (11, 0), None),
    ("FlattenConcat_TRT", "1"): (_B, (10, 14), None),
    ("GenerateDetection_TRT", "1"): (_B, (10, 14), None),
    ("GridAnchor_TRT", "1"): (_B, (10, 14), None),
    ("GridAnchorRect_TRT", "1"): (_B, (11, 0), None),
    ("GroupNormalizationPlugin", "1"): (_B, (10, 14), None),
    ("InstanceNormalization_TRT", "1"): (_B, (10, 3), None),
    ("InstanceNormalization_TRT", "2"): ((10, 3), (10, 14), None),
    ("InstanceNormalization_TRT", "3"): ((10, 14), None, None),
    ("LReLU_TRT", "1"): (_B, _B, _GONE),
    ("ModulatedDeformConv2d", "1"): (_B, (10, 14), None),
    ("ModulatedDeformConv2d", "2"): ((10, 14), None, None),
    ("MultilevelCropAndResize_TRT", "1"): (_B, (10, 14), None),
    ("MultilevelProposeROI_TRT", "1"): (_B, (10, 14), None),
    ("MultiscaleDeformableAttnPlugin_TRT", "1"): (_B, (10, 11), None),
    ("MultiscaleDeformableAttnPlugin_TRT", "2"): ((10, 11), None, None),
    ("NMS_TRT", "1"): (_B, _B, _GONE),
    ("NMSDynamic_TRT", "1"): (_B, _B, _GONE),
    ("Normalize_TRT", "1"): (_B, _B, _GONE),
    ("PillarScatterPlugin", "1"): (_B, (10, 14), None),
    ("PriorBox_TRT", "1"): (_B, (10, 14), None),
    ("Proposal", "1"): (_B, _B, _GONE),
    ("ProposalDynamic", "1"): (_B, (10, 14), _GONE),
    ("ProposalLayer_TRT", "1"): (_B, (10, 14), None),
    ("PyramidROIAlign_TRT", "1"): (_B, (11, 0), None),
    ("ROIAlign_TRT", "1"): (_B, (10, 1), None),
    ("ROIAlign_TRT", "2"): ((10, 1), None, None),
    ("RPROI_TRT", "1"): (_B, (10, 14), None),
    ("Region_TRT", "1"): (_B, (10, 14), None),
    ("Reorg_TRT", "2"): (_B, (10, 14), None),
    ("ResizeNearest_TRT", "1"): (_B, (10, 14), None),
    ("ScatterElements", "1"): (_B, (10, 3), None),
    ("ScatterElements", "2"): ((10, 3), None, None),
    ("ScatterND", "1"): (_B, (10, 14), None),
    ("SpecialSlice_TRT", "1"): (_B, _B, _GONE),
    ("Split", "1"): (_B, _B, _GONE),
    ("TopkLastDim", "1"): ((11, 0), None, None),
    ("VoxelGeneratorPlugin", "1"): (_B, (10, 14), None),
}

# What a creator's createPlugin refuses (plugin/efficientNMSPlugin/efficientNMSPlugin.cpp, unchanged 10.3 -> 11.1):
# required fields and the ONNX attribute type each must have (onnx-tensorrt's loadFields maps an ONNX FLOAT to
# kFLOAT32 and an INT to kINT32). class_agnostic is optional; left out, the parser warns that it is not found.
FIELDS: dict[tuple[str, str], dict[str, tuple[str, bool]]] = {
    ("EfficientNMS_TRT", "1"): {"score_threshold": ("FLOAT", True), "iou_threshold": ("FLOAT", True),
                                "max_output_boxes": ("INT", True), "background_class": ("INT", True),
                                "score_activation": ("INT", True), "class_agnostic": ("INT", False),
                                "box_coding": ("INT", True)},
}

NAMES = frozenset(name for name, _ in PLUGINS)
NMS_NAMES = frozenset({"EfficientNMS_TRT", "EfficientNMS_ONNX_TRT", "BatchedNMS_TRT", "BatchedNMSDynamic_TRT",
                       "NMS_TRT", "NMSDynamic_TRT"})


def _v(v: Version) -> str:
    return f"{v[0]}.{v[1]}"


def versions_of(name: str) -> list[str]:
    return sorted(v for n, v in PLUGINS if n == name)


def plugin_status(name: str, plugin_version: str, trt: Version) -> tuple[str, str]:
    """What TensorRT ``trt`` does with a node of plugin ``name`` / ``plugin_version``: ("ok" | "deprecated" |
    "removed" | "not-yet" | "no-such-version" | "unknown", a sentence saying so)."""
    row = PLUGINS.get((name, plugin_version))
    if row is None:
        known = versions_of(name)
        if not known:
            return "unknown", f"{name} is not one of TensorRT's standard plugins"
        return "no-such-version", (f"{name} has no plugin_version {plugin_version!r} among TensorRT's standard "
                                   f"plugins (versions: {', '.join(known)})")
    added, deprecated, removed = row
    if removed is not None and trt >= removed:
        return "removed", (f"{name} version {plugin_version} was removed in TensorRT {_v(removed)} "
                           f"(no longer registered by libnvinfer_plugin)")
    if trt < added:
        return "not-yet", f"{name} version {plugin_version} was added in TensorRT {_v(added)}"
    if deprecated is not None and trt >= deprecated:
        gone = f" and removed in {_v(removed)}" if removed else ""
        return "deprecated", f"{name} version {plugin_version} is deprecated since TensorRT {_v(deprecated)}{gone}"
    return "ok", ""


def alternatives(name: str, trt: Version) -> str:
    """The usual replacement for a removed plugin."""
    if name in NMS_NAMES:
        return ("Use EfficientNMS_TRT (edgeopt's nms = \"plugin\" appends it) or run NMS outside the engine "
                "(nms = \"outside\")")
    live = [v for v in versions_of(name) if plugin_status(name, v, trt)[0] in ("ok", "deprecated")]
    if live:
        return f"Set plugin_version = \"{live[-1]}\" on the node (the version TensorRT {_v(trt)} registers)"
    return ("Replace the node with ONNX operators TensorRT parses natively (ONNX-GraphSurgeon), or build for a "
            "TensorRT that still has it (10.x, JetPack 6)")


def field_problems(name: str, plugin_version: str, attrs: dict[str, str]) -> list[str]:
    """What the creator of ``name``/``plugin_version`` would refuse or warn about, given the node's attributes
    (name -> ONNX attribute type name: "FLOAT", "INT", ...): ["missing required attribute X", ...]."""
    fields = FIELDS.get((name, plugin_version))
    if not fields:
        return []
    out = []
    for field, (kind, required) in fields.items():
        if field not in attrs:
            if required:
                out.append(f"missing required attribute {field} ({kind})")
        elif attrs[field] != kind:
            out.append(f"attribute {field} is {attrs[field]}, the creator takes {kind}")
    return out
