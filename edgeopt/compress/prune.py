"""Pruning: NNCF unstructured magnitude pruning (sparsity, no CPU speed-up) and torch-pruning structured
channel pruning (DepGraph; real speed-up), with batch-norm adaptation and optional recovery fine-tuning.

Works on the flat module from intake; needs torch (and nncf / torch-pruning for the method chosen).
"""

from __future__ import annotations

import copy

import numpy as np

from edgeopt.config.pruning import FinetuneConfig, PruningConfig
from edgeopt.errors import UserInputError, require



def count(module, args) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass, by torch-pruning's counter."""
    tp = require("torch_pruning", "nncf", "count MACs")
    macs, params = tp.utils.count_ops_and_params(module, args)
    return int(macs), int(params)


def sparsity(module) -> float:
    import torch

    total = zeros = 0
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Conv1d)):
            total += m.weight.numel()
            zeros += int((m.weight == 0).sum())
    return zeros / max(total, 1)


def _heads(flat, args) -> list:
    """Layers whose outputs are the model's outputs (classifier heads): never pruned."""
    import torch

    with torch.no_grad():
        outs = flat(*args)
    widths = {int(o.shape[-1]) for o in outs if o.ndim >= 1}
    lin = [m for m in flat.modules() if isinstance(m, torch.nn.Linear)]
    heads = [m for m in lin if m.out_features in widths]
    return heads or lin[-1:]


def prune_structured(flat, args, cfg: PruningConfig):
    tp = require("torch_pruning", "nncf", "prune channels (structured pruning)")
    ignored = _heads(flat, args) + [m for n, m in flat.named_modules() if n in cfg.ignored or
                                    n.removeprefix("inner.") in cfg.ignored]
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    macs0, _ = count(flat, args)
    if cfg.macs_target is None:
        pruner = tp.pruner.BasePruner(flat, args, importance=imp, pruning_ratio=cfg.ratio, ignored_layers=ignored,
                                      round_to=cfg.round_to)
        pruner.step()
    else:
        steps = 20
        pruner = tp.pruner.BasePruner(flat, args, importance=imp, pruning_ratio=0.95, iterative_steps=steps,
                                      ignored_layers=ignored, round_to=cfg.round_to)
        for _ in range(steps):
            pruner.step()
            if count(flat, args)[0] <= cfg.macs_target * macs0:
                break
    return flat


def prune_unstructured(flat, args, cfg: PruningConfig):
    """NNCF magnitude pruning; masks are folded into the weights of a clean copy (no NNCF hooks)."""
    nncf = require("nncf", "nncf", "prune weights (unstructured pruning)")
    require("torchao", "nncf", "strip NNCF's pruning masks (nncf.strip needs torchao)")
    clean = copy.deepcopy(flat)
    pruned = nncf.prune(flat, mode=nncf.PruneMode.UNSTRUCTURED_MAGNITUDE_GLOBAL, ratio=cfg.ratio,
                        examples_inputs=args if len(args) > 1 else args[0])
    return pruned, clean


def strip_unstructured(pruned, clean, args):
    import nncf

    stripped = nncf.strip(pruned, do_copy=True, strip_format=nncf.StripFormat.IN_PLACE,
                          example_input=args if len(args) > 1 else args[0])
    own = clean.state_dict()
    clean.load_state_dict({k: v for k, v in stripped.state_dict().items() if k in own}, strict=True)
    return clean.eval()


def adapt_batchnorm(flat, feeds: list[dict], spec, batches: int = 20, batch_size: int = 32) -> None:
    """Re-estimate batch-norm statistics on calibration data (no gradient, no labels)."""
    import torch

    from edgeopt.data.torchfeed import to_torch

    bns = [m for m in flat.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or not feeds:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    flat.train()
    names = [t.name for t in spec.inputs]
    with torch.no_grad():
        for i in range(0, min(len(feeds), batches * batch_size), batch_size):
            chunk = feeds[i:i + batch_size]
            batch = {n: np.concatenate([f[n] for f in chunk]) for n in names}
            flat(*to_torch(batch, spec))
    flat.eval()


def finetune(flat, train, spec, cfg: FinetuneConfig, log=print, *, section: str = "pruning.finetune",
             deadline: float | None = None, freeze_batchnorm: bool = False, params=None) -> dict:
    """Short supervised training: AdamW, cross-entropy on the first output, optional frozen backbone. The one
    training loop of edgeopt: the pruning fine-tune and QAT (compress/qat.py) both run it.

    ``deadline`` (time.monotonic()): stop between batches once it has passed. ``freeze_batchnorm``: batch-norm
    layers stay in eval mode (their statistics kept: QAT). ``params``: the parameters to train (default all, or the
    head's with freeze_backbone). Returns what it did: epochs and batches done, the last epoch's mean loss, why
    it stopped."""
    import time

    import torch

    from edgeopt.data.torchfeed import to_torch

    if train.labels is None:
        raise UserInputError(f"[{section}] data {cfg.source} has no labels.",
                             "Give a .npz with a labels array, or an image folder with one subfolder per class.")
    torch.manual_seed(cfg.seed)
    trainable = {p: p.requires_grad for p in flat.parameters()}
    params = [p for p in (flat.parameters() if params is None else params) if p.is_floating_point()]
    if cfg.freeze_backbone:
        head = _heads(flat, to_torch(train.feeds(1)[0], spec))
        keep = {id(p) for m in head for p in m.parameters()}
        for p in params:
            p.requires_grad_(id(p) in keep)
        params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    n = train.count
    done = {"epochs_done": 0, "batches": 0, "final_loss": None, "stopped": "epochs done"}
    bns = [m for m in flat.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)] if freeze_batchnorm else []
    for epoch in range(cfg.epochs):
        flat.train()
        for m in bns:
            m.eval()
        order = rng.permutation(n)
        total, seen = 0.0, 0
        for i in range(0, n, cfg.batch_size):
            if deadline is not None and time.monotonic() > deadline:
                done["stopped"] = "time limit"
                break
            idx = order[i:i + cfg.batch_size]
            feed = {k: v[idx] for k, v in train.arrays.items()}
            logits = flat(*to_torch(feed, spec))[0]
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(train.labels[idx]).long())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            done["batches"] += 1
        if seen:
            done["final_loss"] = round(total / seen, 6)
        if done["stopped"] == "time limit":
            log(f"{section}: time limit reached in epoch {epoch + 1}/{cfg.epochs} after {seen} of {n} samples"
                + (f" (loss {total / seen:.4f})" if seen else ""))
            break
        done["epochs_done"] = epoch + 1
        log(f"{'fine-tune' if section == 'pruning.finetune' else section} epoch {epoch + 1}/{cfg.epochs}: "
            f"loss {total / n:.4f}")
    for p, was in trainable.items():
        p.requires_grad_(was)
    flat.eval()
    return done
