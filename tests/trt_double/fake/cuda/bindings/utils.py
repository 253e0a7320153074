"""``cuda.bindings.utils``: ``get_cuda_native_handle`` exists from cuda-bindings 12.9.1 / 13.0 (the 13.5 layout
here); cuda-python 12.6 has no such function."""
from trt_double import state

if state.cuda_layout != "13.5":
    raise ImportError("cannot import name 'utils' from 'cuda.bindings' (cuda-python < 12.9.1)")


def get_cuda_native_handle(obj) -> int:
    from trt_double.cudart_impl import _Handle

    if not isinstance(obj, _Handle):
        raise TypeError("Unknown type: " + str(type(obj)))
    return int(obj)
