"""Where a sweep's jobs run: one after another in this process, or as Ray tasks (a local Ray started here, or a
cluster joined by address). Both take the same jobs (edgeopt.scale.jobs) and hand back the same results; Ray adds
retries of jobs whose worker died, the attempts of each job (a small ledger actor), and board resources."""

from __future__ import annotations

import os
from typing import Callable, Iterator

from edgeopt.errors import BackendMissingError, UserInputError
from edgeopt.scale import jobs as J


class _Later:
    """A job to run when its result is asked for (once)."""

    def __init__(self, fn):
        self.fn, self.done, self.value = fn, False, None

    def get(self):
        if not self.done:
            self.value, self.done = self.fn(), True
        return self.value


class Sequential:
    """Jobs one after another in this process (no ``ray`` installed, or ``--sequential``): each runs when the
    driver asks for its result, so each finished job is written before the next starts."""

    mode = "sequential"
    address = None

    def __init__(self):
        self.attempts: dict[str, list[dict]] = {}

    def nodes(self) -> list[dict]:
        return [{"node": None, **J.where(), "resources": {"CPU": os.cpu_count() or 1}}]

    def export(self, entry: dict):
        return _Later(lambda: J.export_job(entry))

    def build(self, entry: dict, job: dict, export, profile: bool, previous: bytes | None = None):
        def announce(w):
            self.attempts.setdefault(job["id"], []).append(w)

        return _Later(lambda: J.build_job(entry, job, export.get(), profile, announce, previous))

    def check_board(self, board: str) -> None:
        raise UserInputError(f"Device-farm jobs for board {board!r} need Ray (boards join a Ray cluster).",
                             "Install the extra (pip install 'edgeopt[ray]') and run the sweep on the cluster the "
                             "board joined (--address), or drop the [[farm]] tables.")

    def results(self, handles: dict, poll=None) -> Iterator[tuple[str, dict | None, str | None]]:
        """(key, result, error) as each finishes."""
        for key, later in handles.items():
            if poll is not None:
                poll()
            yield key, later.get(), None

    def snapshot(self) -> dict:
        return {k: list(v) for k, v in self.attempts.items()}

    def cancel(self, handles) -> None:
        pass

    def close(self) -> None:
        pass


# --- Ray ---------------------------------------------------------------------------------------------------------

def _ledger_class():
    import ray

    @ray.remote(num_cpus=0)
    class Ledger:
        """Every attempt of every job: who ran it, where. Ray retries a task whose worker died without telling the
        driver; the attempts it started are how the sweep knows (and reports) which jobs were retried."""

        def __init__(self):
            self.attempts: dict[str, list[dict]] = {}

        def started(self, job_id: str, where: dict) -> int:
            self.attempts.setdefault(job_id, []).append(where)
            return len(self.attempts[job_id])

        def snapshot(self) -> dict:
            return self.attempts

    return Ledger


def _build_task(ledger, entry: dict, job: dict, export, profile: bool, previous: bytes | None) -> dict:
    import ray

    return J.build_job(entry, job, export, profile, lambda w: ray.get(ledger.started.remote(job["id"], w)), previous)


class RayExecutor:
    """Jobs as Ray tasks. ``address`` None: a local Ray on this machine with its cores (or RAY_ADDRESS's cluster)."""

    mode = "ray"

    def __init__(self, address: str | None, retries: int, cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise BackendMissingError("The sweep needs Ray to run jobs in parallel.",
                                      "pip install 'edgeopt[ray]' (or run with --sequential).") from None
        self.ray = ray
        address = address or os.environ.get("RAY_ADDRESS") or None
        kw = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=False)
        try:
            if address:
                ray.init(address=address, **kw)
            else:  # embedded: a fresh local Ray with this machine's cores, gone when the sweep ends
                ray.init(address="local", num_cpus=cpus or os.cpu_count() or 1, **kw)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserInputError(f"Could not start or join Ray{f' at {address}' if address else ''}: "
                                 f"{' '.join(str(exc).split())[:300]}",
                                 "Check the address (ray status on the head node prints it), or leave --address out "
                                 "to run on this machine.") from None
        self.address = address or "local"
        self.ledger = _ledger_class().remote()
        opts = dict(max_retries=retries, retry_exceptions=False)
        self._export = ray.remote(num_cpus=1, **opts)(J.export_job)
        self._build = ray.remote(num_cpus=1, **opts)(_build_task)
        self._farm = ray.remote(**opts)(J.farm_job)

    def nodes(self) -> list[dict]:
        return [{"node": n["NodeID"], "host": n.get("NodeManagerHostname"), "resources": n.get("Resources", {})}
                for n in self.ray.nodes() if n.get("Alive")]

    def export(self, entry: dict):
        return self._export.remote(entry)

    def build(self, entry: dict, job: dict, export, profile: bool, previous: bytes | None = None):
        return self._build.remote(self.ledger, entry, job, export, profile, previous)

    def check_board(self, board: str) -> None:
        if not any(board in n["resources"] for n in self.nodes()):
            raise UserInputError(f"No node of the Ray cluster offers board {board!r}.",
                                 f"On the board: edgeopt farm join --board {board} --address HEAD:6379, then rerun.")

    def farm(self, board: str, outs: dict, batches, duration_s: float):
        # num_cpus=0: boards join with no CPUs for builds; the board resource (1 per board) makes timing exclusive
        return self._farm.options(num_cpus=0, resources={board: 1}).remote(board, outs, tuple(batches), duration_s)

    def results(self, handles: dict, poll: Callable[[], None] | None = None):
        ray = self.ray
        by_ref = {ref: key for key, ref in handles.items()}
        pending = list(by_ref)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            if poll is not None:
                poll()
            for ref in done:
                try:
                    yield by_ref[ref], ray.get(ref), None
                except ray.exceptions.RayError as exc:  # retries exhausted: the worker kept dying
                    yield by_ref[ref], None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"

    def snapshot(self) -> dict:
        return self.ray.get(self.ledger.snapshot.remote())

    def cancel(self, handles) -> None:
        for ref in handles:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished
                pass

    def close(self) -> None:
        self.ray.shutdown()


def executor(address: str | None, sequential: bool, retries: int, reporter, cpus: int | None = None):
    if sequential:
        return Sequential()
    try:
        import ray  # noqa: F401
    except ImportError:
        reporter.warn("Ray is not installed: the jobs run one after another. For parallel jobs (and a cluster): "
                      "pip install 'edgeopt[ray]'.")
        return Sequential()
    return RayExecutor(address, retries, cpus)
