"""The fixed table of run error codes, and ``Error``, the only failure that leaves a spoke.

A spoke never sends the hub a traceback or a container log. It sends ``Error(code, reason)``
where ``reason`` is the fixed sentence of the code's table entry, so that nothing the
algorithm printed, and no local path, can ride along. The free-text detail an operator needs
stays in the spoke's local log.

Codes are stable strings: the hub stores them, reports count them, and new codes are only
ever appended.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RunErrorCode(StrEnum):
    """Why a case did not produce a released ``output.json``."""

    ENGINE_UNAVAILABLE = "ENGINE_UNAVAILABLE"
    ENGINE_ERROR = "ENGINE_ERROR"
    IMAGE_NOT_FOUND = "IMAGE_NOT_FOUND"
    INPUT_EMPTY = "INPUT_EMPTY"
    INPUT_MIXED_PARTICIPANTS = "INPUT_MIXED_PARTICIPANTS"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    PIDS_EXHAUSTED = "PIDS_EXHAUSTED"
    NONZERO_EXIT = "NONZERO_EXIT"
    OUTPUT_MISSING = "OUTPUT_MISSING"
    OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"
    OUTPUT_UNSAFE = "OUTPUT_UNSAFE"
    OUTPUT_INVALID_JSON = "OUTPUT_INVALID_JSON"
    OUTPUT_NOT_OBJECT = "OUTPUT_NOT_OBJECT"
    OUTPUT_SCHEMA_VIOLATION = "OUTPUT_SCHEMA_VIOLATION"
    INTERNAL = "INTERNAL"
    OUTPUT_PHI = "OUTPUT_PHI"
    RELEASE_REJECTED = "RELEASE_REJECTED"
    IMAGE_UNTRUSTED = "IMAGE_UNTRUSTED"
    DEADLINE_PASSED = "DEADLINE_PASSED"


REASONS: dict[RunErrorCode, str] = {
    RunErrorCode.ENGINE_UNAVAILABLE: "the container engine could not be reached",
    RunErrorCode.ENGINE_ERROR: "the container engine refused to create or start the container",
    RunErrorCode.IMAGE_NOT_FOUND: "the algorithm image is not present at the spoke",
    RunErrorCode.INPUT_EMPTY: "no readable DICOM series was found for the case",
    RunErrorCode.INPUT_MIXED_PARTICIPANTS: "the case folder holds more than one participant",
    RunErrorCode.TIMEOUT: "the algorithm ran past its wall-clock limit and was stopped",
    RunErrorCode.OUT_OF_MEMORY: "the algorithm exceeded its memory limit and was killed",
    RunErrorCode.PIDS_EXHAUSTED: "the algorithm exhausted its process limit",
    RunErrorCode.NONZERO_EXIT: "the algorithm exited with a non-zero status",
    RunErrorCode.OUTPUT_MISSING: "the algorithm wrote no output.json",
    RunErrorCode.OUTPUT_TOO_LARGE: "the algorithm's output exceeded the size limit",
    RunErrorCode.OUTPUT_UNSAFE: "the output folder held a link, a special file or extra files",
    RunErrorCode.OUTPUT_INVALID_JSON: "output.json is not valid UTF-8 JSON",
    RunErrorCode.OUTPUT_NOT_OBJECT: "output.json is valid JSON but not a JSON object",
    RunErrorCode.OUTPUT_SCHEMA_VIOLATION: "output.json does not match the algorithm's schema",
    RunErrorCode.INTERNAL: "the spoke failed internally while running the case",
    RunErrorCode.OUTPUT_PHI: "the output held an identifier, date or UID from the case's DICOM",
    RunErrorCode.RELEASE_REJECTED: "a reviewer at the spoke declined to release the result",
    RunErrorCode.IMAGE_UNTRUSTED: "the algorithm image is unsigned, or not signed for this digest "
    "by a publisher the spoke trusts",
    RunErrorCode.DEADLINE_PASSED: "the experiment's deadline passed before the case started",
}


@dataclass(frozen=True)
class Error:
    """A failure as it may travel to the hub: a code from the table and its fixed reason."""

    code: RunErrorCode
    reason: str

    @classmethod
    def of(cls, code: RunErrorCode) -> Error:
        """The error for ``code`` with the table's reason."""
        return cls(code, REASONS[code])

    def to_json(self) -> dict[str, str]:
        """The wire form: ``{"code": ..., "reason": ...}``."""
        return {"code": self.code.value, "reason": self.reason}
