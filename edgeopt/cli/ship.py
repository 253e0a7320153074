"""``edgeopt bundle``, ``verify``, ``run`` and ``keygen``: thin layers over :mod:`edgeopt.ship.bundle`,
:mod:`edgeopt.ship.runtime` and :mod:`edgeopt.ship.keys`. Registered on the main group in ``edgeopt.cli``.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from edgeopt.cli.common import echo, emit_json, handle_errors
from edgeopt.core.untrusted import printable


@click.command(name="bundle")
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True,
              help="NAME.edgeopt.tar.gz (the suffix is added when missing), or a folder with --folder.")
@click.option("-a", "--artifact", "artifacts", multiple=True,
              help="Artifact id to ship (repeatable); default: every artifact with status ok.")
@click.option("--folder", is_flag=True, help="Write a plain folder instead of a .tar.gz.")
@click.option("--sign-key", type=click.Path(exists=True, dir_okay=False),
              help="Ed25519 private key (from `edgeopt keygen`) to sign the bundle with.")
@click.option("--json", "json_out", is_flag=True, help="Print the result as JSON.")
@handle_errors
def bundle_cmd(out, output, artifacts, folder, sign_key, json_out):
    """Pack OUT's artifacts, manifest and reference data into one verifiable bundle."""
    from edgeopt.ship.bundle import bundle, bundle_summary

    path = bundle(out, output, artifacts=artifacts or None, folder=folder, sign_key=sign_key)
    res = bundle_summary(path)
    if json_out:
        emit_json(res)
        return
    size = f"{res['bytes'] / 1e6:.2f} MB"
    digest = f", sha256 {res['sha256']}" if "sha256" in res else ""
    echo(f"{path}: {', '.join(res['artifacts'])} ({size}{digest}{', signed' if sign_key else ''})")


@click.command(name="verify")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(exists=True))
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False),
              help="Ed25519 public key: the bundle must carry a valid signature by it.")
@click.option("--require-signature", is_flag=True, default=None,
              help="Refuse a bundle without a signature that --public-key verifies (also: EDGEOPT_REQUIRE_SIGNATURE=1).")
@click.option("-t", "--target", help="Check only this target's (or artifact id's) artifacts.")
@click.option("--no-self-test", is_flag=True, help="Skip running the reference inputs through the artifacts.")
@click.option("--json", "json_out", is_flag=True, help="Print the report as JSON.")
@handle_errors
def verify_cmd(bundle_path, public_key, require_signature, target, no_self_test, json_out):
    """Check BUNDLE's files, signature and fit to this device, and run its self-test."""
    from edgeopt.ship.bundle import verify

    with signature_warnings():
        rep = verify(bundle_path, public_key=public_key, target=target, self_test=not no_self_test,
                     require_signature=require_signature or None)
    if json_out:
        emit_json(rep)
        return
    p = printable  # names, reasons and versions come from the bundle: shown escaped, one line each
    echo(f"{rep['bundle']}: {p(rep['model'])} ({rep['files_checked']} files intact, signature "
               f"{p(rep['signature'])})")
    for a in rep["artifacts"]:
        if a["runs_here"]:
            st = a["self_test"]
            if not st:
                test = "self-test skipped"
            elif st.get("task_metric"):
                tm = st["task_metric"]
                test = (f"self-test passed: {tm['metric']} {tm['here']:.4f} on {tm['samples']} real samples "
                        f"(build: {tm['built']:.4f})")
            elif st.get("judged_by") == "detections":
                test = (f"self-test passed: detections mAP50 {st['detections']['map50'] * 100:.2f} against the "
                        f"reference's, {st['samples']} samples")
            else:
                test = f"self-test passed: max abs {st['max_abs']:.2e}, cosine {st['cosine']:.6f}, {st['samples']} samples"
            echo(f"  ok    {p(a['id'])} ({p(a['backend'])} {p(a['backend_version'] or '')}): {test}")
        else:
            echo(f"  skip  {p(a['id'])}: not for this device: {p(a['reason'])}")
        for w in a["warnings"]:
            echo(f"        warning: {p(w)}")


def signature_warnings():
    """A signature present but not checked is said loudly on stderr (not as a Python warning line)."""
    import contextlib
    import warnings

    from edgeopt.ship.bundle import SignatureNotCheckedWarning

    @contextlib.contextmanager
    def catch():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SignatureNotCheckedWarning)
            try:
                yield
            finally:
                for w in caught:
                    if issubclass(w.category, SignatureNotCheckedWarning):
                        echo(f"WARNING: signature NOT CHECKED: {printable(w.message)}", err=True)
                    else:
                        warnings.showwarning(w.message, w.category, w.filename, w.lineno)

    return catch()


@click.command(name="run")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(exists=True))
@click.option("-i", "--input", "input_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="file.npy (one input), file.npz (keyed by input name) or an image (needs a preprocessing spec).")
@click.option("-t", "--target", help="Run this target's (or artifact id's) artifact.")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False), help="Require a valid signature by this key.")
@click.option("--require-signature", is_flag=True, default=None,
              help="Refuse a bundle without a signature that --public-key verifies (also: EDGEOPT_REQUIRE_SIGNATURE=1).")
@click.option("--no-verify", is_flag=True, help="Skip the hash checks and the self-test (extraction stays safe).")
@click.option("--top", default=5, show_default=True, help="Top classes shown for a (batch, classes) output.")
@click.option("--json", "json_out", is_flag=True, help="Print the outputs as JSON.")
@handle_errors
def run_cmd(bundle_path, input_path, target, public_key, require_signature, no_verify, top, json_out):
    """Run BUNDLE on one input file: a quick check from the shell."""
    from edgeopt.ship.runtime import load

    with signature_warnings():
        model = load(bundle_path, target=target, verify=not no_verify, public_key=public_key,
                     require_signature=require_signature or None)
    with model:
        feed = read_input(Path(input_path), model)
        outs = model.infer(feed)
        res = {"artifact": model.id, "backend": model.backend, "precision": model.precision,
               "input": str(input_path), "outputs": {n: describe_output(a, top, model.labels) for n, a in outs.items()}}
    if json_out:
        emit_json(res)
        return
    p = printable  # ids, output names and labels come from the bundle
    echo(f"{p(res['artifact'])} ({p(res['backend'])}, {p(res['precision'])}) on {input_path}:")
    for name, o in res["outputs"].items():
        echo(f"  {p(name)}: {o['dtype']}{o['shape']}")
        for row in o.get("top") or []:
            echo("    " + ", ".join(f"{p(c['label']) if c['label'] is not None else c['index']}: {c['score']:.4g}"
                                          for c in row))
        if not o.get("top") and o.get("values") is not None:
            echo(f"    {o['values']}")


def read_input(path: Path, model):
    """A feed from .npy / .npz / an image. A sample without its batch axis gets one; floats are cast to the
    input's float type."""
    from edgeopt.data.sources import IMAGE_SUFFIXES
    from edgeopt.errors import UserInputError

    from edgeopt.core.bounded import LimitExceeded, read_npy, read_npz

    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":  # sizes from the header checked (named limits) before anything is allocated
            arrays = {None: read_npy(path)}
        elif suffix == ".npz":
            arrays = read_npz(path)
        elif suffix in IMAGE_SUFFIXES:
            return model.preprocess(path)
        else:
            raise UserInputError(f"Cannot read {path} as an input.",
                                 "Give a .npy (one input), a .npz keyed by input name, or an image file.")
    except LimitExceeded as exc:
        raise UserInputError(f"Refused {path}: {exc}.", "Give one feed (a batch the model takes), not a larger "
                             "array.") from None
    except (OSError, ValueError) as exc:
        raise UserInputError(f"Cannot read {path}: {exc}.",
                             "Save inputs with numpy.save / numpy.savez (no pickled objects).") from None
    for k, a in arrays.items():
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            bad = int(np.count_nonzero(~np.isfinite(a)))
            echo(f"WARNING: {path.name}{'' if k is None else ':' + printable(k, 80)} holds {bad} NaN or infinite "
                 "value(s); the outputs are unlikely to mean anything.", err=True)
    specs = {t.name: t for t in model.spec.inputs}
    if None in arrays:
        if len(specs) != 1:
            raise UserInputError(f"The model has {len(specs)} inputs; {path.name} holds one array.",
                                 f"Give a .npz with the keys {list(specs)}.")
        arrays = {next(iter(specs)): arrays[None]}
    return {k: _conform(a, specs[k]) if k in specs else a for k, a in arrays.items()}


def _conform(a, t):
    a = np.asarray(a)
    if a.ndim == len(t.shape) - 1:
        a = a[None]
    if a.dtype != t.np_dtype and np.issubdtype(a.dtype, np.floating) and np.issubdtype(t.np_dtype, np.floating):
        a = a.astype(t.np_dtype)
    return a


def describe_output(a, top: int, labels) -> dict:
    a = np.asarray(a)
    res = {"shape": list(a.shape), "dtype": str(a.dtype)}
    if a.size <= 4096:
        res["values"] = a.tolist()
    if a.ndim == 2 and np.issubdtype(a.dtype, np.floating) and a.shape[1] > 1 and top > 0:
        k = min(top, a.shape[1])
        res["top"] = [[{"index": int(i), "label": labels[i] if labels and i < len(labels) else None,
                        "score": float(row[i])} for i in np.argsort(-row)[:k]] for row in a]
    return res


@click.command(name="keygen")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
@click.option("--json", "json_out", is_flag=True)
@handle_errors
def keygen_cmd(path, force, json_out):
    """Write an Ed25519 key pair: PATH (private, mode 0600) and PATH with .pub (public, for devices)."""
    from edgeopt.ship.keys import generate_key, key_id, load_public_key

    private, public = generate_key(path, force=force)
    res = {"private_key": str(private), "public_key": str(public), "key_id": key_id(load_public_key(public))}
    if json_out:
        emit_json(res)
        return
    echo(f"private key: {private} (keep it secret; sign with `edgeopt bundle OUT -o NAME --sign-key {private}`)")
    echo(f"public key:  {public} (key id {res['key_id']}; check with `edgeopt verify BUNDLE --public-key {public}`)")


COMMANDS = (bundle_cmd, verify_cmd, run_cmd, keygen_cmd)
