"""The wire messages between Hub and Spokes: frozen, versioned, validated where received.

Every message is one JSON object with ``type``, ``v`` (schema version) and ``id`` (unique per
message), plus the fields of its type. ``parse_message`` is the only way bytes become a
message: unknown types, other versions, missing or extra fields, and non-JSON are all a
``MessageError``, never a crash. Messages are never pickled.

Receivers deduplicate on ``natural_key``: redelivery of the same case result, or a second
copy sent after a crash, maps to the same key and is counted once.

Destinations (DESIGN.md section 5)::

    /queue/elic.spoke.<spoke-id>.orders    Hub -> one Spoke: experiment.order, experiment.cancel
    /queue/elic.hub.inbox                  Spokes -> Hub: experiment.accepted, case.status,
                                           case.result, spoke.heartbeat,
                                           participant.manifest

>>> msg = CaseStatus(experiment_id="e1", spoke_id="site-01", participant_id="p-1",
...                  algorithm="lung-lav950", attempt=1, state="running")
>>> parse_message(encode(msg)) == msg
True
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from workbench.core.deadline import DeadlineError, format_utc, parse_utc
from workbench.core.output_schema import all_finite
from workbench.core.run_errors import RunErrorCode

VERSION = 1
HUB_INBOX = "/queue/elic.hub.inbox"
_SPOKE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def orders_queue(spoke_id: str) -> str:
    """The orders queue of one spoke."""
    if not _SPOKE_ID.match(spoke_id):
        raise ValueError(f"not a valid spoke id: {spoke_id!r}")
    return f"/queue/elic.spoke.{spoke_id}.orders"


class MessageError(ValueError):
    """Bytes that are not a valid message of a known type and version."""


def _new_id() -> str:
    return uuid.uuid4().hex


SpokeId = Annotated[str, Field(pattern=_SPOKE_ID.pattern)]
Name = Annotated[str, Field(min_length=1, max_length=128)]
# Counts fit a 32-bit database integer: PostgreSQL refuses more, which would block the inbox.
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    v: Literal[1] = 1  # VERSION
    id: Annotated[str, Field(min_length=8, max_length=64)] = Field(default_factory=_new_id)


class AlgorithmRef(BaseModel):
    """An algorithm as an order names it: pinned by image digest."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: Name
    version: Name
    image: Annotated[str, Field(min_length=1, max_length=512)]
    digest: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
    args: dict[str, Any] = Field(default_factory=dict)
    output_schema: dict[str, Any] | None = None
    # The publisher's image signature (cosign-style simple-signing payload and Ed25519
    # signature, ``workbench algorithm sign``); spokes verify it by digest before every run.
    signature: dict[str, Any] | None = None


class Manifest(BaseModel):
    """The frozen description of one experiment; its hash names it in every result.

    ``deadline`` (UTC, ``YYYY-MM-DDTHH:MM:SSZ``, or ``None``): the hub refuses a result it
    receives later, by its own clock; a spoke does not start a case once the hub's clock
    has certainly passed it (``workbench.core.deadline``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    experiment_id: Name
    study: Name
    algorithms: tuple[AlgorithmRef, ...] = Field(min_length=1)
    spokes: tuple[SpokeId, ...] = Field(min_length=1)
    cohort: dict[str, Any] = Field(default_factory=dict)
    reference_fields: tuple[str, ...] = ()
    timeout_s: Annotated[float, Field(gt=0, le=86400)] = 600.0
    memory_bytes: Annotated[int, Field(ge=8 * 1024**2)] = 2 * 1024**3
    created_at: str
    deadline: Annotated[str, Field(max_length=40)] | None = None

    @field_validator("deadline")
    @classmethod
    def _utc_instant(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return format_utc(parse_utc(value))
        except DeadlineError as e:
            raise ValueError(str(e)) from e


class ExperimentOrder(_Message):
    """Hub to Spoke: run this experiment's algorithms on your matching cases."""

    type: Literal["experiment.order"] = "experiment.order"
    spoke_id: SpokeId
    manifest: Manifest
    manifest_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

    @property
    def natural_key(self) -> tuple[str, ...]:
        return (self.type, self.manifest.experiment_id, self.spoke_id)


class ExperimentCancel(_Message):
    """Hub to Spoke: stop this experiment's queued and running cases."""

    type: Literal["experiment.cancel"] = "experiment.cancel"
    spoke_id: SpokeId
    experiment_id: Name

    @property
    def natural_key(self) -> tuple[str, ...]:
        return (self.type, self.experiment_id, self.spoke_id)


class ExperimentAccepted(_Message):
    """Spoke to Hub: the order is stored; this many cases (participant x algorithm) planned.

    ``cases`` may be 0: the spoke's catalog holds no participant matching the cohort.
    """

    type: Literal["experiment.accepted"] = "experiment.accepted"
    spoke_id: SpokeId
    experiment_id: Name
    participants: Count
    cases: Count

    @property
    def natural_key(self) -> tuple[str, ...]:
        return (self.type, self.experiment_id, self.spoke_id)


class _CaseMessage(_Message):
    experiment_id: Name
    spoke_id: SpokeId
    participant_id: Name
    algorithm: Name
    attempt: Annotated[int, Field(ge=1, le=1000)] = 1

    @property
    def natural_key(self) -> tuple[str, ...]:
        return (
            str(getattr(self, "type", "")), self.experiment_id, self.spoke_id,
            self.participant_id, self.algorithm, str(self.attempt),
        )  # fmt: skip


class ErrorInfo(BaseModel):
    """A remote failure: a code from the fixed table and its fixed reason."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    code: RunErrorCode
    reason: Annotated[str, Field(max_length=200)]


CaseState = Literal["queued", "running", "done", "failed", "cancelled"]


class CaseStatus(_CaseMessage):
    """Spoke to Hub: a case changed state (``failed`` carries an ``error``)."""

    type: Literal["case.status"] = "case.status"
    state: CaseState
    error: ErrorInfo | None = None


class CaseResult(_CaseMessage):
    """Spoke to Hub: one released ``output.json`` and what it was computed from."""

    type: Literal["case.result"] = "case.result"
    manifest_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    image_digest: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
    output: dict[str, Any]
    output_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    reference: dict[str, float | None] = Field(default_factory=dict)
    seconds: Annotated[float, Field(ge=0)] = 0.0
    # The spoke's audit-chain head ("SEQ:HASH") after this result was recorded: the hub
    # keeps the latest per spoke, so a truncated spoke log can be detected later.
    audit_head: Annotated[str, Field(pattern=r"^[0-9]+:[0-9a-f]{64}$")] | None = None

    @field_validator("output")
    @classmethod
    def _finite(cls, output: dict[str, Any]) -> dict[str, Any]:
        # A number too large for a float (1e999) reads as infinity, which is not JSON and
        # which PostgreSQL's json type refuses: refused here, with the message.
        if not all_finite(output):
            raise ValueError("a number in the output is not finite")
        return output


class SpokeHeartbeat(_Message):
    """Spoke to Hub: alive, with its queue and catalog in numbers."""

    type: Literal["spoke.heartbeat"] = "spoke.heartbeat"
    spoke_id: SpokeId
    sent_at: str
    queued: Count = 0
    running: Count = 0
    participants: Count = 0

    @property
    def natural_key(self) -> tuple[str, ...]:
        return (self.type, self.spoke_id, self.id)


class ParticipantManifest(_Message):
    """Spoke to Hub: the de-identified inventory of its catalog (counts and acquisition)."""

    type: Literal["participant.manifest"] = "participant.manifest"
    spoke_id: SpokeId
    participants: Count
    series: Count
    instances: Count
    acquisition: dict[str, dict[str, int]] = Field(default_factory=dict)

    @property
    def natural_key(self) -> tuple[str, ...]:
        return (self.type, self.spoke_id, self.id)


Message = Annotated[
    ExperimentOrder | ExperimentCancel | ExperimentAccepted | CaseStatus | CaseResult
    | SpokeHeartbeat | ParticipantManifest,
    Field(discriminator="type"),
]  # fmt: skip
_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)
TYPES = ("experiment.order", "experiment.cancel", "experiment.accepted", "case.status",
         "case.result", "spoke.heartbeat", "participant.manifest")  # fmt: skip


def parse_message(data: bytes | str) -> Message:
    """Validate bytes from the wire into a message.

    Raises:
        MessageError: not JSON, too large, an unknown type or version, or invalid fields.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    # The fast path: pydantic parses the JSON itself (7.9 µs instead of 10.5 for a result). It
    # must accept only what the path below accepts: pydantic takes NaN and Infinity inside
    # a free-form object (an output), which is not JSON, so a body that holds either word
    # goes the long way; so does one without ``v``, which the models default. A property
    # test compares the two paths. Anything refused goes the long way, for its error.
    if isinstance(data, bytes):
        plain = b"NaN" not in data and b"Infinity" not in data
    else:
        plain = "NaN" not in data and "Infinity" not in data
    if plain:
        try:
            message = _ADAPTER.validate_json(data)
        except ValidationError:
            pass
        else:
            if "v" in message.model_fields_set:
                return message
    return _parse_checked(data)


def _parse_checked(data: bytes | str) -> Message:
    """``parse_message`` the long way: JSON first, then each check with its own error."""
    try:
        raw = _DECODER.decode(data.decode("utf-8") if isinstance(data, bytes) else data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # too deep: not a message
        raise MessageError(f"not JSON: {e}") from e
    if not isinstance(raw, dict):
        raise MessageError("a message must be a JSON object")
    if raw.get("type") not in TYPES:
        raise MessageError(f"unknown message type {str(raw.get('type'))[:40]!r}")
    if raw.get("v") != VERSION:
        raise MessageError(f"unsupported version {str(raw.get('v'))[:10]!r} of {raw['type']}")
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MessageError(f"invalid {raw['type']}: {where}: {first['msg']}") from e


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259), and PostgreSQL's json type refuses them.
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every message: ``json.loads(..., parse_constant=...)`` would build a new
# decoder per call, a tenth of the hub's per-message parsing cost.
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def encode(message: _Message) -> bytes:
    """The message as compact JSON bytes."""
    return message.model_dump_json(exclude_none=False).encode()


def manifest_hash(manifest: Manifest) -> str:
    """SHA-256 of the manifest's canonical JSON (sorted keys, no spaces)."""
    import hashlib

    document = manifest.model_dump(mode="json")
    if document.get("deadline") is None:
        # A manifest without a deadline hashes as it did before the field existed.
        document.pop("deadline", None)
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
