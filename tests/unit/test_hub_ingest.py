from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hub_world import SPOKES, Settled, World, make_world, result, wait_until

from workbench.core import messages as m
from workbench.errors import StoreError
from workbench.hub_kernel.effects import Inbound, Outcome
from workbench.hub_kernel.ingest import Ingestor
from workbench.hub_kernel.models import ExperimentStatus
from workbench.hub_kernel.store import ResultsStore
from workbench.transport.base import DEAD_LETTER_QUEUE, Delivery
from workbench.trust.checks import Check, InlineChecks, Verdicts


def _launched(tmp_path: Path) -> tuple[World, ExperimentStatus]:
    world = make_world(tmp_path)
    return world, world.launch()


def test_the_same_result_delivered_twice_counts_once_and_both_are_acked(tmp_path: Path) -> None:
    world, status = _launched(tmp_path)
    settled = Settled()
    ingestor = Ingestor(world.store)
    copy = result(status, "p-1", {"lav950_percent": 3.5})

    ingestor.handle(settled.delivery(copy, "first"))
    ingestor.flush()
    ingestor.handle(settled.delivery(copy, "redelivered"))
    ingestor.handle(settled.delivery(copy, "same-batch"))
    ingestor.flush()

    assert settled.of("ack") == ["first", "redelivered", "same-batch"]
    assert settled.of("reject") == []
    assert world.store.result_count(status.experiment_id) == 1
    assert world.experiments.status(status.experiment_id).spokes[0].done == 1
    assert [r.code for r in world.store.rejections()] == ["replayed", "replayed"]
    assert (ingestor.stats.accepted, ingestor.stats.replayed) == (1, 2)


def test_a_second_result_for_the_same_case_under_a_new_message_id_is_a_harmless_duplicate(
    tmp_path: Path,
) -> None:
    world, status = _launched(tmp_path)
    settled = Settled()
    ingestor = Ingestor(world.store)
    first = result(status, "p-1", {"lav950_percent": 3.5})
    resent = first.model_copy(update={"id": "resent-with-a-new-id"})

    ingestor.handle(settled.delivery(first, "first"))
    ingestor.handle(settled.delivery(resent, "resent"))
    ingestor.flush()

    assert settled.of("ack") == ["first", "resent"]
    assert world.store.rejections() == []
    assert world.store.result_count(status.experiment_id) == 1


def test_malformed_and_unknown_type_messages_go_to_the_dlq_and_later_ones_still_ingest(
    tmp_path: Path,
) -> None:
    world, status = _launched(tmp_path)
    ingestor = Ingestor(world.store, batch_size=10, max_delay_s=0.01)
    ingestor.start()
    consumer = world.server.connect()
    consumer.subscribe(m.HUB_INBOX, ingestor.handle, prefetch=100)
    spoke = world.server.connect()

    spoke.send(m.HUB_INBOX, b"{not json")
    spoke.send(m.HUB_INBOX, b'{"type": "spoke.reboot", "v": 1, "spoke_id": "site-01"}')
    spoke.send(m.HUB_INBOX, m.encode(result(status, "p-1", {"lav950_percent": 1.0})))
    wait_until(lambda: world.store.result_count(status.experiment_id) == 1, "the valid result")
    wait_until(lambda: world.server.depth(DEAD_LETTER_QUEUE) == 2, "two dead letters")
    ingestor.stop()
    consumer.close()

    rejections = world.store.rejections()
    assert [r.reason.split(":")[0] for r in rejections] == ["malformed", "malformed"]
    assert "unknown message type 'spoke.reboot'" in rejections[0].reason
    assert (rejections[0].message_type, rejections[0].spoke_id) == ("spoke.reboot", "site-01")
    assert "not JSON" in rejections[1].reason
    assert world.server.depth(m.HUB_INBOX) == 0
    assert ingestor.stats.accepted == 1 and ingestor.stats.rejected == 2


def test_messages_that_fail_the_hubs_checks_are_rejected_with_the_reason(tmp_path: Path) -> None:
    world, status = _launched(tmp_path)
    settled = Settled()
    ingestor = Ingestor(world.store)
    good = {"lav950_percent": 1.0}
    cases = {
        "unknown spoke": result(status, "p", good, spoke="site-77"),
        "unknown experiment": result(status, "p", good, experiment_id="exp-none"),
        "manifest hash mismatch": result(status, "p", good, manifest_hash="c" * 64),
        "image digest mismatch": result(status, "p", good, image_digest="sha256:" + "d" * 64),
        "algorithm not in experiment": result(status, "p", good, algorithm="lung-lav950x"),
        "not a spoke-to-hub message: experiment.cancel": m.ExperimentCancel(
            spoke_id="site-01", experiment_id=status.experiment_id
        ),
    }

    for reason, message in cases.items():
        ingestor.handle(settled.delivery(message, reason))
    ingestor.flush()

    assert settled.of("reject") == list(cases)
    assert settled.of("ack") == []
    assert [r.reason for r in reversed(world.store.rejections())] == list(cases)
    assert [r.code for r in reversed(world.store.rejections())] == [
        "unknown_spoke", "unknown_experiment", "manifest_mismatch", "image_mismatch",
        "algorithm_not_in_experiment", "wrong_direction",
    ]  # fmt: skip
    assert {r.experiment_id for r in world.store.rejections()} == {
        status.experiment_id, "exp-none",
    }  # fmt: skip
    assert world.store.result_count(status.experiment_id) == 0


def test_a_spoke_not_in_the_experiment_is_rejected(tmp_path: Path) -> None:
    world = make_world(tmp_path, allowed=(*SPOKES, "site-03"))
    status = world.launch(spokes=("site-01",))
    settled = Settled()
    ingestor = Ingestor(world.store)

    accepted = m.ExperimentAccepted(
        spoke_id="site-03", experiment_id=status.experiment_id, participants=1, cases=1
    )

    ingestor.handle(settled.delivery(result(status, "p", {}, spoke="site-03"), "result"))
    ingestor.handle(settled.delivery(accepted, "accepted"))
    ingestor.flush()

    assert settled.of("reject") == ["result", "accepted"]
    assert {r.reason for r in world.store.rejections()} == {"spoke not in experiment"}
    assert [p.spoke_id for p in world.experiments.status(status.experiment_id).spokes] == [
        "site-01"
    ]


class _Journal:
    """A store that records its commits and can be made to fail them."""

    def __init__(self, inner: ResultsStore | None, events: list[tuple[str, str]]) -> None:
        self.inner = inner
        self.events = events
        self.attempts = 0
        self.poison: str | None = None

    def apply(self, items: Sequence[Inbound]) -> list[Outcome]:
        self.attempts += 1
        if self.inner is None:
            raise StoreError("database is locked", transient=True)
        poisoned = any(i.message_id == self.poison and i.refusal is None for i in items)
        if poisoned:
            raise StoreError("value too long for type character varying(128)")
        outcomes = self.inner.apply(items)
        self.events.extend(("commit", i.message_id) for i in items)
        return outcomes


def test_acks_come_only_after_the_commit(tmp_path: Path) -> None:
    world, status = _launched(tmp_path)
    settled = Settled()
    ingestor = Ingestor(_Journal(world.store, settled.events))

    for i in range(3):
        ingestor.handle(settled.delivery(result(status, f"p{i}", {}), f"d{i}"))
    ingestor.flush()

    commits = [("commit", f"d{i}") for i in range(3)]
    acks = [("ack", f"d{i}") for i in range(3)]
    assert settled.events == commits + acks


def test_a_failed_commit_acks_nothing_and_the_message_is_redelivered(tmp_path: Path) -> None:
    world, status = _launched(tmp_path)
    failing = _Journal(None, [])
    ingestor = Ingestor(failing, max_delay_s=0.0)
    ingestor.start()
    consumer = world.server.connect()
    consumer.subscribe(m.HUB_INBOX, ingestor.handle, prefetch=10)
    world.server.connect().send(m.HUB_INBOX, m.encode(result(status, "p-1", {"x": 1})))

    wait_until(lambda: failing.attempts >= 2, "a retried commit")
    ingestor.stop()
    in_flight = world.server.depth(m.HUB_INBOX)
    consumer.close()  # the hub goes away: the unacknowledged message returns to the queue
    back = world.server.depth(m.HUB_INBOX)
    seen: list[Delivery] = []
    healthy = Ingestor(world.store, max_delay_s=0.0)
    healthy.start()

    def handle(delivery: Delivery) -> None:
        seen.append(delivery)
        healthy.handle(delivery)

    world.server.connect().subscribe(m.HUB_INBOX, handle)
    wait_until(lambda: world.store.result_count(status.experiment_id) == 1, "the redelivery")
    wait_until(lambda: healthy.stats.accepted == 1, "the ack")
    healthy.stop()

    assert (in_flight, back) == (0, 1)
    assert ingestor.stats.accepted == 0 and ingestor.stats.failures >= 2
    assert [d.redelivered for d in seen] == [True]
    assert world.server.depth(m.HUB_INBOX) == 0


def test_a_message_the_database_refuses_is_rejected_alone(tmp_path: Path) -> None:
    world, status = _launched(tmp_path)
    settled = Settled()
    journal = _Journal(world.store, [])
    journal.poison = "d1"
    ingestor = Ingestor(journal)

    for i in range(3):
        ingestor.handle(settled.delivery(result(status, f"p{i}", {}), f"d{i}"))
    ingestor.flush()

    assert settled.of("ack") == ["d0", "d2"]
    assert settled.of("reject") == ["d1"]
    assert world.store.rejections()[0].reason.startswith("store refused the message")
    assert world.store.result_count(status.experiment_id) == 2


def test_a_full_batch_is_committed_without_waiting_for_the_delay(tmp_path: Path) -> None:
    world, status = _launched(tmp_path)
    settled = Settled()
    ingestor = Ingestor(world.store, batch_size=3, max_delay_s=3600)
    ingestor.start()

    for i in range(3):
        ingestor.handle(settled.delivery(result(status, f"p{i}", {}), f"d{i}"))
    wait_until(lambda: len(settled.of("ack")) == 3, "a full batch")
    ingestor.handle(settled.delivery(result(status, "p3", {}), "d3"))
    partial = ingestor.pending()
    ingestor.stop()

    assert partial == 1  # below batch_size and within the delay: still waiting
    assert settled.of("ack") == ["d0", "d1", "d2", "d3"]  # stop() commits what waited
    assert ingestor.stats.batches == 2


def test_a_partial_batch_is_committed_after_the_delay(tmp_path: Path) -> None:
    world, status = _launched(tmp_path)
    settled = Settled()
    ingestor = Ingestor(world.store, batch_size=100, max_delay_s=0.01)
    ingestor.start()

    ingestor.handle(settled.delivery(result(status, "p0", {}), "d0"))
    wait_until(lambda: settled.of("ack") == ["d0"], "the delayed commit")
    ingestor.stop()

    assert world.store.result_count(status.experiment_id) == 1


def test_heartbeats_and_manifests_update_the_spoke(tmp_path: Path) -> None:
    world = make_world(tmp_path, allowed=())
    beat = m.SpokeHeartbeat(spoke_id="site-05", sent_at="2026-01-02T03:04:05Z", queued=2, running=1)
    inventory = m.ParticipantManifest(spoke_id="site-05", participants=12, series=30, instances=9)

    world.ingest(beat, inventory)

    (spoke,) = world.store.spokes()
    assert (spoke.spoke_id, spoke.allowed, spoke.queued, spoke.running) == ("site-05", False, 2, 1)
    assert (spoke.participants, spoke.series, spoke.instances) == (12, 30, 9)
    assert spoke.heartbeat_sent_at == "2026-01-02T03:04:05Z"
    assert spoke.last_heartbeat_at is not None and spoke.last_heartbeat_at.tzinfo is not None


def test_a_manifest_from_a_spoke_never_seen_is_rejected(tmp_path: Path) -> None:
    world = make_world(tmp_path, allowed=())
    inventory = m.ParticipantManifest(spoke_id="site-06", participants=1, series=1, instances=1)

    (outcome,) = world.apply(inventory)

    assert (outcome.accepted, outcome.reason) == (False, "unknown spoke")
    assert world.store.spokes() == []


class _ParallelChecks(InlineChecks):
    """Checks the ingestor must treat as running elsewhere: it stages full batches."""

    parallel = True

    def __init__(self) -> None:
        self.submitted: list[int] = []

    def submit(self, checks: Sequence[Check]) -> Verdicts:
        self.submitted.append(len(checks))
        return super().submit(checks)


def _signed(
    world: World, status: ExperimentStatus, participant: str
) -> tuple[bytes, dict[str, str]]:
    """A result of ``participant`` as its spoke signs it."""
    assert world.keys is not None
    return world.keys.sign(result(status, participant, {"lav950_percent": 1.0}))


def test_with_parallel_checks_a_full_batch_is_staged_and_written_when_the_next_one_is(
    tmp_path: Path,
) -> None:
    world, status = _launched(tmp_path)
    settled = Settled()
    checks = _ParallelChecks()
    ingestor = world.ingestor(batch_size=2, max_delay_s=60, checks=checks)

    def deliver(participant: str) -> None:
        ingestor.handle(settled.delivery(_signed(world, status, participant), participant))

    deliver("p-1")
    deliver("p-2")  # full: its checks are submitted, nothing is written yet
    assert checks.submitted == [2]
    assert settled.events == [] and ingestor.pending() == 2
    deliver("p-3")
    deliver("p-4")  # the next full batch is staged; the one before is written
    assert checks.submitted == [2, 2]
    assert settled.of("ack") == ["p-1", "p-2"]
    assert world.store.result_count(status.experiment_id) == 2
    ingestor.stop()  # what is staged is written on the way out
    assert settled.of("ack") == ["p-1", "p-2", "p-3", "p-4"]
    assert world.store.result_count(status.experiment_id) == 4


def test_a_staged_batch_is_written_once_deliveries_stop_coming(tmp_path: Path) -> None:
    world, status = _launched(tmp_path)
    settled = Settled()
    ingestor = world.ingestor(batch_size=2, max_delay_s=0.05, checks=_ParallelChecks())
    ingestor.start()
    for participant in ("p-1", "p-2"):
        ingestor.handle(settled.delivery(_signed(world, status, participant), participant))
    wait_until(lambda: settled.of("ack") == ["p-1", "p-2"], "the staged batch written")
    ingestor.stop()
    assert world.store.result_count(status.experiment_id) == 2


def test_a_forged_message_in_a_staged_batch_is_rejected_and_the_rest_accepted(
    tmp_path: Path,
) -> None:
    world, status = _launched(tmp_path)
    settled = Settled()
    ingestor = world.ingestor(batch_size=2, max_delay_s=60, checks=_ParallelChecks())
    good = _signed(world, status, "p-1")
    body, headers = _signed(world, status, "p-2")
    forged = (body.replace(b'"p-2"', b'"p-9"'), headers)
    assert forged[0] != body
    ingestor.handle(settled.delivery(good, "good"))
    ingestor.handle(settled.delivery(forged, "forged"))
    ingestor.stop()
    assert settled.of("ack") == ["good"] and settled.of("reject") == ["forged"]
    assert [r.code for r in world.store.rejections()] == ["bad_signature"]


def test_a_store_failure_under_staging_keeps_every_batch_and_acks_nothing(
    tmp_path: Path,
) -> None:
    world, status = _launched(tmp_path)
    assert world.keys is not None
    settled = Settled()
    store = _FailingOnce(world.store)
    ingestor = Ingestor(
        store, batch_size=2, max_delay_s=60, trust=world.keys.trust(), checks=_ParallelChecks()
    )
    for participant in ("p-1", "p-2", "p-3", "p-4"):
        ingestor.handle(settled.delivery(_signed(world, status, participant), participant))
    assert settled.events == [], "the first write failed: nothing may be acknowledged"
    assert ingestor.pending() == 4 and ingestor.stats.failures == 1
    ingestor._retry_at = 0.0  # skip the backoff
    assert ingestor.flush() == 4
    assert settled.of("ack") == ["p-1", "p-2", "p-3", "p-4"]
    assert world.store.result_count(status.experiment_id) == 4


class _FailingOnce:
    """A store whose first write fails as a locked database does (or with ``error``)."""

    def __init__(self, store: ResultsStore, error: Exception | None = None) -> None:
        self.store = store
        self.error = error or StoreError("database is locked", transient=True)
        self.failed = False

    def apply(self, items: Sequence[Inbound]) -> list[Outcome]:
        if not self.failed:
            self.failed = True
            raise self.error
        return self.store.apply(items)


def test_a_bug_in_a_write_under_staging_loses_nothing_and_is_raised(tmp_path: Path) -> None:
    world, status = _launched(tmp_path)
    assert world.keys is not None
    settled = Settled()
    store = _FailingOnce(world.store, RuntimeError("a bug"))
    ingestor = Ingestor(
        store, batch_size=2, max_delay_s=60, trust=world.keys.trust(), checks=_ParallelChecks()
    )
    for participant in ("p-1", "p-2", "p-3"):
        ingestor.handle(settled.delivery(_signed(world, status, participant), participant))
    with pytest.raises(RuntimeError, match="a bug"):
        ingestor.handle(settled.delivery(_signed(world, status, "p-4"), "p-4"))
    assert settled.events == [] and ingestor.pending() == 4
    ingestor._retry_at = 0.0  # skip the backoff
    assert ingestor.flush() == 4
    assert settled.of("ack") == ["p-1", "p-2", "p-3", "p-4"]
