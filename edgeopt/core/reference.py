"""Reference samples and outputs (from PyTorch), stored once in OUT/reference/ for every parity check,
on this host and later on a device without torch."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from edgeopt.core.fsutil import write_bytes_atomic
from edgeopt.core.spec import IOSpec

REFERENCE_FILE = "reference/reference.npz"


def parity_feeds(spec: IOSpec, samples: int, seed: int, real: list[dict] | None = None) -> list[dict]:
    """Random feeds at batch 1 (``samples`` of them), one at a batch > 1 when the batch is dynamic,
    then real samples (batch 1) when evaluation/calibration data is given."""
    rng = np.random.default_rng(seed)
    lo, hi = spec.batch_range()
    first = lo if spec.batch_dim else None
    feeds = [spec.random_feed(rng, batch=first) for _ in range(samples)]
    if spec.batch_dim and hi > 1:
        feeds.append(spec.random_feed(rng, batch=min(hi, max(4, spec.dims[spec.batch_dim].opt))))
    # Other dynamic axes (image height and width, sequence length): one sample at their min and one at their max
    others = {n: d for n, d in spec.dims.items() if n != spec.batch_dim}
    for which in ("min", "max"):
        sizes = {n: getattr(d, which) for n, d in others.items()}
        if any(v != d.opt for v, d in zip(sizes.values(), others.values())):
            feeds.append(spec.random_feed(rng, batch=first, sizes=sizes))
    return feeds + list(real or [])


def save_reference(path: Path, feeds: list[dict], outputs: list[dict]) -> None:
    arrays = {}
    for i, (f, o) in enumerate(zip(feeds, outputs)):
        arrays.update({f"input/{i}/{k}": v for k, v in f.items()})
        arrays.update({f"output/{i}/{k}": v for k, v in o.items()})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


def load_reference(path: Path) -> tuple[list[dict], list[dict]]:
    """(feeds, outputs) from a reference .npz, read within the named limits of :mod:`edgeopt.core.bounded`
    (a bundle's reference data is untrusted). ValueError (LimitExceeded among them) when it cannot be."""
    from edgeopt.core.bounded import read_npz

    feeds: dict[int, dict] = {}
    outs: dict[int, dict] = {}
    for key, arr in read_npz(path, accept=_REF_KEY.match).items():
        kind, i, name = key.split("/", 2)
        (feeds if kind == "input" else outs).setdefault(int(i), {})[name] = arr
    n = sorted(feeds)
    if any(i not in outs for i in n):
        raise ValueError(f"{path} holds inputs without their outputs")
    return [feeds[i] for i in n], [outs[i] for i in n]


_REF_KEY = re.compile(r"^(input|output)/[0-9]{1,6}/[^/].*$")
