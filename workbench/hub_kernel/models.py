"""The hub's records as the store returns them and the HTTP API serialises them.

Pydantic models, so that one ``model_dump(mode="json")`` is the API's JSON and the
OpenAPI description can name their fields. Request bodies (``AlgorithmSpec``,
``LaunchRequest``) are validated with ``extra="forbid"``: a misspelt field is a 400, not a
silently ignored setting.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from workbench.core.messages import Manifest

Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Digest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
ExperimentState = Literal["running", "complete", "cancelled"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AlgorithmSpec(_Frozen):
    """What registering an algorithm needs: its declaration and its image, pinned by digest.

    ``signature`` is the publisher's signature document of the image (``workbench algorithm
    sign``: a sealed cosign-style simple-signing payload naming ``digest``). The hub checks
    only that it names this digest; every spoke verifies it against the publisher keys it
    trusts before each run, by digest.
    """

    name: Name
    version: Name
    image: Annotated[str, Field(min_length=1, max_length=512)]
    digest: Digest
    output_schema: dict[str, Any]
    args_schema: dict[str, Any] | None = None
    description: Annotated[str, Field(max_length=2000)] = ""
    signature: dict[str, Any] | None = None


class Algorithm(AlgorithmSpec):
    """A registered algorithm."""

    registered_at: datetime


class LaunchRequest(_Frozen):
    """``POST /experiments``: a study, algorithms (``name`` or ``name:version``) and spokes.

    ``args`` maps an algorithm name to its arguments, e.g. ``{"lung-lav950": {"hu": -950}}``.
    ``deadline`` is an ISO-8601 timestamp with a zone or a duration from now on the hub's
    clock (``2h``, ``30m``, ``1h30m``); results the hub receives after it are refused.
    """

    study: Name
    algorithms: Annotated[list[str], Field(min_length=1, max_length=50)]
    spokes: Annotated[list[str], Field(min_length=1, max_length=500)]
    args: dict[str, dict[str, Any]] = Field(default_factory=dict)
    timeout_s: Annotated[float, Field(gt=0, le=86400)] | None = None
    memory_bytes: Annotated[int, Field(ge=8 * 1024**2)] | None = None
    deadline: Annotated[str, Field(min_length=1, max_length=40)] | None = None

    @field_validator("algorithms", "spokes")
    @classmethod
    def _unique(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError("names must not repeat")
        return values


class SpokeRecord(_Frozen):
    """A spoke the hub knows: allow-listed, or seen through a heartbeat."""

    spoke_id: str
    allowed: bool
    first_seen_at: datetime | None
    last_heartbeat_at: datetime | None
    heartbeat_sent_at: str | None
    queued: int | None
    running: int | None
    participants: int | None
    series: int | None
    instances: int | None
    manifest_at: datetime | None
    audit_head: str | None = Field(
        default=None,
        description="The latest audit-chain head (SEQ:HASH) a result of this spoke carried: "
        "check the spoke's log with `workbench audit verify LOG --head SEQ:HASH`",
    )
    audit_head_at: datetime | None = None
    last_key_id: str | None = Field(default=None, description="The key id that signed that result")
    clock_skew_s: float | None = Field(
        default=None,
        description="The spoke's clock minus the hub's, from its last heartbeat (its sent_at "
        "against the hub's receipt time; transit delay makes it read low). Shown only: no "
        "decision of the hub uses a spoke's clock",
    )


class ExperimentRecord(_Frozen):
    """An experiment as stored: its frozen manifest and whether it was cancelled."""

    experiment_id: str
    study: str
    manifest: Manifest
    manifest_hash: str
    created_at: datetime
    cancelled_at: datetime | None


class SpokeProgress(_Frozen):
    """One spoke's progress on one experiment.

    ``expected`` is the number of cases (participant x algorithm) the spoke planned when it
    accepted the order (``experiment.accepted``); before that, the number of cases it has
    reported a state for, and ``None`` while it has said nothing. The state counts are of
    each case's latest state (highest attempt).
    """

    spoke_id: str
    order_sent: bool
    accepted: bool = False
    participants: int | None = None
    expected: int | None
    queued: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    results: int = 0
    results_verified: int = 0
    errors: dict[str, int] = Field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Every expected case reached a final state (done, failed or cancelled)."""
        settled = self.done + self.failed + self.cancelled
        return (
            self.expected is not None
            and self.queued == 0
            and self.running == 0
            and settled >= self.expected
        )


class ExperimentStatus(_Frozen):
    """An experiment's state with per-spoke progress."""

    experiment_id: str
    study: str
    manifest_hash: str
    state: ExperimentState
    created_at: datetime
    cancelled_at: datetime | None
    deadline: datetime | None = Field(
        default=None, description="Results the hub receives after this instant are refused"
    )
    algorithms: list[str]
    spokes: list[SpokeProgress]
    results: int
    results_verified: int = Field(
        default=0, description="Results whose spoke signature the hub verified"
    )
    rejections: dict[str, int] = Field(
        default_factory=dict, description="Messages of this experiment refused, by reason code"
    )


class ResultRow(_Frozen):
    """One received result, as ``GET /experiments/{id}/results`` lists it."""

    experiment_id: str
    spoke_id: str
    participant_id: str
    algorithm: str
    attempt: int
    output: dict[str, Any]
    reference: dict[str, Any]
    output_sha256: str
    image_digest: str
    received_at: datetime


class Rejection(_Frozen):
    """A message the hub refused, why (``code`` from ``effects.CODES``), and what it claimed.

    Refused messages went to the dead-letter queue, except replays (``replayed``), which
    are harmless and acknowledged. ``key_id`` is the key the message's signature named, if
    it named one.
    """

    id: int
    message_id: str
    spoke_id: str | None
    message_type: str | None
    experiment_id: str | None = None
    code: str | None = None
    reason: str
    key_id: str | None = None
    body_sha256: str
    body_bytes: int
    received_at: datetime
