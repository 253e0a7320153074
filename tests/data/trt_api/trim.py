#!/usr/bin/env python3
"""Trim the API-surface JSON that extract_api.py writes into the small files kept here.

TensorRT: classes (methods with each overload's parameter names and the TensorRT class they return,
properties), enums, module functions,
ILogger.Severity and the pure-Python helpers (nptype, volume), from the cross-check output
(``data/groundtruth/tensorrt-X.runtime.json``: pybind11's own signatures, more exact than the static pass,
especially for 11.x properties) plus the static file for what the cross-check does not list.
cuda-python: ``cuda.bindings.runtime`` only (functions with args/returns, enums, class fields) and which
legacy modules (``cuda.cudart``) the wheel has.

Usage: python3 trim.py EXTRACTOR_DATA_DIR   (writes tensorrt-10.3.json ... cuda-13.5.json beside this file)
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def trt(data: Path, version: str) -> dict:
    static = json.loads((data / f"tensorrt-{version}.json").read_text())
    runtime = json.loads((data / "groundtruth" / f"tensorrt-{version}.runtime.json").read_text())
    cpp = {c["cpp"]: name for name, c in static["classes"].items() if c.get("cpp")}  # nvonnxparser::IParserError
    classes = {}
    for name, c in sorted(runtime["classes"].items()):
        methods = {m: [o["args"] for o in overloads] for m, overloads in sorted(c["methods"].items())
                   if m != "_pybind11_conduit_v1_" and m != "Severity"}
        returns = {}
        for m, overloads in c["methods"].items():  # "... -> tensorrt.INetworkDefinition": the class a method returns
            kinds = {o["sig"].rsplit(" -> ", 1)[-1] for o in overloads if " -> " in o.get("sig", "")}
            kinds = {cpp.get(k, k).removeprefix("tensorrt.") for k in kinds}
            kinds = {k for k in kinds if k in runtime["classes"] or k in runtime["enums"]}
            if len(kinds) == 1:
                returns[m] = kinds.pop()
        classes[name] = {"methods": methods, "properties": sorted(c["properties"]), "returns": dict(sorted(returns.items()))}
    wrappers = next(v for k, v in static["python_wrappers"].items() if k.endswith("tensorrt_bindings"))
    return {"package": static["package"], "version": static["version"], "made_by": "extract_api.py --crosscheck + trim.py",
            "classes": classes, "enums": {k: v for k, v in sorted(runtime["enums"].items())},
            "nested_enums": {"ILogger.Severity": static["enums"]["Severity"]},
            "functions": {k: v for k, v in sorted(static["functions"].items())},
            "python_wrappers": {k: wrappers[k] for k in sorted(wrappers) if k in ("nptype", "volume")}}


def cuda(data: Path, version: str) -> dict:
    full = json.loads((data / f"cuda-{version}.json").read_text())
    rt = full["modules"]["cuda.bindings.runtime"]
    return {"package": full["package"], "version": full["version"], "made_by": "extract_api.py + trim.py",
            "return_convention": full["return_convention"],
            "legacy_modules": full["legacy_modules"],
            "modules": {"cuda.bindings.runtime": {
                "functions": rt["functions"], "enums": rt["enums"],
                "classes": {k: {"properties": v.get("properties", [])} for k, v in rt["classes"].items()}}}}


def main(argv):
    data = Path(argv[1])
    for v in ("10.3", "11.4"):
        (HERE / f"tensorrt-{v}.json").write_text(json.dumps(trt(data, v), indent=0, sort_keys=True) + "\n")
    for v in ("12.6", "13.5"):
        (HERE / f"cuda-{v}.json").write_text(json.dumps(cuda(data, v), indent=0, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv)
