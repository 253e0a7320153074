"""Recipe mutations that used to end in a traceback, a hang or a huge allocation: each is now one clear
error (exit 2) before anything is written."""

from __future__ import annotations

import time

import pytest

from conftest import write

BASE = """
targets = ["ort-cpu"]
precisions = ["fp32"]
outputs = ["y"]

[model]
name = "mlp"
source = "mlp.onnx"

[[inputs]]
name = "x"
shape = ["batch", 16]
range = [0.0, 1.0]

[dims.batch]
min = 1
opt = 1
max = 8

[parity]
samples = 2
seed = 0

[profile]
batches = [1]
iterations = 5
warmup = 1
min_iterations = 5

[select]
max_size_mb = 10
"""


def mutate(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


CASES = {
    "outputs = 5": (mutate('outputs = ["y"]', "outputs = 5"), "outputs = 5: a list"),
    "seed = -1": (mutate("seed = 0", "seed = -1"), "[parity] seed = -1: an integer from 0"),
    "shape[1] = inf": (mutate('shape = ["batch", 16]', 'shape = ["batch", inf]'), "shape[1] = inf"),
    "5000-char path": (mutate('source = "mlp.onnx"', f'source = "{"a" * 5000}.onnx"'), "no file system holds it"),
    "5000-char nested path": (mutate('source = "mlp.onnx"', f'source = "{"a/" * 2500}m.onnx"'), "no file system"),
    "[select] = 1": (mutate("[select]\nmax_size_mb = 10", "").replace('outputs = ["y"]', 'outputs = ["y"]\nselect = 1'),
                     "[select] is a number, not a table"),
    "parity = 0": (mutate("[parity]\nsamples = 2\nseed = 0", "").replace('outputs = ["y"]', 'outputs = ["y"]\nparity = 0'),
                   "[parity] is a number, not a table"),
    "min_iterations = 10**18": (mutate("min_iterations = 5", "min_iterations = 1000000000000000000"),
                                "min_iterations = 1000000000000000000: an integer from 1 to 1000000"),
    "warmup = -10**12": (mutate("warmup = 1", "warmup = -1000000000000"), "warmup = -1000000000000"),
    "range = [0, 9.2e18]": (mutate("range = [0.0, 1.0]", "range = [0, 9.2e18]"), "range[1] = 9.2e+18"),
    "opt = max = 1e9": (mutate("opt = 1\nmax = 8", "opt = 1e9\nmax = 1e9"), "[dims.batch] opt = 1000000000.0"),
    "max = 2*10**9 (memory)": (mutate("max = 8", "max = 2000000000"), "take 119 GiB"),
    "huge fixed shape (memory)": (mutate('shape = ["batch", 16]', 'shape = ["batch", 100000, 100000]'),
                                  "largest declared sizes"),
    "labels = {}": (mutate('name = "mlp"', 'name = "mlp"\nlabels = {a = 1}'), "labels = {'a': 1}: a list"),
    "batches = [0]": (mutate("batches = [1]", "batches = [0]"), "batches[0] = 0"),
    "inputs = 3": (mutate('[[inputs]]\nname = "x"\nshape = ["batch", 16]\nrange = [0.0, 1.0]', "")
                   .replace('outputs = ["y"]', 'outputs = ["y"]\ninputs = 3'), "inputs = 3: a list"),
    "dims.batch = 2": (mutate("[dims.batch]\nmin = 1\nopt = 1\nmax = 8", "[dims]\nbatch = 2"), "[dims.batch] is a number"),
    "name with newline": (mutate('name = "x"', 'name = "x\\ny"'), "non-empty string of printable characters"),
    "dtype = 5": (mutate('name = "x"', 'name = "x"\ndtype = 5'), "dtype = 5"),
    "tolerance nan": (mutate("seed = 0", "seed = 0\n[parity.tolerances.fp32]\natol = nan"), "atol = nan"),
    # Each backend declares its [options] keys: a misspelt one is refused with the closest valid key named.
    "OpenVINO option typo": (BASE + '[options.openvino]\nperfomance_hint = "THROUGHPUT"\n',
                             "[options.openvino] has an unknown key 'perfomance_hint'"
                             ": the openvino backend reads no such option. Did you mean 'performance_hint'?"),
    "ONNX Runtime option typo": (BASE + "[options.onnxruntime]\nintra_op_thread = 2\n",
                                 "Did you mean 'intra_op_threads'?"),
    "TensorRT option typo": (BASE + "[options.tensorrt]\nworkspace = 1024\n", "Did you mean 'workspace_mb'?"),
    "target option typo": (BASE + '[options.ort-cpu]\ngraph_optimisation_level = "basic"\n',
                           "[options.ort-cpu] has an unknown key 'graph_optimisation_level'"),
    "option value": (BASE + '[options.openvino]\nperformance_hint = "FAST"\n',
                     "[options.openvino] performance_hint = 'FAST': one of 'LATENCY', 'THROUGHPUT'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_recipe_mutation_is_a_clear_error_before_anything_is_written(run_cli, tmp_path, case):
    text, message = CASES[case]
    recipe = write(tmp_path / "r.toml", text)
    out = tmp_path / "OUT"
    t0 = time.perf_counter()
    code, stdout, err = run_cli("build", recipe, "-o", out)
    assert code == 2, (code, err)
    assert message in err and "fix:" in err and "Traceback" not in err + stdout
    assert not out.exists()  # no .edgeopt marker, no logs
    assert time.perf_counter() - t0 < 20


def test_the_base_recipe_parses(tmp_path):
    from edgeopt.config.recipe import load_recipe

    r = load_recipe(write(tmp_path / "r.toml", BASE))
    assert r.spec.dims["batch"].max == 8 and r.profile.min_iterations == 5


def test_cli_dims_and_inputs_are_bounded(run_cli, tmp_path):
    out = tmp_path / "OUT"
    for args, message in (
        (("--dim", "batch=1:1:99999999999999999999"), "integers from 1 to 2147483647"),
        (("--dim", "batch=1:1:1000000000"), "largest declared sizes"),
    ):
        code, _, err = run_cli("build", "--model", tmp_path / "m.onnx", "--input", "x:float32[batch,16]", *args,
                               "-t", "ort-cpu", "-p", "fp32", "-o", out)
        assert code == 2 and message in err and "Traceback" not in err, err
    code, _, err = run_cli("build", "--model", tmp_path / "m.onnx", "--input", "x:float32[1,16]@1..2,3",
                           "-t", "ort-cpu", "-p", "fp32", "-o", out)
    assert code == 2 and "Cannot read" in err, err
    assert not out.exists()


def test_backend_options_are_declared_by_the_backend_that_reads_them(tmp_path):
    """Every shipped target file's [options] are keys its backend declares; a valid recipe option passes and is
    merged; a misspelt one names the closest declared key (for each of the three backends)."""
    from edgeopt.backends import check_recipe_options, check_target_options, get_backend
    from edgeopt.core.targets import load_targets
    from edgeopt.errors import UserInputError

    targets = list(load_targets().values())
    for t in targets:
        check_target_options(t)
    for backend, good, typo, near in (("onnxruntime", "intra_op_threads", "intra_op_thread", "intra_op_threads"),
                                      ("openvino", "performance_hint", "perfomance_hint", "performance_hint"),
                                      ("tensorrt", "dla_core", "dla_cores", "dla_core")):
        assert good in {o.name for o in get_backend(backend).options}
        value = "LATENCY" if good == "performance_hint" else 1
        check_recipe_options({backend: {good: value}}, targets)
        with pytest.raises(UserInputError, match=f"Did you mean '{near}'") as e:
            check_recipe_options({backend: {typo: value}}, targets)
        assert good in e.value.fix
