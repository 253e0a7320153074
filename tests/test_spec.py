import numpy as np
import pytest

from edgeopt.errors import UserInputError
from edgeopt.core.spec import Dim, IOSpec, TensorSpec, parse_dim_arg, parse_input_arg


def bert_spec():
    return IOSpec((TensorSpec("input_ids", ("batch", "seq"), "int64", (0, 100)),
                   TensorSpec("attention_mask", ("batch", "seq"), "int64", (1, 2))),
                  {"batch": Dim("batch", 1, 2, 8), "seq": Dim("seq", 4, 16, 32)})


def test_parse_cli_specs():
    t = parse_input_arg("input_ids:int64[batch,seq]@0,30522")
    assert (t.name, t.dtype, t.shape, t.range) == ("input_ids", "int64", ("batch", "seq"), (0.0, 30522.0))
    assert parse_input_arg("image:float32[1,3,224,224]").shape == (1, 3, 224, 224)
    assert parse_dim_arg("batch=1:8:32") == Dim("batch", 1, 8, 32)
    assert parse_dim_arg("seq=1:128") == Dim("seq", 1, 1, 128)
    for bad in ("image", "x:float32", "x:complex64[1]"):
        with pytest.raises(UserInputError):
            parse_input_arg(bad)
    with pytest.raises(UserInputError, match="min <= opt <= max"):
        parse_dim_arg("batch=8:1:32")


def test_undeclared_dynamic_axis_is_refused():
    with pytest.raises(UserInputError, match=r"dims\.seq"):
        IOSpec((TensorSpec("x", ("batch", "seq")),), {"batch": Dim("batch", 1, 1, 4)})


def test_random_feed_respects_ranges_and_batch():
    spec = bert_spec()
    feed = spec.random_feed(np.random.default_rng(0), batch=4)
    assert feed["input_ids"].shape == (4, 16) and feed["input_ids"].dtype == np.int64
    assert feed["input_ids"].min() >= 0 and feed["input_ids"].max() < 100
    assert np.all(feed["attention_mask"] == 1)
    with pytest.raises(UserInputError, match="outside the declared range"):
        spec.random_feed(np.random.default_rng(0), batch=9)


def test_check_feed_names_the_problem():
    spec = bert_spec()
    good = spec.random_feed(np.random.default_rng(0))
    spec.check_feed(good)
    with pytest.raises(UserInputError, match="missing"):
        spec.check_feed({"input_ids": good["input_ids"]})
    with pytest.raises(UserInputError, match="dtype float32"):
        spec.check_feed({**good, "input_ids": good["input_ids"].astype(np.float32)})
    with pytest.raises(UserInputError, match="outside 4..32"):
        spec.check_feed({k: v[:, :2] for k, v in good.items()})
    with pytest.raises(UserInputError, match="axis 'seq' is"):
        spec.check_feed({**good, "attention_mask": good["attention_mask"][:, :5]})


def test_spec_round_trips_through_dict():
    spec = bert_spec()
    assert IOSpec.from_dict(spec.to_dict()) == spec
    assert spec.batch_dim == "batch" and spec.batch_range() == (1, 8)
