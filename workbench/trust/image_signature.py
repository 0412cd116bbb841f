"""Signed algorithm images: a publisher signs an image's id, a spoke checks it before a run.

The signed payload follows cosign's *simple signing* format::

    {"critical": {"identity": {"docker-reference": "elic/lung-lav950:1.0.0"},
                  "image": {"docker-manifest-digest": "sha256:9b2f..."},
                  "type": "cosign container image signature"},
     "optional": {"signed_at": "2025-01-31T12:00:00+00:00"}}

with one deliberate difference: ``docker-manifest-digest`` holds the image **id** (the
digest of the image's config, ``docker image inspect -f {{.Id}}``), not a registry manifest
digest. The id is what a spoke can recompute from the image it holds, offline, with no
registry in the loop; so these signatures are not interchangeable with cosign's.

A signature file is the sealed envelope of that payload (``signing.seal``)::

    {"payload": {...the payload above...}, "signature": {"key_id": "...", "value": "..."}}

``verify_image`` refuses, with an ``ImageSignatureError`` whose ``reason`` says why: no
signature (``unsigned``), an image whose id is not the signed one (``image_mismatch``: an
image swapped under a signed tag), a signature by a key the spoke does not trust
(``unknown_key``), an altered or forged signature (``bad_signature``), a file that is not a
signature (``malformed``).

>>> import tempfile
>>> from workbench.trust.keys import TrustStore, generate_key
>>> key, trust = generate_key(), TrustStore()
>>> _ = trust.add(key.public_key(), name="publisher")
>>> image_id = "sha256:" + "ab" * 32
>>> path = Path(tempfile.mkdtemp()) / "algo.sig.json"
>>> write_signature(path, sign_image("elic/algo:1.0", image_id, key))
>>> verify_image(path, image_id, trust).reference
'elic/algo:1.0'
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from workbench.errors import CanonicalJSONError, ImageSignatureError, SignatureError
from workbench.trust.canonical import parse_json
from workbench.trust.keys import TrustStore
from workbench.trust.signing import open_sealed, seal

__all__ = [
    "SIGNATURE_TYPE",
    "SignedImage",
    "image_payload",
    "read_signature",
    "sign_image",
    "verify_image",
    "verify_image_signature",
    "write_signature",
]

SIGNATURE_TYPE = "cosign container image signature"
MAX_SIGNATURE_BYTES = 64 * 1024
_IMAGE_ID = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class SignedImage:
    """An image signature that verified: what was signed, and by whom."""

    reference: str
    image_id: str
    key_id: str
    signer: str | None
    optional: dict[str, Any] = field(default_factory=dict)


def image_payload(
    reference: str, image_id: str, optional: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The simple-signing payload naming ``reference`` and the image id ``image_id``.

    Raises:
        ValueError: ``image_id`` is not ``sha256:`` and 64 hex digits, or ``reference`` is
            empty.
    """
    if not _IMAGE_ID.match(image_id):
        raise ValueError(f"not an image id (sha256:<64 hex>): {image_id!r}")
    if not reference:
        raise ValueError("an image reference is required")
    return {
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": image_id},
            "type": SIGNATURE_TYPE,
        },
        "optional": dict(optional or {}),
    }


def sign_image(
    reference: str,
    image_id: str,
    key: Ed25519PrivateKey,
    optional: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The signature document (a sealed payload) for the image ``image_id``.

    Args:
        reference: the name the image is published under (``elic/lung-lav950:1.0.0``).
        image_id: the image's id, ``sha256:...``.
        key: the publisher's private key.
        optional: free annotations (``signed_at``, ``source``); signed, never checked.

    Raises:
        ValueError: as ``image_payload``.
        CanonicalJSONError: ``optional`` holds a value that is not JSON.
    """
    return seal(image_payload(reference, image_id, optional), key)


def write_signature(path: Path | str, document: Mapping[str, Any]) -> None:
    """Write a signature document as JSON, atomically (a reader never sees half a file)."""
    path = Path(path)
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_signature(path: Path | str | None) -> Any:
    """The parsed JSON of a signature file.

    Raises:
        ImageSignatureError: ``unsigned`` when there is no file (or ``path`` is ``None``);
            ``malformed`` when it cannot be read, is too large or is not JSON.
    """
    if path is None:
        raise ImageSignatureError("unsigned", "image refused: it has no signature")
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SIGNATURE_BYTES + 1)
    except FileNotFoundError as e:
        raise ImageSignatureError("unsigned", f"image refused: no signature file {path}") from e
    except OSError as e:
        raise ImageSignatureError(
            "malformed", f"image refused: cannot read {path}: {e.strerror}"
        ) from e
    if len(data) > MAX_SIGNATURE_BYTES:
        raise ImageSignatureError(
            "malformed", f"image refused: {path} is larger than {MAX_SIGNATURE_BYTES} bytes"
        )
    try:
        return parse_json(data)
    except CanonicalJSONError as e:
        raise ImageSignatureError("malformed", f"image refused: {path}: {e}") from e


def verify_image(
    signature_file: Path | str | None,
    image_id: str,
    trust: TrustStore,
    signer: str | None = None,
) -> SignedImage:
    """Check that ``signature_file`` is a trusted signature of the image ``image_id``.

    A spoke calls this before every run, with the id of the image it is about to start
    (``engine.image(reference).id``), so a different image re-tagged under a signed name
    never runs.

    Args:
        signature_file: the signature document; ``None`` or a missing file is ``unsigned``.
        image_id: the local image's id, ``sha256:...``.
        trust: the publisher keys the spoke accepts.
        signer: if given, the key must be trusted under this name.

    Returns:
        What was signed and by which key.

    Raises:
        ImageSignatureError: ``unsigned``, ``image_mismatch``, ``unknown_key``,
            ``wrong_signer``, ``bad_signature`` or ``malformed``.
    """
    document = read_signature(signature_file)
    return verify_image_signature(document, image_id, trust, signer)


def verify_image_signature(
    document: object,
    image_id: str,
    trust: TrustStore,
    signer: str | None = None,
) -> SignedImage:
    """``verify_image`` for a signature document already in memory (sent inside an order).

    Raises:
        ImageSignatureError: as ``verify_image``.
    """
    if not isinstance(document, Mapping):
        raise ImageSignatureError("malformed", "image refused: the signature is not an object")
    try:
        payload = open_sealed(document, trust, signer)
    except SignatureError as e:
        raise ImageSignatureError(
            e.reason, f"image {image_id} refused: {e.detail}", e.key_id
        ) from e
    kid = str(document["signature"]["key_id"])  # open_sealed checked its shape
    reference, signed_id = _critical(payload, kid)
    if signed_id != image_id:
        raise ImageSignatureError(
            "image_mismatch",
            f"image refused: the local image {reference} is {image_id}, but the signature is "
            f"for {signed_id} (a different image under a signed name)",
            kid,
        )
    optional = payload.get("optional") or {}
    return SignedImage(reference, signed_id, kid, trust.name_of(kid), dict(optional))


def _critical(payload: dict[str, Any], kid: str) -> tuple[str, str]:
    """The signed reference and image id; ``malformed`` unless the payload is well formed."""

    def bad(what: str) -> ImageSignatureError:
        return ImageSignatureError("malformed", f"image refused: the signature {what}", kid)

    if set(payload) - {"critical", "optional"} or not isinstance(payload.get("critical"), dict):
        raise bad("payload is not a simple-signing payload")
    if not isinstance(payload.get("optional") or {}, dict):
        raise bad("payload's optional part is not an object")
    critical = payload["critical"]
    if set(critical) != {"identity", "image", "type"} or critical["type"] != SIGNATURE_TYPE:
        raise bad(f"payload's critical part is not of type {SIGNATURE_TYPE!r}")
    identity, image = critical["identity"], critical["image"]
    if not isinstance(identity, dict) or set(identity) != {"docker-reference"}:
        raise bad("names no docker-reference")
    if not isinstance(image, dict) or set(image) != {"docker-manifest-digest"}:
        raise bad("names no image digest")
    reference, signed_id = identity["docker-reference"], image["docker-manifest-digest"]
    if not isinstance(reference, str) or not reference:
        raise bad("names no docker-reference")
    if not isinstance(signed_id, str) or not _IMAGE_ID.match(signed_id):
        raise bad("names no sha256 image id")
    return reference, signed_id
