from edgeopt.backends.tensorrt.backend import BACKEND
from edgeopt.backends.tensorrt.packaging import PACKAGING

__all__ = ["BACKEND", "PACKAGING"]
