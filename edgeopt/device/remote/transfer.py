"""Files to and from a device: tar streamed through ssh (uploads skip staging leftovers; downloads accept
only plain files and folders inside the destination).
"""

from __future__ import annotations

import shlex
import tarfile
from pathlib import Path, PurePosixPath
from edgeopt.device.remote.ssh import RemoteError, RemoteOptions, classify, rpath, run_ssh


def _tar_writer(items: list[tuple[Path, str]]):
    def skip(ti: tarfile.TarInfo):
        name = PurePosixPath(ti.name).name
        if name.startswith(".staging-") or (name.startswith(".") and name.endswith(".tmp")):
            return None
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        return ti

    def write(stdin):
        with tarfile.open(fileobj=stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path, arcname in items:
                tar.add(str(path), arcname=arcname, recursive=True, filter=skip)
    return write


def _size(items: list[tuple[Path, str]]) -> int:
    total = 0
    for path, _ in items:
        p = Path(path)
        total += p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total


def push(host: str, items: list[tuple[Path, str]], remote_dir: str, opts: RemoteOptions, free_bytes: int | None = None) -> None:
    """Copy local files/folders to ``remote_dir`` on the device (tar through ssh)."""
    need = _size(items)
    if free_bytes is not None and free_bytes < need * 2 + (64 << 20):
        raise RemoteError(host, f"the device's disk is full: {free_bytes / 1e6:.0f} MB free in {opts.workdir}, "
                          f"the upload needs {need / 1e6:.0f} MB plus room for the build.",
                          "Free space on the device (df -h), or point --remote-dir at a disk with room.",
                          kind="disk-full")
    res = run_ssh(host, f"mkdir -p {rpath(remote_dir)} && tar -C {rpath(remote_dir)} -xf -", opts,
                  opts.transfer_timeout, writer=_tar_writer(items))
    if res.rc != 0 or res.timed_out:
        raise classify(host, res, "the upload")


def _safe_member(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise tarfile.TarError(f"unsafe path in the download: {name!r}")
    return p


def _tar_reader(dest: Path):
    def read(stdout):
        with tarfile.open(fileobj=stdout, mode="r|") as tar:
            for m in tar:
                rel = _safe_member(m.name)
                target = dest.joinpath(*rel.parts)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif m.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(m)
                    with open(target, "wb") as f:
                        while block := src.read(1 << 20):
                            f.write(block)
                else:
                    raise tarfile.TarError(f"the download holds {m.name!r}, which is not a plain file")
    return read


def pull(host: str, remote_dir: str, names: list[str], dest: Path, opts: RemoteOptions) -> None:
    """Copy ``names`` (relative to ``remote_dir`` on the device) into the local folder ``dest``."""
    for n in names:
        _safe_member(n)
    listing = " ".join(shlex.quote(n) for n in names)
    res = run_ssh(host, f"tar -C {rpath(remote_dir)} -cf - -- {listing}", opts, opts.transfer_timeout,
                  reader=_tar_reader(Path(dest)))
    if res.rc != 0 or res.timed_out:
        raise classify(host, res, "the download")
