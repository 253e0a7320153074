"""A board joins the sweep cluster: a Ray node on the board that offers one unit of the board's resource and no
CPUs for builds, so it runs only the jobs for that board, one at a time (what honest latency needs)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from edgeopt.errors import BackendMissingError, UserInputError

BOARD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def join_command(board: str, address: str, cpus: int = 0, block: bool = False) -> list[str]:
    """The `ray start` line that makes this machine a node for ``board``."""
    if not BOARD.match(board or ""):
        raise UserInputError(f"--board {board!r} is not a plain name.", "Use the target's name, e.g. jetson-orin-nano.")
    if not address:
        raise UserInputError("farm join needs the head's address.", "Pass --address HEAD:6379 (ray status on the "
                             "head prints it), or set RAY_ADDRESS.")
    beside = Path(sys.executable).with_name("ray")  # the ray of this environment first
    ray = str(beside) if beside.is_file() else shutil.which("ray")
    if ray is None:
        raise BackendMissingError("The `ray` command is not installed here.", "pip install 'edgeopt[ray]' on the board.")
    return [ray, "start", f"--address={address}", f"--num-cpus={cpus}", f"--resources={json.dumps({board: 1})}",
            *(["--block"] if block else [])]


def join(board: str, address: str, cpus: int = 0, block: bool = False) -> dict:
    cmd = join_command(board, address, cpus, block)
    res = subprocess.run(cmd, capture_output=not block, text=True, timeout=None if block else 120)
    if res.returncode != 0:
        text = " ".join(((res.stderr or "") + (res.stdout or "")).split())[-400:]
        raise UserInputError(f"ray start failed ({res.returncode}): {text}",
                             "Check the head's address and that the board's Ray version matches the head's.")
    return {"board": board, "address": address, "command": cmd}
