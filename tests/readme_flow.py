"""The recipes of the README's "From training tools" section, for the tests that build them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "\n## From training tools: adapters, Ultralytics checkpoints, segmentation, torchvision detectors\n"


def blocks(lang: str) -> list[str]:
    section = README.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


def recipe(index: int, **sections) -> dict:
    """The section's ``index``-th TOML recipe as a dict, with ``sections`` laid over it (section by section:
    a test's shorter profile, its fixture paths)."""
    data = tomllib.loads(blocks("toml")[index])
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data
