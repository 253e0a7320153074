"""The ``edgeopt`` command. One module per command group; :mod:`common` holds what they share."""

from __future__ import annotations

from edgeopt.cli import device, report, scale, ship
from edgeopt.cli.main import main

for _cmd in (*ship.COMMANDS, *device.COMMANDS, *report.COMMANDS, *scale.COMMANDS):
    main.add_command(_cmd)

__all__ = ["main"]
