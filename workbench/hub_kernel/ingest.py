"""The hub's inbox consumer: parse, write in batches, and acknowledge only after the commit.

``Ingestor.handle`` is the ``Broker`` handler for ``HUB_INBOX``. It parses the delivery on
the broker's thread (bytes that are not a valid message become a pending rejection, never an
exception) and queues it; a flusher thread writes what is queued in one transaction when
``batch_size`` messages are waiting or the oldest has waited ``max_delay_s``, and only once
that transaction committed does it ``ack()`` the accepted deliveries and ``reject()`` the
refused ones (dead-letter queue; the reason is in the ``rejections`` table).

When the store fails:

- transiently (the database is unreachable or locked): nothing is acknowledged, the batch
  is kept and retried with capped exponential backoff; the broker stops delivering once
  ``prefetch`` messages are unacknowledged, which is the back-pressure;
- permanently (a statement the database refuses): the batch is retried one message at a
  time, so that only the message that cannot be written is rejected.

A hub that dies before a commit loses nothing: the broker delivers the unacknowledged
messages again, and the natural-key writes make the second copy a no-op.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from workbench.core.messages import MessageError, parse_message
from workbench.errors import StoreError
from workbench.hub_kernel.effects import Inbound, Outcome
from workbench.hub_kernel.tables import utcnow
from workbench.transport.base import Delivery

log = logging.getLogger(__name__)

_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 5.0


class IngestStore(Protocol):
    """What ingestion needs from the store: apply a batch in one transaction."""

    def apply(self, items: Sequence[Inbound]) -> list[Outcome]:
        """Write ``items`` atomically; one outcome each. Raises ``StoreError``."""
        ...


@dataclass
class IngestStats:
    """Counters since start: messages accepted and rejected, commits, failed attempts."""

    accepted: int = 0
    rejected: int = 0
    batches: int = 0
    failures: int = 0


class Ingestor:
    """Turns inbox deliveries into committed store rows, then settles them with the broker."""

    def __init__(
        self,
        store: IngestStore,
        batch_size: int = 100,
        max_delay_s: float = 0.02,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if batch_size < 1 or max_delay_s < 0:
            raise ValueError("batch_size must be at least 1 and max_delay_s not negative")
        self._store = store
        self.batch_size = batch_size
        self.max_delay_s = max_delay_s
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: list[tuple[Delivery, Inbound]] = []
        self._oldest = 0.0
        self._retry_at = 0.0
        self._backoff = _BACKOFF_MIN_S
        self._flush_lock = threading.Lock()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.stats = IngestStats()

    def handle(self, delivery: Delivery) -> None:
        """The subscription handler: parse and queue one delivery (never raises)."""
        try:
            item = inbound(delivery, self._clock())
        except Exception:  # a bug here must not kill the broker's delivery thread
            log.exception("cannot read delivery %s; it stays unacknowledged", delivery.message_id)
            return
        with self._cond:
            if self._closing:
                return  # left unacknowledged: the broker delivers it again after a restart
            if not self._pending:
                self._oldest = time.monotonic()
            self._pending.append((delivery, item))
            self._cond.notify_all()

    def start(self) -> None:
        """Start the flusher thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hub-ingest", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking deliveries, write and settle what is queued (if the store lets us)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()

    def pending(self) -> int:
        """Deliveries received and not yet committed."""
        with self._cond:
            return len(self._pending)

    def flush(self) -> int:
        """Write everything queued now, then settle it; returns how many were settled.

        On a store failure the batch goes back to the queue (unacknowledged) and 0 is
        returned.
        """
        with self._flush_lock:
            with self._cond:
                batch, self._pending = self._pending, []
            if not batch:
                return 0
            try:
                outcomes = self._apply(batch)
            except StoreError as e:
                self._failed(batch, e)
                return 0
            self._backoff = _BACKOFF_MIN_S
            self._settle(batch, outcomes)
            return len(batch)

    def _apply(self, batch: list[tuple[Delivery, Inbound]]) -> list[Outcome]:
        items = [item for _, item in batch]
        try:
            return self._store.apply(items)
        except StoreError as e:
            if e.transient or len(items) == 1:
                raise
            log.warning("a batch of %d was refused (%s); writing one by one", len(items), e)
        return [self._apply_one(item) for item in items]

    def _apply_one(self, item: Inbound) -> Outcome:
        try:
            return self._store.apply([item])[0]
        except StoreError as e:
            if e.transient:
                raise
            log.error("message %s cannot be stored: %s", item.message_id, e)
            refused = replace(item, refusal=f"store refused the message: {e}"[:300])
            return self._store.apply([refused])[0]

    def _failed(self, batch: list[tuple[Delivery, Inbound]], error: StoreError) -> None:
        self.stats.failures += 1
        log.warning(
            "results store failed (%s); %d messages stay unacknowledged, retry in %.2f s",
            error,
            len(batch),
            self._backoff,
        )
        with self._cond:
            self._pending[:0] = batch
            self._oldest = time.monotonic()
            self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX_S)

    def _settle(self, batch: list[tuple[Delivery, Inbound]], outcomes: list[Outcome]) -> None:
        self.stats.batches += 1
        for (delivery, item), outcome in zip(batch, outcomes, strict=True):
            try:
                if outcome.accepted:
                    delivery.ack()
                    self.stats.accepted += 1
                else:
                    log.warning("rejected message %s: %s", item.message_id, outcome.reason)
                    delivery.reject()
                    self.stats.rejected += 1
            except Exception:  # the broker went away: it redelivers, the write is idempotent
                log.exception("cannot settle message %s with the broker", item.message_id)

    def _due(self) -> bool:
        now = time.monotonic()
        if not self._pending or now < self._retry_at:
            return False
        return len(self._pending) >= self.batch_size or now - self._oldest >= self.max_delay_s

    def _wait_s(self) -> float:
        now = time.monotonic()
        if not self._pending:
            return 1.0
        return max(self._retry_at - now, self._oldest + self.max_delay_s - now, 0.001)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self._due():
                    self._cond.wait(self._wait_s())
                if self._closing:
                    return
            try:
                self.flush()
            except Exception:  # never let the flusher die: the deliveries stay unacked
                log.exception("ingest flush failed")
                time.sleep(self._backoff)


def inbound(delivery: Delivery, received_at: datetime) -> Inbound:
    """Parse a delivery into an ``Inbound`` (a message, or the reason it is not one)."""
    body = delivery.body
    digest = hashlib.sha256(body).hexdigest()
    try:
        message = parse_message(body)
    except MessageError as e:
        spoke, kind = _hints(body)
        return Inbound(
            delivery.message_id,
            digest,
            len(body),
            received_at,
            problem=str(e)[:250],
            spoke_hint=spoke,
            type_hint=kind,
        )
    return Inbound(delivery.message_id, digest, len(body), received_at, message=message)


def _hints(body: bytes) -> tuple[str | None, str | None]:
    """The claimed sender and type of an invalid message, for the rejection record."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, None
    if not isinstance(raw, dict):
        return None, None
    spoke, kind = raw.get("spoke_id"), raw.get("type")
    return (spoke if isinstance(spoke, str) else None, kind if isinstance(kind, str) else None)
