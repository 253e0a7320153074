from edgeopt.backends.tensorrt.backend import BACKEND

__all__ = ["BACKEND"]
