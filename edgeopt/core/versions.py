"""Version strings as numbers: one place for how edgeopt reads "10.3.0.30", "2025.3.0-19807" or "1.22.1"."""

from __future__ import annotations

import re


def version_tuple(text: str | int | float | None) -> tuple[int, ...]:
    """Every leading numeric part: "10.3.0.30" -> (10, 3, 0, 30), "2025.3.0-19807" -> (2025, 3, 0); () for none."""
    out = []
    for part in str(text or "").split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group()))
    return tuple(out)


def major_minor(text: str | int | float) -> tuple[int, int]:
    """"10.3" / "10.13.3.9" / 11 -> (major, minor); ValueError when there is no leading major number."""
    parts = version_tuple(text)
    if not parts or not str(text).strip()[:1].isdigit():
        raise ValueError(f"not a version: {text!r}")
    return parts[0], (parts[1] if len(parts) > 1 else 0)
