"""Hugging Face folders (``hf:FOLDER``, written by ``save_pretrained``): the model class from ``config.json``.

A folder whose ``architectures`` name a sequence or image classifier loads with its head (the outputs are
its logits, the task classification, the class names its ``id2label``); any other folder loads as the bare
encoder (``AutoModel``). A PEFT adapter that trains a classification head (``task_type = "SEQ_CLS"``, or a
``classifier`` among its ``modules_to_save``) asks for the head too, with as many classes as it was trained
with. Needs torch and transformers; imported lazily by intake.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgeopt.errors import ModelLoadError, require

MAX_CONFIG_BYTES = 4 << 20
HEADS = {"sequence": "AutoModelForSequenceClassification", "image": "AutoModelForImageClassification"}
DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")


def read_config(folder: Path) -> dict:
    from edgeopt.core.untrusted import load_json

    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"Hugging Face model folder {folder} has no config.json.",
                             "Give a folder written by save_pretrained().")
    try:
        data = load_json(path, str(path), max_bytes=MAX_CONFIG_BYTES)
    except Exception as exc:  # IntegrityError
        raise ModelLoadError(f"{path} cannot be read: {exc}", "Save the model again with save_pretrained().") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object.", "Save the model again with save_pretrained().")
    return data


def head_of(config: dict, adapter: dict | None) -> str | None:
    """``sequence``, ``image`` or None (the bare encoder)."""
    task = (adapter or {}).get("task_type")
    if task == "SEQ_CLS":
        return "sequence"
    if task == "FEATURE_EXTRACTION":
        return None
    archs = config.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else ""
    if arch.endswith("ForSequenceClassification"):
        return "sequence"
    if arch.endswith("ForImageClassification"):
        return "image"
    if adapter and "classifier" in (adapter.get("modules_to_save") or []):
        return "image" if "pixel" in str(config.get("model_type", "")) or "image_size" in config else "sequence"
    return None


def labels_of(model) -> tuple[str, ...] | None:
    """The class names in the loaded model's config (None when they are transformers' LABEL_0, ...)."""
    id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
    try:
        names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    except (TypeError, ValueError, KeyError):
        return None
    if not names or all(DEFAULT_LABEL.match(n) for n in names):
        return None
    return tuple(n[:1000] for n in names)


def load_hf(folder: Path, adapter_cfg: dict | None = None, classes: int | None = None):
    """(model, head) for a local ``save_pretrained`` folder; ``classes``: the head's size an adapter needs."""
    transformers = require("transformers", "transformers", "load a Hugging Face model")
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"Hugging Face model folder {folder} does not exist.",
                             "Give a local folder written by save_pretrained(); edgeopt never downloads models.")
    config = read_config(folder)
    head = head_of(config, adapter_cfg)
    kwargs = {}
    if head and classes and classes != config.get("num_labels", len(config.get("id2label") or {}) or 2):
        kwargs = {"num_labels": classes, "ignore_mismatched_sizes": True}  # the adapter brings the head
    cls = getattr(transformers, HEADS[head]) if head else transformers.AutoModel
    try:
        model = cls.from_pretrained(str(folder), local_files_only=True, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"transformers could not load {folder}: {exc}", "Check the folder's config.json.") from exc
    return model, head
