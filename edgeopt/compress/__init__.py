"""Compression stage: INT8 with an accuracy guard, written once for every backend, and pruning.

- ``int8.py``: the INT8 loop: candidates -> cached calibration -> quantize -> time against FP32 -> judge ->
  recovery steps -> pick -> record. Each backend hands it a quantizer (``backends/<name>/quantize.py``).
- ``quantizer.py``: what a backend's quantizer provides (the protocol, documented there).
- ``recovery.py``: the steps tried when no candidate meets the budget (NNCF accuracy control first).
- ``guard.py``: how a candidate is scored against the FP32 model and the budget (``score``: the one function).
- ``judging.py``: what candidates are judged with (lives with the INT8 stage, not the compile request).
- ``cache.py``: calibration results keyed by content (one key function).
- ``common.py``: calibration feeds (the one sample budget), NNCF presets and datasets.
- ``head.py``: the post-processing every INT8 recipe leaves in float; ``failure.py``: a quantizer's error
  told per node.
- ``prune.py``: NNCF unstructured pruning, torch-pruning structured pruning, recovery fine-tuning.
"""

from __future__ import annotations

from edgeopt.config.compression import CompressionConfig

# Bump when a backend's INT8 candidates or graph rewrites change what they produce: it is part of every INT8
# artifact's key and of the rewriting recipe's calibration-cache key, so nothing made by older recipes is reused.
INT8_RECIPES_VERSION = 2


__all__ = ["CompressionConfig", "INT8_RECIPES_VERSION"]
