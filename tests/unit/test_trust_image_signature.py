"""Signed algorithm images: the good one runs; swapped, unsigned and untrusted are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from workbench.errors import ImageSignatureError
from workbench.trust.image_signature import (
    SIGNATURE_TYPE,
    sign_image,
    verify_image,
    verify_image_signature,
    write_signature,
)
from workbench.trust.keys import TrustStore, generate_key
from workbench.trust.signing import seal

PUBLISHER = generate_key()
TRUST = TrustStore()
TRUST.add(PUBLISHER.public_key(), name="consortium")
REFERENCE = "elic/lung-lav950:1.0.0"
IMAGE_ID = "sha256:" + "9b" * 32
SWAPPED_ID = "sha256:" + "c4" * 32


def _signed(tmp_path: Path, key: Ed25519PrivateKey = PUBLISHER) -> Path:
    path = tmp_path / "lung.sig.json"
    write_signature(path, sign_image(REFERENCE, IMAGE_ID, key, {"signed_at": "2025-01-31"}))
    return path


def test_a_signed_image_verifies_and_says_what_was_signed(tmp_path: Path) -> None:
    path = _signed(tmp_path)

    signed = verify_image(path, IMAGE_ID, TRUST, signer="consortium")

    assert (signed.reference, signed.image_id, signed.signer) == (REFERENCE, IMAGE_ID, "consortium")
    assert signed.optional == {"signed_at": "2025-01-31"}
    payload = json.loads(path.read_text())["payload"]
    assert payload["critical"] == {
        "identity": {"docker-reference": REFERENCE},
        "image": {"docker-manifest-digest": IMAGE_ID},
        "type": SIGNATURE_TYPE,
    }


def test_an_image_swapped_under_the_signed_tag_is_refused(tmp_path: Path) -> None:
    path = _signed(tmp_path)

    with pytest.raises(ImageSignatureError, match="a different image") as error:
        verify_image(path, SWAPPED_ID, TRUST)

    assert error.value.reason == "image_mismatch"


def test_a_signature_by_an_untrusted_key_is_refused(tmp_path: Path) -> None:
    path = _signed(tmp_path, key=generate_key())

    with pytest.raises(ImageSignatureError) as error:
        verify_image(path, IMAGE_ID, TRUST)

    assert error.value.reason == "unknown_key"


@pytest.mark.parametrize("missing", [None, "nowhere.sig.json"])
def test_an_unsigned_image_is_refused(tmp_path: Path, missing: str | None) -> None:
    path = None if missing is None else tmp_path / missing

    with pytest.raises(ImageSignatureError) as error:
        verify_image(path, IMAGE_ID, TRUST)

    assert error.value.reason == "unsigned"


def test_a_signature_file_edited_to_name_another_image_is_a_bad_signature(
    tmp_path: Path,
) -> None:
    path = _signed(tmp_path)
    document = json.loads(path.read_text())
    document["payload"]["critical"]["image"]["docker-manifest-digest"] = SWAPPED_ID
    path.write_text(json.dumps(document))

    with pytest.raises(ImageSignatureError) as error:
        verify_image(path, SWAPPED_ID, TRUST)

    assert error.value.reason == "bad_signature"


@pytest.mark.parametrize(
    "payload",
    [
        {"critical": {"identity": {"docker-reference": REFERENCE},
                      "image": {"docker-manifest-digest": IMAGE_ID}, "type": "other"}},
        {"critical": {"identity": {"docker-reference": REFERENCE},
                      "image": {"docker-manifest-digest": "sha256:short"},
                      "type": SIGNATURE_TYPE}},
        {"critical": {"image": {"docker-manifest-digest": IMAGE_ID}, "type": SIGNATURE_TYPE}},
        {"something": "else"},
    ],
)  # fmt: skip
def test_a_trusted_signature_over_something_else_is_malformed(payload: dict) -> None:
    document = seal(payload, PUBLISHER)  # validly signed, but not an image signature

    with pytest.raises(ImageSignatureError) as error:
        verify_image_signature(document, IMAGE_ID, TRUST)

    assert error.value.reason == "malformed"


@pytest.mark.parametrize("content", [b"", b"not json", b"[]", b'{"payload": {}}', b"x" * 70_000])
def test_a_file_that_is_not_a_signature_is_malformed(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.sig.json"
    path.write_bytes(content)

    with pytest.raises(ImageSignatureError) as error:
        verify_image(path, IMAGE_ID, TRUST)

    assert error.value.reason == "malformed"


def test_signing_refuses_what_is_not_an_image_id() -> None:
    with pytest.raises(ValueError, match="not an image id"):
        sign_image(REFERENCE, "latest", PUBLISHER)
