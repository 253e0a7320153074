"""Where TensorRT and cuda-python come from: ``import tensorrt`` with a clear error, the installed version, and the
install hints (cuda-python must match the CUDA of the driver). Imports nothing heavy at module level."""

from __future__ import annotations

import importlib.util

from edgeopt.errors import BackendMissingError, EdgeoptError

# cuda-python must match the CUDA of the driver: 13.x needs a CUDA 13 driver, which JetPack 6 does not have.
CUDA_PYTHON_PIN = {"12": "cuda-python>=12.6,<13", "13": "cuda-python>=13.0.3,<14"}  # = pyproject extras
INSTALL_HINT = ("pip install 'edgeopt[tensorrt]' (cuda-python 12.x: JetPack 6, CUDA 12 drivers) or "
                "'edgeopt[tensorrt-cuda13]' (cuda-python 13.x: JetPack 7, CUDA 13 drivers)")
INSTALL_FIX = ("On Jetson, TensorRT comes with JetPack: use a venv made with --system-site-packages, then "
               f"{INSTALL_HINT}; on a PC: pip install tensorrt and the same edgeopt extra for its CUDA.")


def import_tensorrt():
    """``import tensorrt`` or a clear error (missing package, or libraries that do not load)."""
    if importlib.util.find_spec("tensorrt") is None:
        exc = BackendMissingError("tensorrt", "tensorrt", "build and run TensorRT engines")
        exc.fix = INSTALL_FIX
        raise exc
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise EdgeoptError(f"tensorrt is installed but its libraries do not load: {exc}",
                           "On Jetson use JetPack's TensorRT (a venv made with --system-site-packages); elsewhere "
                           "install the tensorrt wheel for this CUDA version and an NVIDIA driver.") from exc
    return trt


TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu12", "tensorrt_cu12", "tensorrt-cu13")
TENSORRT_DEB_PACKAGES = ("tensorrt", "libnvinfer10")  # JetPack installs TensorRT as .debs


def installed_tensorrt_version(deb_version=None) -> str | None:
    """The installed TensorRT's version, or None: its pip distribution (any CUDA flavour), else the module's
    ``__version__`` (JetPack's Python bindings), else, given ``deb_version`` (package name -> version or None),
    the Debian packages. Never raises."""
    from edgeopt.core.hostinfo import version_of

    for dist in TENSORRT_DISTRIBUTIONS:
        v = version_of(dist)
        if v:
            return v
    if importlib.util.find_spec("tensorrt") is not None:
        try:
            return str(import_tensorrt().__version__)
        except Exception:  # noqa: BLE001 - present but its libraries do not load
            pass
    if deb_version is not None:
        for package in TENSORRT_DEB_PACKAGES:
            v = deb_version(package)
            if v:
                return v
    return None
