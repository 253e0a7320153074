"""Remote devices over SSH: compile and profile on the device that runs the model, from the host.

The system OpenSSH client does the work (``ssh``, with ``tar`` streamed through it), so the user's
``~/.ssh/config``, keys, agent and jump hosts apply as they do on the command line. edgeopt adds
``BatchMode=yes`` (no password prompt can hang a run) and a connect timeout; host key checking is left as the
user's configuration has it and is never switched off.

On the device everything lives under one work folder (``~/.cache/edgeopt/remote``, or ``$EDGEOPT_REMOTE_DIR``
/ ``remote_dir``): the venv ``edgeopt remote setup`` makes (``venv/``, with ``--system-site-packages`` so
JetPack's TensorRT is used), the caches (``cache/``) and one folder per job (``jobs/<id>/``, removed after the
job). The device runs ``python -m edgeopt.device.remote agent ACTION ARGS``, which prints one JSON line.

Several hosts run at once (threads); each gets its own result, and one host failing (unreachable, not set up,
another edgeopt version, a full disk, a build killed for memory) does not lose the others' results. Results
come back into ``OUT/remote/<host>/`` and are swapped in whole (nothing half-written).

The package: ``ssh`` (options, the ssh client, errors, calling the agent, several hosts), ``transfer`` (tar
through ssh), ``install`` (``remote setup``, ``remote info``), ``jobs`` (``remote_compile``,
``remote_profile``), ``agent`` (the device side; ``__main__`` runs it). Everything public is re-exported here.

It imports only the standard library at module level: the device imports it to run the agent.
"""

from __future__ import annotations

from edgeopt.device.remote.ssh import (
    DEFAULT_REMOTE_DIR, ERROR_MARK, REMOTE_DIR_ENV, RESULT_MARK, SETUP_FIX, SSH_FAILURES, RemoteError, RemoteOptions,
    SshResult, check_host, classify, for_hosts, hello, host_slug, remote_env, reporter_or_default, resolve_options,
    rjoin, rpath, run_agent, run_ssh, ssh_argv,
)
from edgeopt.device.remote.transfer import pull, push
from edgeopt.device.remote.install import build_wheel, info, info_many, setup, wheel_from_installed
from edgeopt.device.remote.jobs import remote_compile, remote_profile
from edgeopt.device.remote.agent import AGENT_ACTIONS, agent_main

__all__ = [
    "AGENT_ACTIONS", "DEFAULT_REMOTE_DIR", "ERROR_MARK", "REMOTE_DIR_ENV", "RESULT_MARK", "SETUP_FIX", "SSH_FAILURES",
    "RemoteError", "RemoteOptions", "SshResult", "agent_main", "build_wheel", "check_host", "classify", "for_hosts",
    "hello", "host_slug", "info", "info_many", "pull", "push", "remote_compile", "remote_env", "remote_profile",
    "reporter_or_default", "resolve_options", "rjoin", "rpath", "run_agent", "run_ssh", "setup", "ssh_argv",
    "wheel_from_installed",
]
