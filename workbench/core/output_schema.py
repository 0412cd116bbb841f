"""Validation of an algorithm's ``output.json`` bytes: size, JSON, object, declared schema.

Pure: it takes bytes and a schema and returns ``None`` or an ``Error`` from the fixed table,
plus a local-only detail string for the spoke operator.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import jsonschema

from workbench.core.run_errors import Error, RunErrorCode

DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class OutputCheck:
    """The verdict on one ``output.json``: the parsed document, or an error and its detail."""

    document: dict[str, Any] | None
    error: Error | None = None
    detail: str = ""


def check_schema(schema: dict[str, Any]) -> None:
    """Raise ``jsonschema.SchemaError`` unless ``schema`` is a valid JSON Schema."""
    jsonschema.validators.validator_for(schema).check_schema(schema)


def validate_output(
    data: bytes,
    schema: dict[str, Any] | None = None,
    max_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
) -> OutputCheck:
    """Check ``output.json``'s bytes against the contract and the algorithm's schema.

    >>> validate_output(b'{"lav950": 12.5}').document
    {'lav950': 12.5}
    >>> validate_output(b'[1]').error.code.value
    'OUTPUT_NOT_OBJECT'
    """
    if len(data) > max_bytes:
        return _fail(RunErrorCode.OUTPUT_TOO_LARGE, f"{len(data)} bytes > limit {max_bytes}")
    try:
        document = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        return _fail(RunErrorCode.OUTPUT_INVALID_JSON, str(e)[:200])
    if not isinstance(document, dict):
        return _fail(RunErrorCode.OUTPUT_NOT_OBJECT, f"top level is {type(document).__name__}")
    if not all_finite(document):  # 1e999 reads as infinity, which JSON cannot carry
        return _fail(RunErrorCode.OUTPUT_INVALID_JSON, "a number is too large to be finite")
    if schema is not None:
        validator = jsonschema.validators.validator_for(schema)(schema)
        problem = jsonschema.exceptions.best_match(validator.iter_errors(document))
        if problem is not None:
            where = "/".join(str(p) for p in problem.absolute_path) or "(root)"
            return _fail(RunErrorCode.OUTPUT_SCHEMA_VIOLATION, f"{where}: {problem.message}"[:300])
    return OutputCheck(document)


def all_finite(value: object) -> bool:
    """Whether every float in a parsed JSON value is finite.

    >>> all_finite({"a": [1.5, {"b": 2}]}), all_finite({"a": [float("inf")]})
    (True, False)
    """
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(all_finite(v) for v in value)
    return True


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259); Python's json accepts them by default.
    raise ValueError(f"{name} is not valid JSON")


def _fail(code: RunErrorCode, detail: str) -> OutputCheck:
    return OutputCheck(None, Error.of(code), detail)
