"""Ed25519 signatures over a bundle's statement (file sha256 + contents sha256).

Ed25519 through `cryptography` rather than OpenSSF model signing: it works fully offline with a
key pair the operator controls (no Sigstore, no transparency log, nothing to reach), and the
signature can be checked before the bundle is decrypted or unpacked.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from offline_asr.delivery.bundle.errors import BundleError
from offline_asr.delivery.bundle.limits import SIDECAR_LIMIT, read_limited
from offline_asr.errors import OfflineAsrError
from offline_asr.fsutil import sha256_bytes, write_atomic

SIGNATURE_SUFFIX = ".sig"
PUBLIC_KEY_ENV = "OFFLINE_ASR_BUNDLE_PUBLIC_KEY"


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new key pair (private key mode 0600); returns the public key id."""
    if private_path.exists():
        raise OfflineAsrError(f"{private_path} exists; refusing to overwrite a private key")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.write_bytes(private)
    private_path.chmod(0o600)
    public = key.public_key()
    public_path.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key_id(public)


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_bytes(raw)[:16]


def _key_bytes(path: Path, what: str) -> bytes:
    data = read_limited(path, SIDECAR_LIMIT, what)
    if not data.strip():
        raise OfflineAsrError(f"the {what} {path} is empty; copy the key file again")
    return data


def load_private(path: Path) -> Ed25519PrivateKey:
    """The signing key: read before anything is built, so a bad key costs no packing."""
    try:
        key = serialization.load_pem_private_key(_key_bytes(path, "signing key"), password=None)
    except (ValueError, TypeError) as error:
        raise OfflineAsrError(f"cannot read the signing key {path}: {error}") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise OfflineAsrError(f"{path} is not an Ed25519 private key (make one: bundle keygen)")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    """The public key bundles must be signed by; any problem with it is bad input (exit 2)."""
    try:
        key = serialization.load_pem_public_key(_key_bytes(path, "public key"))
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise OfflineAsrError(
            f"{path} is not an Ed25519 public key in PEM form (made by `bundle keygen`)"
        ) from error
    if not isinstance(key, Ed25519PublicKey):
        raise OfflineAsrError(f"{path} is not an Ed25519 public key")
    return key


def public_key_setting(option: str | None, environ: Mapping[str, str]) -> Path | None:
    """The configured public key file, or None when none is configured.

    A setting that is present but empty is an error, never "no key": it would turn the
    signature check off without anyone noticing.
    """
    if option is not None:
        if not option.strip():
            raise OfflineAsrError("--public-key is empty: give the public key file, or leave "
                                  "the option out")  # fmt: skip
        return Path(option)
    value = environ.get(PUBLIC_KEY_ENV)
    if value is None:
        return None
    if not value.strip():
        raise OfflineAsrError(
            f"{PUBLIC_KEY_ENV} is set but empty: set it to the public key file, or unset it "
            "to accept unsigned bundles"
        )
    return Path(value)


def _canonical(statement: dict[str, Any]) -> bytes:
    return json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()


def sign(statement: dict[str, Any], key: Ed25519PrivateKey, out: Path) -> None:
    """Write `out` with the statement, its signature and the signer's key id."""
    signature = base64.b64encode(key.sign(_canonical(statement))).decode()
    body = {"statement": statement, "signature": signature, "key_id": key_id(key.public_key())}
    write_atomic(out, json.dumps(body, indent=2, sort_keys=True) + "\n")


def verify(signature_file: Path, key_path: Path, key: Ed25519PublicKey) -> dict[str, Any]:
    """The signed statement, if `signature_file` was made by the key's owner; else BundleError."""
    if not signature_file.is_file():
        raise BundleError(
            f"no signature {signature_file.name} beside the bundle, but a public key is "
            "configured: signed bundles are required here"
        )
    raw = read_limited(signature_file, SIDECAR_LIMIT, "signature file", BundleError)
    try:
        body = json.loads(raw)
        statement: dict[str, Any] = body["statement"]
        if not isinstance(statement, dict):
            raise TypeError("the statement is not an object")
        key.verify(base64.b64decode(body["signature"]), _canonical(statement))
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise BundleError(f"{signature_file} is not a valid signature file: {error}") from error
    except InvalidSignature as error:
        raise BundleError(
            f"the signature {signature_file.name} does not match the public key {key_path} "
            f"(key id {key_id(key)}): the bundle was not signed by that key, or was altered"
        ) from error
    return statement
