"""``cuda.bindings``: cuda-python 12.6 and newer (absent from older cuda-python)."""
from trt_double import state

if state.cuda_layout in ("legacy", "none"):
    raise ImportError("No module named 'cuda.bindings' (cuda-python < 12.6)")
