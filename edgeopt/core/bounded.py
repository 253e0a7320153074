"""Arrays from untrusted files (a bundle's reference data, an input file), read with the size their header
declares checked against named limits before anything is allocated. Numpy only (device-safe).

numpy's own ``np.load`` allocates what a ``.npy`` header declares before it reads the data: a 2.8 MB
``reference.npz`` holding 3 GB of zeros costs 3 GB, a header declaring shape (2**40,) a ``MemoryError``.
Here each member's declared size is checked against the limit and against the bytes that are really there
(the zip entry's size), then read.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

# Named limits (README, "Limits"). Reference data holds a few parity samples and their outputs, plus real
# samples: tens of MB for image models; an input file is one feed.
MAX_ARRAY_BYTES = 1 << 30  # one array of an .npy / .npz, as its header declares it
MAX_NPZ_BYTES = 2 << 30  # all arrays of one .npz together
MAX_NPZ_MEMBERS = 10_000  # arrays in one .npz
MAX_NPY_HEADER_BYTES = 10_000  # numpy's own default bound on a .npy header
# A preprocess spec's resize / center_crop (from a recipe or a bundle's manifest): one side, and the image
MAX_IMAGE_SIDE = 16384
MAX_IMAGE_PIXELS = 1 << 26  # 67 megapixels (8192 x 8192), 0.8 GB as float32 RGB


class LimitExceeded(ValueError):
    """A file declares more than a named limit allows; the message names the limit and its figure."""


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # pragma: no cover


def over_limit(what: str, declared: int, name: str, limit: int) -> LimitExceeded:
    return LimitExceeded(f"{what} declares {human_bytes(declared)}, over the limit {name} = {human_bytes(limit)}")


def _header(fp, what: str) -> tuple[tuple, bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=MAX_NPY_HEADER_BYTES)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=MAX_NPY_HEADER_BYTES)
        else:
            raise ValueError(f"unknown .npy format version {version}")
    except (ValueError, EOFError, SyntaxError, TypeError) as exc:
        raise ValueError(f"{what} is not a .npy array ({str(exc)[:200] or type(exc).__name__})") from None
    if dtype.hasobject:
        raise ValueError(f"{what} holds Python objects (pickled data), which are refused")
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"{what} declares an invalid shape {shape}")
    return shape, fortran, dtype


def _declared_bytes(shape: tuple, dtype: np.dtype) -> int:
    n = int(dtype.itemsize)
    for d in shape:
        n *= int(d)  # Python ints: no overflow
    return n


def _read_data(fp, shape, fortran, dtype, nbytes: int, what: str) -> np.ndarray:
    data = bytearray(nbytes)
    view = memoryview(data)
    got = 0
    while got < nbytes:
        chunk = fp.readinto(view[got:]) if hasattr(fp, "readinto") else None
        if chunk is None:
            piece = fp.read(nbytes - got)
            chunk = len(piece)
            view[got:got + chunk] = piece
        if not chunk:
            raise ValueError(f"{what} is truncated: {got} of {nbytes} bytes")
        got += chunk
    arr = np.frombuffer(data, dtype=dtype)
    return arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)


def read_npy(path: Path, max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
    """One ``.npy`` file, its declared size checked against ``max_bytes`` (MAX_ARRAY_BYTES) and the file's
    own size first. Raises :class:`LimitExceeded` or ``ValueError`` (empty, truncated, not an array)."""
    size = Path(path).stat().st_size
    what = str(path)
    if size == 0:
        raise ValueError(f"{what} is empty (0 bytes)")
    with open(path, "rb") as fp:
        shape, fortran, dtype = _header(fp, what)
        nbytes = _declared_bytes(shape, dtype)
        if nbytes > max_bytes:
            raise over_limit(f"{what} (shape {shape}, {dtype})", nbytes, "MAX_ARRAY_BYTES", max_bytes)
        if nbytes > size - fp.tell():
            raise ValueError(f"{what} declares shape {shape} ({human_bytes(nbytes)}) but holds "
                             f"{human_bytes(size - fp.tell())} of data: truncated or forged")
        return _read_data(fp, shape, fortran, dtype, nbytes, what)


def read_npz(path: Path, max_bytes: int = MAX_NPZ_BYTES, max_array_bytes: int = MAX_ARRAY_BYTES,
             max_members: int = MAX_NPZ_MEMBERS, accept: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (name -> array), bounded: at most ``max_members`` arrays, each at most
    ``max_array_bytes`` and all together at most ``max_bytes`` as their headers declare them, and each
    header's size equal to the bytes the zip entry really holds. ``accept`` may refuse member names
    (ValueError). Nothing is allocated before the checks."""
    what = str(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise ValueError(f"{what} is not an .npz (zip) file: {exc}") from None
    try:
        with zf:
            return _read_members(zf, what, max_bytes, max_array_bytes, max_members, accept)
    except zipfile.BadZipFile as exc:  # a CRC mismatch, a bad compressed stream, a bad local header
        raise ValueError(f"{what} is damaged: {exc}") from None
    except (OSError, EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:  # compression, encryption
        raise ValueError(f"{what} cannot be read: {exc}") from None


def _read_members(zf, what, max_bytes, max_array_bytes, max_members, accept) -> dict[str, np.ndarray]:
    infos = zf.infolist()
    if len(infos) > max_members:
        raise LimitExceeded(f"{what} holds {len(infos)} arrays, over the limit MAX_NPZ_MEMBERS = {max_members}")
    declared = sum(i.file_size for i in infos)
    if declared > max_bytes + 128 * len(infos) + (1 << 20):  # headers: at most a few hundred bytes each
        raise over_limit(f"{what} (uncompressed)", declared, "MAX_NPZ_BYTES", max_bytes)
    plan, total = [], 0
    for info in infos:
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if accept is not None and not accept(name):
            raise ValueError(f"{what} holds an unexpected array name {name[:120]!r}")
        with zf.open(info) as fp:
            shape, fortran, dtype = _header(fp, f"{what}:{name[:120]}")
            start = fp.tell()
        nbytes = _declared_bytes(shape, dtype)
        if nbytes > max_array_bytes:
            raise over_limit(f"{what}:{name[:120]} (shape {shape}, {dtype})", nbytes, "MAX_ARRAY_BYTES",
                             max_array_bytes)
        if nbytes != info.file_size - start:
            raise ValueError(f"{what}:{name[:120]} declares {human_bytes(nbytes)} but holds "
                             f"{human_bytes(info.file_size - start)}: truncated or forged")
        total += nbytes
        if total > max_bytes:
            raise over_limit(f"{what} (all arrays)", total, "MAX_NPZ_BYTES", max_bytes)
        plan.append((info, name, start, shape, fortran, dtype, nbytes))
    out = {}
    for info, name, start, shape, fortran, dtype, nbytes in plan:
        with zf.open(info) as fp:
            fp.read(start)
            out[name] = _read_data(fp, shape, fortran, dtype, nbytes, f"{what}:{name[:120]}")
    return out
