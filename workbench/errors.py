"""The workbench's exceptions, one base and a subclass per area.

::

    WorkbenchError
     ├── ConfigError            bad settings, bad command-line values
     ├── ImageBuildError        building the base or algorithm images failed
     ├── CatalogError           the spoke's DICOM catalog cannot be read or written
     ├── CaseError              a folder is not one usable participant case
     │                          (carries a RunErrorCode: INPUT_EMPTY, INPUT_MIXED_PARTICIPANTS)
     ├── EngineError            the container engine is missing or refused a request
     │                          (carries a RunErrorCode: ENGINE_UNAVAILABLE, IMAGE_NOT_FOUND, ...)
     └── SynthError             the synthetic cohort generator was given impossible settings

A failed *algorithm run* is not an exception: the runner returns a ``RunResult`` whose
``error`` is an ``Error(code, reason)`` from the fixed table in ``workbench.core.run_errors``,
because that is what travels to the hub. Exceptions are for the operator at the spoke.
Third-party errors (docker, pydicom, sqlite3) are wrapped once, at the edge, with
``raise ... from e``.
"""

from __future__ import annotations

from workbench.core.run_errors import RunErrorCode


class WorkbenchError(Exception):
    """Base of every error the workbench raises on purpose."""


class ConfigError(WorkbenchError):
    """A setting or command-line value is missing or invalid."""


class ImageBuildError(WorkbenchError):
    """Building the offline base image or an algorithm image failed."""


class CatalogError(WorkbenchError):
    """The spoke's DICOM catalog cannot be read or written."""


class SynthError(WorkbenchError):
    """The synthetic cohort generator cannot satisfy its settings."""


class _CodedError(WorkbenchError):
    """An error that maps onto one entry of the fixed run-error table."""

    def __init__(self, code: RunErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class CaseError(_CodedError):
    """A DICOM folder cannot be turned into exactly one participant case."""


class EngineError(_CodedError):
    """The container engine is unreachable, or refused to create or start a container."""
