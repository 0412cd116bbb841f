"""Running one claimed case to its outcome: the state it ends in and what it sends.

``CaseWork.execute`` is what a spoke's worker thread does with a case it claimed:

1. nothing more if the experiment was cancelled, or its deadline has certainly passed;
2. the algorithm's image, verified by digest and signature (``ImageGate``);
3. the participant's de-identified case (``Participants``), run in the sandbox under the
   experiment's limits bounded by the spoke's policy (``CaseRunner``);
4. the output through the release gate (schema, size, identifiers from the case's own
   headers): refused, it becomes a failure whose detail stays in the local log;
5. the result, naming the audit entry that records it, queued to send, or held for a
   person to release (``pending``).

It returns the case's state and the messages to queue; the caller writes both in one
transaction that also checks the cancel (``SpokeState.finish``). Every failure travels as a
code from the fixed table (``core.run_errors``), never as a traceback or a container log.
"""

from __future__ import annotations

import hashlib
import logging

from pydantic import BaseModel

from workbench.core import messages as m
from workbench.core.run_errors import Error, RunErrorCode
from workbench.errors import CaseError, EngineError
from workbench.spoke_service.deadlines import DeadlineReckoner
from workbench.spoke_service.image_gate import ImageGate
from workbench.spoke_service.participants import Participants
from workbench.spoke_service.pending import HELD_STATE, CaseKey, PendingStore
from workbench.spoke_service.policy import SpokePolicy
from workbench.spoke_service.reference import SiteReference
from workbench.spoke_service.release_gate import ReleaseGate
from workbench.spoke_service.runner import CaseRunner, RunResult
from workbench.spoke_service.sandbox import EXPERIMENT_LABEL, Limits
from workbench.spoke_service.state import CaseRow, SpokeState
from workbench.trust.audit import AuditLog, ChainHead
from workbench.trust.canonical import canonical_json

__all__ = ["CaseWork", "Outgoing", "body", "status"]

log = logging.getLogger("workbench.spoke_service.service")  # as before the split

Outgoing = list[tuple[str, bytes]]


def body(message: BaseModel) -> bytes:
    """A message as the canonical JSON bytes the outbox signs."""
    return canonical_json(message.model_dump(mode="json"))


def status(
    spoke_id: str, case: CaseRow, state: str, error: Error | None = None
) -> tuple[str, bytes]:
    """A ``case.status`` for the hub's inbox: the case's new state, and a failure's code."""
    message = m.CaseStatus(
        experiment_id=case.experiment_id,
        spoke_id=spoke_id,
        participant_id=case.participant_id,
        algorithm=case.algorithm,
        attempt=case.attempt,
        state=state,  # type: ignore[arg-type]
        error=m.ErrorInfo(code=error.code, reason=error.reason) if error else None,
    )
    return (m.HUB_INBOX, body(message))


class CaseWork:
    """What a spoke does with one claimed case; its parts are the spoke's own (see ``Spoke``)."""

    def __init__(
        self,
        spoke_id: str,
        policy: SpokePolicy,
        state: SpokeState,
        participants: Participants,
        images: ImageGate,
        runner: CaseRunner,
        gate: ReleaseGate,
        pending: PendingStore,
        reference: SiteReference,
        deadlines: DeadlineReckoner,
        audit: AuditLog,
    ) -> None:
        self._spoke_id, self._policy, self._state = spoke_id, policy, state
        self._participants, self._images, self._runner = participants, images, runner
        self._gate, self._pending, self._reference = gate, pending, reference
        self._deadlines, self._audit = deadlines, audit

    def execute(self, case: CaseRow) -> tuple[str, Outgoing, str | None]:
        """Run one case; returns its final state, the messages to send and an error code."""
        order = m.parse_message(self._state.order_body(case.experiment_id) or b"")
        assert isinstance(order, m.ExperimentOrder)
        if self._state.is_cancelled(case.experiment_id):
            return "cancelled", [status(self._spoke_id, case, "cancelled")], None
        if self._deadlines.passed(case.experiment_id):  # claimed between two sweeps
            return self._failure(case, Error.of(RunErrorCode.DEADLINE_PASSED))
        manifest = order.manifest
        algorithm = next(a for a in manifest.algorithms if a.name == case.algorithm)
        try:
            image_id = self._images.image_id(algorithm)
            built = self._participants.case(case.patient_id)
            limits = self._policy.bound(
                Limits(timeout_s=manifest.timeout_s, memory_bytes=manifest.memory_bytes)
            )
            result = self._runner.run(
                built, image_id, algorithm.args, limits,
                labels={EXPERIMENT_LABEL: case.experiment_id},
            )  # fmt: skip
        except (EngineError, CaseError) as e:
            log.error("case %s/%s failed: %s", case.participant_id, case.algorithm, e.detail)
            return self._failure(case, Error.of(e.code))
        except Exception:
            log.exception("case %s/%s failed inside the spoke", case.participant_id, case.algorithm)
            return self._failure(case, Error.of(RunErrorCode.INTERNAL), audited=False)
        if result.error is not None:
            log.warning("case %s/%s: %s (%s; log %s)", case.participant_id, case.algorithm,
                        result.error.code.value, result.detail, result.log_path)  # fmt: skip
            return self._failure(case, result.error)
        assert result.output is not None and result.output_bytes is not None
        verdict = self._gate.check(
            result.output,
            result.output_bytes,
            self._participants.headers(case.patient_id),
            algorithm.output_schema,
        )
        if verdict.rejected and verdict.error is not None:
            # The detail names fields and kinds of identifier; it stays in the local log.
            log.error("case %s/%s withheld: %s", case.participant_id, case.algorithm,
                      verdict.detail)  # fmt: skip
            return self._failure(case, verdict.error)
        message = self._released(case, order, image_id, result)
        if verdict.held:
            self._audit.append("result.held", {"participant_id": case.participant_id,
                                               "algorithm": case.algorithm})  # fmt: skip
            self._pending.hold(CaseKey.of(message), body(message), verdict.summary)
            log.info("case %s/%s held for release", case.participant_id, case.algorithm)
            return HELD_STATE, [], None
        return "done", [(m.HUB_INBOX, body(message)), status(self._spoke_id, case, "done")], None

    def _failure(
        self, case: CaseRow, error: Error, audited: bool = True
    ) -> tuple[str, Outgoing, str]:
        """The case failed with ``error``: recorded in the audit log, its status to send."""
        if audited:
            self._audit.append("case.failed", {
                "experiment_id": case.experiment_id, "participant_id": case.participant_id,
                "algorithm": case.algorithm, "attempt": case.attempt, "code": error.code.value,
            })  # fmt: skip
        return "failed", [status(self._spoke_id, case, "failed", error)], error.code.value

    def _released(
        self, case: CaseRow, order: m.ExperimentOrder, image_id: str, result: RunResult
    ) -> m.CaseResult:
        assert result.output is not None and result.output_bytes is not None
        output_sha256 = hashlib.sha256(result.output_bytes).hexdigest()
        # The chain of custody: the result names the audit entry that records it (that
        # entry's own seq and hash: other threads append too, so not the head a moment later).
        entry = self._audit.append("result.released", {
            "experiment_id": case.experiment_id, "participant_id": case.participant_id,
            "algorithm": case.algorithm, "attempt": case.attempt,
            "manifest_hash": order.manifest_hash, "image_digest": image_id,
            "output_sha256": output_sha256,
        })  # fmt: skip
        return m.CaseResult(
            experiment_id=case.experiment_id,
            spoke_id=self._spoke_id,
            participant_id=case.participant_id,
            algorithm=case.algorithm,
            attempt=case.attempt,
            manifest_hash=order.manifest_hash,
            image_digest=image_id,
            output=result.output,
            output_sha256=output_sha256,
            reference=self._reference.for_patient(case.patient_id, order.manifest.reference_fields),
            seconds=round(result.seconds, 3),
            audit_head=str(ChainHead(entry["seq"], entry["hash"])),
        )
