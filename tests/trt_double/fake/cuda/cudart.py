"""``cuda.cudart``: cuda-python < 13 only (a shim over cuda.bindings.runtime from 12.6); 13.x has no such module."""
from trt_double import state

if state.cuda_layout in ("13.5", "none"):
    raise ImportError("cannot import name 'cudart' from 'cuda' (cuda-python 13.x has cuda.bindings.runtime only)")

from trt_double.cudart_impl import *  # noqa: F403
