"""``edgeopt sweep`` and ``edgeopt farm join``: thin layers over :mod:`edgeopt.scale`."""

from __future__ import annotations

import click

from edgeopt.cli.common import chatter_to_log, echo, emit_json, handle_errors, reporter, stdout_guard


@click.command(name="sweep")
@click.argument("sweep_file", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Sweep folder (default: NAME-sweep).")
@click.option("--address", envvar="RAY_ADDRESS", help="Join this Ray cluster (HEAD:6379; default $RAY_ADDRESS), "
              "else a local Ray on this machine.")
@click.option("--sequential", is_flag=True, help="Run the jobs one after another in this process (no Ray).")
@click.option("--cpus", type=click.IntRange(1, 4096), help="CPUs of the local Ray (default: this machine's).")
@click.option("--force", is_flag=True, help="Write into a non-empty folder that is not a sweep's output.")
@click.option("--json", "json_out", is_flag=True, help="Print the sweep's summary (sweep.json) as JSON.")
@handle_errors
def sweep_cmd(sweep_file, output, address, sequential, cpus, force, json_out):
    """Build every model x target x precision of SWEEP_FILE as its own job (Ray tasks, retried when a worker
    dies), then write one comparison report with select applied per model."""
    from edgeopt.report.sweep import sweep_lines
    from edgeopt.report.tables import terminal_width
    from edgeopt.scale.sweep import default_output, sweep

    out = output or default_output(sweep_file)
    with stdout_guard(json_out), chatter_to_log(out):
        res = sweep(sweep_file, out, address=address, sequential=sequential, force=force, reporter=reporter(),
                    cpus=cpus)
    if json_out:
        emit_json(res)
    else:
        for line in sweep_lines(out, res, terminal_width()):
            click.echo(line)
        echo(f"report: {res['report']['html']}")
    if any(j["status"] != "ok" for j in res["jobs"]):
        raise SystemExit(6)


@click.group(name="farm")
def farm_group():
    """Boards that serve a sweep's device jobs (Ray nodes that offer a board resource)."""


@farm_group.command(name="join")
@click.option("--board", required=True, help="The board's name, as the sweep file's [[farm]] board says.")
@click.option("--address", envvar="RAY_ADDRESS", help="The head's address (HEAD:6379; default $RAY_ADDRESS).")
@click.option("--cpus", type=int, default=0, show_default=True, help="CPUs the node offers for builds (0: board "
              "jobs only, so nothing else runs beside a timing job).")
@click.option("--block", is_flag=True, help="Stay in the foreground (for a service manager).")
@click.option("--json", "json_out", is_flag=True)
@handle_errors
def join_cmd(board, address, cpus, block, json_out):
    """Start a Ray node here that offers BOARD to the cluster at --address."""
    from edgeopt.scale.farm import join

    res = join(board, address, cpus, block)
    if json_out:
        emit_json(res)
    else:
        echo(f"joined {address} as board {board}: {' '.join(res['command'])}")


COMMANDS = (sweep_cmd, farm_group)
