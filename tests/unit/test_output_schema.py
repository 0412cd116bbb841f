from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from workbench.core.output_schema import validate_output
from workbench.core.run_errors import REASONS, RunErrorCode

SCHEMA = {
    "type": "object",
    "required": ["lav950_percent"],
    "properties": {"lav950_percent": {"type": "number", "minimum": 0, "maximum": 100}},
}


def code_of(data: bytes, schema: dict | None = None, max_bytes: int = 1024) -> str | None:
    check = validate_output(data, schema, max_bytes)
    return check.error.code.value if check.error else None


def test_valid_object_passes_with_its_document() -> None:
    check = validate_output(b'{"lav950_percent": 12.5}', SCHEMA)
    assert check.error is None
    assert check.document == {"lav950_percent": 12.5}


def test_each_kind_of_bad_output_has_its_own_code() -> None:
    assert code_of(b"{not json") == "OUTPUT_INVALID_JSON"
    assert code_of(b"\xff\xfe{}") == "OUTPUT_INVALID_JSON"
    assert code_of(b'{"x": NaN}') == "OUTPUT_INVALID_JSON"
    assert code_of(b'{"x": [1e999]}') == "OUTPUT_INVALID_JSON"  # infinity once read
    assert code_of(b"[1, 2]") == "OUTPUT_NOT_OBJECT"
    assert code_of(b'"text"') == "OUTPUT_NOT_OBJECT"
    assert code_of(b'{"lav950_percent": 140}', SCHEMA) == "OUTPUT_SCHEMA_VIOLATION"
    assert code_of(b"{}", SCHEMA) == "OUTPUT_SCHEMA_VIOLATION"
    assert code_of(b'{"a": "' + b"x" * 2000 + b'"}') == "OUTPUT_TOO_LARGE"


def test_schema_violation_detail_names_the_field_but_not_the_value() -> None:
    check = validate_output(b'{"lav950_percent": "Moreau"}', SCHEMA)
    assert check.error is not None
    assert "lav950_percent" in check.detail
    assert check.error.reason == REASONS[RunErrorCode.OUTPUT_SCHEMA_VIOLATION]
    assert "Moreau" not in json.dumps(check.error.to_json())


def test_every_code_has_a_fixed_reason() -> None:
    assert set(REASONS) == set(RunErrorCode)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)  # fmt: skip


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_any_json_object_within_the_limit_is_accepted_unchanged(doc: dict) -> None:
    data = json.dumps(doc).encode()
    check = validate_output(data, None, max_bytes=len(data))
    assert check.error is None
    assert check.document == doc
