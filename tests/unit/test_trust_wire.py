from __future__ import annotations

import json

import pytest

from workbench.errors import SignatureError
from workbench.trust.keys import TrustStore, generate_key
from workbench.trust.wire import SIGNATURE_HEADER, WireSigner, verify_wire

SPOKE, OTHER, STRANGER = generate_key(), generate_key(), generate_key()
TRUST = TrustStore()
TRUST.add(SPOKE.public_key(), name="site-01")
TRUST.add(OTHER.public_key(), name="site-02")
DOC = {"type": "case.result", "spoke_id": "site-01", "output": {"score": 0.5}}


def reason(body: bytes, headers: dict[str, str], signer: str | None = "site-01") -> str:
    with pytest.raises(SignatureError) as refused:
        verify_wire(body, headers, TRUST, signer)
    return refused.value.reason


def test_a_signed_body_verifies_as_its_signer() -> None:
    body, headers = WireSigner(SPOKE).sign(DOC)
    assert json.loads(body) == DOC
    assert body == json.dumps(DOC, sort_keys=True, separators=(",", ":")).encode()  # canonical
    assert verify_wire(body, headers, TRUST, "site-01") == "site-01"


def test_each_refusal_has_its_reason() -> None:
    body, headers = WireSigner(SPOKE).sign(DOC)
    assert reason(body.replace(b"0.5", b"0.9"), headers) == "bad_signature"
    assert reason(body, {}) == "unsigned"
    assert reason(body, {SIGNATURE_HEADER: "garbage"}) == "malformed"
    assert reason(*WireSigner(STRANGER).sign(DOC)) == "unknown_key"
    assert reason(*WireSigner(OTHER).sign(DOC)) == "wrong_signer"  # site-02 posing as site-01
    forged = headers[SIGNATURE_HEADER].split(":")[0] + ":" + "A" * 86 + "=="
    assert reason(body, {SIGNATURE_HEADER: forged}) == "bad_signature"
