"""Opening a bundle (archive, bundle folder or OUT folder): its manifest, its signature, and the checks that
its files, artifact folders and reference data are what the manifest says and belong together.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from edgeopt.errors import IntegrityError, UserInputError
from edgeopt.core.fsutil import sha256_file
from edgeopt.core.manifest import MANIFEST, validate
from edgeopt.core.untrusted import check_id, confined, link_leaving, load_json, printable
from edgeopt.core.records import ArtifactRecord, records_of
from edgeopt.ship.bundle.extract import discard_refused, extract_cached
from edgeopt.ship.bundle.format import (
    BUNDLE_SCHEMA, CONTROL_FILES, GET_AGAIN, Limits, SIGNATURE, SignatureError, SignatureNotCheckedWarning,
    file_record_ok, model_files, safe_relpath,
)


REQUIRE_ENV = "EDGEOPT_REQUIRE_SIGNATURE"


UNCHECKED_WARNING = ("the bundle carries a signature but no public key was given, so it was not checked: a "
                     "changed or re-signed bundle is accepted. Pass --public-key KEY.pub (and --require-signature "
                     "or EDGEOPT_REQUIRE_SIGNATURE=1 to refuse unsigned bundles).")


FILES_UNCHECKED_WARNING = ("the signature over the manifest is valid, but the files were not checked against "
                           "it (--no-verify / verify=False): a changed model file is not detected. Leave out "
                           "--no-verify for a signature that vouches for the files.")


LINK_FIX = ("Bundles and OUT folders hold plain files: copy the files in place of the link (or bundle the OUT "
            "again with `edgeopt bundle`). " + GET_AGAIN)


_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class Bundle:
    """An opened bundle (or bundle folder, or OUT folder): where its files are and what its manifest says."""

    source: Path  # what was given
    root: Path  # the folder holding manifest.json
    manifest: dict
    kind: str  # "archive" | "bundle folder" | "OUT folder"
    signature: str = "not signed"
    # "valid": checked with the key given, and every file checked against the signed list; "manifest-only":
    # the signature over the manifest checked, the files not (--no-verify); "unchecked": present, no key
    # given; "unsigned". Only "valid" vouches for what runs.
    signature_state: str = "unsigned"
    files_checked: int = 0
    archive_sha256: str | None = None
    _refs: tuple | None = field(default=None, repr=False)
    _records: list | None = field(default=None, repr=False)

    @property
    def model(self) -> dict:
        return self.manifest.get("model") or {}

    @property
    def artifacts(self) -> list[ArtifactRecord]:
        """The manifest's artifact records, typed (read once; opening checked their shape)."""
        if self._records is None:
            self._records = records_of(self.manifest)
        return self._records

    def artifact_dir(self, artifact_id: str) -> Path:
        """The artifact's folder, refused (with or without the hash checks) where it, or anything in it,
        is a link that leads out of the bundle or OUT folder."""
        path = self.root / check_id(artifact_id, "artifact id", GET_AGAIN)
        bad = link_leaving(path, self.root)
        if bad is not None:
            raise IntegrityError(f"Refused {self.kind} {self.source}: {printable(bad, 200)} is a symbolic link "
                                 "that leads out of it.", LINK_FIX)
        return path

    def artifact_json(self, artifact_id: str) -> dict:
        from edgeopt.core.artifact import read_artifact_json

        return read_artifact_json(self.artifact_dir(artifact_id))

    def reference(self) -> tuple[list[dict], list[dict]]:
        """(feeds, outputs) stored for the self-test."""
        if self._refs is None:
            from edgeopt.core.reference import load_reference

            ref = self.manifest.get("reference") or {}
            path = confined(self.root, safe_relpath(ref.get("path") or "", "manifest"), "reference data", GET_AGAIN)
            try:
                self._refs = load_reference(path)
            except (OSError, ValueError, KeyError) as exc:
                raise IntegrityError(f"The reference data {ref.get('path')} cannot be read: {exc}.", GET_AGAIN) from None
        return self._refs


def signature_required(require: bool | None = None) -> bool:
    """``require`` when given, else the environment: EDGEOPT_REQUIRE_SIGNATURE=1 (true, yes, on) makes every
    bundle need a valid signature; 0 (false, no, off) or unset does not."""
    if require is not None:
        return bool(require)
    raw = os.environ.get(REQUIRE_ENV, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise UserInputError(f"{REQUIRE_ENV}={printable(raw, 40)!r} is not a yes/no value.",
                         f"Set {REQUIRE_ENV}=1 to require signed bundles, or unset it.")


def open_bundle(path: str | Path, public_key=None, check: bool = True, limits: Limits = Limits(),
                cache_dir: str | Path | None = None, require_signature: bool | None = None) -> Bundle:
    """Open a ``.edgeopt.tar.gz`` (safely extracted into the cache), a bundle folder or an OUT folder.

    With ``check``: manifest schema, the signature when ``public_key`` is given, every file's size and
    sha256, no unlisted files or links, and that the manifest, the artifact folders and the reference
    data belong together. Raises :class:`IntegrityError` naming what is wrong.

    ``require_signature`` (default: EDGEOPT_REQUIRE_SIGNATURE): refuse anything without a signature that
    ``public_key`` verifies (unsigned bundles, OUT folders, or no key to check with). Without it, a
    signature that is present but not checked (no key given) is recorded as such and warned about."""
    required = signature_required(require_signature)
    if required and public_key is None:
        raise UserInputError("A valid signature is required (--require-signature or EDGEOPT_REQUIRE_SIGNATURE), "
                             "but no public key was given to check it with.",
                             "Pass the signer's public key: --public-key KEY.pub (Python: public_key=...).")
    check = check or required  # a signature vouches for the files only through their checked hashes
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path} does not exist.",
                             "Give a NAME.edgeopt.tar.gz, a bundle folder or an OUT folder from `edgeopt build`.")
    if path.is_dir():
        b = _open_root(path, path, None, public_key, check, required)
    else:
        root, reused, digest = extract_cached(path, limits, cache_dir)
        for attempt in (1, 2):
            try:
                b = _open_root(path, root, "archive", public_key, check, required)
                break
            except IntegrityError as exc:
                if reused and attempt == 1:  # perhaps a damaged cached copy: extract again, check again
                    root, _, digest = extract_cached(path, limits, cache_dir, fresh=True)
                    continue
                if not isinstance(exc, SignatureError):  # a signature's verdict depends on the key given
                    discard_refused(root, digest)  # a refused archive leaves nothing in the cache
                raise
        b.archive_sha256 = digest
    if b.signature_state == "unchecked":
        warnings.warn(f"{b.source}: {UNCHECKED_WARNING}", SignatureNotCheckedWarning, stacklevel=2)
    elif b.signature_state == "manifest-only":
        warnings.warn(f"{b.source}: {FILES_UNCHECKED_WARNING}", SignatureNotCheckedWarning, stacklevel=2)
    return b


def _open_root(source: Path, root: Path, kind: str | None, public_key, check: bool, required: bool = False) -> Bundle:
    raw = _read_manifest_bytes(source, root)
    data = load_json(raw, f"The manifest of {source}", fix=GET_AGAIN)
    if not isinstance(data, dict):
        raise IntegrityError(f"The manifest of {source} is not a JSON object.", GET_AGAIN)
    if kind is None:
        kind = "bundle folder" if "bundle" in data else "OUT folder"
    elif "bundle" not in data:
        raise IntegrityError(f"{source} holds a manifest without a 'bundle' section: not an edgeopt bundle.",
                             "Make bundles with `edgeopt bundle OUT -o NAME.edgeopt.tar.gz`.")
    b = Bundle(source=source, root=root, manifest=data, kind=kind)
    if kind != "archive":  # a folder: no link out of it, whether its files are checked or not
        bad = link_leaving(root, root)
        if bad is not None:
            raise IntegrityError(f"Refused {kind} {source}: {printable(bad, 200)} is a symbolic link that leads "
                                 "out of it.", LINK_FIX)
    b.signature_state, b.signature = _check_signature(b, raw, public_key, required)
    try:
        _check_schema(b)
        if check:
            b.files_checked = _check_files(b)
            _check_consistency(b)
    except (KeyError, TypeError, AttributeError) as exc:  # a manifest with the right keys but wrong shapes
        raise IntegrityError(f"The manifest of {source} is malformed ({type(exc).__name__}: {exc}).",
                             GET_AGAIN) from None
    if b.signature_state == "valid" and not check:
        # A signature is a claim about files: it holds for them only once each was checked against the
        # signed list. Without the check (--no-verify) it vouches for the manifest alone.
        b.signature_state = "manifest-only"
        b.signature = b.signature.replace("valid (", "valid over the manifest only, files NOT checked (", 1)
    return b


def _read_manifest_bytes(source: Path, root: Path) -> bytes:
    path = root / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise IntegrityError(f"{source} holds no {MANIFEST}: it is not an edgeopt bundle or OUT folder.",
                             "Make bundles with `edgeopt bundle OUT -o NAME.edgeopt.tar.gz`.")
    from edgeopt.core.untrusted import MAX_JSON_BYTES

    if path.stat().st_size > MAX_JSON_BYTES:
        raise IntegrityError(f"The {MANIFEST} of {source} is over the limit of {MAX_JSON_BYTES} bytes.", GET_AGAIN)
    return path.read_bytes()


def _check_signature(b: Bundle, raw: bytes, public_key, required: bool) -> tuple[str, str]:
    """(state, description): state is "valid", "unchecked" (present, no key given) or "unsigned"."""
    from edgeopt.ship.keys import check_signature, parse_signature_record

    sig = b.root / SIGNATURE
    present = b.kind != "OUT folder" and sig.is_file() and not sig.is_symlink()
    if public_key is None:
        return ("unchecked", "present, NOT CHECKED (no public key given)") if present else (
            "unsigned", "not signed")
    if not present:
        what = "an OUT folder, which is never signed" if b.kind == "OUT folder" else "not signed"
        raise SignatureError(f"{b.source} is {what}, and a "
                             + ("valid signature is required." if required else
                                "public key was given to check its signature."),
                             "Ask for a signed bundle (`edgeopt bundle OUT -o NAME --sign-key KEY`)"
                             + ("." if required else ", or leave out --public-key to accept an unsigned one."))
    try:
        if sig.stat().st_size > 64 << 10:
            raise IntegrityError(f"{b.source}: {SIGNATURE} is too large to be a signature record.", GET_AGAIN)
        rec = parse_signature_record(sig.read_bytes(), SIGNATURE)
        return "valid", f"valid (Ed25519 key {check_signature(raw, rec, public_key)})"
    except SignatureError:
        raise
    except IntegrityError as exc:
        raise SignatureError(exc.problem, exc.fix) from None


def _check_schema(b: Bundle) -> None:
    data = b.manifest
    try:
        validate(data)
    except IntegrityError as exc:
        raise IntegrityError(f"{b.source}: {exc.problem}", exc.fix) from None
    if b.kind == "OUT folder":
        if data.get("complete") is False:
            from edgeopt.core.manifest import check_consistent

            check_consistent(b.root, data)  # raises: a build into it stopped before it finished
        return
    sec = data.get("bundle")
    if not isinstance(sec, dict) or sec.get("schema") != BUNDLE_SCHEMA:
        have = sec.get("schema") if isinstance(sec, dict) else sec
        raise IntegrityError(f"{b.source} has bundle schema {have!r}; this edgeopt reads {BUNDLE_SCHEMA}.",
                             "Bundle it again with this edgeopt version, or install the edgeopt version that made "
                             f"it ({data.get('edgeopt_version')}).")
    files = sec.get("files")
    if not isinstance(files, list) or not all(file_record_ok(f) for f in files):
        raise IntegrityError(f"{b.source}: the manifest's bundle.files is malformed.", GET_AGAIN)
    ids = [check_id(a.id, "artifact id", GET_AGAIN) for a in b.artifacts]
    if sec.get("artifacts") != ids or not ids:
        raise IntegrityError(f"{b.source}: bundle.artifacts {sec.get('artifacts')} does not list the manifest's "
                             f"artifacts {ids}.", GET_AGAIN)


def expected_files(b: Bundle) -> dict[str, dict]:
    """path -> {path, sha256, bytes?}: the bundle's file list, or for an OUT folder the files of its
    "ok" artifacts and the reference."""
    data = b.manifest
    if b.kind != "OUT folder":
        return {safe_relpath(f["path"], "manifest"): f for f in data["bundle"]["files"]}
    out = {}
    ref = data.get("reference") or {}
    if ref.get("path"):
        out[safe_relpath(ref["path"], "manifest")] = {"path": ref["path"], "sha256": ref.get("sha256")}
    for f in model_files(data):
        out[safe_relpath(f["path"], "manifest")] = f
    for a in b.artifacts:
        if a.ok:
            for f in a.files:
                out[safe_relpath(f.path, "manifest")] = f.to_dict()
    return out


def _check_files(b: Bundle) -> int:
    files = expected_files(b)
    for rel, f in files.items():
        path = b.root / rel
        bad = link_leaving(path, b.root)  # the file, or a folder above it
        if bad is not None or not path.resolve().is_relative_to(b.root.resolve()):
            raise IntegrityError(f"Refused {b.kind} {b.source}: {printable(bad or rel, 200)} is reached through a "
                                 "link that leads out of it.", LINK_FIX)
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise IntegrityError(f"Bundle file {rel} is not a plain file.", GET_AGAIN)
        if not path.is_file():
            raise IntegrityError(f"Bundle file {rel} is missing (the manifest lists it).",
                                 "The bundle is incomplete or foreign. " + GET_AGAIN)
        size = path.stat().st_size
        if f.get("bytes") is not None and size != f["bytes"]:
            raise IntegrityError(f"Bundle file {rel} has {size} bytes; the manifest says {f['bytes']}: it was "
                                 "changed or truncated.", GET_AGAIN)
        if sha256_file(path) != f.get("sha256"):
            raise IntegrityError(f"Bundle file {rel} does not match its sha256 in the manifest: it was changed "
                                 "after bundling (tampered or damaged).", GET_AGAIN)
    if b.kind != "OUT folder":
        _check_no_extras(b, set(files))
    return len(files)


def _check_no_extras(b: Bundle, listed: set[str]) -> None:
    for dirpath, dirnames, filenames in os.walk(b.root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(b.root).as_posix()
            if path.is_symlink():
                raise IntegrityError(f"Bundle entry {printable(rel, 200)} is a symbolic link; bundles hold plain "
                                     "files only.", GET_AGAIN)
            if name in filenames and rel not in listed and rel not in CONTROL_FILES:
                raise IntegrityError(f"Bundle file {printable(rel, 200)} is not listed in the manifest: the bundle was changed "
                                     "or mixed with another one.", GET_AGAIN)


def _model_spec(model: dict):
    from edgeopt.core.spec import IOSpec

    return IOSpec.from_dict({"inputs": model.get("inputs") or [], "dims": model.get("dims") or {},
                             "outputs": model.get("outputs") or []})


def _check_consistency(b: Bundle) -> None:
    """The manifest, each artifact folder and the reference data describe the same model and build."""
    files = expected_files(b)
    ref = b.manifest.get("reference") or {}
    where = b.source
    if not ref.get("path") or safe_relpath(ref["path"], "manifest") not in files:
        raise IntegrityError(f"{where}: the reference data is not in the bundle.", "Bundle it again with `edgeopt bundle`.")
    if ref.get("sha256") != files[safe_relpath(ref["path"], "manifest")].get("sha256"):
        raise IntegrityError(f"{where}: the reference data's sha256 differs between the manifest's reference and "
                             "file sections (a manifest from another build).", GET_AGAIN)
    try:
        spec = _model_spec(b.model)
    except UserInputError as exc:
        raise IntegrityError(f"{where}: the manifest's model I/O spec is unusable: {exc.problem}", GET_AGAIN) from None
    for rec in b.artifacts:
        _check_artifact_record(b, rec, files, spec)
    _check_reference_fits(b, spec)


def _check_artifact_record(b: Bundle, rec: ArtifactRecord, files: dict, spec) -> None:
    from edgeopt.core.spec import IOSpec

    aid = rec.id
    if not _ID_RE.match(aid):
        raise IntegrityError(f"{b.source}: artifact id {aid!r} is not a plain folder name.", GET_AGAIN)
    if b.kind == "OUT folder" and not rec.ok:
        return
    if not rec.ok:
        raise IntegrityError(f"{b.source}: artifact {aid} has status {rec.status.value!r}; bundles hold ok ones.", GET_AGAIN)
    for f in rec.files:
        rel = safe_relpath(f.path, "manifest")
        if not rel.startswith(aid + "/") or files.get(rel, {}).get("sha256") != f.sha256:
            raise IntegrityError(f"{b.source}: artifact {aid}'s file {rel} does not match the bundle's file list "
                                 "(a manifest from another build).", GET_AGAIN)
    art = b.artifact_json(aid)
    for key in ("id", "backend", "precision"):
        if art.get(key) != getattr(rec, key):
            raise IntegrityError(f"{aid}/artifact.json says {key} {art.get(key)!r}; the manifest says "
                                 f"{getattr(rec, key)!r}: the artifact and the manifest come from different builds.",
                                 GET_AGAIN)
    if rec.key and art.get("key") and rec.key != art["key"]:
        raise IntegrityError(f"{aid}/artifact.json has build key {art['key'][:12]}...; the manifest has "
                             f"{rec.key[:12]}...: the artifact and the manifest come from different builds.", GET_AGAIN)
    try:
        same = IOSpec.from_dict(art["spec"]).to_dict() == spec.to_dict()
    except (KeyError, TypeError, UserInputError):
        same = False
    if not same:
        raise IntegrityError(f"{aid}/artifact.json describes other inputs/outputs than the manifest's model "
                             f"{b.model.get('name')!r}: the artifact is from another model.", GET_AGAIN)


def _check_reference_fits(b: Bundle, spec) -> None:
    feeds, outs = b.reference()
    if not feeds or len(feeds) != len(outs):
        raise IntegrityError(f"{b.source}: the reference data holds no complete samples.", GET_AGAIN)
    for i, feed in enumerate(feeds):
        try:
            spec.check_feed(feed, where=f"reference sample {i}")
        except UserInputError as exc:
            raise IntegrityError(f"{b.source}: the reference inputs do not fit model {b.model.get('name')!r} "
                                 f"({exc.problem}): they are from another model.", GET_AGAIN) from None
    if spec.outputs and any(set(o) - set(spec.outputs) for o in outs):
        raise IntegrityError(f"{b.source}: the reference outputs name outputs the model does not have.", GET_AGAIN)
