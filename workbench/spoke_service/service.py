"""The spoke process: orders in, sandboxed runs, results out, through the broker.

Threads, each with one job:

- the broker's delivery thread runs ``_on_order``: parse, check, store the order durably,
  plan its cases (and the messages announcing them) in one transaction, then ack;
- ``concurrency`` worker threads claim queued cases one at a time and run them
  (``CaseWork.execute``, in ``casework.py``);
- the outbox thread sends queued messages until the broker confirms each;
- the heartbeat thread queues a ``spoke.heartbeat`` every ``heartbeat_s``.

A cancel drops the experiment's queued cases, withdraws its results held for review, and
kills its running containers (labelled with the experiment); a run that ends after the
cancel is settled as ``cancelled`` in the same transaction that checks the cancel, so its
result never leaves. A case is not started once the hub's clock has certainly passed the
experiment's deadline (``deadlines.py``); a case already running is left to its own
timeout, and the hub refuses its result if it arrives late. If the state database or the
audit log cannot be written (disk full), the spoke halts (``failure``): nothing
uncommitted is sent, and the case in hand stays ``running`` in the committed state, to run
again after a restart.

Nothing that leaves holds an identifier: cases are named by pseudonym, failures by a code
from the fixed table, and the reference standard is reduced to the numbers a study asks for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from workbench.core import messages as m
from workbench.core.cohort import matches
from workbench.core.pseudonym import Pseudonymizer
from workbench.core.run_errors import Error, RunErrorCode
from workbench.errors import AuditError, CaseError, EngineError, SignatureError, SpokeHaltedError
from workbench.spoke_service.casework import CaseWork, Outgoing, body, status
from workbench.spoke_service.catalog import Catalog
from workbench.spoke_service.config import SpokeConfig
from workbench.spoke_service.deadlines import DeadlineReckoner
from workbench.spoke_service.engine import ContainerEngine
from workbench.spoke_service.identity import pseudonym_secret, signing_key
from workbench.spoke_service.image_gate import ImageGate
from workbench.spoke_service.outbox import OutboxSender
from workbench.spoke_service.participants import Participants
from workbench.spoke_service.pending import HELD_STATE, PendingStore
from workbench.spoke_service.reference import SiteReference
from workbench.spoke_service.release_gate import ReleaseGate
from workbench.spoke_service.runner import CaseRunner
from workbench.spoke_service.sandbox import EXPERIMENT_LABEL, SPOKE_LABEL
from workbench.spoke_service.staging import DicomCache, Staging
from workbench.spoke_service.state import CaseRow, SpokeState
from workbench.transport.base import Broker, Delivery, Subscription
from workbench.trust.audit import AuditLog
from workbench.trust.keys import TrustStore
from workbench.trust.wire import WireSigner, signature_of, verify_wire

log = logging.getLogger(__name__)

_SWEEP_S = 1.0  # how often a worker looks for queued cases past their deadline
# What a full disk raises: SQLite's SQLITE_FULL (and kin), or the audit log refusing to write.
_UNWRITABLE = (sqlite3.Error, AuditError, OSError)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Spoke:
    """One institution's spoke. ``start()`` connects and works until ``stop()``."""

    def __init__(
        self,
        config: SpokeConfig,
        broker: Broker,
        engine: ContainerEngine,
        reference: SiteReference | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.config = config
        # The spoke's wall clock: heartbeats' sent_at and when an order was stored. It may be
        # far off the hub's; deadlines use only differences of it (see deadlines.py).
        self._clock = clock
        self._broker = broker
        self._engine = engine
        self._reference = reference or (
            SiteReference.from_csv(config.reference_csv)
            if config.reference_csv
            else SiteReference.empty()
        )
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.state = SpokeState(config.state_path)
        self.catalog = Catalog.open(config.catalog_path)
        self._participants = Participants(
            self.catalog, Pseudonymizer(pseudonym_secret(config)), config.spoke_id
        )
        self._dicom_cache = DicomCache(config.state_dir / "dicom-cache")
        self._runner = CaseRunner(
            engine, config.state_dir / "work", config.state_dir / "logs",
            background_cleanup=True, labels={SPOKE_LABEL: config.spoke_id},
            dicom_cache=self._dicom_cache,
        )  # fmt: skip
        self._trust = (
            TrustStore.from_paths(config.trusted_keys) if config.trusted_keys else TrustStore()
        )
        self._signer = WireSigner(signing_key(config))
        self.audit = AuditLog(config.audit_path)
        self._outbox = OutboxSender(
            self.state, broker, self._signer,
            on_sent=self._audit_sent,
        )  # fmt: skip
        self._images = ImageGate(engine, self._trust, config.policy, self.audit)
        self._pending = PendingStore.open(config.state_dir)
        self._work = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._subscription: Subscription | None = None
        self._halt_lock = threading.Lock()
        self._deadlines = DeadlineReckoner(self.state, clock)
        self._casework = CaseWork(
            config.spoke_id, config.policy, self.state, self._participants, self._images,
            self._runner, ReleaseGate(config.policy), self._pending, self._reference,
            self._deadlines, self.audit,
        )  # fmt: skip
        self._next_sweep = 0.0
        self.failure: SpokeHaltedError | None = None
        self.failed = threading.Event()

    # life cycle -------------------------------------------------------------------------

    def start(self, index: bool = True) -> None:
        """Index the DICOM, recover interrupted work, subscribe and start working."""
        if index:
            report = self.catalog.index(self.config.dicom_dir, workers=os.cpu_count() or 1)
            log.info("catalog: %d new, %d problems", report.indexed, report.problem_count)
        orphans = self._engine.remove_containers({SPOKE_LABEL: self.config.spoke_id})
        if orphans:
            log.warning("removed %d containers left running by the last shutdown", orphans)
        self._dicom_cache.evict(0)  # no container runs yet: laid out again as runs need them
        swept = Staging.sweep(self.config.state_dir / "work")
        if swept:
            log.warning("removed %d staged runs left by the last shutdown", swept)
        requeued = self.state.requeue_interrupted()
        if requeued:
            log.warning("re-running %d cases interrupted by the last shutdown", requeued)
        for experiment_id in self.state.cancelled_experiments():
            # The spoke may have stopped between a cancel and the withdrawal it entails.
            self._withdraw_held(experiment_id)
        self.audit.append("spoke.started", {"key_id": self._signer.key_id, "requeued": requeued,
                                            "trusted_keys": list(self._trust.key_ids)})  # fmt: skip
        self._announce_catalog()
        self._outbox.start()
        for n in range(self.config.concurrency):
            self._spawn(self._work_loop, f"worker-{n}")
        self._spawn(self._heartbeat_loop, "heartbeat")
        self._subscription = self._broker.subscribe(
            m.orders_queue(self.config.spoke_id), self._on_order, prefetch=1
        )
        self._work.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking orders, let running cases finish, flush the outbox, disconnect."""
        self._stopping.set()
        self._work.set()
        if self._subscription is not None:
            self._subscription.cancel()
        for thread in self._threads:
            thread.join(timeout)
        self._runner.close()
        self._outbox.flush(timeout=5.0)
        self._outbox.stop()
        self._broker.close()
        self.state.close()
        self._pending.close()
        try:
            self.audit.append("spoke.stopped", {})
        except AuditError as e:
            log.error("could not record the stop in the audit log: %s", e)
        self.audit.close()
        self.catalog.close()

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # orders -----------------------------------------------------------------------------

    def _on_order(self, delivery: Delivery) -> None:
        try:
            verify_wire(delivery.body, delivery.headers, self._trust, signer="hub")
            key = signature_of(delivery.headers).key_id
            if not self.config.policy.accepts_signer(key):
                raise SignatureError("not_accepted", f"the policy does not accept key {key}", key)
            message = m.parse_message(delivery.body)
        except (SignatureError, m.MessageError) as e:
            reason = getattr(e, "reason", "malformed_message")
            log.error("rejected an order message (%s): %s", reason, e)
            self.audit.append(
                "order.rejected", {"reason": reason, "message_id": delivery.message_id}
            )
            delivery.reject()
            return
        if getattr(message, "spoke_id", None) != self.config.spoke_id:
            log.error("rejected a %s addressed to another spoke", message.type)
            self.audit.append("order.rejected", {"reason": "other_spoke", "message_id": message.id})
            delivery.reject()
            return
        if isinstance(message, m.ExperimentOrder):
            if m.manifest_hash(message.manifest) != message.manifest_hash:
                log.error("rejected order %s: manifest hash mismatch", message.id)
                delivery.reject()
                return
            try:
                self.state.store_order(
                    message.manifest.experiment_id, message.manifest_hash, delivery.body,
                    received_at=self._clock().timestamp(),
                )  # fmt: skip
                # Not waited for on disk: the order itself is already durable in the state
                # database, and the case's result entry (durable) follows in the same chain.
                self.audit.append("order.received", {
                    "experiment_id": message.manifest.experiment_id, "message_id": message.id,
                    "manifest_hash": message.manifest_hash, "signer": key,
                }, durable=False)  # fmt: skip
                self._plan(message)
            except _UNWRITABLE as e:
                self._halt(e, "storing an order")  # unacknowledged: redelivered after restart
                return
        elif isinstance(message, m.ExperimentCancel):
            try:
                self.audit.append("order.cancel", {"experiment_id": message.experiment_id})
                self._cancel(message.experiment_id)
            except _UNWRITABLE as e:
                self._halt(e, "recording a cancel")
                return
        else:
            log.error("rejected a %s on the orders queue", message.type)
            delivery.reject()
            return
        delivery.ack()
        self._outbox.notify()
        self._work.set()

    def _plan(self, order: m.ExperimentOrder) -> None:
        manifest = order.manifest
        rows: list[CaseRow] = []
        outgoing: Outgoing = []
        participants = 0
        for patient_id in self.catalog.patient_ids():
            try:
                case = self._participants.case(patient_id)
            except CaseError as e:
                log.warning("participant skipped: %s", e.detail)
                continue
            if not matches(case.document, manifest.cohort):
                continue
            participants += 1
            for algorithm in manifest.algorithms:
                row = CaseRow(
                    manifest.experiment_id, case.participant_id, algorithm.name, 1,
                    patient_id, "queued",
                )  # fmt: skip
                rows.append(row)
                outgoing.append(self._status(row, "queued"))
        accepted = m.ExperimentAccepted(
            spoke_id=self.config.spoke_id,
            experiment_id=manifest.experiment_id,
            participants=participants,
            cases=len(rows),
        )
        self.state.add_cases(rows, [(m.HUB_INBOX, body(accepted)), *outgoing])
        if not rows:
            # add_cases queues nothing when nothing is new: say so explicitly.
            self.state.enqueue([(m.HUB_INBOX, body(accepted))])
            log.warning("experiment %s: no case matches its cohort", manifest.experiment_id)

    def _cancel(self, experiment_id: str) -> None:
        n = self.state.cancel(experiment_id, lambda c: [self._status(c, "cancelled")])
        # Then the results held for review go: none can be released any more (the release
        # checks the cancel in the spoke's own database, see ``pending``).
        withdrawn = self._withdraw_held(experiment_id)
        # The cancel is committed first: a run the kill ends is then settled as cancelled.
        try:
            stopped = self._engine.stop_containers(
                {SPOKE_LABEL: self.config.spoke_id, EXPERIMENT_LABEL: experiment_id}
            )
        except EngineError as e:
            log.error("experiment %s cancelled, but its containers were not stopped: %s",
                      experiment_id, e.detail)  # fmt: skip
            stopped = 0
        log.info("experiment %s cancelled: %d waiting cases dropped (%d held results withdrawn),"
                 " %d running stopped", experiment_id, n, withdrawn, stopped)  # fmt: skip

    def _withdraw_held(self, experiment_id: str) -> int:
        """Reject the cancelled experiment's results held for review; audited if any."""
        released = {
            (c.participant_id, c.algorithm, c.attempt)
            for c in self.state.cases(state="done", experiment_id=experiment_id)
        }
        withdrawn = self._pending.withdraw(experiment_id, released)
        if withdrawn:
            self.audit.append(
                "results.withdrawn", {"experiment_id": experiment_id, "results": withdrawn}
            )
        return withdrawn

    # work -------------------------------------------------------------------------------

    def _work_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._expire_overdue()
                case = self.state.claim_next(lambda c: [self._status(c, "running")])
            except _UNWRITABLE as e:
                self._halt(e, "claiming a case")
                return
            if case is None:
                self._work.wait(1.0)
                self._work.clear()
                continue
            self._outbox.notify()
            try:
                state, messages, error = self._casework.execute(case)
                final = self.state.finish(
                    case, state, messages, error, [self._status(case, "cancelled")]
                )
                if final != state:
                    if state == HELD_STATE:  # held just before the cancel came: withdraw it
                        self._withdraw_held(case.experiment_id)
                    self.audit.append("case.cancelled", {
                        "experiment_id": case.experiment_id, "attempt": case.attempt,
                        "participant_id": case.participant_id, "algorithm": case.algorithm,
                        "withheld": state,
                    })  # fmt: skip
            except _UNWRITABLE as e:
                # Rolled back: the case stays ``running`` and nothing of it is queued to send;
                # it runs again when the spoke restarts (requeue_interrupted).
                self._halt(e, f"recording case {case.participant_id}/{case.algorithm}")
                return
            self._outbox.notify()

    def _halt(self, error: BaseException, doing: str) -> None:
        """Stop taking work because durable state cannot be written; say so loudly."""
        detail = f"{type(error).__name__}: {error}"
        with self._halt_lock:
            first = self.failure is None
            if first:
                self.failure = SpokeHaltedError(
                    f"spoke {self.config.spoke_id} halted while {doing}: its state cannot be "
                    f"written ({detail}); free space in {self.config.state_dir} and restart it. "
                    "Nothing uncommitted was sent; interrupted cases run again on restart."
                )
        if not first:
            return
        log.error("%s", self.failure)
        try:
            self.audit.append("spoke.halted", {"while": doing, "error": detail[:300]})
        except AuditError as e:
            log.error("the halt could not be recorded in the audit log either: %s", e)
        self._stopping.set()
        self._work.set()
        self.failed.set()

    # deadlines --------------------------------------------------------------------------

    def _expire_overdue(self) -> None:
        """Fail, without running them, the queued cases of experiments past their deadline."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_S
        error = Error.of(RunErrorCode.DEADLINE_PASSED)
        for experiment_id in self.state.queued_experiments():
            if not self._deadlines.passed(experiment_id):
                continue
            n = self.state.expire(
                experiment_id, error.code.value, lambda c: [self._status(c, "failed", error)]
            )
            if n:
                log.warning("experiment %s: deadline passed, %d queued cases not run",
                            experiment_id, n)  # fmt: skip
                self.audit.append("deadline.passed", {"experiment_id": experiment_id, "cases": n})

    def _audit_sent(self, seqs: list[int]) -> None:
        try:
            self.audit.append("messages.sent", {"outbox": seqs}, durable=False)
        except AuditError as e:  # on the outbox thread, which must go on sending
            self._halt(e, "recording sent messages")

    def _status(self, case: CaseRow, state: str, error: Error | None = None) -> tuple[str, bytes]:
        return status(self.config.spoke_id, case, state, error)

    # announcements ----------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._stopping.is_set():
            counts = self.state.counts()
            beat = m.SpokeHeartbeat(
                spoke_id=self.config.spoke_id,
                sent_at=self._clock().astimezone(UTC).isoformat(timespec="seconds"),
                queued=counts.get("queued", 0),
                running=counts.get("running", 0),
                participants=self.catalog.counts().participants,
            )
            try:
                self.state.enqueue([(m.HUB_INBOX, body(beat))])
            except _UNWRITABLE as e:
                self._halt(e, "queuing a heartbeat")
                return
            self._outbox.notify()
            self._stopping.wait(self.config.heartbeat_s)

    def _announce_catalog(self) -> None:
        counts = self.catalog.counts()
        summary = self.catalog.acquisition_summary()
        manifest = m.ParticipantManifest(
            spoke_id=self.config.spoke_id,
            participants=counts.participants,
            series=counts.series,
            instances=counts.instances,
            acquisition=summary,
        )
        fingerprint = hashlib.sha256(
            json.dumps([counts.instances, counts.series, summary], sort_keys=True).encode()
        ).hexdigest()
        if self.state.get_setting("manifest") != fingerprint:
            self.state.enqueue([(m.HUB_INBOX, body(manifest))])
            self.state.set_setting("manifest", fingerprint)

    # numbers ----------------------------------------------------------------------------

    def idle(self) -> bool:
        """No case queued or running and nothing waiting in the outbox."""
        counts = self.state.counts()
        busy = counts.get("queued", 0) + counts.get("running", 0)
        return busy == 0 and not self.state.pending(limit=1)
