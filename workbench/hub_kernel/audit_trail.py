"""The hub's audit trail: what the hub did, appended to its hash-chained audit log.

One ``AuditLog`` (``workbench.trust.audit``) per hub, written only through this class, from
the API's threads (launch, cancel), the redispatcher and the ingest flusher (the log is
thread-safe and locked against a second process). Entries::

    hub.started          hub_key_id, spoke_keys ({spoke: key id}), signing_required
    experiment.launched  experiment_id, manifest_hash, study, spokes, algorithms
    order.sent           experiment_id, spoke_id, message_id, body_sha256, key_id
    order.resent         the same, sent again by the redispatcher (same id, same body)
    experiment.cancelled experiment_id
    cancel.sent          experiment_id, spoke_id, message_id, body_sha256, key_id
    cancel.resent        the same, sent again by the redispatcher
    inbox.accepted       per committed batch: count, and one line per message,
                         "NATURAL/KEY/PARTS MESSAGE-ID SIGNER-KEY-ID", e.g.
                         "case.result/exp-1/site-01/p-7/lung-lav950/1 9f2c... 1a2b..."
                         (one string each: canonicalising the entry costs per JSON value)
    inbox.rejected       per committed batch with refusals: count, and each one's code,
                         reason, message id, spoke, type, experiment and key id (replays too)
    hub.stopped          {}

Each append is on disk (fsync) before it returns, so ingestion appends once per batch, not
per message. An entry follows the database commit it records and precedes the broker
acknowledgements: a hub that dies between the two has committed a batch its log does not
show, and the broker's redelivery then appears in the log as ``replayed`` refusals of those
message ids. A failed append is logged and counted (``failures``), never raised: the log
refuses further appends after a failed write (see ``AuditLog.append``), which ``/health``
shows.

>>> trail = AuditTrail(None)          # a hub without an audit log records nothing
>>> trail.record("hub.started", {})
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from workbench.errors import AuditError, CanonicalJSONError
from workbench.hub_kernel.effects import Inbound, Outcome
from workbench.trust.audit import AuditLog, ChainHead

log = logging.getLogger(__name__)


class AuditTrail:
    """Appends the hub's events to its audit log (``None``: no log, nothing recorded)."""

    def __init__(self, audit_log: AuditLog | None) -> None:
        self.log = audit_log
        self._lock = threading.Lock()
        self.failures = 0

    @property
    def path(self) -> Path | None:
        """The audit log file, if there is one."""
        return None if self.log is None else self.log.path

    def head(self) -> ChainHead | None:
        """The log's chain head, if there is a log."""
        return None if self.log is None else self.log.head()

    def record(self, event: str, data: Mapping[str, Any]) -> None:
        """Append one entry; a failure is logged and counted, never raised."""
        if self.log is None:
            return
        try:
            self.log.append(event, data)
        except (AuditError, CanonicalJSONError, ValueError) as e:
            with self._lock:
                self.failures += 1
            log.error("cannot append %s to the hub's audit log: %s", event, e)

    def sent(
        self, what: str, experiment_id: str, spoke_id: str, message_id: str, body_sha256: str,
        key_id: str | None, resent: bool,
    ) -> None:  # fmt: skip
        """An order or cancel the broker confirmed (``what`` is ``order`` or ``cancel``)."""
        self.record(
            f"{what}.{'resent' if resent else 'sent'}",
            {
                "experiment_id": experiment_id, "spoke_id": spoke_id, "message_id": message_id,
                "body_sha256": body_sha256, "key_id": key_id,
            },
        )  # fmt: skip

    def batch(self, items: Sequence[Inbound], outcomes: Sequence[Outcome]) -> None:
        """One committed ingest batch: an entry for the accepted, one for the refused."""
        if self.log is None:
            return
        accepted: list[str] = []
        refused: list[dict[str, Any]] = []
        for item, outcome in zip(items, outcomes, strict=True):
            message = item.message
            if outcome.recorded:
                refused.append(_refusal(item, outcome))
            elif outcome.accepted and message is not None:
                key = "/".join(message.natural_key)
                accepted.append(f"{key} {message.id} {item.signer_key_id or 'unsigned'}")
        if accepted:
            self.record("inbox.accepted", {"count": len(accepted), "messages": accepted})
        if refused:
            self.record("inbox.rejected", {"count": len(refused), "messages": refused})


def _refusal(item: Inbound, outcome: Outcome) -> dict[str, Any]:
    message = item.message
    spoke = getattr(message, "spoke_id", None) if message is not None else item.spoke_hint
    kind = message.type if message is not None else item.type_hint
    experiment = getattr(message, "experiment_id", None) if message else item.experiment_hint
    return {
        "code": outcome.code, "reason": _clean(outcome.reason or "", 300),
        "message_id": _clean(message.id if message is not None else item.id_hint),
        "delivery_id": _clean(item.message_id, 200), "spoke_id": _clean(spoke),
        "type": _clean(kind), "experiment_id": _clean(experiment),
        "key_id": _clean(item.signer_key_id or item.key_hint), "body_sha256": item.body_sha256,
    }  # fmt: skip


def _clean(value: object, limit: int = 128) -> str | None:
    """Claimed text as recorded: cut short, and valid UTF-8 (a lone surrogate becomes ?)."""
    if not isinstance(value, str):
        return None
    return value[:limit].encode("utf-8", "replace").decode("utf-8")
