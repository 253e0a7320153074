"""Calibration and evaluation data: every source, the seeded subset and its hash, and every bad input."""

from __future__ import annotations

import contextlib
import inspect
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgeopt.data.dataset import DataConfig, Dataset, Preprocess, load_dataset
from edgeopt.errors import DataError, UserInputError
from edgeopt.core.spec import Dim, IOSpec, TensorSpec

Image = pytest.importorskip("PIL.Image")


# ---- helpers ----------------------------------------------------------------------------------

def image_spec(c=3, h=8, w=8, layout="NCHW", dtype="float32") -> IOSpec:
    shape = ("batch", c, h, w) if layout == "NCHW" else ("batch", h, w, c)
    return IOSpec((TensorSpec("image", shape, dtype),), {"batch": Dim("batch", 1, 1, 32)})


def text_spec(names=("input_ids", "attention_mask", "token_type_ids"), seq=Dim("seq", 4, 12, 16)) -> IOSpec:
    return IOSpec(tuple(TensorSpec(n, ("batch", "seq"), "int64") for n in names),
                  {"batch": Dim("batch", 1, 1, 8), "seq": seq})


def cfg(source, tmp_path, **kw) -> DataConfig:
    return DataConfig(source=str(source), base_dir=tmp_path, **kw)


def write_images(folder: Path, n: int, size=(8, 8), mode="RGB", start=0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    paths = []
    for i in range(n):
        c = 3 if mode == "RGB" else 1
        arr = rng.integers(0, 256, size=(size[0], size[1], c), dtype=np.uint8)
        img = Image.fromarray(arr if c == 3 else arr[..., 0], mode)
        p = folder / f"img{start + i:03d}.png"
        img.save(p)
        paths.append(p)
    return paths


@contextlib.contextmanager
def raises(exc_type, *fragments):
    """pytest.raises that also checks the message names every fragment and that a fix is given."""
    with pytest.raises(exc_type) as info:
        yield info
    text = str(info.value)
    for f in fragments:
        assert f in text, f"{f!r} not in {text!r}"
    assert info.value.fix, "every data error says how to fix it"


@pytest.fixture()
def npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((40, 3, 8, 8)).astype(np.float32)
    y = np.arange(40) % 10
    path = tmp_path / "cal.npz"
    np.savez(path, image=x, labels=y)
    return path, x, y


# ---- Preprocess -------------------------------------------------------------------------------

def test_preprocess_round_trip_and_defaults():
    p = Preprocess(resize=10, center_crop=8, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2], channel_order="BGR",
                   layout="NHWC", dtype="float16")
    assert p.center_crop == (8, 8) and p.mean == (0.5, 0.4, 0.3)
    d = p.to_dict()
    assert d["center_crop"] == [8, 8] and "interpolation" in d
    assert Preprocess.from_dict(d) == p
    assert Preprocess.from_dict({}) == Preprocess()


@pytest.mark.parametrize("bad, fragment", [
    ({"resize": 0}, "resize"), ({"resize": [8]}, "resize"), ({"center_crop": "8"}, "center_crop"),
    ({"channel_order": "RGBA"}, "channel_order"), ({"layout": "CHW"}, "layout"), ({"dtype": "bool"}, "dtype"),
    ({"std": [0.1, 0.0, 0.1]}, "std"), ({"mean": [0.1, 0.2]}, "mean"), ({"scale": 0}, "scale"),
    ({"interpolation": "cubic"}, "interpolation"), ({"colour": "RGB"}, "'colour'"),
])
def test_preprocess_rejects_bad_settings(bad, fragment):
    with raises(UserInputError, fragment):
        Preprocess.from_dict(bad)


def test_preprocess_array_without_resize_is_plain_numpy():
    arr = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    p = Preprocess(mean=[0.5], std=[0.25])
    out = p.apply(arr)
    want = ((arr.astype(np.float32) / 255 - 0.5) / 0.25).transpose(2, 0, 1)
    assert out.shape == (3, 6, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    bgr = Preprocess(channel_order="BGR", layout="NHWC", scale=1.0).apply(arr)
    np.testing.assert_array_equal(bgr, arr[..., ::-1].astype(np.float32))
    u8 = Preprocess(dtype="uint8", scale=1.0, layout="NHWC").apply(arr)
    assert u8.dtype == np.uint8 and np.array_equal(u8, arr)


def test_preprocess_resize_crop_gray_and_path(tmp_path):
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    p = Preprocess(resize=10, center_crop=[8, 6])
    assert p.apply(img).shape == (3, 8, 6)  # 20x30 -> 10x15 -> crop 8x6
    assert Preprocess(resize=[12, 7]).apply(img).shape == (3, 12, 7)
    gray = Preprocess(channel_order="L", resize=10, center_crop=8)
    assert gray.apply(img).shape == (1, 8, 8)
    path = tmp_path / "x.png"
    img.save(path)
    np.testing.assert_array_equal(gray.apply(path), gray.apply(img))
    with raises(DataError, "smaller than center_crop"):
        Preprocess(center_crop=25).apply(img)
    with raises(UserInputError, "float64"):
        Preprocess().apply(np.zeros((4, 4, 3)))


def test_preprocess_matches_torchvision():
    tv = pytest.importorskip("torchvision.transforms")
    img = Image.fromarray(np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    ref = tv.Compose([tv.Resize(24), tv.CenterCrop(20), tv.ToTensor(), tv.Normalize(mean, std)])(img).numpy()
    ours = Preprocess(resize=24, center_crop=20, mean=mean, std=std).apply(img)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-5)


# ---- DataConfig -------------------------------------------------------------------------------

def test_dataconfig_from_dict(tmp_path):
    c = DataConfig.from_dict({"source": "cal", "size": "all", "seed": 3, "preprocess": {"resize": 8}},
                             tmp_path, "calibration")
    assert c.size is None and c.seed == 3 and c.preprocess == Preprocess(resize=8)
    assert c.resolve(c.source) == tmp_path / "cal"
    assert c.min_for("calibration") == 10 and c.min_for("evaluation") == 1
    assert DataConfig.from_dict(c.to_dict(), tmp_path) == c
    assert DataConfig.from_dict({"source": "x.npz", "size": None}).size is None


@pytest.mark.parametrize("bad, fragment", [
    ({"source": "x.npz", "sise": 3}, "'sise'"), ({"size": 3}, "no source"), ({"source": ""}, "source"),
    ({"source": "x.npz", "size": 0}, "size"), ({"source": "x.npz", "size": True}, "size"),
    ({"source": "x.npz", "seed": "a"}, "seed"), ({"source": "x", "preprocess": {"bogus": 1}}, "'bogus'"),
    ({"source": "x.npz", "min_samples": 0}, "min_samples"),
])
def test_dataconfig_rejects_bad_keys(tmp_path, bad, fragment):
    with raises(UserInputError, fragment):
        DataConfig.from_dict(bad, tmp_path, "calibration")


# ---- .npz / .npy, subset, hash, warnings -------------------------------------------------------

def test_npz_subset_hash_and_labels(npz, tmp_path):
    path, x, y = npz
    spec = image_spec()
    ds = load_dataset(cfg("cal.npz", tmp_path, size=16, seed=0), spec)
    assert ds.count == 16 and ds.requested == 16 and ds.arrays["image"].shape == (16, 3, 8, 8)
    assert ds.warnings == [] and ds.source == str(path)
    order = np.random.default_rng(0).permutation(40)[:16]
    np.testing.assert_array_equal(ds.arrays["image"], x[order])
    np.testing.assert_array_equal(ds.labels, y[order])
    again = load_dataset(cfg("cal.npz", tmp_path, size=16, seed=0), spec)
    assert again.sha256 == ds.sha256
    other = load_dataset(cfg("cal.npz", tmp_path, size=16, seed=1), spec)
    assert other.sha256 != ds.sha256
    # every sample, reordered by a different seed, is a different (ordered) set too
    assert load_dataset(cfg("cal.npz", tmp_path, size=None, seed=0), spec).sha256 != \
        load_dataset(cfg("cal.npz", tmp_path, size=None, seed=1), spec).sha256
    s = ds.summary()
    assert s["used"] == 16 and s["requested"] == 16 and s["sha256"] == ds.sha256 and s["labels"] is True
    assert s["inputs"] == {"image": {"shape": [3, 8, 8], "dtype": "float32"}}


def test_fewer_than_asked_warns(npz, tmp_path):
    ds = load_dataset(cfg("cal.npz", tmp_path, size=300), image_spec())
    assert ds.count == 40 and ds.requested == 300
    assert len(ds.warnings) == 1 and "300" in ds.warnings[0] and "40" in ds.warnings[0]
    assert ds.summary()["warnings"] == ds.warnings


def test_npz_casts_and_ignores_extra_arrays(tmp_path):
    np.savez(tmp_path / "d.npz", image=np.random.default_rng(0).random((12, 3, 8, 8)), extra=np.zeros(3))
    ds = load_dataset(cfg("d.npz", tmp_path), image_spec())
    assert ds.arrays["image"].dtype == np.float32 and ds.labels is None
    assert any("extra" in w for w in ds.warnings)


def test_npz_int_casts(tmp_path):
    spec = text_spec(("input_ids",))
    np.savez(tmp_path / "ok.npz", input_ids=np.ones((12, 6), np.int32))
    assert load_dataset(cfg("ok.npz", tmp_path), spec).arrays["input_ids"].dtype == np.int64
    spec32 = IOSpec((TensorSpec("input_ids", ("batch", "seq"), "int32"),), spec.dims)
    np.savez(tmp_path / "big.npz", input_ids=np.full((12, 6), 2**40, np.int64))
    with raises(DataError, "big.npz", "do not fit int32"):
        load_dataset(cfg("big.npz", tmp_path), spec32)


def test_npy_one_input(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((15, 8, 8, 1)).astype(np.float32))
    ds = load_dataset(cfg("x.npy", tmp_path, size=10), image_spec(c=1, layout="NHWC"))
    assert ds.arrays["image"].shape == (10, 8, 8, 1)
    two = IOSpec((TensorSpec("a", ("batch", 4)), TensorSpec("b", ("batch", 4))), {"batch": Dim("batch", 1, 1, 4)})
    with raises(DataError, "x.npy", "['a', 'b']"):
        load_dataset(cfg("x.npy", tmp_path), two)


def test_evaluation_min_samples_is_one(tmp_path):
    np.savez(tmp_path / "e.npz", image=np.zeros((2, 3, 8, 8), np.float32), labels=np.array([0, 1]))
    ds = load_dataset(cfg("e.npz", tmp_path), image_spec(), purpose="evaluation")
    assert ds.count == 2 and ds.purpose == "evaluation"
    with raises(DataError, "e.npz", "2 sample", "at least 10"):
        load_dataset(cfg("e.npz", tmp_path), image_spec(), purpose="calibration")


# ---- bad array input --------------------------------------------------------------------------

@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_inf_named_with_file_key_and_sample(tmp_path, value):
    x = np.zeros((20, 3, 8, 8), np.float32)
    x[13, 1, 2, 3] = value
    np.savez(tmp_path / "bad.npz", image=x)
    with raises(DataError, "bad.npz", "'image'", "NaN or Inf", "sample 13"):
        load_dataset(cfg("bad.npz", tmp_path, size=12), image_spec())


def test_float64_overflowing_float16_is_refused(tmp_path):
    np.savez(tmp_path / "o.npz", image=np.full((12, 3, 8, 8), 1e6))
    with raises(DataError, "o.npz", "overflows float16", "sample 0"):
        load_dataset(cfg("o.npz", tmp_path), image_spec(dtype="float16"))


def test_float_into_int_input_is_refused(tmp_path):
    np.savez(tmp_path / "f.npz", input_ids=np.ones((12, 6), np.float32))
    with raises(DataError, "f.npz", "'input_ids'", "float32", "int64"):
        load_dataset(cfg("f.npz", tmp_path), text_spec(("input_ids",)))


def test_non_numeric_is_refused(tmp_path):
    np.savez(tmp_path / "s.npz", image=np.array([["a"] * 8] * 12))
    with raises(DataError, "s.npz", "not numeric"):
        load_dataset(cfg("s.npz", tmp_path), image_spec())


@pytest.mark.parametrize("shape, fragment", [
    ((12, 3, 8, 9), "axis 3 must be 8"), ((12, 3, 8), "3 axes instead of 4"), ((12, 1, 8, 8), "axis 1 must be 3"),
])
def test_shape_mismatch(tmp_path, shape, fragment):
    np.savez(tmp_path / "s.npz", image=np.zeros(shape, np.float32))
    with raises(DataError, "s.npz", fragment):
        load_dataset(cfg("s.npz", tmp_path), image_spec())


def test_dynamic_dims_in_range_and_consistent(tmp_path):
    spec = text_spec(("input_ids", "attention_mask"))
    np.savez(tmp_path / "ok.npz", input_ids=np.ones((12, 10), np.int64), attention_mask=np.ones((12, 10), np.int64))
    assert load_dataset(cfg("ok.npz", tmp_path), spec).count == 12
    np.savez(tmp_path / "long.npz", input_ids=np.ones((12, 20), np.int64), attention_mask=np.ones((12, 20), np.int64))
    with raises(DataError, "long.npz", "(seq) is 20, outside 4..16"):
        load_dataset(cfg("long.npz", tmp_path), spec)
    np.savez(tmp_path / "mix.npz", input_ids=np.ones((12, 10), np.int64), attention_mask=np.ones((12, 8), np.int64))
    with raises(DataError, "mix.npz", "'seq'", "10", "8"):
        load_dataset(cfg("mix.npz", tmp_path), spec)


def test_missing_input_named(tmp_path):
    spec = text_spec(("input_ids", "attention_mask"))
    np.savez(tmp_path / "m.npz", input_ids=np.ones((12, 6), np.int64))
    with raises(DataError, "m.npz", "['attention_mask']"):
        load_dataset(cfg("m.npz", tmp_path), spec)


def test_label_count_mismatch(tmp_path):
    np.savez(tmp_path / "l.npz", image=np.zeros((12, 3, 8, 8), np.float32), labels=np.zeros(11, np.int64))
    with raises(DataError, "l.npz", "11 labels", "12 samples"):
        load_dataset(cfg("l.npz", tmp_path), image_spec(), purpose="evaluation")


def test_sample_counts_differ_between_inputs(tmp_path):
    np.savez(tmp_path / "c.npz", input_ids=np.ones((12, 6), np.int64), attention_mask=np.ones((11, 6), np.int64))
    with raises(DataError, "c.npz", "different numbers of samples"):
        load_dataset(cfg("c.npz", tmp_path), text_spec(("input_ids", "attention_mask")))


def test_too_few_samples_and_size_below_minimum(tmp_path):
    np.savez(tmp_path / "few.npz", image=np.zeros((4, 3, 8, 8), np.float32))
    with raises(DataError, "few.npz", "4 sample", "at least 10", "min_samples"):
        load_dataset(cfg("few.npz", tmp_path), image_spec())
    assert load_dataset(cfg("few.npz", tmp_path, min_samples=4), image_spec()).count == 4
    with raises(UserInputError, "size = 5", "min_samples = 10"):
        load_dataset(cfg("few.npz", tmp_path, size=5), image_spec())


@pytest.mark.parametrize("content, fragment", [(b"not a zip", "Cannot read"), (None, "holds no arrays")])
def test_unreadable_or_empty_npz(tmp_path, content, fragment):
    path = tmp_path / "u.npz"
    if content is None:
        np.savez(path)
    else:
        path.write_bytes(content)
    with raises(DataError, "u.npz", fragment):
        load_dataset(cfg("u.npz", tmp_path), image_spec())


def test_unreadable_npy_and_object_npz(tmp_path):
    (tmp_path / "u.npy").write_bytes(b"\x93NUMPY garbage")
    with raises(DataError, "u.npy", "Cannot read"):
        load_dataset(cfg("u.npy", tmp_path), image_spec())
    np.savez(tmp_path / "o.npz", image=np.array([{"a": 1}] * 12, dtype=object))
    with raises(DataError, "o.npz", "Cannot read"):
        load_dataset(cfg("o.npz", tmp_path), image_spec())


def test_missing_or_unknown_source(tmp_path):
    with raises(DataError, "nothere.npz", "does not exist"):
        load_dataset(cfg("nothere.npz", tmp_path), image_spec())
    (tmp_path / "x.csv").write_text("1,2\n")
    with raises(DataError, "x.csv", ".csv"):
        load_dataset(cfg("x.csv", tmp_path), image_spec())
    with raises(UserInputError, "'nope'"):
        load_dataset(cfg("x.csv", tmp_path, input="nope"), image_spec())


# ---- image folders ----------------------------------------------------------------------------

def test_flat_image_folder(tmp_path):
    write_images(tmp_path / "imgs", 14)
    ds = load_dataset(cfg("imgs", tmp_path, size=12), image_spec())
    assert ds.count == 12 and ds.labels is None and ds.classes is None
    x = ds.arrays["image"]
    assert x.shape == (12, 3, 8, 8) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert load_dataset(cfg("imgs", tmp_path, size=12), image_spec()).sha256 == ds.sha256


def test_class_folders_give_labels(tmp_path):
    root = tmp_path / "eval"
    write_images(root / "dog", 3, start=0)
    write_images(root / "cat", 2, start=10)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "emu").mkdir()
    ds = load_dataset(cfg("eval", tmp_path), image_spec(), purpose="evaluation")
    assert ds.classes == ["cat", "dog", "emu"] and ds.count == 5
    assert sorted(ds.labels.tolist()) == [0, 0, 1, 1, 1]
    assert any("emu" in w for w in ds.warnings)
    assert ds.summary()["classes"] == ["cat", "dog", "emu"]
    # the label follows its image through the shuffle
    by_pixels = {}
    for cls_i, cls in enumerate(["cat", "dog"]):
        for p in sorted((root / cls).glob("*.png")):
            by_pixels[Preprocess().apply(Image.open(p)).tobytes()] = cls_i
    for x, lab in zip(ds.arrays["image"], ds.labels):
        assert by_pixels[x.tobytes()] == lab
    ds.check_labels(3)
    with raises(DataError, "3 class folders", "2 outputs"):
        ds.check_labels(2)


def test_check_labels_out_of_range(tmp_path):
    ds = Dataset.from_arrays({"x": np.zeros((3, 2), np.float32)}, np.array([0, 4, 1]))
    with raises(DataError, "0..4", "3 outputs"):
        ds.check_labels(3)
    ds.check_labels(5)


def test_images_with_preprocess_resize_crop_nhwc_gray(tmp_path):
    write_images(tmp_path / "big", 10, size=(20, 30))
    pre = Preprocess(resize=10, center_crop=8, channel_order="L", layout="NHWC", mean=[0.5], std=[0.5])
    ds = load_dataset(cfg("big", tmp_path, preprocess=pre), image_spec(c=1, layout="NHWC"))
    assert ds.arrays["image"].shape == (10, 8, 8, 1)
    assert -1 <= ds.arrays["image"].min() and ds.arrays["image"].max() <= 1


def test_image_wrong_size_without_resize(tmp_path):
    write_images(tmp_path / "big", 10, size=(20, 30))
    with raises(DataError, "big/img0", "20x30", "8x8", "resize = 8 and center_crop = [8, 8]"):
        load_dataset(cfg("big", tmp_path), image_spec())
    # resize alone keeps the aspect ratio: still not 8x8
    with raises(DataError, "8x12"):
        load_dataset(cfg("big", tmp_path, preprocess=Preprocess(resize=8)), image_spec())


def test_image_wrong_channel_count(tmp_path):
    write_images(tmp_path / "gray", 10, mode="L")
    with raises(DataError, "img0", "grayscale", "3 channel", "channel_order"):
        load_dataset(cfg("gray", tmp_path), image_spec())
    # an explicit preprocess converts them
    ds = load_dataset(cfg("gray", tmp_path, preprocess=Preprocess(channel_order="RGB")), image_spec())
    assert ds.arrays["image"].shape == (10, 3, 8, 8)
    # an explicit preprocess that gives the wrong channel count for the input
    write_images(tmp_path / "rgb", 10)
    with raises(DataError, "gives 1 channel", "channel_order"):
        load_dataset(cfg("rgb", tmp_path, preprocess=Preprocess(channel_order="L")), image_spec())
    with raises(DataError, "layout"):
        load_dataset(cfg("rgb", tmp_path, preprocess=Preprocess(layout="NHWC")), image_spec())


def test_images_of_different_sizes_for_dynamic_input(tmp_path):
    spec = IOSpec((TensorSpec("image", ("batch", 3, "h", "w")),),
                  {"batch": Dim("batch", 1, 1, 4), "h": Dim("h", 4, 8, 64), "w": Dim("w", 4, 8, 64)})
    write_images(tmp_path / "mixed", 6, size=(8, 8))
    write_images(tmp_path / "mixed", 6, size=(16, 8), start=6)
    with raises(DataError, "same size"):
        load_dataset(cfg("mixed", tmp_path, size=None), spec)
    ds = load_dataset(cfg("mixed", tmp_path, preprocess=Preprocess(resize=[10, 12])), spec)
    assert ds.arrays["image"].shape == (12, 3, 10, 12)


def test_image_uint8_input_and_float_preprocess(tmp_path):
    write_images(tmp_path / "imgs", 10)
    ds = load_dataset(cfg("imgs", tmp_path), image_spec(layout="NHWC", dtype="uint8"))
    assert ds.arrays["image"].dtype == np.uint8
    with raises(UserInputError, "dtype", "uint8"):
        load_dataset(cfg("imgs", tmp_path, preprocess=Preprocess(layout="NHWC")),
                     image_spec(layout="NHWC", dtype="uint8"))


def test_empty_unreadable_and_mixed_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with raises(DataError, "empty", "holds no images"):
        load_dataset(cfg("empty", tmp_path), image_spec())
    write_images(tmp_path / "corrupt", 11)
    (tmp_path / "corrupt" / "img005.png").write_bytes(b"\x89PNG truncated")
    with raises(DataError, "img005.png", "Cannot read the image"):
        load_dataset(cfg("corrupt", tmp_path, size=None), image_spec())
    write_images(tmp_path / "mixed", 10)
    write_images(tmp_path / "mixed" / "cls", 2)
    with raises(DataError, "mixes images"):
        load_dataset(cfg("mixed", tmp_path), image_spec())


def test_image_folder_feeds_one_input_only(tmp_path):
    write_images(tmp_path / "imgs", 10)
    two = IOSpec((TensorSpec("image", ("batch", 3, 8, 8)), TensorSpec("scale", ("batch", 1))),
                 {"batch": Dim("batch", 1, 1, 4)})
    with raises(DataError, "image folder", "['image', 'scale']"):
        load_dataset(cfg("imgs", tmp_path), two)


# ---- Python callables -------------------------------------------------------------------------

GEN = '''
import numpy as np

def batches():
    rng = np.random.default_rng(0)
    for b in range(4):
        yield {"image": rng.random((5, 3, 8, 8)), "labels": np.arange(5) + b}

def as_list():
    return [{"image": np.zeros((6, 3, 8, 8), np.float32)} for _ in range(2)]

def boom():
    yield {"image": np.zeros((6, 3, 8, 8), np.float32)}
    raise RuntimeError("disk on fire")

def missing():
    yield {"pixels": np.zeros((6, 3, 8, 8), np.float32)}

def not_dict():
    yield np.zeros((6, 3, 8, 8))

def nothing():
    return []

def ragged_labels():
    yield {"image": np.zeros((6, 3, 8, 8), np.float32), "labels": np.zeros(6)}
    yield {"image": np.zeros((6, 3, 8, 8), np.float32)}

def nan():
    x = np.zeros((12, 3, 8, 8), np.float32)
    x[7] = np.nan
    yield {"image": x}
'''


def test_callable_from_file(tmp_path):
    (tmp_path / "gen.py").write_text(GEN)
    ds = load_dataset(cfg("gen.py:batches", tmp_path, size=None), image_spec(), purpose="evaluation")
    assert ds.count == 20 and ds.arrays["image"].dtype == np.float32 and ds.labels.shape == (20,)
    assert load_dataset(cfg("gen.py:as_list", tmp_path), image_spec()).count == 12


def test_callable_from_module(tmp_path):
    pkg = tmp_path / "mydata"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "calib.py").write_text(GEN)
    ds = load_dataset(cfg("mydata.calib:batches", tmp_path, size=12), image_spec())
    assert ds.count == 12 and ds.source == "mydata.calib:batches"


@pytest.mark.parametrize("func, fragments", [
    ("boom", ["gen.py:boom", "RuntimeError", "disk on fire"]),
    ("missing", ["batch 0", "['image']"]),
    ("not_dict", ["batch 0", "not a dict"]),
    ("nothing", ["yielded nothing"]),
    ("ragged_labels", ["batch 1", "lacks", "'labels'"]),
    ("nan", ["gen.py:nan", "NaN or Inf", "sample 7"]),
    ("absent", ["has no function 'absent'"]),
])
def test_callable_bad_input(tmp_path, func, fragments):
    (tmp_path / "gen.py").write_text(GEN)
    with raises(DataError, *fragments):
        load_dataset(cfg(f"gen.py:{func}", tmp_path, size=None, min_samples=1), image_spec())


def test_callable_import_errors(tmp_path):
    with raises(DataError, "no_such_pkg_xyz"):
        load_dataset(cfg("no_such_pkg_xyz.mod:fn", tmp_path), image_spec())
    with raises(DataError, "gone.py", "does not exist"):
        load_dataset(cfg("gone.py:fn", tmp_path), image_spec())
    (tmp_path / "broken.py").write_text("import nonexistent_module_xyz\n")
    with raises(DataError, "broken.py", "ModuleNotFoundError"):
        load_dataset(cfg("broken.py:fn", tmp_path), image_spec())


# ---- text + tokenizer -------------------------------------------------------------------------

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran"]


@pytest.fixture()
def tokenizer_dir(tmp_path, monkeypatch):
    """A tiny BERT WordPiece tokenizer saved locally; HOME and the HF caches point into tmp_path."""
    home = tmp_path / "home"
    home.mkdir()
    for var, sub in [("HOME", "home"), ("HF_HOME", "hf"), ("HF_HUB_CACHE", "hf/hub"),
                     ("TRANSFORMERS_CACHE", "hf/transformers"), ("XDG_CACHE_HOME", "cache")]:
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    transformers = pytest.importorskip("transformers")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    cls = transformers.BertTokenizerFast
    params = inspect.signature(cls.__init__).parameters
    tok = cls(vocab={w: i for i, w in enumerate(WORDS)}) if "vocab" in params else cls(vocab_file=str(vocab))
    folder = tmp_path / "tok"
    tok.save_pretrained(str(folder))
    yield folder
    assert not any(home.iterdir()), "nothing is written under HOME"


def write_lines(path: Path, n: int) -> Path:
    sents = ["the cat sat on the mat", "a dog ran", "the dog sat", "a cat ran on a mat on a mat on the mat again"]
    path.write_text("\n".join(sents[i % len(sents)] for i in range(n)) + "\n\n")
    return path


def test_text_with_tokenizer(tmp_path, tokenizer_dir):
    write_lines(tmp_path / "lines.txt", 14)
    spec = text_spec()
    ds = load_dataset(cfg("lines.txt", tmp_path, tokenizer="tok", max_length=10), spec)
    assert set(ds.arrays) == {"input_ids", "attention_mask", "token_type_ids"} and ds.count == 14
    for a in ds.arrays.values():
        assert a.dtype == np.int64 and a.shape == (14, 10)
    assert (ds.arrays["input_ids"][:, 0] == WORDS.index("[CLS]")).all()
    assert WORDS.index("cat") in ds.arrays["input_ids"]
    # default length: the seq axis' opt value
    assert load_dataset(cfg("lines.txt", tmp_path, tokenizer="tok"), spec).arrays["input_ids"].shape == (14, 12)
    # tokenizer outputs the model does not take are dropped with a warning
    small = load_dataset(cfg("lines.txt", tmp_path, tokenizer="tok"), text_spec(("input_ids", "attention_mask")))
    assert "token_type_ids" not in small.arrays and small.warnings
    # same config, same hash
    assert load_dataset(cfg("lines.txt", tmp_path, tokenizer="tok", max_length=10), spec).sha256 == ds.sha256


def test_text_bad_input(tmp_path, tokenizer_dir):
    write_lines(tmp_path / "lines.txt", 14)
    with raises(DataError, "no tokenizer"):
        load_dataset(cfg("lines.txt", tmp_path), text_spec())
    with raises(DataError, "nope", "does not exist"):
        load_dataset(cfg("lines.txt", tmp_path, tokenizer="nope"), text_spec())
    (tmp_path / "notatok").mkdir()
    with raises(DataError, "notatok", "Cannot load the tokenizer"):
        load_dataset(cfg("lines.txt", tmp_path, tokenizer="notatok"), text_spec())
    with raises(DataError, "position_ids"):
        load_dataset(cfg("lines.txt", tmp_path, tokenizer="tok"), text_spec(("input_ids", "position_ids")))
    with raises(DataError, "outside 4..16"):
        load_dataset(cfg("lines.txt", tmp_path, tokenizer="tok", max_length=20), text_spec())
    (tmp_path / "blank.txt").write_text("\n  \n")
    with raises(DataError, "blank.txt", "holds no text"):
        load_dataset(cfg("blank.txt", tmp_path, tokenizer="tok"), text_spec())
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with raises(DataError, "latin1.txt", "UTF-8"):
        load_dataset(cfg("latin1.txt", tmp_path, tokenizer="tok"), text_spec())


# ---- Dataset ----------------------------------------------------------------------------------

def test_dataset_batches_feeds_iter_and_save(tmp_path):
    x = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    ds = Dataset.from_arrays({"x": x}, np.arange(10), source="mem")
    bs = list(ds.batches(4))
    assert [b[0]["x"].shape[0] for b in bs] == [4, 4, 2] and bs[2][1].tolist() == [8, 9]
    assert len(list(ds.batches(4, drop_last=True))) == 2
    feeds = ds.feeds(n=5, batch_size=2)
    assert [f["x"].shape[0] for f in feeds] == [2, 2, 1]
    assert len(ds.feeds()) == 10 and len(ds) == 10
    assert [f["x"].shape for f in ds] == [(1, 2)] * 10
    with raises(UserInputError, "Batch size"):
        ds.feeds(batch_size=0)
    ds.save_npz(tmp_path / "saved.npz")
    back = load_dataset(cfg("saved.npz", tmp_path, size=None, seed=0),
                        IOSpec((TensorSpec("x", ("batch", 2)),), {"batch": Dim("batch", 1, 1, 4)}))
    order = np.random.default_rng(0).permutation(10)
    np.testing.assert_array_equal(back.arrays["x"], x[order])
    with raises(DataError, "different numbers of samples"):
        Dataset.from_arrays({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))})


def test_readme_examples_parse(tmp_path):
    """The TOML sections in calibration/README.md are accepted by DataConfig.from_dict."""
    from edgeopt.core.resources import import_tomllib

    tomllib = import_tomllib()

    readme = Path(__file__).resolve().parents[1] / "calibration" / "README.md"
    blocks = [b.split("```", 1)[0] for b in readme.read_text().split("```toml")[1:]]
    assert blocks, "the README shows recipe examples"
    for block in blocks:
        data = tomllib.loads(textwrap.dedent(block))
        for section in ("calibration", "evaluation"):
            if section in data:
                DataConfig.from_dict(data[section], tmp_path, section)
