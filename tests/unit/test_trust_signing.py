"""Signatures over canonical JSON and sealed envelopes: each refusal has its own reason."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from workbench.core.messages import CaseResult, parse_message
from workbench.errors import CanonicalJSONError, SignatureError
from workbench.trust.canonical import canonical_json, parse_json
from workbench.trust.keys import TrustStore, generate_key
from workbench.trust.signing import Signature, open_sealed, seal, sign, verify

SPOKE = generate_key()
OTHER = generate_key()
TRUST = TrustStore()
TRUST.add(SPOKE.public_key(), name="site-01")
TRUST.add(OTHER.public_key(), name="site-02")

RESULT = {
    "type": "case.result", "v": 1, "id": "5f0c2b8e9d1a4c7b", "experiment_id": "e1",
    "spoke_id": "site-01", "participant_id": "p-7f3a", "algorithm": "lung-lav950",
    "attempt": 1, "output": {"lav950_percent": 12.5, "lung_volume_ml": 5123.0},
    "output_sha256": "ab" * 32, "seconds": 4.2,
}  # fmt: skip


def _reason(error: pytest.ExceptionInfo[SignatureError]) -> str:
    return error.value.reason


def test_sign_then_verify_round_trip_through_the_wire() -> None:
    signature = sign(RESULT, SPOKE)

    received = json.loads(json.dumps(RESULT, indent=1, sort_keys=False))
    verify(received, signature, TRUST, signer="site-01")

    assert TRUST.name_of(signature.key_id) == "site-01"
    assert len(base64.b64decode(signature.value)) == 64


def test_a_tampered_payload_is_a_bad_signature() -> None:
    signature = sign(RESULT, SPOKE)
    altered = json.loads(json.dumps(RESULT))
    altered["output"]["lav950_percent"] = 2.5

    with pytest.raises(SignatureError) as error:
        verify(altered, signature, TRUST)

    assert _reason(error) == "bad_signature"
    assert error.value.key_id == signature.key_id


def test_a_forged_signature_of_random_bytes_is_a_bad_signature() -> None:
    forged = Signature(sign(RESULT, SPOKE).key_id, base64.b64encode(os.urandom(64)).decode())

    with pytest.raises(SignatureError) as error:
        verify(RESULT, forged, TRUST)

    assert _reason(error) == "bad_signature"


def test_a_signature_by_an_unknown_key_is_refused_as_such() -> None:
    stranger = generate_key()

    with pytest.raises(SignatureError, match="unknown key") as error:
        verify(RESULT, sign(RESULT, stranger), TRUST)

    assert _reason(error) == "unknown_key"


def test_a_trusted_key_signing_in_another_partys_name_is_the_wrong_signer() -> None:
    by_site_02 = sign(RESULT, OTHER)  # RESULT claims to come from site-01

    with pytest.raises(SignatureError) as error:
        verify(RESULT, by_site_02, TRUST, signer="site-01")

    assert _reason(error) == "wrong_signer"
    verify(RESULT, by_site_02, TRUST)  # a valid signature by a trusted key, all the same


@pytest.mark.parametrize(
    "signature",
    [
        {"key_id": "xyz", "value": "AAAA"},
        {"key_id": "0123456789abcdef"},
        {"key_id": "0123456789abcdef", "value": "not base64!"},
        {"key_id": "0123456789abcdef", "value": base64.b64encode(b"short").decode()},
        {"key_id": "0123456789abcdef", "value": 12},
        {"key_id": "0123456789abcdef", "value": "AA==", "extra": 1},
        "a string",
    ],
)
def test_a_malformed_signature_is_refused_as_malformed(signature: Any) -> None:
    envelope = {"payload": RESULT, "signature": signature}

    with pytest.raises(SignatureError) as error:
        open_sealed(envelope, TRUST)

    assert _reason(error) == "malformed"


def test_a_document_without_canonical_form_is_malformed_at_verify_and_refused_at_sign() -> None:
    signature = sign(RESULT, SPOKE)

    with pytest.raises(SignatureError) as error:
        verify({**RESULT, "seconds": float("nan")}, signature, TRUST)
    with pytest.raises(CanonicalJSONError):
        sign({"n": 2**60 + 1}, SPOKE)

    assert _reason(error) == "malformed"


def test_seal_and_open_sealed_round_trip() -> None:
    envelope = seal(RESULT, SPOKE)

    wire = json.dumps(envelope).encode()
    payload = open_sealed(parse_json(wire), TRUST, signer="site-01")

    assert set(envelope) == {"payload", "signature"}
    assert set(envelope["signature"]) == {"key_id", "value"}
    assert payload == RESULT


def test_a_wire_message_seals_opens_and_validates_back_to_itself() -> None:
    message = CaseResult(
        experiment_id="e1", spoke_id="site-01", participant_id="p-1", algorithm="lung",
        manifest_hash="ab" * 32, image_digest="sha256:" + "cd" * 32,
        output={"score": 0.5, "volume_ml": 5123.0}, output_sha256="ef" * 32,
    )  # fmt: skip
    body = json.dumps(seal(message.model_dump(mode="json"), SPOKE)).encode()

    payload = open_sealed(parse_json(body), TRUST, signer=message.spoke_id)

    assert parse_message(json.dumps(payload)) == message


@pytest.mark.parametrize(
    "envelope",
    [None, [], {"payload": RESULT}, {"payload": [1], "signature": {}},
     {"payload": RESULT, "signature": {}, "more": 1}],
)  # fmt: skip
def test_open_sealed_refuses_what_is_not_an_envelope(envelope: Any) -> None:
    with pytest.raises(SignatureError) as error:
        open_sealed(envelope, TRUST)

    assert _reason(error) == "malformed"


def test_an_envelope_with_a_swapped_payload_is_a_bad_signature() -> None:
    envelope = seal(RESULT, SPOKE)
    other = seal({**RESULT, "participant_id": "p-other"}, SPOKE)

    with pytest.raises(SignatureError) as error:
        open_sealed({"payload": other["payload"], "signature": envelope["signature"]}, TRUST)

    assert _reason(error) == "bad_signature"


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
_objects = st.dictionaries(st.text(max_size=6), _json, max_size=5)


@given(_objects)
def test_any_json_object_signs_and_verifies_after_a_trip_through_json(document: dict) -> None:
    signature = sign(document, SPOKE)

    verify(json.loads(json.dumps(document)), signature, TRUST)


@given(_objects, st.data())
def test_any_single_byte_change_to_the_canonical_form_is_refused(
    document: dict, data: st.DataObject
) -> None:
    signature = sign(document, SPOKE)
    original = canonical_json(document)
    position = data.draw(st.integers(0, len(original) - 1), label="position")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != original[position]), label="byte")
    changed = original[:position] + bytes([byte]) + original[position + 1 :]

    try:
        received = parse_json(changed)
        same_value = isinstance(received, dict) and canonical_json(received) == original
    except CanonicalJSONError:
        return  # not JSON any more: the receiver refuses it before any signature check
    # A change that spells the same value differently (1e+21 as 1e021) is no tampering.
    assume(not same_value)

    with pytest.raises(SignatureError) as error:
        verify(received, signature, TRUST)

    assert _reason(error) in {"bad_signature", "malformed"}
