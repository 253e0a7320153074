"""The ``edgeopt`` command: each subcommand is a thin layer over the Python function of the same name."""

from __future__ import annotations

from pathlib import Path

import contextlib
import io
import sys

import click

from edgeopt import __version__
from edgeopt.cli.common import chatter_to_log, echo, emit_json, handle_errors, parse_batches, reporter, stdout_guard
from edgeopt.core.records import Status, records_of


def _recipe_with_cli(recipe, inputs, dims, model, checkpoint, allow_pickle, opset, exporter, kind=None, calib=None,
                     evaluation=None, preprocess=None, task=None, outputs=()):
    """Merge CLI model/input/data options into a recipe (or build one from them alone)."""
    r = _model_recipe(recipe, inputs, dims, model, checkpoint, allow_pickle, opset, exporter, kind)
    return _data_options(r, calib, evaluation, preprocess, task, outputs)


def _data_options(r, calib, evaluation, preprocess, task, outputs):
    """--calib / --eval / --preprocess / --task / --output-name on top of a recipe."""
    from dataclasses import replace

    from edgeopt.errors import UserInputError

    if outputs:
        r = replace(r, model=replace(r.model, outputs=tuple(outputs)), spec=r.spec.with_outputs(list(outputs)))
    if task:
        if not hasattr(r, "task"):
            raise UserInputError("--task needs a newer edgeopt (this one has no [task]).", "Drop --task.")
        r = replace(r, task=replace(r.task, type=task))
    if not (calib or evaluation or preprocess):
        return r
    from edgeopt.data.dataset import DataConfig
    from edgeopt.data.presets import preset

    pre = preset(preprocess, r.spec) if preprocess else None
    sections = {}
    for key, path, size in (("calibration", calib, 300), ("evaluation", evaluation, None)):
        if path:
            d = {"source": str(Path(path).resolve()), "size": size, **({"preprocess": pre} if pre else {})}
            sections[key] = DataConfig.from_dict(d, Path.cwd(), section=key)
        elif pre is not None and getattr(r, key) is not None:
            from edgeopt.data.dataset import Preprocess

            sections[key] = replace(getattr(r, key), preprocess=Preprocess.from_dict(pre))
    r = replace(r, **sections)
    if "preprocess" in r.read_from_model:  # --calib / --eval images prepared as the checkpoint's tool does
        from edgeopt.pipeline.intake import data_with_preprocess

        r = replace(r, **data_with_preprocess(r, r.preprocess))
    return r


def _model_recipe(recipe, inputs, dims, model, checkpoint, allow_pickle, opset, exporter, kind=None):
    from dataclasses import replace

    from edgeopt.example import example_recipe
    from edgeopt.config.recipe import ExportConfig, ModelConfig, load_recipe
    from edgeopt.core.spec import IOSpec, parse_dim_arg, parse_input_arg

    if model:
        # A training tool's checkpoint (Ultralytics' best.pt) tells its inputs; anything else needs --input.
        if not inputs and not Path(model).suffix.lower() in (".pt", ".pth"):
            from edgeopt.errors import UserInputError

            raise UserInputError("--model needs --input (the model's inputs).",
                                 "Add --input NAME:DTYPE[DIMS], for example --input image:float32[batch,3,224,224] --dim batch=1:1:32.")
        base = None
    else:
        base = load_recipe(recipe) if recipe else example_recipe()
        if base.spec is None:  # no [[inputs]]: the checkpoint given as the source tells them
            from edgeopt.pipeline.intake import complete_inputs

            base = complete_inputs(base)
    r = base
    if model:
        from edgeopt.config.recipe import Recipe

        spec = IOSpec(tuple(parse_input_arg(i) for i in inputs), {d.name: d for d in map(parse_dim_arg, dims)}) \
            if inputs else None
        r = Recipe(model=ModelConfig(source=model, checkpoint=checkpoint, allow_pickle=allow_pickle,
                                     kind=kind or "generic"), spec=spec, base_dir=Path("."))
        if spec is None:  # the checkpoint's own size and its tool's preprocessing
            from edgeopt.pipeline.intake import complete_inputs

            r = complete_inputs(r)
    else:
        if inputs or dims:
            spec = IOSpec(tuple(parse_input_arg(i) for i in inputs) or r.spec.inputs,
                          {**r.spec.dims, **{d.name: d for d in map(parse_dim_arg, dims)}}, r.spec.outputs)
            r = replace(r, spec=spec)
        if checkpoint or allow_pickle or kind:
            r = replace(r, model=replace(r.model, checkpoint=checkpoint or r.model.checkpoint,
                                         allow_pickle=allow_pickle or r.model.allow_pickle, kind=kind or r.model.kind))
    if opset or exporter:
        r = replace(r, export=ExportConfig(opset=opset or r.export.opset, exporter=exporter or r.export.exporter,
                                           slim=r.export.slim))
    if inputs or dims:
        from edgeopt.config.schema import check_inputs_fit

        check_inputs_fit(r.spec)  # before the model is loaded or anything allocated
    return r


WIDE = click.option("--wide", is_flag=True, help="Every column of the table (parity, p99), however wide.")


def model_options(fn):
    opts = [
        click.option("--model", help="Model source instead of a recipe: file.py:factory, package.module:factory, "
                                     "model.onnx, model.pt2, TorchScript .pt, or hf:FOLDER."),
        click.option("--checkpoint", help="state_dict checkpoint for a factory model."),
        click.option("--kind", type=click.Choice(["cnn", "transformer", "detector", "generic"]),
                     help="Model kind: picks parity rules and compression recipes (default generic)."),
        click.option("--allow-pickle", is_flag=True, help="Allow a checkpoint that needs full unpickling (runs code from the file)."),
        click.option("--input", "inputs", multiple=True, help="NAME:DTYPE[DIM,...][@LOW,HIGH], e.g. image:float32[batch,3,224,224]."),
        click.option("--dim", "dims", multiple=True, help="Dynamic axis range NAME=MIN:OPT:MAX, e.g. batch=1:1:32."),
        click.option("--opset", type=int, help="ONNX opset (default 18)."),
        click.option("--exporter", type=click.Choice(["auto", "dynamo", "legacy"]), help="ONNX exporter (default auto)."),
        click.option("--output-name", "outputs", multiple=True,
                     help="Name of the model's outputs, in order (repeatable; default output, output_1, ...)."),
        click.option("--calib", type=click.Path(exists=True),
                     help="Calibration data for INT8: image folder, .npz, .npy (see calibration/README.md)."),
        click.option("--eval", "evaluation", type=click.Path(exists=True),
                     help="Evaluation data (one subfolder per class, or .npz with labels): accuracy of every artifact."),
        click.option("--preprocess", type=click.Choice(["none", "resize", "imagenet"]),
                     help="How images in --calib/--eval become inputs: none (already the input's size), resize "
                          "(to the input's H and W), imagenet (resize, center crop, ImageNet mean/std)."),
        click.option("--task", type=click.Choice(["classification", "embedding", "detection", "generic"]),
                     help="What the model is for: how every artifact is scored (default: from --kind and the outputs)."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeopt")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and the final result.")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks on errors.")
@click.pass_context
def main(ctx, quiet, verbose):
    """edgeopt: fine-tuned PyTorch model -> parity-checked, profiled artifacts for ONNX Runtime, OpenVINO and
    TensorRT targets.

    Start with `edgeopt build` (the built-in example), `edgeopt targets` and `edgeopt doctor`.
    """
    ctx.obj = {"quiet": quiet, "verbose": verbose}


@main.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--output", default="edgeopt-out", show_default=True, type=click.Path(file_okay=False))
@click.option("-t", "--target", "targets", multiple=True, help="Target name (repeatable); default: every target that runs here.")
@click.option("-p", "--precision", "precisions", multiple=True, help="fp32, fp16, bf16, int8 (repeatable).")
@click.option("--force", is_flag=True, help="Build into a non-empty folder that is not an edgeopt output.")
@click.option("--json", "json_out", is_flag=True, help="Print the manifest as JSON on stdout.")
@WIDE
@model_options
@click.pass_context
@handle_errors
def build(ctx, recipe, output, targets, precisions, force, json_out, wide, model, checkpoint, kind, allow_pickle, inputs,
          dims, opset, exporter, outputs, calib, evaluation, preprocess, task):
    """Export, compile, check and profile RECIPE (a TOML file); no RECIPE builds the built-in example."""
    from edgeopt.pipeline import build as build_mod

    r = _recipe_with_cli(recipe, inputs, dims, model, checkpoint, allow_pickle, opset, exporter, kind, calib,
                         evaluation, preprocess, task, outputs)
    with stdout_guard(json_out), chatter_to_log(output):
        m = build_mod.build(r, output, targets, precisions, force=force, reporter=reporter())
    if "adapters" in m:  # [model] adapter = [A, B]: one artifact set (and manifest) per adapter
        _finish_each(m["adapters"], json_out, output, wide, targets or r.targets)
    else:
        _finish(m, json_out, output, wide, targets or r.targets)


def _finish_each(built: dict, json_out: bool, output, wide: bool, asked) -> None:
    if json_out:
        emit_json({"adapters": built})
    code = 0
    for name, m in built.items():
        if not json_out:
            echo(f"adapter {name}:")
        try:
            if json_out:
                with contextlib.redirect_stdout(io.StringIO()):
                    _finish(m, False, Path(output) / name, wide, asked)
            else:
                _finish(m, False, Path(output) / name, wide, asked)
        except SystemExit as exc:
            code = code or int(exc.code or 0)
    if code:
        sys.exit(code)


def _finish(m: dict, json_out: bool, output, wide: bool = False, asked=()) -> None:
    from edgeopt.report.tables import print_summary

    if json_out:
        emit_json(m)
    else:
        print_summary(m, wide=wide)
        echo(f"manifest: {Path(output) / 'manifest.json'}")
    sel = m.get("selection")
    if sel is not None and not json_out:
        echo(f"selected: {sel['selected']}" if sel.get("selected") else f"selection: {sel.get('error')}")
    records = records_of(m)
    failed = [a.id for a in records if a.status is Status.FAILED]
    if sel is not None and not sel.get("selected"):
        echo("error: no artifact meets the recipe's [select] budgets (see above).", err=True)
        sys.exit(9)
    if failed:
        echo(f"error: {len(failed)} artifact(s) failed: {', '.join(failed)} (see the table and the manifest).", err=True)
        sys.exit(5)
    skipped = [a for a in records if a.status is Status.SKIPPED and a.target in asked]
    if skipped:  # a target asked for by name that could not be built is not a success
        for a in skipped:
            echo(f"error: {a.id} was skipped: {a.reason}", err=True)
        echo("fix: build it on a machine that has what it needs (`edgeopt targets` says what runs here), or "
                   "drop it from -t/--target.", err=True)
        sys.exit(3)


@main.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--output", default="edgeopt-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--force", is_flag=True)
@click.option("--json", "json_out", is_flag=True)
@model_options
@click.pass_context
@handle_errors
def export(ctx, recipe, output, force, json_out, model, checkpoint, kind, allow_pickle, inputs, dims, opset,
           exporter, outputs, calib, evaluation, preprocess, task):
    """Export RECIPE's model to OUT/export/model.onnx and check it against PyTorch."""
    from edgeopt.pipeline import api

    r = _recipe_with_cli(recipe, inputs, dims, model, checkpoint, allow_pickle, opset, exporter, kind, calib,
                         evaluation, preprocess, task, outputs)
    with stdout_guard(json_out), chatter_to_log(output):
        m = api.export(r, output, force=force, reporter=reporter())
    if json_out:
        emit_json(m["export"])
    else:
        e = m["export"]
        echo(f"{Path(output) / 'export' / 'model.onnx'}: exporter {e.get('exporter')}, opset {e.get('opset')}, "
                   f"parity max abs {(e.get('parity') or {}).get('max_abs', float('nan')):.2e}")


@main.command(name="compile")
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--output", default="edgeopt-out", show_default=True, type=click.Path(file_okay=False))
@click.option("-t", "--target", "targets", multiple=True)
@click.option("-p", "--precision", "precisions", multiple=True)
@click.option("--force", is_flag=True)
@click.option("--json", "json_out", is_flag=True)
@WIDE
@model_options
@click.pass_context
@handle_errors
def compile_cmd(ctx, recipe, output, targets, precisions, force, json_out, wide, model, checkpoint, kind, allow_pickle,
                inputs, dims, opset, exporter, outputs, calib, evaluation, preprocess, task):
    """Compile RECIPE for targets and precisions (parity-checked, not profiled)."""
    from edgeopt.pipeline import api

    r = _recipe_with_cli(recipe, inputs, dims, model, checkpoint, allow_pickle, opset, exporter, kind, calib,
                         evaluation, preprocess, task, outputs)
    with stdout_guard(json_out), chatter_to_log(output):
        m = api.compile(r, output, targets, precisions, force=force, reporter=reporter())
    _finish(m, json_out, output, wide, targets or r.targets)


@main.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--output", default="edgeopt-out", show_default=True, type=click.Path(file_okay=False))
@click.option("-t", "--target", "targets", multiple=True)
@click.option("-p", "--precision", "precisions", multiple=True, help="Default: fp32 and int8.")
@click.option("--prune", type=click.Choice(["structured", "unstructured"]), help="Prune before export.")
@click.option("--ratio", type=float, default=0.5, show_default=True, help="Pruning ratio (channels or weights).")
@click.option("--macs-target", type=float, help="Structured: prune until MACs <= this share of the original.")
@click.option("--finetune-epochs", type=int, default=0, help="Recovery fine-tune after pruning.")
@click.option("--finetune-data", type=click.Path(exists=True), help="Training data with labels for the fine-tune.")
@click.option("--max-drop", type=float, help="INT8 accuracy budget in points vs FP32 (default 1).")
@click.option("--min-cosine", type=float, help="INT8 budget without labels: minimum output cosine (default 0.99).")
@click.option("--force", is_flag=True)
@click.option("--json", "json_out", is_flag=True)
@WIDE
@click.pass_context
@handle_errors
def compress(ctx, recipe, output, targets, precisions, prune, ratio, macs_target, finetune_epochs, finetune_data,
             max_drop, min_cosine, force, json_out, wide):
    """INT8 calibration with an accuracy guard, and pruning with recovery fine-tuning (no RECIPE: the example)."""
    from edgeopt.pipeline import api

    with stdout_guard(json_out), chatter_to_log(output):
        m = api.compress(recipe, output, targets, precisions or ("fp32", "int8"), prune, ratio, macs_target,
                         finetune_epochs, finetune_data, max_drop, min_cosine, force=force,
                         reporter=reporter())
    _finish(m, json_out, output, wide, targets)


@main.command()
@click.argument("model")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="Image folder: one subfolder per class, or train/, val/ (and calib/) subfolders.")
@click.option("--checkpoint", help="state_dict checkpoint for a factory model.")
@click.option("--input", "input_spec", help="The model's input, NAME:DTYPE[DIMS] (default: from the images).")
@click.option("--preprocess", type=click.Choice(["none", "resize", "imagenet"]),
              help="How images become inputs (default: none when every image has one size, else imagenet).")
@click.option("--kind", type=click.Choice(["cnn", "transformer", "detector", "generic"]), default="cnn",
              show_default=True)
@click.option("-o", "--output", default="recipe.toml", show_default=True, type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace an existing recipe file.")
@handle_errors
def init(model, data, checkpoint, input_spec, preprocess, kind, output, force):
    """Write a commented starter recipe for MODEL (file.py:factory, model.onnx, ...) and a data folder."""
    from edgeopt.config.starter import starter_recipe
    from edgeopt.core.fsutil import write_text_atomic
    from edgeopt.errors import UserInputError

    out = Path(output)
    if out.exists() and not force:
        raise UserInputError(f"{out} exists.", "Choose another -o/--output, or pass --force to replace it.")
    text = starter_recipe(model, data, checkpoint, input_spec, preprocess, kind, base=out.resolve().parent)
    write_text_atomic(out, text)
    echo(f"wrote {out}; check the [[inputs]] shape and the preprocessing, then: edgeopt build {out} -o out")


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--batch", "batch", default="1", show_default=True, help="Batch sizes, comma-separated: 1,8.")
@click.option("--iterations", type=int, help="Fixed number of timed runs (default: run for --duration).")
@click.option("--warmup", type=int, default=10, show_default=True)
@click.option("--duration", type=float, default=1.5, show_default=True, help="Seconds of timed runs.")
@click.option("--threads", type=int, help="Threads for the backend (default: its own choice, recorded).")
@click.option("--rounds", type=int, default=10, show_default=True, help="Interleaved rounds the timing is split into.")
@click.option("--layers", is_flag=True, help="Also a per-layer profile of each artifact (at the first batch size).")
@click.option("--layer-runs", type=int, default=20, show_default=True, help="Runs the per-layer profile averages.")
@click.option("--top", type=int, default=10, show_default=True, help="Layers shown per artifact with --layers.")
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
@handle_errors
def profile(ctx, path, batch, iterations, warmup, duration, threads, rounds, layers, layer_runs, top, json_out):
    """Profile an artifact folder (OUT/<id>) or every artifact in OUT, timed together in interleaved rounds."""
    from edgeopt.pipeline import api

    batches = parse_batches(batch)
    with stdout_guard(json_out):
        res = api.profile(path, batches, iterations, warmup, duration, threads, reporter=reporter(), layers=layers,
                          layer_runs=layer_runs, rounds=rounds)
    if json_out:
        emit_json(res)
        return
    from edgeopt.report.tables import fit_table, layer_lines, terminal_width, timing_notes

    from edgeopt.report.tables import energy_cell, power_cell

    energy = any(row.get("energy") for r in res["artifacts"].values() for row in r["rows"])
    headers = ["artifact", "batch", "median ms", "mean ms", "p90 ms", "p99 ms", "min ms", "max ms", "std ms", "cv",
               "items/s", "iters", "threads", "RSS MB"] + (["mW", "mJ/inf"] if energy else [])
    rows = []
    for aid, r in res["artifacts"].items():
        for row in r["rows"]:
            rows.append([aid, str(row["batch"]), *(f"{row[k]:.3f}" for k in ("median_ms", "mean_ms", "p90_ms", "p99_ms",
                                                                            "min_ms", "max_ms", "std_ms", "cv")),
                         f"{row['throughput_per_s']:.1f}", str(row["iterations"]), str(r["threads"]),
                         f"{r['peak_rss_mb']:.0f}" + (" !" if row["unstable"] else "")]
                        + ([power_cell(row), energy_cell(row)] if energy else []))
    echo(f"latency ({res['host']['cpu']['model']}); --json for every figure")
    for line in fit_table(headers, rows, terminal_width(),
                          optional=("RSS MB", "threads", "iters", "std ms", "max ms", "min ms", "mean ms", "cv",
                                    "p90 ms", "items/s", "mW"), right=set(headers[1:])):
        echo(line)
    for line in timing_notes({"timing": res["timing"]}):
        echo(line)
    for aid, prof in (res.get("layers") or {}).items():
        for line in layer_lines(aid, prof, top, terminal_width()):
            echo(line)


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("-t", "--target", required=True,
              help="A target (jetson-orin-nano, ...) or a target TOML file: its backend's preflight checks MODEL.")
@click.option("--input", "inputs", multiple=True, help="Declared inputs, to check dynamic axes have a profile range.")
@click.option("--dim", "dims", multiple=True, help="Dynamic axis range NAME=MIN:OPT:MAX.")
@click.option("--backend-version", "backend_version",
              help="Check against this version of the target's framework instead of the one the target declares.")
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
@handle_errors
def lint(ctx, model, target, inputs, dims, backend_version, json_out):
    """Preflight of an ONNX MODEL for TARGET's backend (runs anywhere, no GPU): exit 1 when the backend would
    reject it; exit 0 with a note when the backend has no preflight (it checks the model when it builds)."""
    from edgeopt.backends import preflight
    from edgeopt.core.spec import IOSpec, parse_dim_arg, parse_input_arg
    from edgeopt.core.targets import get_target

    spec = IOSpec(tuple(parse_input_arg(i) for i in inputs), {d.name: d for d in map(parse_dim_arg, dims)}) \
        if inputs else None
    t = get_target(target)
    report = preflight(model, t, spec, backend_version)
    if report is None:
        note = (f"The {t.backend} backend of {t.name} has no preflight: nothing to check before a build "
                f"(`edgeopt build -t {t.name}` checks the model when it compiles it).")
        if json_out:
            emit_json({"onnx": str(model), "target": t.name, "backend": t.backend, "preflight": None, "ok": True,
                       "note": note})
        else:
            echo(note)
        return
    if json_out:
        emit_json(report.to_dict())
    else:
        echo(report.summary())
    if not report.ok:
        sys.exit(1)


@main.command()
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
@handle_errors
def targets(ctx, json_out):
    """List device targets and whether each can run on this machine."""
    from edgeopt.backends import targets as list_targets

    rows = list_targets()
    if json_out:
        emit_json(rows)
        return
    from edgeopt.report.tables import fit_table, terminal_width, wrap

    width = terminal_width()
    notes: list[str] = []  # one note per distinct reason: the same install hint is said once
    table = []
    for r in rows:
        cell = "yes"
        if not r["runnable"]:
            if r["status"] not in notes:
                notes.append(r["status"])
            cell = f"no [{notes.index(r['status']) + 1}]"
        table.append([r["name"], r["backend"], r["device"], ",".join(r["precisions"]), cell])
    for line in fit_table(["target", "backend", "device", "precisions", "runs here"], table, width):
        echo(line)
    for n, text in enumerate(notes, 1):
        for line in wrap(f"[{n}] {text}", width, indent="    "):
            echo(line)


@main.command()
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
@handle_errors
def doctor(ctx, json_out):
    """Installed backends, versions, CPU features and devices."""
    from edgeopt.backends.doctor import doctor as run_doctor

    d = run_doctor()
    if json_out:
        emit_json(d)
        return
    from edgeopt.report.tables import terminal_width, wrap

    width = terminal_width()

    def say(text: str, indent: str = "    ") -> None:
        for line in wrap(text, width, indent=indent):
            echo(line)

    cpu = d["host"]["cpu"]
    say(f"edgeopt {__version__} on {d['host']['os']}, Python {d['host']['python']}")
    say(f"CPU: {cpu['model']} ({cpu['usable_cores']} usable cores), features: {', '.join(cpu['flags']) or 'none'}")
    for name, b in d["backends"].items():
        state = f"{b['version']}" if b["installed"] else f"not installed: {b['install']}"
        say(f"  {name:12s} {state}", indent=" " * 15)
        for dev, full in (b.get("devices") or {}).items():
            say(f"  {'':12s} device {dev}: {full}", indent=" " * 15)
    say("libraries: " + ", ".join(f"{k} {v}" for k, v in d["host"]["libraries"].items()))


if __name__ == "__main__":  # pragma: no cover
    main()
