from __future__ import annotations

from pathlib import Path

import pytest
from hub_world import DIGESTS, LAV, NODULE, SPOKES, case_status, make_world, result

from workbench.core import messages as m
from workbench.errors import BadRequestError, NotFoundError
from workbench.hub_kernel.models import ExperimentStatus
from workbench.transport.base import TransportError
from workbench.transport.memory import InMemoryConnection


def test_launch_sends_one_order_per_spoke_with_the_manifest_hash(tmp_path: Path) -> None:
    world = make_world(tmp_path)

    status = world.launch(args={LAV: {"threshold_hu": -910}})

    for spoke in SPOKES:
        (order,) = world.orders(spoke)
        assert isinstance(order, m.ExperimentOrder)
        assert order.spoke_id == spoke
        assert order.manifest_hash == m.manifest_hash(order.manifest) == status.manifest_hash
        assert order.manifest.experiment_id == status.experiment_id
        assert {a.name: a.digest for a in order.manifest.algorithms} == DIGESTS
        assert order.manifest.algorithms[0].args == {"threshold_hu": -910}
        assert order.manifest.cohort == {"modality": "CT", "min_timepoints": 2}
        assert "malignant" in order.manifest.reference_fields
    assert world.server.sent == len(SPOKES)
    assert [p.order_sent for p in status.spokes] == [True, True]
    stored = world.store.experiment(status.experiment_id)
    assert stored is not None and stored.manifest_hash == status.manifest_hash


@pytest.mark.parametrize(
    ("change", "code", "named"),
    [
        ({"study": "no-such-study"}, "unknown_study", "no-such-study"),
        ({"algorithms": [LAV, "ghost-algo"]}, "unknown_algorithm", "ghost-algo"),
        ({"algorithms": [f"{LAV}:9.9.9"]}, "unknown_algorithm", f"{LAV}:9.9.9"),
        ({"spokes": ["site-01", "site-99"]}, "unknown_spoke", "site-99"),
    ],
)
def test_an_unknown_study_algorithm_or_spoke_is_a_clear_error_and_nothing_is_sent(
    tmp_path: Path, change: dict[str, object], code: str, named: str
) -> None:
    world = make_world(tmp_path)
    request = {"study": "lung-screening", "algorithms": [LAV], "spokes": list(SPOKES)}

    with pytest.raises(NotFoundError) as raised:
        world.experiments.launch({**request, **change})

    assert raised.value.code == code
    assert named in raised.value.message
    assert world.server.sent == 0
    assert world.store.experiments() == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"args": {LAV: {"threshold_hu": 12}}}, "threshold_hu"),
        ({"args": {"other-algo": {"x": 1}}}, "other-algo"),
        ({"spokes": []}, "spokes"),
        ({"algorithms": [LAV, LAV]}, "repeat"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_an_invalid_launch_request_is_a_bad_request_and_nothing_is_sent(
    tmp_path: Path, change: dict[str, object], problem: str
) -> None:
    world = make_world(tmp_path)
    request = {"study": "lung-screening", "algorithms": [LAV], "spokes": list(SPOKES)}

    with pytest.raises(BadRequestError) as raised:
        world.experiments.launch({**request, **change})

    assert problem in raised.value.message
    assert world.server.sent == 0


def test_a_spoke_becomes_known_by_its_heartbeat(tmp_path: Path) -> None:
    world = make_world(tmp_path, allowed=())
    with pytest.raises(NotFoundError):
        world.launch(spokes=("site-03",))
    beat = m.SpokeHeartbeat(spoke_id="site-03", sent_at="2026-01-01T00:00:00Z")

    world.ingest(beat)
    status = world.launch(spokes=("site-03",))

    assert [p.spoke_id for p in status.spokes] == ["site-03"]
    assert len(world.orders("site-03")) == 1


class _DownBroker(InMemoryConnection):
    """A connection whose broker never confirms a send."""

    def send(self, destination: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        raise TransportError("no receipt")


def test_an_order_the_broker_did_not_confirm_is_pending_and_redispatched(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    healthy = world.dispatcher._broker
    world.dispatcher._broker = _DownBroker(world.server)

    status = world.launch()
    world.dispatcher._broker = healthy
    resent = world.dispatcher.redispatch()

    assert [p.order_sent for p in status.spokes] == [False, False]
    assert resent == 2
    (order,) = world.orders("site-01")
    assert order.id == world.store.order_message_id(status.experiment_id, "site-01")
    again = world.experiments.status(status.experiment_id)
    assert [p.order_sent for p in again.spokes] == [True, True]
    assert world.dispatcher.redispatch() == 0


def test_cancel_sends_a_cancel_to_each_spoke_once(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    status = world.launch()
    for spoke in SPOKES:
        world.orders(spoke)

    cancelled = world.experiments.cancel(status.experiment_id)
    world.experiments.cancel(status.experiment_id)

    assert cancelled.state == "cancelled"
    assert cancelled.cancelled_at is not None
    for spoke in SPOKES:
        (cancel,) = world.orders(spoke)
        assert isinstance(cancel, m.ExperimentCancel)
        assert (cancel.experiment_id, cancel.spoke_id) == (status.experiment_id, spoke)


def test_status_counts_each_cases_latest_state_per_spoke(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    status = world.launch()
    s1, s2 = SPOKES

    world.ingest(
        *(case_status(status, f"p{i}", "queued") for i in range(4)),
        case_status(status, "p0", "running"),
        case_status(status, "p1", "failed", error="TIMEOUT"),
        result(status, "p2", {"lav950_percent": 4.0}),
        case_status(status, "p2", "running"),  # stale: the result already made it done
        case_status(status, "q0", "queued", spoke=s2, algorithm=NODULE),
    )
    got = world.experiments.status(status.experiment_id)

    one, two = got.spokes
    assert (one.spoke_id, one.expected, one.queued, one.running) == (s1, 4, 1, 1)
    assert (one.done, one.failed, one.results, one.errors) == (1, 1, 1, {"TIMEOUT": 1})
    assert (two.spoke_id, two.expected, two.queued, two.results) == (s2, 1, 1, 0)
    assert got.results == 1
    assert got.state == "running"


def _accepted(status: ExperimentStatus, spoke: str, cases: int) -> m.ExperimentAccepted:
    return m.ExperimentAccepted(
        spoke_id=spoke, experiment_id=status.experiment_id, participants=cases, cases=cases
    )


def test_an_experiment_is_complete_when_every_spoke_settled_the_cases_it_planned(
    tmp_path: Path,
) -> None:
    world = make_world(tmp_path)
    status = world.launch()
    s1, s2 = SPOKES
    world.ingest(_accepted(status, s1, 2), _accepted(status, s2, 1))
    world.ingest(case_status(status, "p0", "queued"), case_status(status, "q0", "queued", s2))
    accepted = world.experiments.status(status.experiment_id)
    world.ingest(
        result(status, "p0", {"lav950_percent": 1.0}),
        case_status(status, "q0", "failed", s2, error="NONZERO_EXIT"),
    )
    one_left = world.experiments.status(status.experiment_id)  # p1 not yet announced

    world.ingest(result(status, "p1", {"lav950_percent": 2.0}))
    after = world.experiments.status(status.experiment_id)

    assert [(p.accepted, p.expected, p.participants) for p in accepted.spokes] == [
        (True, 2, 2),
        (True, 1, 1),
    ]
    assert accepted.state == one_left.state == "running"
    assert after.state == "complete"
    assert [(p.done, p.failed) for p in after.spokes] == [(2, 0), (0, 1)]


def test_a_spoke_with_no_matching_case_is_finished_at_once(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    status = world.launch(spokes=("site-02",))

    world.ingest(_accepted(status, "site-02", 0))
    got = world.experiments.status(status.experiment_id)

    assert (got.spokes[0].expected, got.state) == (0, "complete")


def test_without_an_acceptance_the_reported_cases_are_the_expected_ones(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    status = world.launch(spokes=("site-01",))
    silent = world.experiments.status(status.experiment_id).spokes[0]

    world.ingest(case_status(status, "p0", "queued"), case_status(status, "p1", "running"))
    reported = world.experiments.status(status.experiment_id).spokes[0]

    assert (silent.accepted, silent.expected) == (False, None)
    assert (reported.accepted, reported.expected) == (False, 2)


def test_a_retry_with_a_higher_attempt_replaces_the_failed_one(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    status = world.launch(spokes=("site-01",))

    world.ingest(
        case_status(status, "p0", "failed", error="OUT_OF_MEMORY"),
        case_status(status, "p0", "queued", attempt=2),
    )
    progress = world.experiments.status(status.experiment_id).spokes[0]

    assert (progress.expected, progress.queued, progress.failed) == (1, 1, 0)


def test_status_of_an_unknown_experiment_is_not_found(tmp_path: Path) -> None:
    world = make_world(tmp_path)

    with pytest.raises(NotFoundError) as raised:
        world.experiments.status("exp-nope")

    assert raised.value.code == "unknown_experiment"
