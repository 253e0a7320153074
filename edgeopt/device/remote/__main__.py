"""``python -m edgeopt.device.remote agent ACTION JSON``: the agent, run on the device over SSH."""

import sys

from edgeopt.device.remote.agent import agent_main

sys.exit(agent_main(sys.argv[1:]))
