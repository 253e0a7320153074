from edgeopt.backends.onnxruntime.backend import BACKEND

__all__ = ["BACKEND"]
