"""The hub's inbox consumer: verify, parse, write in batches, acknowledge after the commit.

``Ingestor.handle`` is the ``Broker`` handler for ``HUB_INBOX``; it queues each delivery
with its time of receipt. A batch is read and written once ``batch_size`` messages wait or
the oldest has waited ``max_delay_s``, on the delivering thread itself (see ``handle``), or
by a flusher thread once no delivery came for ``max_delay_s``. Reading a delivery verifies
the body's signature first (``workbench.trust.wire``: the exact bytes received, against the
spokes' keys), then parses it, then requires the signing key to be the key of the spoke
the message names: a spoke cannot speak for another. A message that fails any of these
becomes a rejection with its reason code (``effects.CODES``), never an exception, and
nothing of it reaches the store.
The batch is written in one transaction, one entry for it is appended to the hub's audit
log, and only then are the accepted deliveries acknowledged and the refused ones rejected
(dead-letter queue; the reason is in the ``rejections`` table), in one write to the broker.

The signature checks of a batch are handed to ``checks`` (``workbench.trust.checks``)
before anything else of it is done. When they run in parallel (``WorkerChecks``, a process
of its own), a due batch is only *staged*: its checks are submitted and the thread goes
back to receiving; the batch is written when the next one is staged, or by the flusher
once no delivery came for ``max_delay_s``. So the checks of one batch run on another core
while the ingesting thread receives the next and writes the one before. Verdicts come back
in order; nothing is acknowledged before its batch is written, so a staged batch lost with
the hub is delivered again.

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

from workbench.core.messages import MAX_MESSAGE_BYTES, MessageError, parse_message
from workbench.errors import SignatureError, StoreError
from workbench.hub_kernel.audit_trail import AuditTrail
from workbench.hub_kernel.effects import Inbound, Outcome
from workbench.hub_kernel.tables import utcnow
from workbench.transport.base import Delivery, settle_all
from workbench.trust.checks import Check, Checks, InlineChecks, Verdicts
from workbench.trust.keys import TrustStore
from workbench.trust.signing import Signature, bad_signature, signature_matches, signing_key
from workbench.trust.wire import signature_of

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
    """Counters since start: messages accepted, rejected and replayed, commits, failures."""

    accepted: int = 0
    rejected: int = 0
    replayed: int = 0
    batches: int = 0
    failures: int = 0


class Ingestor:
    """Turns inbox deliveries into committed store rows, then settles them with the broker.

    Args:
        store: where batches are written.
        batch_size: commit once this many messages wait.
        max_delay_s: commit once the oldest waiting message waited this long.
        clock: the time of receipt.
        trust: the spokes' public keys, each named after its spoke; every message must be
            signed by the key of the spoke it names. ``None`` accepts unsigned messages: only
            for a hub configured ``insecure_unsigned`` (the ``Hub`` refuses it otherwise).
        audit: the hub's audit trail; each committed batch gets its entries.
        checks: where signatures are checked (default: in the thread writing the batch).
    """

    def __init__(
        self,
        store: IngestStore,
        batch_size: int = 100,
        max_delay_s: float = 0.02,
        clock: Callable[[], datetime] = utcnow,
        trust: TrustStore | None = None,
        audit: AuditTrail | None = None,
        checks: Checks | None = None,
    ) -> None:
        if batch_size < 1 or max_delay_s < 0:
            raise ValueError("batch_size must be at least 1 and max_delay_s not negative")
        self._store = store
        self._trust = trust
        self._audit = audit or AuditTrail(None)
        self.batch_size = batch_size
        self.max_delay_s = max_delay_s
        self._clock = clock
        self._cond = threading.Condition()
        self._checks = checks or InlineChecks()
        self._pending: list[tuple[Delivery, datetime]] = []
        self._oldest = 0.0
        self._staged: _Staged | None = None
        self._last = 0.0  # when the last delivery came
        self._retry_at = 0.0
        self._backoff = _BACKOFF_MIN_S
        self._flush_lock = threading.Lock()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.stats = IngestStats()

    def handle(self, delivery: Delivery) -> None:
        """The subscription handler: queue the delivery; write the batch once it is full.

        A full batch, or one whose oldest message waited ``max_delay_s``, is read
        (verified, parsed), written and settled right here, on the thread that delivered
        the message (for the hub, the connection's receiving thread); the flusher thread
        only writes what waits once no delivery came for ``max_delay_s``. Ingestion is bound
        by one core's worth of Python: one busy thread instead of two handing the GIL to each
        other at every socket read, SQLite call and signature check took the signed
        ingestion benchmark from ~4,100 to ~5,200 messages/s; handing the writes (and their
        fsyncs) to a writer thread, with the checks in their own process, was no faster.
        Meanwhile the broker keeps sending into the socket, up to
        ``prefetch`` unacknowledged messages. With parallel ``checks`` the due batch is
        staged, and the one staged before it written.
        """
        received_at = self._clock()
        now = time.monotonic()
        with self._cond:
            if self._closing:
                return  # left unacknowledged: the broker delivers it again after a restart
            if not self._pending:
                self._oldest = now
                self._cond.notify_all()  # the flusher starts the max_delay_s clock
            self._pending.append((delivery, received_at))
            self._last = now
            due = now >= self._retry_at and (
                len(self._pending) >= self.batch_size or now - self._oldest >= self.max_delay_s
            )
        if due:
            self.flush(stage=self._checks.parallel)

    def start(self) -> None:
        """Start the signature checks and the flusher thread."""
        self._checks.start()
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
            staged = self._staged
            return len(self._pending) + (len(staged.received) if staged is not None else 0)

    def flush(self, stage: bool = False) -> int:
        """Write everything received now, then settle it; returns how many were settled.

        ``stage``: submit the checks of what waits, but write only the batch staged before
        it (see the module docstring). On a store failure the batches go back to the queue
        (unacknowledged) and what was settled before it is returned.
        """
        with self._flush_lock:
            with self._cond:
                received, self._pending = self._pending, []
                staged, self._staged = self._staged, None
            batches = [staged] if staged is not None else []
            keep = None
            settled = written = 0
            try:
                if received:
                    batches.append(self._stage(received))
                    received = []
                    if stage:
                        keep = batches.pop()
                for batch in batches:
                    settled += self._write(batch)
                    written += 1
            except BaseException as e:
                # Whatever was not written goes back, unacknowledged: a StoreError is
                # retried after the backoff, and anything else is a bug, raised once the
                # deliveries are safe.
                later = [*batches[written:], *([keep] if keep is not None else [])]
                back = [entry for b in later for entry in b.received] + received
                failure = e if isinstance(e, StoreError) else StoreError(str(e), transient=True)
                self._failed(back, failure)
                if isinstance(e, StoreError):
                    return settled
                raise
            if keep is not None:
                with self._cond:
                    self._staged = keep
                    self._cond.notify_all()  # the flusher starts its max_delay_s clock
            return settled

    def _stage(self, received: list[tuple[Delivery, datetime]]) -> _Staged:
        """Read each delivery up to its signature check, and submit the checks."""
        read: list[tuple[Delivery, Inbound | _Signed]] = []
        for delivery, received_at in received:
            try:
                read.append((delivery, _prepare(delivery, received_at, self._trust)))
            except Exception:  # a bug here must not stop the batch; this one stays unacked
                log.exception(
                    "cannot read delivery %s; it stays unacknowledged", delivery.message_id
                )
        checks: list[Check] = [
            (item.raw, item.public, item.delivery.body)
            for _, item in read
            if isinstance(item, _Signed)
        ]
        return _Staged(received, read, self._checks.submit(checks))

    def _write(self, staged: _Staged) -> int:
        """Finish reading a staged batch with its verdicts, write it, then settle it."""
        batch = self._read(staged)
        if not batch:
            return 0
        outcomes = self._apply(batch)
        self._backoff = _BACKOFF_MIN_S
        self._audit.batch([item for _, item in batch], outcomes)
        self._settle(batch, outcomes)
        return len(batch)

    def _read(self, staged: _Staged) -> list[tuple[Delivery, Inbound]]:
        """Each delivery's ``Inbound``: verified and parsed, or why it is refused."""
        verdicts = iter(staged.verdicts.result())
        batch = []
        for delivery, item in staged.read:
            try:
                if isinstance(item, _Signed):
                    item = _complete(item, next(verdicts))
                batch.append((delivery, item))
            except Exception:  # as in _stage
                log.exception(
                    "cannot read delivery %s; it stays unacknowledged", delivery.message_id
                )
        return batch

    def _apply(self, batch: list[tuple[Delivery, Inbound]]) -> list[Outcome]:
        items = [item for _, item in batch]
        try:
            return self._store.apply(items)
        except StoreError as e:
            if e.transient:
                raise
            if len(items) == 1:
                # A lone message the database refuses must be rejected, not retried forever.
                return [self._refuse(items[0], e)]
            log.warning("a batch of %d was refused (%s); writing one by one", len(items), e)
        return [self._apply_one(item) for item in items]

    def _apply_one(self, item: Inbound) -> Outcome:
        try:
            return self._store.apply([item])[0]
        except StoreError as e:
            if e.transient:
                raise
            return self._refuse(item, e)

    def _refuse(self, item: Inbound, error: StoreError) -> Outcome:
        log.error("message %s cannot be stored: %s", item.message_id, error)
        refused = replace(
            item, refusal=f"store refused the message: {error}"[:300], code="store_refused"
        )
        return self._store.apply([refused])[0]

    def _failed(self, batch: list[tuple[Delivery, datetime]], error: StoreError) -> None:
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
        """Acknowledge the accepted and reject the refused, in one write to the broker."""
        decisions = []
        replayed = accepted = rejected = 0
        for (delivery, item), outcome in zip(batch, outcomes, strict=True):
            if outcome.accepted and outcome.recorded:  # a replay: harmless, recorded
                log.info("replayed message %s acknowledged", item.message_id)
                replayed += 1
            elif outcome.accepted:
                accepted += 1
            else:
                log.warning("rejected message %s: %s", item.message_id, outcome.reason)
                rejected += 1
            decisions.append((delivery, outcome.accepted))
        try:
            settle_all(decisions)
        except Exception:  # the broker went away: it redelivers, the write is idempotent
            log.exception("cannot settle %d messages with the broker", len(decisions))
        self.stats.batches += 1
        self.stats.replayed += replayed
        self.stats.rejected += rejected
        self.stats.accepted += accepted  # last: watchers wait for this count

    def _due(self) -> bool:
        """The flusher's turn: something waits, and no delivery came for ``max_delay_s``
        (while they come, ``handle`` writes on the delivering thread)."""
        now = time.monotonic()
        if now < self._retry_at or (not self._pending and self._staged is None):
            return False
        return now - self._last >= self.max_delay_s

    def _wait_s(self) -> float:
        if not self._pending and self._staged is None:
            return 1.0
        now = time.monotonic()
        return max(self._retry_at - now, self._last + self.max_delay_s - now, 0.001)

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


@dataclass
class _Signed:
    """A delivery whose signing key is known, waiting for its signature check."""

    delivery: Delivery
    received_at: datetime
    digest: str
    signature: Signature
    raw: bytes
    public: bytes
    signer: str


@dataclass
class _Staged:
    """A batch read up to its signature checks, which were submitted (``verdicts``)."""

    received: list[tuple[Delivery, datetime]]
    read: list[tuple[Delivery, Inbound | _Signed]]
    verdicts: Verdicts


def inbound(delivery: Delivery, received_at: datetime, trust: TrustStore | None = None) -> Inbound:
    """Verify and parse a delivery into an ``Inbound`` (a message, or why it is refused).

    With ``trust``, the body's signature is checked before anything else, and the signer must
    be the spoke the message names; without, the message is taken unsigned.
    """
    item = _prepare(delivery, received_at, trust)
    if isinstance(item, _Signed):
        return _complete(item, signature_matches(item.raw, delivery.body, item.public))
    return item


def _prepare(
    delivery: Delivery, received_at: datetime, trust: TrustStore | None
) -> Inbound | _Signed:
    """Everything ``inbound`` does before the signature check: the check still to make
    (``_Signed``), or the finished ``Inbound`` of an unsigned hub or a refused message."""
    body = delivery.body
    digest = hashlib.sha256(body).hexdigest()
    if trust is None:
        return _parsed(delivery, digest, received_at)
    if len(body) > MAX_MESSAGE_BYTES:  # refused before paying to hash it for Ed25519
        detail = f"message of {len(body)} bytes is too large"
        return _refused(delivery, digest, received_at, "malformed", detail)
    key_id = None
    try:
        signature = signature_of(delivery.headers)
        key_id = signature.key_id
        raw = signature.raw()
        public, signer = signing_key(signature, trust)
    except SignatureError as e:
        return _refused(delivery, digest, received_at, e.reason, e.detail, e.key_id or key_id)
    return _Signed(delivery, received_at, digest, signature, raw, public, signer)


def _complete(item: _Signed, matches: bool) -> Inbound:
    """The ``Inbound`` of a signed delivery, given its check: parsed if the signature matches."""
    delivery, received_at, digest = item.delivery, item.received_at, item.digest
    key_id = item.signature.key_id
    if not matches:
        e = bad_signature(item.signature, item.signer)
        return _refused(delivery, digest, received_at, e.reason, e.detail, key_id)
    return _parsed(delivery, digest, received_at, item.signer, key_id)


def _parsed(
    delivery: Delivery,
    digest: str,
    received_at: datetime,
    signer: str | None = None,
    key_id: str | None = None,
) -> Inbound:
    """Parse a delivery whose signature (if the hub checks them) matched ``signer``'s key."""
    body = delivery.body
    try:
        message = parse_message(body)
    except MessageError as e:
        spoke, kind, experiment, claimed_id = _hints(body)
        return Inbound(
            delivery.message_id, digest, len(body), received_at, problem=str(e)[:250],
            spoke_hint=spoke, type_hint=kind, experiment_hint=experiment, key_hint=key_id,
            id_hint=claimed_id,
        )  # fmt: skip
    if signer is not None and signer != message.spoke_id:
        detail = f"signed by {signer}'s key {key_id}, but the message is from {message.spoke_id}"
        return _refused(delivery, digest, received_at, "wrong_signer", detail, key_id)
    return Inbound(
        delivery.message_id, digest, len(body), received_at, message=message,
        signer_key_id=key_id,
    )  # fmt: skip


def _refused(
    delivery: Delivery,
    digest: str,
    received_at: datetime,
    code: str,
    detail: str,
    key_id: str | None = None,
) -> Inbound:
    """A refusal before the store: what the message claimed is kept only as hints."""
    spoke, kind, experiment, claimed_id = _hints(delivery.body)
    return Inbound(
        delivery.message_id, digest, len(delivery.body), received_at,
        refusal=f"{code}: {detail}"[:300], code=code, spoke_hint=spoke, type_hint=kind,
        experiment_hint=experiment, key_hint=key_id, id_hint=claimed_id,
    )  # fmt: skip


_NO_HINTS: tuple[None, None, None, None] = (None, None, None, None)


def _hints(body: bytes) -> tuple[str | None, str | None, str | None, str | None]:
    """The claimed sender, type, experiment and id of a refused message, for its record."""
    if len(body) > MAX_MESSAGE_BYTES:
        return _NO_HINTS
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _NO_HINTS
    if not isinstance(raw, dict):
        return _NO_HINTS
    experiment = raw.get("experiment_id")
    if experiment is None and isinstance(raw.get("manifest"), dict):
        experiment = raw["manifest"].get("experiment_id")
    return (
        _text(raw.get("spoke_id")),
        _text(raw.get("type")),
        _text(experiment),
        _text(raw.get("id")),
    )


def _text(value: object) -> str | None:
    """A claimed string as valid UTF-8 (the database cannot store a lone surrogate)."""
    if not isinstance(value, str):
        return None
    return value[:200].encode("utf-8", "replace").decode("utf-8")
