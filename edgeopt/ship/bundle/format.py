"""What a bundle is: its names, schema, limits and errors, and the file records its manifest holds.

Numpy only: this runs on devices without torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from edgeopt.errors import EdgeoptError, IntegrityError
from edgeopt.core.fsutil import json_default
from edgeopt.core.manifest import MANIFEST
from edgeopt.core.untrusted import printable, relpath_problem


BUNDLE_SCHEMA = "edgeopt.bundle/1"


SIGNATURE = "manifest.sig"


SUFFIXES = (".edgeopt.tar.gz", ".tar.gz", ".tgz")


CONTROL_FILES = (MANIFEST, SIGNATURE)  # in the bundle but not in its file list


_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


GET_AGAIN = "Do not use this copy: get the bundle again from its source and compare its sha256 with the sender's."


MAX_CONTROL_BYTES = {MANIFEST: 16 << 20, SIGNATURE: 64 << 10}


class SignatureNotCheckedWarning(UserWarning):
    """A bundle carries a signature that was not checked (no public key given)."""


class SignatureError(IntegrityError):
    """The signature is missing, malformed, or not by the key given."""


class IncompatibleError(EdgeoptError):
    """A bundle's artifact cannot run on this device (backend, version, GPU); the fix says what to rebuild."""

    exit_code = 8


@dataclass(frozen=True)
class Limits:
    """What extraction accepts from an archive."""

    max_member_bytes: int = 8 << 30  # one file
    max_total_bytes: int = 32 << 30  # all files
    max_members: int = 10_000
    max_name_chars: int = 1024


def dumps(obj) -> bytes:
    return (json.dumps(obj, indent=2, default=json_default) + "\n").encode()


def safe_relpath(name: str, where: str) -> str:
    """``name`` as a relative POSIX path that stays inside its folder, or :class:`IntegrityError`."""
    bad = relpath_problem(name)
    if bad:
        raise IntegrityError(f"Refused {where} entry {printable(name, 200)!r}: {bad}.",
                             "`edgeopt bundle` writes only relative paths inside one folder: this was not made by it "
                             "or was altered. " + GET_AGAIN)
    return PurePosixPath(name).as_posix()


def file_record_ok(f) -> bool:
    return (isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)
            and bool(_SHA_RE.match(f["sha256"])) and isinstance(f.get("bytes"), int) and f["bytes"] >= 0)


def model_files(manifest: dict) -> list[dict]:
    """Files the model record ships besides the artifacts (the text tokenizer)."""
    tok = (manifest.get("model") or {}).get("tokenizer")
    if isinstance(tok, dict) and isinstance(tok.get("path"), str) and isinstance(tok.get("sha256"), str):
        return [{"path": tok["path"], "sha256": tok["sha256"]}]
    return []
