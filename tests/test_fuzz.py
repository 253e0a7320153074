"""Property-based fuzzing (Hypothesis) of the two untrusted inputs edgeopt parses: recipes and bundle manifests.

Each case mutates a valid document (a value replaced by a hostile one, a key removed or added, several at
once); the property is that parsing and checking it either succeeds or raises an EdgeoptError (a clear
refusal): never another exception, and never longer than a few seconds. The parsing and checking functions
run directly (no full builds), so >= 200 recipe and >= 100 manifest cases take well under a minute."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeopt.errors import EdgeoptError

# EDGEOPT_FUZZ_SCALE=10 runs ten times as many cases; EDGEOPT_FUZZ_RANDOM=1 draws new ones each run (CI: the
# same cases every run, so a failure is reproducible).
SCALE = max(1, int(os.environ.get("EDGEOPT_FUZZ_SCALE", "1") or 1))
RECIPE_CASES = 250 * SCALE
MANIFEST_CASES = 120 * SCALE
CASE_SECONDS = 5  # a case that runs longer is a hang

RECIPE = {
    "targets": ["ort-cpu", "openvino-cpu"], "precisions": ["fp32", "int8"], "outputs": ["logits"],
    "model": {"name": "m", "source": "model.py:build", "checkpoint": "w.pt", "kind": "cnn", "labels": ["a", "b"],
              "allow_pickle": False, "call": "positional"},
    "inputs": [{"name": "image", "shape": ["batch", 3, 32, 32], "dtype": "float32", "range": [0.0, 1.0]},
               {"name": "ids", "shape": ["batch", "seq"], "dtype": "int64", "range": [0, 100]}],
    "dims": {"batch": {"min": 1, "opt": 1, "max": 8}, "seq": {"min": 4, "opt": 8, "max": 16, "multiple_of": 4}},
    "export": {"opset": 18, "exporter": "auto", "slim": True},
    "parity": {"samples": 3, "seed": 0, "tolerances": {"fp32": {"atol": 1e-4, "rtol": 1e-5, "min_cosine": 0.9999}}},
    "profile": {"batches": [1, 8], "warmup": 10, "iterations": 50, "duration_s": 1.5, "min_iterations": 20,
                "threads": 2, "baseline": True},
    "calibration": {"source": "calib/", "size": 100, "seed": 1,
                    "preprocess": {"resize": 36, "center_crop": [32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}},
    "evaluation": {"source": "val/", "size": 50},
    "compression": {"max_drop": 1.0, "min_cosine": 0.99, "candidates": ["ort-qdq-u8s8"], "drop_type": "absolute"},
    "pruning": {"method": "structured", "ratio": 0.5, "finetune": {"source": "train.npz", "epochs": 1}},
    "select": {"max_drop": 1, "p99_ms": 25, "batch": 1},
    "preprocess": {"resize": 36, "center_crop": 32},
}

# Values that broke parsers before: wrong types, negative, huge, not finite, long, control characters.
SCALARS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 10**18, -(10**12)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([9.2e18, 1e9, -0.0, 1e-300]),
    st.booleans(),
    st.text(max_size=20),
    st.sampled_from(["", "x" * 5000, "a/" * 2500 + "m.onnx", "../../etc/passwd", "/abs", "a\nb\x1b[2J", "batch",
                     "all", "CACHE_DIR", "\u202e"]),
    st.sampled_from([4096, 60000, 2**40, [60000, 60000], [2**31, 1]]),  # thread counts and sizes (issue 21)
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def paths(obj, prefix=()):
    """Every (container path, key) in a JSON-like document."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix, k
            yield from paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix, i
            yield from paths(v, prefix + (i,))


@st.composite
def mutated(draw, base: dict, values=VALUES):
    """``base`` with 1 to 3 mutations: replace a value, delete a key, add an unknown key."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        spots = list(paths(doc))
        if not spots:
            break
        where, key = draw(st.sampled_from(spots))
        parent = doc
        for k in where:
            parent = parent[k]
        op = draw(st.sampled_from(["replace"] * 6 + ["delete", "add"]))
        if op == "delete" and isinstance(parent, dict):
            del parent[key]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(values)
        else:
            parent[key] = draw(values)
    return doc


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_bound(seconds: int = CASE_SECONDS):
    def alarm(*_):
        raise Hang(f"a case ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def refused_or_ok(fn) -> str:
    """Run ``fn`` under the time bound: "ok", or "refused" for an EdgeoptError. Anything else fails."""
    with time_bound():
        try:
            fn()
            return "ok"
        except EdgeoptError as exc:
            assert exc.problem and isinstance(exc.problem, str)
            return "refused"


def fuzz(cases: int) -> settings:
    return settings(max_examples=cases, deadline=None, database=None,
                    derandomize=os.environ.get("EDGEOPT_FUZZ_RANDOM") != "1",
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def test_recipe_mutations_are_refused_or_parsed():
    from edgeopt.config.recipe import recipe_from_dict
    from edgeopt.pipeline.build import plan_artifacts

    outcomes = []

    def check(doc):
        recipe = recipe_from_dict(doc, Path(tempfile.gettempdir()))
        plan_artifacts(recipe)  # targets and precisions as the build reads them

    @fuzz(RECIPE_CASES)
    @given(mutated(RECIPE))
    def run(doc):
        outcomes.append(refused_or_ok(lambda: check(doc)))

    run()
    assert len(outcomes) >= 200 and outcomes.count("refused") > 100, (len(outcomes), outcomes.count("refused"))


@pytest.fixture(scope="module")
def bundle_folder(tmp_path_factory):
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter
    from edgeopt.ship.bundle import bundle

    from test_untrusted import tiny_recipe

    d = tmp_path_factory.mktemp("fuzz")
    build(tiny_recipe(d, targets=("ort-cpu",)), d / "OUT", reporter=Reporter(quiet=True), profile=False)
    return bundle(d / "OUT", d / "b", folder=True)


def rehash(folder: Path) -> None:
    """Make the recorded sha256 and sizes match the files again, as a forger would (where the manifest's
    shape still allows it), so the mutation reaches the checks behind the hashes."""
    from edgeopt.core.fsutil import sha256_file

    path = folder / "manifest.json"
    try:
        m = json.loads(path.read_text())
        for f in m["bundle"]["files"] + [f for a in m["artifacts"] for f in a["files"]]:
            p = folder / f["path"]
            if p.is_file():
                f.update(sha256=sha256_file(p), bytes=p.stat().st_size)
        path.write_text(json.dumps(m))
    except Exception:  # noqa: BLE001 - the mutation broke the shape: the checks must refuse it as it is
        pass


TEXT_DAMAGE = st.sampled_from(["truncate", "deep", "garbage", "duplicate-key", "nan"])


def test_manifest_mutations_are_refused_or_loaded(bundle_folder):
    from edgeopt.ship.bundle import check_compatibility, open_bundle, run_self_test, select_records
    from edgeopt.ship.runtime import load

    base = json.loads((bundle_folder / "manifest.json").read_text())
    art = json.loads((bundle_folder / "ort-cpu-fp32" / "artifact.json").read_text())
    outcomes = []

    def check(folder: Path, verify: bool):
        b = open_bundle(folder, check=verify)
        for rec in select_records(b, None):
            if check_compatibility(b, rec).ok and verify:
                run_self_test(b, rec)
        load(folder, verify=verify).close()

    @fuzz(MANIFEST_CASES)
    @given(which=st.sampled_from(["manifest"] * 3 + ["artifact", "text"]), manifest=mutated(base),
           artifact=mutated(art), damage=TEXT_DAMAGE, forge=st.booleans(), verify=st.booleans())
    def run(which, manifest, artifact, damage, forge, verify):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "b"
            shutil.copytree(bundle_folder, folder)
            if which == "manifest":
                (folder / "manifest.json").write_text(json.dumps(manifest))
            elif which == "artifact":
                (folder / "ort-cpu-fp32" / "artifact.json").write_text(json.dumps(artifact))
            else:
                raw = (folder / "manifest.json").read_text()
                text = {"truncate": raw[: len(raw) // 2], "deep": raw[:-2] + ', "x": ' + "[" * 50_000 + "]" * 50_000 + "}",
                        "garbage": "\x00\xff{{", "duplicate-key": raw[:-2] + ', "schema": "x"}',
                        "nan": raw.replace('"samples": ', '"samples": NaN, "s2": ', 1)}[damage]
                (folder / "manifest.json").write_text(text, errors="surrogateescape")
            if forge:
                rehash(folder)
            outcomes.append(refused_or_ok(lambda: check(folder, verify)))

    run()
    assert len(outcomes) >= 100 and "refused" in outcomes, (len(outcomes), outcomes.count("refused"))


# ---- issue 21: recipe text, reference data, runtime settings ----------------------------------------

@fuzz(40 * SCALE)
@given(depth=st.one_of(st.integers(1, 3000), st.sampled_from([100, 400, 600, 1000, 100_000])),
       kind=st.sampled_from(["array", "table"]), tail=st.sampled_from(["", "\xff\xfe", "x" * 10]))
def test_deep_or_broken_recipe_text_is_refused(tmp_path_factory, depth, kind, tail):
    """A recipe nested 600+ levels deep was a RecursionError traceback; non-UTF-8 bytes a UnicodeDecodeError."""
    from edgeopt.config.recipe import load_recipe

    value = "[" * depth + "1" + "]" * depth if kind == "array" else "{a = " * depth + "1" + "}" * depth
    path = tmp_path_factory.mktemp("deep") / "recipe.toml"
    path.write_bytes(f"name = {value}\n".encode() + tail.encode("latin-1"))
    assert refused_or_ok(lambda: load_recipe(path)) == "refused"


REF_DAMAGE = st.sampled_from(["bomb-header", "lying-header", "truncate", "garbage", "object", "many-members",
                              "bad-key"])


def damage_reference(path: Path, how: str, rng_bytes: bytes) -> None:
    import io
    import zipfile

    import numpy as np

    def member(name: str, header: dict, data: bytes) -> tuple[str, bytes]:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, header)
        return name, buf.getvalue() + data

    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    first = next(iter(arrays))
    if how == "truncate":
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
        return
    if how == "garbage":
        path.write_bytes(rng_bytes)
        return
    raws = {}
    for k, v in arrays.items():
        b = io.BytesIO()
        np.lib.format.write_array(b, v)
        raws[k] = b.getvalue()
    if how == "bomb-header":
        raws[first] = member(first, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)}, bytes(64))[1]
    elif how == "lying-header":
        raws[first] = member(first, {"descr": "<f8", "fortran_order": False, "shape": (3, 16)}, rng_bytes[:40])[1]
    elif how == "object":
        b = io.BytesIO()
        np.lib.format.write_array(b, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        raws[first] = b.getvalue()
    elif how == "many-members":
        raws.update({f"output/0/x{i}": raws[first] for i in range(20_000)})
    elif how == "bad-key":
        raws["../../evil"] = raws.pop(first)
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in raws.items():
            zf.writestr(k + ".npy", v)


def test_reference_damage_is_refused(bundle_folder):
    """reference.npz as an attacker writes it (hashes made to match): refused with a clear error, in bounded
    time (the memory bounds are measured in test_bounds.py)."""
    from edgeopt.ship.bundle import verify

    outcomes = []

    @fuzz(30 * SCALE)
    @given(how=REF_DAMAGE, junk=st.binary(min_size=64, max_size=256))
    def run(how, junk):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "b"
            shutil.copytree(bundle_folder, folder)
            ref = folder / "reference" / "reference.npz"
            damage_reference(ref, how, junk)
            from edgeopt.core.fsutil import sha256_file

            m = json.loads((folder / "manifest.json").read_text())
            m["reference"]["sha256"] = sha256_file(ref)
            (folder / "manifest.json").write_text(json.dumps(m))
            rehash(folder)
            outcomes.append(refused_or_ok(lambda: verify(folder)))

    run()
    assert outcomes and set(outcomes) == {"refused"}, outcomes


def test_runtime_thread_settings_are_refused_or_capped(bundle_folder):
    """Any thread count an artifact.json may name: refused (outside the allow-list) or run, capped by the
    CPUs here (4096 ONNX Runtime threads took a 2-core machine's load past 1,300)."""
    from edgeopt.ship.runtime import load

    outcomes = []

    @fuzz(20 * SCALE)
    @given(intra=st.one_of(st.integers(-5, 5000), st.sampled_from([4096, 2**31, True, "8", None])),
           inter=st.one_of(st.integers(0, 4096), st.sampled_from([4096, 1])))
    def run(intra, inter):
        import numpy as np

        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "b"
            shutil.copytree(bundle_folder, folder)
            path = folder / "ort-cpu-fp32" / "artifact.json"
            art = json.loads(path.read_text())
            art["meta"]["runtime_options"] = {"intra_op_threads": intra, "inter_op_threads": inter}
            path.write_text(json.dumps(art))
            rehash(folder)

            def check():
                with load(folder, verify=False) as model:
                    model.infer({"x": np.ones((1, 16), np.float32)})

            outcomes.append(refused_or_ok(check))

    run()
    assert "ok" in outcomes and "refused" in outcomes, outcomes
