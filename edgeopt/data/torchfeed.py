"""Named numpy feeds as the positional torch tensors a module's forward() takes (host side, needs torch)."""

from __future__ import annotations

import numpy as np

from edgeopt.core.spec import IOSpec


def to_torch(feed: dict[str, np.ndarray], spec: IOSpec):
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(feed[t.name])) for t in spec.inputs)
