"""The agent: what runs on the device (``python -m edgeopt.device.remote agent ACTION JSON``); it prints one
JSON line, a result or an error the host turns into a :class:`RemoteError`.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from pathlib import Path
from edgeopt import __version__
from edgeopt.core.resources import PACKAGE_DIR
from edgeopt.errors import EdgeoptError
from edgeopt.device.remote.ssh import ERROR_MARK, RESULT_MARK


def _emit(mark: str, obj) -> None:
    sys.stdout.flush()
    sys.stdout.write(mark + json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _error_dict(exc: BaseException) -> dict:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return {"kind": "disk-full", "problem": f"the device's disk is full: {exc}",
                "fix": "Free space on the device, or point --remote-dir at a disk with room.", "exit_code": 8}
    if isinstance(exc, MemoryError):
        return {"kind": "killed", "problem": "out of memory", "fix": "Free memory on the device.", "exit_code": 137}
    if isinstance(exc, EdgeoptError):
        return {"kind": type(exc).__name__, "problem": exc.problem, "fix": exc.fix, "exit_code": exc.exit_code}
    return {"kind": "internal", "problem": f"{type(exc).__name__}: {exc}",
            "fix": "Report this as a bug in edgeopt.", "exit_code": 1}


def _modules(backend_modules=()) -> dict:
    """Which modules the device's Python can import: edgeopt's own needs, and ``backend_modules`` (the host's
    registry names them: a device without numpy cannot import it)."""
    import importlib.util

    def present(m):
        try:
            return importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):
            return False

    return {m: present(m) for m in ("numpy", "tomli", "click", "rich", "onnx", *backend_modules, "cuda")}


def _agent_hello(args: dict) -> dict:
    import platform
    import shutil

    work = Path(os.environ.get("EDGEOPT_CACHE_DIR") or ".").parent
    try:
        free = shutil.disk_usage(work if work.is_dir() else Path.home()).free
    except OSError:
        free = None
    asked = args.get("modules") if isinstance(args, dict) else None
    asked = [m for m in asked[:32] if isinstance(m, str) and re.fullmatch(r"[A-Za-z_][\w.]{0,99}", m)] \
        if isinstance(asked, list) else []
    mods = _modules(asked)
    return {"edgeopt_version": __version__, "python": platform.python_version(),
            "python_tuple": list(sys.version_info[:3]), "executable": sys.executable,
            "system_site_packages": sys.prefix != sys.base_prefix and _venv_system_site(),
            "free_bytes": free, "modules": mods, "cli": mods["click"] and mods["rich"],
            "edgeopt_path": str(PACKAGE_DIR)}


def _venv_system_site() -> bool:
    try:
        text = (Path(sys.prefix) / "pyvenv.cfg").read_text()
    except OSError:
        return False
    return bool(re.search(r"include-system-site-packages\s*=\s*true", text, re.I))


def _agent_info(args: dict) -> dict:
    from edgeopt.device.fingerprint import device_fingerprint

    return {"fingerprint": device_fingerprint()}


def _agent_compile(args: dict) -> dict:
    from edgeopt.device.fingerprint import device_fingerprint
    from edgeopt.device.package import compile_package
    from edgeopt.report.progress import Reporter

    reporter = Reporter()
    results = {}
    for name in args["packages"]:
        try:
            rec = compile_package(Path(name), threads=args.get("threads"), profile_batches=tuple(args.get("batches") or (1,)),
                                  reporter=reporter, force=bool(args.get("force")),
                                  duration_s=float(args.get("duration_s") or 1.5))
            results[name] = {k: v for k, v in rec.items() if k != "device_fingerprint"}
        except Exception as exc:  # noqa: BLE001 - one package failing does not stop the others
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            reporter.error(f"{name}: {exc}")
            results[name] = {"error": _error_dict(exc)}
    return {"fingerprint": device_fingerprint(), "results": results}


def _agent_profile(args: dict) -> dict:
    from edgeopt.backends.artifact import open_artifact
    from edgeopt.device.fingerprint import device_fingerprint
    from edgeopt.core.profile import profile_runner
    from edgeopt.core.profile import ProfileConfig
    from edgeopt.report.progress import Reporter

    reporter = Reporter()
    results = {}
    for name in args["paths"]:
        try:
            runner, rec = open_artifact(Path(name), threads=args.get("threads"))
            lo, hi = runner.spec.batch_range()
            batches = tuple(b for b in (args.get("batches") or [1]) if lo <= b <= hi) or (lo,)
            cfg = ProfileConfig(batches=batches, threads=args.get("threads"), iterations=args.get("iterations"),
                                warmup=int(args.get("warmup", 10)), duration_s=float(args.get("duration_s") or 1.5),
                                baseline=False)
            reporter.step(f"{name}: profiling batch {','.join(map(str, batches))}")
            try:
                prof = profile_runner(runner, runner.spec, batches, cfg)
            finally:
                runner.close()
            results[name] = prof
        except Exception as exc:  # noqa: BLE001 - one artifact failing does not stop the others
            reporter.error(f"{name}: {exc}")
            results[name] = {"error": _error_dict(exc)}
    return {"fingerprint": device_fingerprint(), "results": results}


AGENT_ACTIONS = {"hello": _agent_hello, "info": _agent_info, "compile": _agent_compile, "profile": _agent_profile}


def agent_main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "agent" or argv[1] not in AGENT_ACTIONS:
        sys.stderr.write("usage: python -m edgeopt.device.remote agent {hello,info,compile,profile} [JSON]\n"
                         "(run by `edgeopt remote ...` and `edgeopt device-compile --remote` over SSH)\n")
        return 2
    try:
        args = json.loads(argv[2]) if len(argv) > 2 else {}
        want = args.get("expect_version")
        if want and want != __version__:
            raise EdgeoptError(f"the device runs edgeopt {__version__}; the host runs {want}.",
                               "Run `edgeopt remote setup HOST` from the host.")
        result = AGENT_ACTIONS[argv[1]](args)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one JSON line for the host
        err = _error_dict(exc)
        if err["kind"] == "internal":
            import traceback

            traceback.print_exc()
        elif isinstance(exc, EdgeoptError) and "device runs edgeopt" in exc.problem:
            err["kind"] = "version"
        _emit(ERROR_MARK, err)
        return int(err.get("exit_code") or 1) if err["kind"] != "killed" else 137
    _emit(RESULT_MARK, result)
    return 0
