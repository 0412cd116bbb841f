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
     ├── SynthError             the synthetic cohort generator was given impossible settings
     ├── SpokeHaltedError       the spoke's state database or audit log cannot be written
     │                          (disk full): it stopped working (``Spoke.failure``)
     ├── ReportError            a validation report cannot be rendered (no results yet, a
     │                          template cell failed: carries ``cell_index``)
     ├── TransportError         the message broker is unreachable, refused a frame, or did not
     │    │                     confirm a send (``workbench.transport.base``)
     │    └── BrokerError       the managed ActiveMQ is not installed, or could not be started,
     │                          stopped or queried (``workbench.transport.activemq``)
     ├── FederationError        a part of the local federation did not start or stop
     │                          (``workbench.federation``)
     ├── DemoError              the demo study did not complete (``workbench.demo``)
     ├── TrustError             a key, a signature or an audit log failed (``workbench.trust``)
     │    ├── KeyFileError      a key file is missing, unreadable, not Ed25519, or exists already
     │    ├── CanonicalJSONError  a document has no RFC 8785 form (NaN, 2**53 + 1, ...)
     │    ├── SignatureError    refused: ``reason`` is malformed, unknown_key, wrong_signer or
     │    │    │                bad_signature; ``key_id`` names the signer when known
     │    │    └── ImageSignatureError  an image refused before it runs; ``reason`` adds
     │    │                     unsigned and image_mismatch (an image swapped under its tag)
     │    └── AuditError        an audit log cannot be opened, read or extended (verification
     │                          failures are data: ``workbench.trust.audit.VerifyReport``)
     └── HubError               the hub refused or failed a request (carries ``code``, a short
          │                     stable string, and ``status``, the HTTP status the API answers)
          ├── BadRequestError   400: an invalid body, argument or study definition
          ├── NotFoundError     404: unknown experiment, algorithm, study or spoke
          ├── ConflictError     409: a name and version registered with another digest, ...
          ├── StoreError        503: the results store failed (``transient``: worth retrying)
          └── HubUnreachableError  the hub client cannot reach the hub at all

The classes in this module are importable from ``workbench.errors``; the others live with the
code that raises them, in the module named in parentheses.

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


class SpokeHaltedError(WorkbenchError):
    """The spoke's durable state cannot be written (disk full?): it stopped taking work."""


class ReportError(WorkbenchError):
    """A validation report cannot be rendered.

    ``cell_index`` is the index of the template cell that failed when the notebook ran
    (papermill's ``PapermillExecutionError.cell_index``), ``None`` when it failed before or
    after running any cell.
    """

    def __init__(self, message: str, cell_index: int | None = None) -> None:
        super().__init__(message)
        self.cell_index = cell_index


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


class TrustError(WorkbenchError):
    """A key, a signature or an audit log failed; the subclass says which."""


class KeyFileError(TrustError):
    """A key file is missing, unreadable, not an Ed25519 key, or would be overwritten."""


class CanonicalJSONError(TrustError):
    """A document has no RFC 8785 canonical form.

    NaN, infinity, an integer no IEEE double holds exactly (``2**53 + 1``), a non-string key,
    a lone surrogate, or a value that is not JSON at all.
    """


class SignatureError(TrustError):
    """A signed document was refused.

    ``reason`` is one short stable string: ``malformed`` (no well-formed signature or
    document), ``unknown_key`` (a key id the trust store does not hold), ``wrong_signer``
    (a trusted key, but not the one the caller required) or ``bad_signature`` (the
    signature does not match the document: forged, or the document was altered).
    ``key_id`` is the signer's key id when the signature named one.
    """

    def __init__(self, reason: str, detail: str, key_id: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.key_id = key_id


class ImageSignatureError(SignatureError):
    """An algorithm image was refused before any container started.

    Besides the reasons of ``SignatureError``, ``reason`` may be ``unsigned`` (no signature
    for the image) or ``image_mismatch`` (the local image's id is not the signed one: an
    image swapped under a signed tag).
    """


class AuditError(TrustError):
    """An audit log cannot be opened, read or extended."""


class HubError(WorkbenchError):
    """The hub refused or failed a request.

    ``code`` is a short stable string (``unknown_experiment``, ``bad_request``, ...) that the
    HTTP API puts in its error body; ``status`` is the HTTP status it answers with. The hub
    client raises the same class, with the server's code and message, on the other side.
    """

    status = 500
    default_code = "hub_error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class BadRequestError(HubError):
    """A request body, argument or study definition is invalid."""

    status = 400
    default_code = "bad_request"


class NotFoundError(HubError):
    """An experiment, algorithm, study or spoke the hub does not know."""

    status = 404
    default_code = "not_found"


class ConflictError(HubError):
    """The request contradicts what the hub already holds."""

    status = 409
    default_code = "conflict"


class StoreError(HubError):
    """The results store failed; ``transient`` failures (a lost connection) are retried."""

    status = 503
    default_code = "store_error"

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class HubUnreachableError(HubError):
    """The hub client cannot connect to the hub."""

    status = 503
    default_code = "hub_unreachable"
