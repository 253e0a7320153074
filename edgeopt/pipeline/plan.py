"""Planning a build: the artifacts (target x precision) the recipe and the command line ask for, and which of
them this machine builds, skips, or ships as a device package."""

from __future__ import annotations

from edgeopt.backends import check_recipe_options, check_target_options, get_backend, target_status
from edgeopt.config.recipe import Recipe
from edgeopt.core.records import Status
from edgeopt.core.targets import check_precision, get_target, load_targets
from edgeopt.errors import BackendMissingError, UserInputError
from edgeopt.pipeline.context import Plan


def plan_artifacts(recipe: Recipe, targets: tuple[str, ...] = (), precisions: tuple[str, ...] = ()) -> list[Plan]:
    names = targets or recipe.targets
    explicit = bool(names)
    wanted_prec = precisions or recipe.precisions
    chosen = [get_target(n) for n in names] if explicit else list(load_targets().values())
    known = {n for t in (*load_targets().values(), *chosen) for n in (t.name, t.backend)}
    unknown = sorted(set(recipe.options) - known)
    if unknown:
        raise UserInputError(f"The recipe has [options.NAME] for {unknown}, which is no target or backend.",
                             f"Name a target or a backend: {', '.join(sorted(known))}.")
    check_recipe_options(recipe.options, [*load_targets().values(), *chosen])  # each backend's declared keys
    for t in chosen:
        check_target_options(t, f"Target {t.path or t.name} [options]")
    chosen = [recipe.target_options(t) for t in chosen]  # [options.BACKEND] / [options.TARGET] of the recipe
    plans: list[Plan] = []
    for t in chosen:
        backend = get_backend(t.backend)
        if not backend.installed():
            if not explicit:
                continue
            if not backend.builds_on_device:
                raise BackendMissingError(backend.distribution, backend.extra, f"build for target {t.name}",
                                          fix=backend.install_hint())
        ok, why = target_status(t)
        if not ok and not explicit:
            continue  # the default build makes what can run here
        for p in wanted_prec:
            if p not in t.precisions:
                if precisions and explicit and len(chosen) == 1:
                    check_precision(t, p)  # raises with the list the target offers
                continue
            plan = Plan(t, p)
            unavailable = backend.precision_unavailable(t, p) if ok else why
            if unavailable:
                if not explicit and ok:
                    continue
                plan.status, plan.reason = Status.SKIPPED, unavailable
                if getattr(backend, "builds_on_device", False):
                    # Engines are built on the device that runs them: ship a device package instead.
                    plan.status = Status.NOT_BUILT_HERE
            plans.append(plan)
    if not plans:
        missing = sorted({get_backend(t.backend).extra for t in chosen if not get_backend(t.backend).installed()
                          and not get_backend(t.backend).builds_on_device})
        if missing and not explicit:
            raise BackendMissingError(" and ".join(missing), ",".join(missing) + ",torch",
                                      "build for the targets that run on this machine")
        raise UserInputError(
            f"Nothing to build: no target offers the precisions {list(wanted_prec)} on this machine.",
            "Run `edgeopt targets` to see what can run here, and pick --target/--precision from it.")
    return plans


def detector_nms(plans: list[Plan]) -> dict:
    """Where a detector's NMS runs in this build's one exported ONNX, asked of each planned target's backend
    (:meth:`~edgeopt.backends.base.Backend.detector_nms`): ``{"where": "graph" | "outside", "why": ..., "targets":
    [the targets that want it outside]}``. One target that wants NMS outside the graph (TensorRT's plugin, NMS on
    the device) is enough: every artifact is then compiled from the graph that ends before NMS, and judged with
    the host's NMS."""
    outside, why = [], []
    for p in plans:
        if p.status not in (Status.PLANNED, Status.NOT_BUILT_HERE) or p.target.name in outside:
            continue
        where, reason = get_backend(p.target.backend).detector_nms(p.target)
        if where == "outside":
            outside.append(p.target.name)
            why.append(reason)
    if outside:
        return {"where": "outside", "why": "; ".join(dict.fromkeys(why)), "targets": outside}
    return {"where": "graph", "why": "every target runs NMS in the graph", "targets": []}
