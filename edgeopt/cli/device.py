"""``edgeopt device-compile`` and ``edgeopt remote setup|info|profile``: thin layers over
:mod:`edgeopt.device.package` and :mod:`edgeopt.device.remote`. Registered on the main group in ``edgeopt.cli``.

``device-compile`` is its own command rather than a mode of ``compile``: ``compile`` takes a RECIPE and builds
on this host, ``device-compile`` takes a device package (or an OUT folder of them) and finishes it on the device
(here, or on each ``--remote`` host).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgeopt.cli.common import echo, emit_json, handle_errors, parse_batches, reporter
from edgeopt.core.records import Status


def remote_options(fn):
    """--ssh-config, --remote-dir, --remote-python, --timeout, --keep-remote."""
    opts = [
        click.option("--ssh-config", type=click.Path(exists=True, dir_okay=False),
                     help="ssh -F FILE instead of ~/.ssh/config."),
        click.option("--remote-dir", help="Work folder on the device (default $EDGEOPT_REMOTE_DIR or "
                                          "~/.cache/edgeopt/remote)."),
        click.option("--remote-python", help="Python on the device that runs edgeopt (default: the venv "
                                             "`edgeopt remote setup` made)."),
        click.option("--timeout", type=float, help="Seconds one remote build/profile may take (default 3600)."),
        click.option("--keep-remote", is_flag=True, help="Keep the job folder on the device (debugging)."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _remote_opts(ssh_config, remote_dir, remote_python, timeout, keep_remote):
    from edgeopt.device.remote import RemoteOptions

    return RemoteOptions(ssh_config=ssh_config, remote_dir=remote_dir, remote_python=remote_python,
                         timeout=timeout or RemoteOptions.timeout, keep_remote=keep_remote)


def _print_hosts(res: dict, what: str) -> None:
    for host, r in res["hosts"].items():
        if "error" in r:
            e = r["error"]
            echo(f"{host}: FAILED ({e['kind']}): {e['problem']}", err=True)
            if e.get("fix"):
                echo(f"  fix: {e['fix']}", err=True)
            continue
        fp = r.get("fingerprint") or {}
        dev = ", ".join(str(x) for x in (fp.get("model"), fp.get("jetpack") and f"JetPack {fp['jetpack']}",
                                         fp.get("tensorrt") and f"TensorRT {fp['tensorrt']}") if x)
        echo(f"{host}: {dev or fp.get('hostname') or 'ok'}")
        for aid, a in (r.get("artifacts") or {}).items():
            if "error" in a:
                echo(f"  {aid}: failed: {a['error']['problem']}")
                continue
            rows = a.get("latency") or a.get("rows") or []
            lat = ", ".join(f"batch {row['batch']} {row['median_ms']:.3f} ms" for row in rows)
            par = a.get("parity") or {}
            extra = f", parity max abs {par['max_abs']:.2e}" if par.get("max_abs") is not None else ""
            echo(f"  {aid}: {what}{extra}" + (f"; median {lat}" if lat else ""))
    if res.get("output"):
        echo(f"results: {res['output']}")


def _exit_for(res: dict) -> None:
    if not res["ok"]:
        failed = [h for h, r in res["hosts"].items() if not r["ok"]]
        echo(f"error: {len(failed)} of {len(res['hosts'])} host(s) failed: {', '.join(failed)}", err=True)
        sys.exit(8)


@click.command(name="device-compile")
@click.argument("package", type=click.Path(exists=True, file_okay=False))
@click.option("-r", "--remote", "hosts", multiple=True, help="Compile on this device over SSH: user@host "
              "(repeatable, run at once). Without it, compile here (on the device).")
@click.option("-t", "--target", "targets", multiple=True, help="With an OUT folder: compile this target "
              "(a package is made from OUT's export when there is none).")
@click.option("-p", "--precision", "precisions", multiple=True, help="With an OUT folder: only these precisions.")
@click.option("--batch", "batch", default="1", show_default=True, help="Batch sizes to profile: 1,8.")
@click.option("--threads", type=int, help="Threads for the backend.")
@click.option("--duration", type=float, default=1.5, show_default=True, help="Seconds of timed runs per batch.")
@click.option("--force", is_flag=True, help="Build even where the device is not the target's (other GPU/TensorRT).")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="With --remote: where results go "
              "(default OUT/remote).")
@remote_options
@click.option("--json", "json_out", is_flag=True)
@handle_errors
def device_compile_cmd(package, hosts, targets, precisions, batch, threads, duration, force, output, ssh_config,
                       remote_dir, remote_python, timeout, keep_remote, json_out):
    """Finish a device package (OUT/<id> with package.json, or every package in OUT): build on the device,
    check parity against the reference outputs, profile, and record the device."""
    batches = parse_batches(batch)
    if hosts:
        from edgeopt.device.remote import remote_compile

        res = remote_compile(hosts, package, targets=targets, precisions=precisions, threads=threads,
                             profile_batches=batches, duration_s=duration, force=force, output=output,
                             reporter=reporter(), options=_remote_opts(ssh_config, remote_dir, remote_python,
                                                                        timeout, keep_remote))
        if json_out:
            emit_json(res)
        else:
            _print_hosts(res, "built")
        _exit_for(res)
        return
    from edgeopt.device.package import compile_package, find_packages, is_package
    from edgeopt.errors import EdgeoptError, UserInputError

    if targets or precisions:
        raise UserInputError("--target/--precision pick packages for --remote.",
                             "On the device, give the package folder itself: edgeopt device-compile OUT/<id>.")
    path = Path(package)
    folders = [path] if is_package(path) else find_packages(path)
    if not folders:
        raise UserInputError(f"{path} holds no device package (package.json).",
                             "Point at OUT/<id> of a target built elsewhere (status \"not built here\"), or at OUT.")
    results, failed = {}, []
    for folder in folders:
        try:
            results[folder.name] = compile_package(folder, threads=threads, profile_batches=batches,
                                                   reporter=reporter(), force=force, duration_s=duration)
        except EdgeoptError as exc:
            if len(folders) == 1:
                raise
            echo(f"error: {folder.name}: {exc.problem}", err=True)
            results[folder.name] = {"status": Status.FAILED, "reason": exc.problem, "fix": exc.fix}
            failed.append(folder.name)
    if json_out:
        emit_json(results)
    else:
        for aid, r in results.items():
            if r["status"] != Status.OK:
                continue
            lat = ", ".join(f"batch {row['batch']} {row['median_ms']:.3f} ms" for row in r["latency"])
            echo(f"{aid}: ok, parity max abs {r['parity']['max_abs']:.2e}; median {lat}")
    if failed:
        sys.exit(6)


@click.group(name="remote")
def remote_group():
    """Devices over SSH: set up edgeopt there, show what they are, profile on them.

    Uses the system OpenSSH client: your ~/.ssh/config, keys, agent and jump hosts apply; host keys are checked.
    """


@remote_group.command(name="setup")
@click.argument("host")
@click.option("--wheel", type=click.Path(exists=True, dir_okay=False),
              help="The edgeopt wheel to install (default: this edgeopt's own, built from a source checkout or "
                   "repacked from the installed files).")
@click.option("--python", "python", default="python3", show_default=True, help="Python on the device to make the venv with.")
@click.option("--venv", help="Where the venv goes on the device (default <remote-dir>/venv).")
@click.option("--no-deps", is_flag=True, help="Install only edgeopt (the device has no access to PyPI).")
@click.option("--tensorrt/--no-tensorrt", default=None, help="Install onnx and cuda-python for TensorRT "
              "(default: when the device's Python sees tensorrt).")
@click.option("--pip", "extra", multiple=True, help="Another requirement to install there (repeatable).")
@click.option("-t", "--target", "targets", multiple=True,
              help="Target the device runs (repeatable): its backend is installed there too, e.g. -t ort-cpu.")
@remote_options
@click.option("--json", "json_out", is_flag=True)
@handle_errors
def setup_cmd(host, wheel, python, venv, no_deps, tensorrt, extra, targets, ssh_config, remote_dir, remote_python,
              timeout, keep_remote, json_out):
    """Install this edgeopt on HOST: a venv with --system-site-packages (JetPack's TensorRT stays visible)."""
    from edgeopt.device.remote import setup

    res = setup(host, wheel=wheel, python=python, venv=venv, no_deps=no_deps, tensorrt=tensorrt,
                extra_requirements=extra, reporter=reporter(), targets=targets,
                options=_remote_opts(ssh_config, remote_dir, remote_python, timeout, keep_remote))
    if json_out:
        emit_json(res)
    else:
        echo(f"{host}: edgeopt {res['edgeopt_version']} (Python {res['python_version']}) in {res['venv']}")


@remote_group.command(name="info")
@click.argument("hosts", nargs=-1, required=True)
@remote_options
@click.option("--json", "json_out", is_flag=True)
@handle_errors
def info_cmd(hosts, ssh_config, remote_dir, remote_python, timeout, keep_remote, json_out):
    """HOST's edgeopt and Python versions, backends, and device fingerprint (JetPack, TensorRT, GPU, power mode,
    clocks, temperatures)."""
    from edgeopt.backends import backends
    from edgeopt.device.remote import info_many

    res = info_many(hosts, options=_remote_opts(ssh_config, remote_dir, remote_python, timeout, keep_remote),
                    reporter=reporter())
    if json_out:
        emit_json(res)
    else:
        for host, r in res["hosts"].items():
            if "error" in r:
                echo(f"{host}: FAILED ({r['error']['kind']}): {r['error']['problem']}", err=True)
                if r["error"].get("fix"):
                    echo(f"  fix: {r['error']['fix']}", err=True)
                continue
            fp = r.get("fingerprint") or {}
            same = "" if r["version_matches"] else f" (this machine: {r['local_edgeopt_version']}: run `edgeopt remote setup {host}`)"
            echo(f"{host}: edgeopt {r['edgeopt_version']}{same}, Python {r['python']} ({r['executable']})")
            for k in ("model", "jetpack", "l4t", "tensorrt", "cuda", "nvpmodel", "temperatures_c"):
                if fp.get(k) is not None:
                    echo(f"  {k}: {fp[k]}")
            mods = r.get("modules") or {}
            found = [b.name for b in backends() if mods.get(b.module)]
            echo(f"  backends: {', '.join(found) or 'none (edgeopt remote setup HOST -t TARGET installs one)'}")
            if fp.get("gpu"):
                echo(f"  gpu: {fp['gpu'].get('name')} (sm {fp['gpu'].get('compute_capability')})")
            if fp.get("jetson_clocks"):
                echo(f"  jetson_clocks active: {fp['jetson_clocks'].get('active')}")
    _exit_for(res)


@remote_group.command(name="profile")
@click.argument("hosts", nargs=-1, required=True)
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--batch", "batch", default="1", show_default=True, help="Batch sizes, comma-separated: 1,8.")
@click.option("--iterations", type=int, help="Fixed number of timed runs (default: run for --duration).")
@click.option("--warmup", type=int, default=10, show_default=True)
@click.option("--duration", type=float, default=1.5, show_default=True, help="Seconds of timed runs.")
@click.option("--threads", type=int)
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Where reports go (default OUT/remote).")
@remote_options
@click.option("--json", "json_out", is_flag=True)
@handle_errors
def profile_cmd(hosts, path, batch, iterations, warmup, duration, threads, output, ssh_config, remote_dir,
                remote_python, timeout, keep_remote, json_out):
    """Profile PATH (OUT, or OUT/<id>) on each HOST at once: OUT's artifacts plus what was compiled on that
    host. Reports: OUT/remote/<host>/profile.json."""
    from edgeopt.device.remote import remote_profile

    res = remote_profile(hosts, path, batches=parse_batches(batch), threads=threads, duration_s=duration,
                         iterations=iterations, warmup=warmup, output=output, reporter=reporter(),
                         options=_remote_opts(ssh_config, remote_dir, remote_python, timeout, keep_remote))
    if json_out:
        emit_json(res)
    else:
        _print_hosts(res, "profiled")
    _exit_for(res)


COMMANDS = (device_compile_cmd, remote_group)
