"""RFC 8785 canonical JSON: the one byte form of a document that is signed and hashed.

Two parties that hold the same JSON value produce the same bytes: object members sorted by
the UTF-16 code units of their names, no insignificant whitespace, minimal string escapes,
numbers written as ECMAScript writes an IEEE 754 double (``1e+21``, ``0.000001``, ``4.5``).
A JSON number *is* a double here: a large integer that a double holds exactly (``2**53``,
``10**20``) is written as that double, so parsing canonical text and canonicalising it again
gives the same bytes; one that no double holds (``2**53 + 1``) is refused rather than
silently rounded.

>>> canonical_json({"b": [1.0, 4.50], "a": "\\u20ac"})
b'{"a":"\\xe2\\x82\\xac","b":[1,4.5]}'
>>> sha256_hex({})
'44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a'
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import rfc8785

from workbench.errors import CanonicalJSONError

__all__ = ["canonical_json", "parse_json", "sha256_hex"]

_SAFE = 2**53  # rfc8785 accepts integers of smaller magnitude as they are


def canonical_json(document: Any) -> bytes:
    """The RFC 8785 canonical form of ``document`` as UTF-8 bytes.

    Args:
        document: a JSON value built of ``dict`` (string keys), ``list``, ``tuple``,
            ``str``, ``int``, ``float``, ``bool`` and ``None``.

    Raises:
        CanonicalJSONError: NaN or infinity, an integer no double holds exactly, a
            non-string key, a lone surrogate, or a value of another type.
    """
    fast = _plain_json(document)
    if fast is not None:
        return fast
    try:
        try:
            return rfc8785.dumps(document)
        except rfc8785.IntegerDomainError:
            # rfc8785 refuses every integer past 2**53 - 1; the ones a double holds exactly
            # are fine JSON numbers (canonical text parses back to such ints: "1e+21" does
            # not, but "100000000000000000000" does). Rare, so converted only on demand.
            return rfc8785.dumps(_exact_doubles(document))
    except rfc8785.CanonicalizationError as e:
        raise CanonicalJSONError(f"no canonical JSON form: {e}") from e
    except RecursionError as e:
        raise CanonicalJSONError("no canonical JSON form: nested too deeply") from e


_PLAIN_ENCODER = json.JSONEncoder(
    ensure_ascii=False, check_circular=False, allow_nan=False, sort_keys=True,
    separators=(",", ":"),
)  # fmt: skip


def _plain_json(document: Any) -> bytes | None:
    """The canonical form by the C JSON encoder, when it is the same; else ``None``.

    For documents without floats, with integers a double holds exactly and ASCII member
    names, RFC 8785 and ``json.dumps(sort_keys=True, ensure_ascii=False)`` write the same
    bytes: names sort the same by code point as by UTF-16 unit, strings escape the same
    (``\\"``, ``\\\\``, ``\\b\\f\\n\\r\\t``, other controls as lowercase ``\\u00xx``), and
    ``true``/``false``/``null`` and integers are written alike. Audit entries and most
    messages are such documents; rfc8785, pure Python, costs 20 to 50 times more. A lone
    surrogate fails to encode and falls back to rfc8785, which refuses it.
    """
    if not _is_plain(document, 0):
        return None
    try:
        return _PLAIN_ENCODER.encode(document).encode("utf-8")
    except UnicodeEncodeError:
        return None


def _is_plain(value: Any, depth: int) -> bool:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_SAFE < value < _SAFE)
    if depth > 100:
        return False
    if kind is dict:
        return all(
            type(k) is str and k.isascii() and _is_plain(v, depth + 1) for k, v in value.items()
        )
    if kind is list or kind is tuple:
        return all(_is_plain(v, depth + 1) for v in value)
    return False


def _exact_doubles(value: Any) -> Any:
    """``value`` with every integer beyond the safe range as the double equal to it."""
    if isinstance(value, dict):
        return {k: _exact_doubles(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_exact_doubles(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _SAFE:
        try:
            double = float(value)
        except OverflowError:
            double = float("nan")
        if double != value:
            raise CanonicalJSONError(
                f"no canonical JSON form: the integer {str(value)[:40]} is not exactly an IEEE "
                "double (send it as a string)"
            )
        return double
    return value


def sha256_hex(document: Any) -> str:
    """The SHA-256 of ``document``'s canonical JSON, as 64 lowercase hex digits.

    Raises:
        CanonicalJSONError: as ``canonical_json``.
    """
    return hashlib.sha256(canonical_json(document)).hexdigest()


def parse_json(data: bytes | str) -> Any:
    """Parse JSON text strictly, as RFC 8785 reads it.

    ``NaN``, ``Infinity`` and duplicate member names are refused (``json.loads`` accepts all
    three; none has a canonical form, and a duplicate name would let two readers see two
    documents behind one signature). An integer beyond +-(2**53 - 1) is read as the double
    it denotes, as every JSON number is in RFC 8785: canonical text such as
    ``49485026649973250`` (the double 4.948502664997325e16) then canonicalises to itself.

    Raises:
        CanonicalJSONError: not UTF-8, not JSON, or one of the above.
    """
    try:
        return json.loads(
            data,
            parse_constant=_refuse_constant,
            parse_int=_parse_int,
            object_pairs_hook=_unique,
        )
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise CanonicalJSONError(f"not JSON: {e}") from e


def _parse_int(text: str) -> int | float:
    value = int(text)
    return value if abs(value) < _SAFE else float(text)


def _refuse_constant(name: str) -> Any:
    raise CanonicalJSONError(f"not JSON: {name} has no JSON form")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise CanonicalJSONError(f"not JSON: member {key[:40]!r} appears twice")
        out[key] = value
    return out
