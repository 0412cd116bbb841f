"""Signed wire messages: a canonical JSON body and its signature in a STOMP header.

The sender serialises the message to its RFC 8785 canonical bytes, signs exactly those
bytes with Ed25519, and sends them as the body with the header
``elic-signature: <key id>:<base64 signature>``. The receiver verifies the body bytes as
received before parsing anything, and requires the key to belong to the party the message
claims to be (``hub`` for orders; the message's ``spoke_id`` for everything a spoke sends).

Why a header rather than an envelope around the payload (``signing.seal``): the receiver
then verifies the bytes it got instead of parsing, canonicalising again and verifying, which
keeps verification at the cost of one Ed25519 check per message on the hub's hot path. The
body stays the plain message, so the DLQ and the logs show what was sent.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from workbench.errors import SignatureError
from workbench.trust.canonical import canonical_json
from workbench.trust.keys import TrustStore, key_id
from workbench.trust.signing import Signature, verify_bytes

SIGNATURE_HEADER = "elic-signature"


class WireSigner:
    """Signs outgoing messages with one party's key (the key id is computed once)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.key_id = key_id(key)

    def sign(self, document: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        """The canonical body of ``document`` and the headers carrying its signature."""
        body = canonical_json(document)
        return body, self.headers(body)

    def headers(self, body: bytes) -> dict[str, str]:
        """The signature headers for a body that is already canonical JSON."""
        value = base64.b64encode(self._key.sign(body)).decode("ascii")
        return {SIGNATURE_HEADER: f"{self.key_id}:{value}"}


def signature_of(headers: Mapping[str, str]) -> Signature:
    """The signature a message's headers carry.

    Raises:
        SignatureError: ``unsigned`` when there is none, ``malformed`` when it is garbled.
    """
    header = headers.get(SIGNATURE_HEADER)
    if not header:
        raise SignatureError("unsigned", "the message carries no signature")
    kid, sep, value = header.partition(":")
    if not sep:
        raise SignatureError("malformed", "the signature header is not KEYID:VALUE")
    return Signature.from_json({"key_id": kid, "value": value})


def verify_wire(
    body: bytes, headers: Mapping[str, str], trust: TrustStore, signer: str | None
) -> str:
    """Verify a received message's body against its signature header; returns the signer.

    Raises:
        SignatureError: ``unsigned``, ``malformed``, ``unknown_key``, ``wrong_signer`` or
            ``bad_signature``.
    """
    return verify_bytes(body, signature_of(headers), trust, signer)
