from edgeopt.backends.onnxruntime.backend import BACKEND
from edgeopt.backends.onnxruntime.runner import OrtReference

HOST_REFERENCE = OrtReference()  # the host's reference executor: parity, FP32 outputs, scoring

__all__ = ["BACKEND", "HOST_REFERENCE"]
