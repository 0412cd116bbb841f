"""RFC 8785 canonical JSON: the vectors of the RFC (appendix B and section 3.2) and its errors."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workbench.errors import CanonicalJSONError
from workbench.trust.canonical import canonical_json, parse_json, sha256_hex

# RFC 8785 appendix B: IEEE 754 bit patterns and their canonical text.
NUMBER_VECTORS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "text"), NUMBER_VECTORS)
def test_numbers_follow_the_rfc_vectors(bits: str, text: str) -> None:
    value = struct.unpack(">d", bytes.fromhex(bits))[0]

    assert canonical_json(value) == text.encode()


def test_the_rfc_example_of_values_and_escapes() -> None:
    # RFC 8785 section 3.2.2, the input as written there.
    source = r"""{
      "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
      "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
      "literals": [null, true, false]
    }"""

    out = canonical_json(json.loads(source))

    assert (
        out
        == (
            '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
            '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
        ).encode()
    )


def test_keys_sort_by_utf16_code_units_not_code_points() -> None:
    # RFC 8785 section 3.2.3: U+1F600 (surrogates D83D DE00) sorts before U+FB33 in UTF-16,
    # though after it by code point.
    source = r"""{"\u20ac": "Euro Sign", "\r": "Carriage Return",
      "\ufb33": "Hebrew Letter Dalet With Dagesh", "1": "One",
      "\ud83d\ude00": "Emoji: Grinning Face", "\u0080": "Control",
      "\u00f6": "Latin Small Letter O With Diaeresis"}"""

    out = canonical_json(json.loads(source)).decode()

    keys = list(json.loads(out))
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert sorted(json.loads(source)) != keys  # plain code-point order would differ


def test_sha256_hex_is_the_hash_of_the_canonical_bytes() -> None:
    document = {"b": 1.0, "a": [True, None]}

    digest = sha256_hex(document)

    assert digest == hashlib.sha256(b'{"a":[true,null],"b":1}').hexdigest()


@pytest.mark.parametrize(
    "bad",
    [float("nan"), float("inf"), 2**53 + 1, [-(2**53) - 1], 10**400, {1: "x"}, {"s": {1, 2}},
     "\ud800", b"bytes"],
)  # fmt: skip
def test_values_without_a_canonical_form_are_refused(bad: object) -> None:
    with pytest.raises(CanonicalJSONError, match="no canonical JSON form"):
        canonical_json(bad)


def test_parse_json_reads_large_integers_as_the_doubles_they_denote() -> None:
    canonical = canonical_json(4.948502664997325e16)

    value = parse_json(canonical)

    assert canonical == b"49485026649973250"  # not the double's exact value, ...48
    assert value == 4.948502664997325e16
    assert canonical_json(value) == canonical


def test_large_integers_a_double_holds_exactly_are_that_double() -> None:
    document = {"safe": [2**53 - 1, -(2**53) + 1], "exact": [2**53, -(2**53), 10**20, 10**21]}

    out = canonical_json(document)

    assert out == (
        b'{"exact":[9007199254740992,-9007199254740992,100000000000000000000,1e+21],'
        b'"safe":[9007199254740991,-9007199254740991]}'
    )
    assert canonical_json(parse_json(out)) == out


@pytest.mark.parametrize(
    ("text", "why"),
    [("NaN", "NaN"), ('{"x": -Infinity}', "Infinity"), ('{"a":1,"a":2}', "twice"),
     (b"\xff", "not JSON"), ("{", "not JSON")],
)  # fmt: skip
def test_parse_json_refuses_what_has_no_single_meaning(text: str | bytes, why: str) -> None:
    with pytest.raises(CanonicalJSONError, match=why):
        parse_json(text)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip


@given(_json)
def test_canonical_form_is_a_fixed_point_of_parse_and_serialise(value: object) -> None:
    once = canonical_json(value)

    again = canonical_json(parse_json(once))

    assert again == once


# The C-encoder fast path must write exactly what rfc8785 writes, for every document it
# takes: no floats, integers a double holds, ASCII member names, any string.
_plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",))),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(alphabet=st.characters(max_codepoint=127)), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(_plain)
def test_the_fast_path_writes_what_rfc8785_writes(value: object) -> None:
    import rfc8785

    assert canonical_json(value) == rfc8785.dumps(value)


def test_control_characters_and_quotes_escape_as_rfc8785_does() -> None:
    import rfc8785

    text = "".join(chr(c) for c in range(0x20)) + '"\\/\x7f\u2028\u20ac\U0001f600'
    document = {"z": text, "a": [text, 1, -(2**53) + 1, True, None], "\x01": {}}
    assert canonical_json(document) == rfc8785.dumps(document)


def test_documents_outside_the_fast_path_still_follow_rfc8785() -> None:
    # A float, a non-ASCII member name (UTF-16 order), an integer beyond 2**53.
    assert canonical_json({"a": 1.0}) == b'{"a":1}'
    assert canonical_json({"\ue000": 1, "\U0001f600": 2}) == rfc8785_bytes(
        {"\ue000": 1, "\U0001f600": 2}
    )
    assert canonical_json(2**60) == b"1152921504606847000"  # as ECMAScript writes the double
    with pytest.raises(CanonicalJSONError):
        canonical_json({"a": "\ud800"})


def rfc8785_bytes(value: object) -> bytes:
    import rfc8785

    return rfc8785.dumps(value)
