"""Ed25519 keys and signatures for bundles, through the ``cryptography`` library (no hand-written crypto).

A signature covers the exact bytes of a bundle's ``manifest.json``; the manifest holds the sha256 of every
other file in the bundle, so one signature vouches for all of them. ``cryptography`` is imported inside
functions: bundles that are not signed, and devices that do not check signatures, do not need it.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from edgeopt.errors import IntegrityError, UserInputError, require
from edgeopt.core.fsutil import sha256_bytes, write_bytes_atomic

ALGORITHM = "ed25519"
EXTRA = "sign"  # edgeopt's pip extra that installs cryptography


def _crypto():
    require("cryptography", EXTRA, "sign bundles or check their signatures")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


# ---- key files ---------------------------------------------------------------------------------

def public_key_path(private_path: str | Path) -> Path:
    """Where :func:`generate_key` puts the public half: ``signing.key`` -> ``signing.pub``."""
    p = Path(private_path)
    pub = p.with_suffix(".pub")
    return pub if pub != p else p.with_name(p.name + ".pub")


def generate_key(path: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 private key (PKCS#8 PEM, mode 0600) at ``path`` and its public key (PEM) beside it.

    Returns (private key path, public key path). Refuses to replace existing files unless ``force``.
    """
    serialization, ed25519 = _crypto()
    path, pub = Path(path), public_key_path(path)
    existing = [p for p in (path, pub) if p.exists()]
    if existing and not force:
        raise UserInputError(f"{existing[0]} already exists.",
                             "Choose another path, or pass --force to replace the key pair (the old private key "
                             "is then lost and bundles signed with it can only be checked with its public key).")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    write_bytes_atomic(path, private_pem, mode=0o600)  # owner only, from creation on
    write_bytes_atomic(pub, public_pem)
    return path, pub


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UserInputError(f"Cannot read the {what} {path}: {exc.strerror or exc}.",
                             "Check the path (make a key pair with `edgeopt keygen KEYFILE`).") from None


def load_private_key(path: str | Path, password: bytes | None = None):
    """The Ed25519 private key in a PEM file, or a clear error."""
    serialization, ed25519 = _crypto()
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as exc:
        raise UserInputError(f"{path} is not a readable PEM private key ({exc}).",
                             "Pass the private key file written by `edgeopt keygen` (not the .pub file); "
                             "keys protected by a passphrase are not supported.") from None
    except Exception as exc:  # noqa: BLE001 - cryptography's UnsupportedAlgorithm
        raise UserInputError(f"{path}: {exc}.", "Use an Ed25519 key made by `edgeopt keygen`.") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UserInputError(f"{path} holds a {type(key).__name__}, not an Ed25519 key.",
                             "Make an Ed25519 key pair with `edgeopt keygen KEYFILE`.")
    return key


def load_public_key(key):
    """An Ed25519 public key from a path (PEM or OpenSSH ``ssh-ed25519 ...``), PEM bytes, or a key object."""
    serialization, ed25519 = _crypto()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    where = "the public key" if isinstance(key, (bytes, bytearray)) else str(key)
    data = bytes(key) if isinstance(key, (bytes, bytearray)) else _read(key, "public key")
    if b"PRIVATE KEY" in data:
        raise UserInputError(f"{where} is a private key.",
                             "Pass the public key (the .pub file beside it); keep the private key off devices.")
    try:
        if data.lstrip().startswith(b"ssh-ed25519"):
            pub = serialization.load_ssh_public_key(data.strip())
        else:
            pub = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise UserInputError(f"{where} is not a readable public key ({exc}).",
                             "Pass the .pub file written by `edgeopt keygen`.") from None
    except Exception as exc:  # noqa: BLE001 - UnsupportedAlgorithm
        raise UserInputError(f"{where}: {exc}.", "Use the Ed25519 public key written by `edgeopt keygen`.") from None
    if not isinstance(pub, ed25519.Ed25519PublicKey):
        raise UserInputError(f"{where} is a {type(pub).__name__}, not an Ed25519 public key.",
                             "Use the .pub file written by `edgeopt keygen`.")
    return pub


def key_id(public_key) -> str:
    """A short fingerprint of a public key: the first 16 hex digits of the sha256 of its raw 32 bytes."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_bytes(raw)[:16]


# ---- signatures --------------------------------------------------------------------------------

def sign_bytes(data: bytes, private_key) -> dict:
    """A signature record (JSON-able) over ``data``."""
    return {"algorithm": ALGORITHM, "key_id": key_id(private_key.public_key()),
            "signature": base64.b64encode(private_key.sign(data)).decode("ascii")}


def signature_record_bytes(record: dict) -> bytes:
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def parse_signature_record(data: bytes, where: str) -> dict:
    from edgeopt.core.untrusted import load_json

    rec = load_json(data, where, max_bytes=64 << 10, max_depth=4,
                    fix="Get the bundle again from its source, or sign it again with `edgeopt bundle --sign-key`.")
    try:
        if rec.get("algorithm") != ALGORITHM or not isinstance(rec.get("signature"), str):
            raise ValueError(f"algorithm {rec.get('algorithm')!r}")
        base64.b64decode(rec["signature"], validate=True)
    except (ValueError, AttributeError) as exc:
        raise IntegrityError(f"{where} is not an edgeopt Ed25519 signature record ({exc}).",
                             "Get the bundle again from its source, or sign it again with `edgeopt bundle --sign-key`.") from None
    return rec


def check_signature(data: bytes, record: dict, public_key, what: str = "manifest.json") -> str:
    """Raise :class:`IntegrityError` unless ``record`` is a valid signature of ``data`` by ``public_key``.

    Returns the key id."""
    _crypto()
    from cryptography.exceptions import InvalidSignature

    pub = load_public_key(public_key)
    kid = key_id(pub)
    signed_by = record.get("key_id")
    try:
        pub.verify(base64.b64decode(record["signature"]), data)
    except InvalidSignature:
        if signed_by and signed_by != kid:
            raise IntegrityError(f"The bundle was signed with key {signed_by}; the public key given is {kid}.",
                                 "Check with the public key of whoever signed it, or get the bundle from a "
                                 "source you trust.") from None
        raise IntegrityError(f"The signature does not match {what}: the bundle was changed after it was signed.",
                             "Do not use this copy; get the bundle again from its source.") from None
    return kid
