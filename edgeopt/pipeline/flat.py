"""The flat module: a model wrapped so it takes the spec's inputs positionally and returns a flat tuple of named
tensors (nested tuples, dicts and transformers' ModelOutput flattened), and running it on numpy feeds.

torch is imported inside functions.
"""

from __future__ import annotations

import numpy as np

from edgeopt.errors import UserInputError
from edgeopt.core.spec import IOSpec
from edgeopt.data.torchfeed import to_torch


def _flatten(obj, prefix: str, out: list):
    import torch

    if obj is None:
        return
    if isinstance(obj, torch.Tensor):
        out.append((prefix or "output", obj))
    elif hasattr(obj, "items"):  # dict, transformers ModelOutput
        for k, v in obj.items():
            _flatten(v, f"{prefix}_{k}" if prefix else str(k), out)
    elif isinstance(obj, (list, tuple)):
        if len(obj) == 1 and not isinstance(obj[0], torch.Tensor):
            _flatten(obj[0], prefix, out)
        else:
            base = prefix or "output"
            for i, v in enumerate(obj):
                _flatten(v, f"{base}_{i}", out)
    else:
        raise UserInputError(f"The model returns a {type(obj).__name__}, which edgeopt cannot name as outputs.",
                             "Return tensors, or tuples/lists/dicts of tensors.")


def make_flat_module(model, spec: IOSpec, call: str):
    """Wrap ``model`` so it takes the spec's inputs positionally and returns a tuple of tensors."""
    import torch

    names = [t.name for t in spec.inputs]

    class Flat(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def train(self, mode: bool = True):
            self.training = mode
            try:
                self.inner.train(mode)
            except NotImplementedError:  # torch.export programs have no train/eval switch
                pass
            return self

        def _named(self, *args) -> list:
            if call == "keywords":
                res = self.inner(**dict(zip(names, args)))
            elif call == "list":
                res = self.inner(list(args[0].unbind(0)))
            else:
                res = self.inner(*args)
            flat: list = []
            _flatten(res, "", flat)
            return flat

        def forward(self, *args):
            return tuple(t for _, t in self._named(*args))

        def output_names(self, *args) -> list[str]:
            return [n for n, _ in self._named(*args)]

    return Flat(model).eval()


def run_torch(module, feeds: list[dict[str, np.ndarray]], spec: IOSpec) -> list[dict[str, np.ndarray]]:
    import torch

    outs = []
    with torch.inference_mode():
        for f in feeds:
            res = module(*to_torch(f, spec))
            outs.append({n: r.detach().cpu().numpy() for n, r in zip(spec.outputs, res)})
    return outs
