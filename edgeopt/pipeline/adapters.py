"""PEFT adapters: ``[model] adapter`` applied to the base model by the ``peft`` library.

A mergeable adapter (LoRA, AdaLoRA, IA3, LoHa, LoKr) is merged into a copy of the base weights with peft's
``merge_and_unload`` and that copy is exported; any other adapter is exported as part of the graph. Either
way the model as trained (the adapter applied, unmerged) stays the reference every artifact is checked
against, and the merge's own error (merged vs unmerged PyTorch, on random inputs) is recorded beside it.

Needs torch and peft; imported lazily by intake.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from edgeopt.errors import ModelLoadError, require

MERGEABLE = ("LORA", "ADALORA", "IA3", "LOHA", "LOKR")
CONFIG_FILE = "adapter_config.json"
MAX_CONFIG_BYTES = 1 << 20
MERGE_SAMPLES = 3  # random inputs the merge's own error is measured on


def read_adapter_config(folder: Path) -> dict:
    """The adapter folder's ``adapter_config.json`` (bounded, strict JSON), or a clear error."""
    from edgeopt.core.untrusted import load_json

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"Adapter folder {folder} does not exist.",
                             "Give [model] adapter the folder PeftModel.save_pretrained() wrote.")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelLoadError(f"Adapter folder {folder} has no {CONFIG_FILE}: it is not a PEFT adapter.",
                             "Give [model] adapter the folder PeftModel.save_pretrained() wrote.")
    try:
        cfg = load_json(path, f"{path}", max_bytes=MAX_CONFIG_BYTES)
    except Exception as exc:  # IntegrityError: too big, not JSON
        raise ModelLoadError(f"{path} cannot be read: {exc}", "Save the adapter again with save_pretrained().") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("peft_type"), str):
        raise ModelLoadError(f"{path} names no peft_type.", "Save the adapter again with save_pretrained().")
    return cfg


def head_classes(folder: Path) -> int | None:
    """The number of classes of a classification head the adapter trains (``modules_to_save``), read from the
    shape of its weights without loading them; None when it trains no head."""
    path = Path(folder) / "adapter_model.safetensors"
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():
                parts = key.split(".")
                if parts[-1] == "weight" and any(p in ("classifier", "score") for p in parts) \
                        and ("modules_to_save" in parts or parts[-2] in ("classifier", "score", "out_proj")):
                    shape = f.get_slice(key).get_shape()
                    if len(shape) == 2:
                        return int(shape[0])
    except Exception:  # noqa: BLE001 - a hint only: peft's own load reports a real mismatch
        return None
    return None


def rank_of(cfg: dict) -> dict:
    """The adapter's rank as its config states it (IA3 has none)."""
    kind = cfg["peft_type"].upper()
    if kind == "ADALORA":
        return {"rank": cfg.get("target_r"), "init_rank": cfg.get("init_r")}
    r = cfg.get("r")
    return {"rank": r if isinstance(r, int) else None}


def apply_adapter(model, folder: Path):
    """``model`` with the adapter in ``folder`` applied (unmerged: the model as trained), the model to export
    (its merge, or the same model when the adapter cannot be merged) and the adapter's record."""
    peft = require("peft", "adapters", "apply a PEFT adapter")
    folder = Path(folder)
    cfg = read_adapter_config(folder)
    kind = cfg["peft_type"].upper()
    try:
        adapted = peft.PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except Exception as exc:  # noqa: BLE001 - peft raises ValueError, KeyError, RuntimeError (size mismatch)
        raise ModelLoadError(f"peft could not apply the adapter {folder} to the base model: "
                             f"{type(exc).__name__}: {str(exc)[:400]}",
                             "Give the base model the adapter was trained on ([model] source), and the folder "
                             "PeftModel.save_pretrained() wrote.") from exc
    adapted.eval()
    record = {"path": str(folder), "type": kind, **rank_of(cfg), "task_type": cfg.get("task_type"),
              "target_modules": _short(cfg.get("target_modules")),
              "modules_to_save": _short(cfg.get("modules_to_save")), "peft_version": _version("peft")}
    if kind not in MERGEABLE:
        record.update({"merged": False, "why": f"{kind} adapters cannot be merged: exported as part of the graph"})
        return adapted, adapted, record
    try:
        merged = copy.deepcopy(adapted).merge_and_unload()
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"peft could not merge the {kind} adapter {folder}: {type(exc).__name__}: {exc}",
                             "Report this adapter; a merge-free export is not offered for mergeable types.") from exc
    merged.eval()
    record["merged"] = True
    return adapted, merged, record


def merge_error(reference, merged, spec, samples: int = MERGE_SAMPLES) -> dict:
    """How far the merged model's outputs are from the unmerged one's (flat modules), on random inputs."""
    import torch

    from edgeopt.data.torchfeed import to_torch

    worst_abs, worst_cos = 0.0, 1.0
    rng = np.random.default_rng(1)
    with torch.inference_mode():
        for _ in range(samples):
            args = to_torch(spec.random_feed(rng), spec)
            for a, b in zip(reference(*args), merged(*args)):
                a = a.detach().double().reshape(-1)
                b = b.detach().double().reshape(-1)
                worst_abs = max(worst_abs, float((a - b).abs().max()) if a.numel() else 0.0)
                if a.is_floating_point() and a.numel():
                    na, nb = float(a.norm()), float(b.norm())
                    cos = 1.0 if na == nb == 0 else float(a @ b) / max(na * nb, 1e-30)
                    worst_cos = min(worst_cos, cos)
    return {"max_abs": worst_abs, "min_cosine": worst_cos, "samples": samples, "inputs": "random"}


def _short(v):
    if isinstance(v, (list, tuple)):
        return [str(x)[:200] for x in list(v)[:64]]
    return None if v is None else str(v)[:200]


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def describe_adapter(rec: dict) -> str:
    """One log line: what was applied and how far the merge moved the outputs."""
    rank = f" rank {rec['rank']}" if rec.get("rank") else ""
    text = f"Adapter: {rec['type']}{rank} from {rec['path']} on {rec.get('base')}"
    if not rec.get("merged"):
        return f"{text}; {rec.get('why', 'not merged')}"
    err = rec.get("merge_error") or {}
    return (f"{text}; merged into the weights (merge error vs the unmerged model: max |diff| "
            f"{err.get('max_abs', float('nan')):.3g}, min cosine {err.get('min_cosine', float('nan')):.6f}); "
            "artifacts are checked against the unmerged model")


def adapter_names(adapters) -> list[str]:
    """One output folder name per adapter (its folder's name), refusing two adapters with the same name."""
    import re

    from edgeopt.errors import UserInputError

    names = [Path(str(a).rstrip("/\\")).name for a in adapters]
    for n in names:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", n):
            raise UserInputError(f"[model] adapter folder name {n!r} cannot name an output folder.",
                                 "Name adapter folders with letters, digits, '.', '_', '-'.")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserInputError(f"[model] adapter lists folders with the same name {dup}; each adapter's artifacts "
                             "go to OUT/<folder name>.", "Give each adapter folder its own name.")
    return names


def build_each_adapter(build, recipe, output, **kw) -> dict:
    """``[model] adapter = [A, B, ...]``: one build (one artifact set) per adapter, into ``OUTPUT/<adapter folder
    name>``, each with its own manifest. Returns ``{"adapters": {name: manifest}}``."""
    from dataclasses import replace

    names = adapter_names(recipe.model.adapter)
    built = {}
    for name, adapter in zip(names, recipe.model.adapter):
        model = replace(recipe.model, adapter=(adapter,), name=f"{recipe.model.name or 'model'}-{name}"
                        if recipe.model.name else None)
        built[name] = build(replace(recipe, model=model), Path(output) / name, **kw)
    return {"adapters": built}
