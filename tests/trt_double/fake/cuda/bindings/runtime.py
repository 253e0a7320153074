"""``cuda.bindings.runtime`` of the double."""
from trt_double.cudart_impl import *  # noqa: F403
