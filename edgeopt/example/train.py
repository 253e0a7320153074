"""Train the built-in example on scikit-learn's digits and write its weights and data sets.

    python -m edgeopt.example.train      # seconds on 2 cores; needs torch and scikit-learn

Writes edgeopt/example/digits_cnn.pt (state_dict) and calibration/digits/{calibration,heldout,train}.npz.
The split is fixed (seed 0): 1437 training images, 360 held out.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from edgeopt.example.model import WEIGHTS, build
from edgeopt.core.fsutil import write_bytes_atomic

DATA = Path(__file__).resolve().parents[2] / "calibration" / "digits"
HELDOUT = 360
SEED = 0


def digits_split():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(y))
    test, train = order[:HELDOUT], order[HELDOUT:]
    return (x[train], y[train]), (x[test], y[test])


def _save_npz(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


def train(epochs: int = 25) -> float:
    import torch
    from torch import nn

    (xtr, ytr), (xte, yte) = digits_split()
    torch.manual_seed(SEED)
    model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(yt), generator=g)
        for i in range(0, len(yt), 64):
            idx = perm[i:i + 64]
            xb = xt[idx]
            # light augmentation: shift by one pixel
            xb = torch.roll(xb, shifts=(int(torch.randint(-1, 2, (1,), generator=g)),
                                        int(torch.randint(-1, 2, (1,), generator=g))), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    write_bytes_atomic(WEIGHTS, buf.getvalue())
    cal = np.random.default_rng(SEED + 1).permutation(len(ytr))[:300]
    _save_npz(DATA / "calibration.npz", image=xtr[cal])
    _save_npz(DATA / "heldout.npz", image=xte, labels=yte)
    _save_npz(DATA / "train.npz", image=xtr, labels=ytr)
    return acc


if __name__ == "__main__":
    print(f"held-out top-1: {train():.4f}")
