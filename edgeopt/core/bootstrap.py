"""The paired percentile bootstrap of a drop, once for every task metric (classification, detection,
segmentation): the same resampled samples score both models, so what they share cancels. The metric says how
to score one resample; this module draws the resamples, in chunks of bounded memory, and reads the interval."""

from __future__ import annotations

from typing import Callable

import numpy as np

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
DRAWN_AT_ONCE = 2_000_000  # sample indices held in memory at a time, for large evaluation sets


def paired_drop(point: float, n: int, drops_of: Callable[[np.ndarray], np.ndarray], level: float = LEVEL,
                resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """The drop ``point`` (points, on all ``n`` samples) with its interval: ``drops_of(idx)`` gives the drop of
    each resample in ``idx`` (``[k, n]`` sample indices drawn with replacement), NaN where a resample says nothing
    (it is left out). With fewer than 2 samples or 2 usable resamples the interval is the point."""
    drops = np.empty(0)
    if n >= 2 and resamples >= 1:
        rng = np.random.default_rng(seed)
        step = max(1, DRAWN_AT_ONCE // n)
        drops = np.concatenate([np.asarray(drops_of(rng.integers(0, n, size=(min(step, resamples - i), n))),
                                           np.float64).reshape(-1) for i in range(0, resamples, step)])
        drops = drops[np.isfinite(drops)]
    point = float(point)
    if len(drops) < 2:
        return {"drop_points": point, "low": point, "high": point, "level": level, "resamples": 0, "seed": seed,
                "samples": n}
    lo, hi = np.quantile(drops, [(1 - level) / 2, (1 + level) / 2])
    return {"drop_points": point, "low": float(min(lo, point)), "high": float(max(hi, point)), "level": level,
            "resamples": int(len(drops)), "seed": seed, "samples": n}


def weights(idx: np.ndarray, n: int) -> np.ndarray:
    """``[k, n]`` resample indices -> ``[k, n]`` weights: how often each sample was drawn in each resample."""
    k = len(idx)
    w = np.zeros((k, n))
    np.add.at(w, (np.repeat(np.arange(k), idx.shape[1]), idx.reshape(-1)), 1.0)
    return w
