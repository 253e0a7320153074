"""Typed artifact records: a manifest's records read into :class:`ArtifactRecord` and written back give the same
bytes; a record whose fields are not what edgeopt writes is a clear IntegrityError naming the field."""

from __future__ import annotations

import copy
import json

import pytest

from edgeopt.core.fsutil import write_json_atomic
from edgeopt.core.records import ArtifactRecord, FileRecord, Status, records_of
from edgeopt.errors import IntegrityError


def test_a_real_manifest_round_trips_byte_for_byte(example_out, tmp_path):
    out, _ = example_out
    raw = (out / "manifest.json").read_bytes()
    data = json.loads(raw)
    records = records_of(data)
    assert {r.status for r in records} >= {Status.OK} and all(isinstance(r.status, Status) for r in records)
    write_json_atomic(tmp_path / "again.json", {**data, "artifacts": [r.to_dict() for r in records]})
    assert (tmp_path / "again.json").read_bytes() == raw


def test_typed_fields_of_a_real_record(example_out):
    out, _ = example_out
    data = json.loads((out / "manifest.json").read_text())
    raw = next(a for a in data["artifacts"] if a["id"] == "ort-cpu-fp32")
    rec = ArtifactRecord.from_dict(raw)
    assert rec.ok and rec.status is Status.OK and rec.backend == "onnxruntime" and rec.precision == "fp32"
    assert all(isinstance(f, FileRecord) and len(f.sha256) == 64 and f.bytes > 0 for f in rec.files)
    assert rec.latency_at(1)["median_ms"] > 0 and rec.latency_at(12345) is None
    assert rec.tolerance == raw["parity"]["tolerance"] and rec.parity["passed"] is True
    assert rec.compile_s > 0 and "key" not in rec.extra and rec.to_dict() == raw and list(rec.to_dict()) == list(raw)


def _good() -> dict:
    return {"id": "ort-cpu-fp32", "target": "ort-cpu", "backend": "onnxruntime", "device": "CPU", "precision": "fp32",
            "status": "ok", "reason": None, "files": [{"path": "ort-cpu-fp32/model.onnx", "sha256": "0" * 64,
                                                       "bytes": 10}],
            "latency": [{"batch": 1, "median_ms": 1.5, "p99_ms": 2.0}], "flags": ["slower than torch eager"],
            "custom": {"kept": [1, 2]}}


@pytest.mark.parametrize("field, value, message", [
    ("status", "great", "status 'great' is not one this edgeopt knows"),
    ("status", 1, "status must be short printable text"),
    ("id", "", "id must be short printable text"),
    ("files", "x", "files is not a list of records"),
    ("files", [{"path": 1, "sha256": "0" * 64}], "lacks its path or sha256"),
    ("files", [{"path": "a", "sha256": "0" * 64, "bytes": -1}], "not a byte count"),
    ("latency", [{"batch": "1", "median_ms": 1.0}], "latency is not a list of rows"),
    ("latency", [{"batch": 1, "median_ms": "fast"}], "latency is not a list of rows"),
    ("parity", [], "parity is not a table"),
    ("flags", "slow", "flags is not a list of text"),
    ("reason", 3, "reason is not text"),
    ("reused", "yes", "reused is not true or false"),
    ("threads", 1.5, "threads is not a number"),
    ("layers", [1], "layers is not a table"),
])
def test_bad_fields_are_refused_by_name(field, value, message):
    data = _good()
    data[field] = value
    with pytest.raises(IntegrityError, match=message):
        ArtifactRecord.from_dict(data)


def test_missing_fields_and_non_records_are_refused():
    data = _good()
    del data["files"]
    with pytest.raises(IntegrityError, match=r"lacks \['files'\]"):
        ArtifactRecord.from_dict(data)
    with pytest.raises(IntegrityError, match="not a list of records"):
        ArtifactRecord.from_dict(["ort-cpu-fp32"])


def test_unknown_keys_and_order_are_kept():
    data = _good()
    rec = ArtifactRecord.from_dict(copy.deepcopy(data))
    assert rec.extra == {"custom": {"kept": [1, 2]}} and rec.flags == ("slower than torch eager",)
    assert json.dumps(rec.to_dict()) == json.dumps(data)
    data["latency"] = None  # recorded as null: written back as null, not as []
    assert ArtifactRecord.from_dict(data).to_dict()["latency"] is None


def test_a_record_made_in_code_writes_its_set_fields():
    rec = ArtifactRecord(id="a-fp32", target="a", backend="onnxruntime", precision="fp32", status=Status.FAILED,
                         reason="no", files=(FileRecord("a-fp32/x", "1" * 64, 0),))
    assert rec.to_dict() == {"id": "a-fp32", "target": "a", "backend": "onnxruntime", "precision": "fp32",
                             "status": "failed", "files": [{"path": "a-fp32/x", "sha256": "1" * 64, "bytes": 0}],
                             "reason": "no"}
    assert ArtifactRecord.from_dict(rec.to_dict()) == rec
