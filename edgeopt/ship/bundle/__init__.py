"""Bundles: the artifacts chosen for shipping, their manifest and the reference data, in one file; and the
checks a device runs before it trusts one.

Layout (a ``NAME.edgeopt.tar.gz`` holds one top folder ``NAME/``; the folder form is that folder)::

    manifest.json            the OUT manifest cut to the chosen artifacts, plus a "bundle" section with
                             the sha256 and size of every other file
    manifest.sig             optional Ed25519 signature of manifest.json's exact bytes (see keys.py)
    reference/reference.npz  reference inputs and outputs for the on-device self-test
    <artifact-id>/...        each artifact folder (backend files + artifact.json)

Writing is atomic and deterministic: the same OUT gives the same bytes (sorted entries, fixed mtime,
uid/gid 0, no gzip timestamp). Reading never trusts the archive: members are checked one by one (no
absolute paths, no ``..``, no links, no devices, size limits) and copied by hand into a staging folder
that is renamed into place only when all of them passed; ``tarfile.extractall`` is never used.

The package: ``format`` (names, schema, limits, errors), ``write`` (:func:`bundle`), ``extract`` (safe
extraction into the cache), ``read`` (:func:`open_bundle` and its checks), ``check`` (compatibility with this
device, the self-test, :func:`verify`). Everything public is re-exported here.

Numpy only at module level: this runs on devices without torch.
"""

from __future__ import annotations

from edgeopt.ship.bundle.format import (
    BUNDLE_SCHEMA, CONTROL_FILES, GET_AGAIN, MAX_CONTROL_BYTES, SIGNATURE, SUFFIXES, IncompatibleError, Limits,
    SignatureError, SignatureNotCheckedWarning, dumps, file_record_ok, model_files, safe_relpath,
)
from edgeopt.ship.bundle.write import bundle, bundle_summary, remove_dead_leftovers
from edgeopt.ship.bundle.extract import (
    EXTRACT_WAIT_S, clean_cache_leftovers, default_cache_dir, discard_refused, extract_cached, safe_extract,
)
from edgeopt.ship.bundle.read import (
    REQUIRE_ENV, UNCHECKED_WARNING, Bundle, expected_files, open_bundle, signature_required,
)
from edgeopt.ship.bundle.check import (
    Compatibility, check_compatibility, installed_version, open_runner, rebuild_fix, refuse_incompatible, report,
    run_self_test, select_records, tolerance_of, verify,
)

__all__ = [
    "BUNDLE_SCHEMA", "CONTROL_FILES", "EXTRACT_WAIT_S", "GET_AGAIN", "MAX_CONTROL_BYTES", "REQUIRE_ENV",
    "SIGNATURE", "SUFFIXES", "UNCHECKED_WARNING", "bundle", "Bundle", "bundle_summary",
    "check_compatibility", "clean_cache_leftovers", "Compatibility", "default_cache_dir", "discard_refused",
    "dumps", "expected_files", "extract_cached", "file_record_ok", "IncompatibleError", "installed_version",
    "Limits", "model_files", "open_bundle", "open_runner", "rebuild_fix", "refuse_incompatible",
    "remove_dead_leftovers", "report", "run_self_test", "safe_extract", "safe_relpath", "select_records",
    "signature_required", "SignatureError", "SignatureNotCheckedWarning", "tolerance_of", "verify",
]
