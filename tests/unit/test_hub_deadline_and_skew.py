"""The hub and experiment deadlines, and spokes whose clocks are far off the hub's.

Every deadline decision is the hub's, by its own clock (the ingestor's time of receipt);
a spoke's clock is only shown (``clock_skew_s``), never used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hub_world import (
    LAV,
    NODULE,
    SPOKES,
    STUDIES,
    Keys,
    Settled,
    make_world,
    result,
    spec,
    wait_until,
)

from workbench.cli.main import main
from workbench.core import messages as m
from workbench.errors import BadRequestError
from workbench.hub_kernel.client import HubClient
from workbench.hub_kernel.experiments import Experiments
from workbench.hub_kernel.ingest import Ingestor
from workbench.hub_kernel.models import ExperimentStatus
from workbench.hub_kernel.service import Hub
from workbench.hub_kernel.store import ResultsStore
from workbench.hub_kernel.studies import StudyCatalog
from workbench.hub_kernel.tables import utcnow
from workbench.transport.base import DEAD_LETTER_QUEUE
from workbench.transport.memory import InMemoryBroker

LAUNCHED_AT = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def test_a_duration_deadline_is_counted_from_the_hubs_clock_and_frozen(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.experiments = Experiments(
        world.store, world.registry, StudyCatalog(STUDIES), world.dispatcher,
        clock=lambda: LAUNCHED_AT,
    )  # fmt: skip

    status = world.launch(deadline="1h30m")

    (order,) = world.orders("site-01")
    assert isinstance(order, m.ExperimentOrder)
    assert order.manifest.deadline == "2026-11-28T13:30:00Z"
    assert order.manifest_hash == m.manifest_hash(order.manifest)
    assert status.deadline == LAUNCHED_AT + timedelta(minutes=90)


def test_a_timestamp_deadline_is_normalised_to_utc(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    when = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    in_paris = when.astimezone(timezone(timedelta(hours=1))).isoformat()

    world.launch(deadline=in_paris)

    (order,) = world.orders("site-01")
    assert isinstance(order, m.ExperimentOrder)
    assert order.manifest.deadline == when.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("deadline", "says"),
    [
        ("2020-01-01T00:00:00Z", "not in the future"),
        ("tomorrow", "not an ISO-8601 timestamp"),
        ("2099-01-01T00:00:00", "no time zone"),
        ("0m", "not in the future"),
        ("400d", "more than a year"),
    ],
)
def test_a_past_or_malformed_deadline_is_refused_at_launch_and_nothing_is_sent(
    tmp_path: Path, deadline: str, says: str
) -> None:
    world = make_world(tmp_path)

    with pytest.raises(BadRequestError) as refused:
        world.launch(deadline=deadline)

    assert refused.value.code == "bad_deadline"
    assert says in str(refused.value)
    assert world.store.experiments() == []
    assert world.orders("site-01") == []


def test_without_a_deadline_the_manifest_hash_is_what_it_was_before_deadlines(
    tmp_path: Path,
) -> None:
    world = make_world(tmp_path)
    world.launch()
    (order,) = world.orders("site-01")
    assert isinstance(order, m.ExperimentOrder)
    document = order.manifest.model_dump(mode="json")
    assert document.pop("deadline") is None

    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert order.manifest_hash == hashlib.sha256(canonical.encode()).hexdigest()


def around_the_deadline(tmp_path: Path) -> tuple[Any, ExperimentStatus, Ingestor, Ingestor]:
    """A world with an experiment due in an hour; ingestors a second before and after it."""
    world = make_world(tmp_path)
    status = world.launch(deadline="1h")
    deadline = status.deadline
    assert deadline is not None
    before = Ingestor(world.store, clock=lambda: deadline - timedelta(seconds=1))
    after = Ingestor(world.store, clock=lambda: deadline + timedelta(seconds=1))
    return world, status, before, after


def test_a_result_the_hub_receives_after_the_deadline_is_refused_to_the_dlq(
    tmp_path: Path,
) -> None:
    world, status, before, after = around_the_deadline(tmp_path)
    settled = Settled()

    before.handle(settled.delivery(result(status, "p-1", {"x": 1.0}), "in-time"))
    before.flush()
    after.handle(settled.delivery(result(status, "p-2", {"x": 2.0}), "late"))
    after.flush()

    assert settled.of("ack") == ["in-time"]
    assert settled.of("reject") == ["late"]
    assert world.store.result_count(status.experiment_id) == 1
    (refused,) = world.store.rejections()
    assert refused.code == "after_deadline" and "hub clock" in refused.reason
    assert world.experiments.status(status.experiment_id).rejections == {"after_deadline": 1}


def test_the_hub_measures_each_spokes_clock_skew_from_its_last_heartbeat(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    now = utcnow().replace(microsecond=0)
    ingest = Ingestor(world.store, clock=lambda: now)
    settled = Settled()
    ahead = m.SpokeHeartbeat(spoke_id="site-01", sent_at=(now + timedelta(hours=1)).isoformat())
    behind = m.SpokeHeartbeat(spoke_id="site-02", sent_at=(now - timedelta(seconds=7)).isoformat())
    garbled = m.SpokeHeartbeat(spoke_id="site-03", sent_at="yesterday-ish")

    for n, beat in enumerate((ahead, behind, garbled)):
        ingest.handle(settled.delivery(beat, f"beat-{n}"))
    ingest.flush()

    skew = {s.spoke_id: s.clock_skew_s for s in world.store.spokes()}
    assert skew == {"site-01": 3600.0, "site-02": -7.0, "site-03": None}


@pytest.fixture
def hub(tmp_path: Path, server: InMemoryBroker, keys: Keys) -> Iterator[Hub]:
    store = ResultsStore.open(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    with Hub(store, server.connect(), StudyCatalog(STUDIES), allowed_spokes=SPOKES,
             signer=keys.hub_signer, trust=keys.trust()) as hub:  # fmt: skip
        client = HubClient(hub.url)
        for name in (LAV, NODULE):
            client.register_algorithm(spec(name).model_dump(mode="json"))
        yield hub
    store.close()


def test_deadline_and_skew_through_the_api_and_the_command_line(
    hub: Hub, server: InMemoryBroker, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--hub", hub.url]
    launch = ["experiment", "launch", "--study", "lung-screening", "--algorithm", LAV]
    assert main([*launch, "--spoke", "site-01", "--deadline", "nonsense", *common]) == 1
    assert "invalid deadline" in capsys.readouterr().err
    assert main([*launch, "--spoke", "site-01", "--deadline", "2h", *common]) == 0
    experiment_id = capsys.readouterr().out.strip()
    status = ExperimentStatus.model_validate(HubClient(hub.url).experiment(experiment_id))
    assert status.deadline is not None
    assert timedelta(hours=1, minutes=59) < status.deadline - utcnow() <= timedelta(hours=2)

    # The hub's receipt clock passes the deadline; the spoke's clock is an hour behind it.
    late = status.deadline + timedelta(minutes=1)
    hub.ingestor._clock = lambda: late
    spoke = server.connect()
    beat = m.SpokeHeartbeat(spoke_id="site-01", sent_at=(late - timedelta(hours=1)).isoformat())
    keys.send(spoke, beat)
    keys.send(spoke, result(status, "p-1", {"score": 0.5}))
    wait_until(lambda: hub.ingestor.stats.rejected == 1, "the late result's refusal")
    wait_until(lambda: server.depth(DEAD_LETTER_QUEUE) == 1, "the dead letter")

    assert main(["experiment", "status", experiment_id, *common]) == 0
    shown = capsys.readouterr().out
    assert "after_deadline: 1" in shown and "deadline 20" in shown
    assert main(["spoke", "list", *common]) == 0
    listed = capsys.readouterr()
    assert "-3600 s" in listed.out
    assert "WARNING: site-01's clock is 3600 s behind the hub's" in listed.err
    assert "site-02" not in listed.err  # never heard from: no skew, no warning
    assert hub.store.result_count(experiment_id) == 0
    (spoke_row,) = [s for s in HubClient(hub.url).spokes() if s["spoke_id"] == "site-01"]
    assert spoke_row["clock_skew_s"] == -3600.0


def test_a_result_received_after_the_experiment_was_cancelled_is_refused(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    status = world.launch()
    ingestor = Ingestor(world.store)
    settled = Settled()
    ingestor.handle(settled.delivery(result(status, "p-1", {"x": 1.0}), "before"))
    ingestor.flush()  # the facts are cached now: the cancel must refresh them

    world.experiments.cancel(status.experiment_id)
    ingestor.handle(settled.delivery(result(status, "p-2", {"x": 2.0}), "after"))
    ingestor.flush()

    assert settled.of("ack") == ["before"]
    assert settled.of("reject") == ["after"]
    assert world.store.result_count(status.experiment_id) == 1
    (refused,) = world.store.rejections()
    assert refused.code == "experiment_cancelled"
    assert world.experiments.status(status.experiment_id).rejections == {"experiment_cancelled": 1}


def test_a_case_whose_result_came_late_counts_as_failed_not_done(tmp_path: Path) -> None:
    from hub_world import case_status

    world, status, before, after = around_the_deadline(tmp_path)
    settled = Settled()
    # p-1 made it; its done status straggled in after the deadline. p-2 did not make it.
    before.handle(settled.delivery(result(status, "p-1", {"x": 1.0}), "r1"))
    before.flush()
    for n, message in enumerate([
        case_status(status, "p-1", "done"),
        result(status, "p-2", {"x": 2.0}),
        case_status(status, "p-2", "done"),
    ]):  # fmt: skip
        after.handle(settled.delivery(message, f"late-{n}"))
    after.flush()

    progress = next(
        s for s in world.experiments.status(status.experiment_id).spokes if s.spoke_id == SPOKES[0]
    )
    assert (progress.done, progress.failed, progress.results) == (1, 1, 1)
    assert progress.errors == {"DEADLINE_PASSED": 1}
