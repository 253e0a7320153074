from edgeopt.backends.openvino.backend import BACKEND

__all__ = ["BACKEND"]
