"""The spoke against deadlines, a clock far off the hub's, and a state database it cannot write.

InMemoryBroker, the fake engine and real SQLite, as in ``test_spoke_service``; the spoke's
wall clock is injected, and a full disk is played by a state database that refuses writes.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeEngine
from test_spoke_service import (
    config,
    finished,
    inbox,
    make_site,
    order,
    send_order,
    until,
    write_score,
)

from workbench.core import messages as m
from workbench.spoke_service.service import Spoke
from workbench.spoke_service.state import CaseRow, SpokeState
from workbench.transport.memory import InMemoryBroker

HUB_NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return make_site(tmp_path)


class Clock:
    """A settable wall clock for the spoke."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def start(site: Path, engine: FakeEngine, clock: Clock, server: InMemoryBroker) -> Spoke:
    spoke = Spoke(config(site), server.connect(), engine, clock=clock)
    spoke.start()
    return spoke


def errors(messages: list[m.Message]) -> list[str]:
    return sorted(
        x.error.code.value for x in messages if isinstance(x, m.CaseStatus) and x.error is not None
    )


def test_a_case_not_started_by_the_deadline_is_not_run(site: Path) -> None:
    server = InMemoryBroker()
    clock = Clock(HUB_NOW + timedelta(hours=5))  # the spoke's clock is far off: no matter
    release = threading.Event()

    def first_case_waits(out: Path) -> None:
        release.wait(10)
        write_score(out)

    engine = FakeEngine(first_case_waits)
    spoke = start(site, engine, clock, server)
    hub = server.connect()
    send_order(
        hub, order(created_at=stamp(HUB_NOW), deadline=stamp(HUB_NOW + timedelta(minutes=1)))
    )
    try:
        until(server, lambda seen: any(getattr(x, "state", "") == "running" for x in seen))
        clock.now += timedelta(minutes=2)  # the spoke has now held the order past the deadline
        release.set()
        messages = until(server, lambda seen: finished(seen) >= 2)
    finally:
        spoke.stop()
        hub.close()
    # The running case was left to finish; the queued one never ran.
    assert len(engine.specs) == 1
    assert len([x for x in messages if isinstance(x, m.CaseResult)]) == 1
    assert errors(messages) == ["DEADLINE_PASSED"]
    failed = [x for x in messages if isinstance(x, m.CaseStatus) and x.state == "failed"]
    assert len(failed) == 1


def test_a_spoke_clock_an_hour_ahead_skips_nothing_before_the_deadline(site: Path) -> None:
    server = InMemoryBroker()
    hub_now = datetime.now(UTC)
    clock = Clock(hub_now + timedelta(hours=1))  # by its own clock the deadline has passed
    spoke = start(site, FakeEngine(write_score), clock, server)
    hub = server.connect()
    deadline = hub_now + timedelta(minutes=30)
    send_order(hub, order(created_at=stamp(hub_now), deadline=stamp(deadline)))
    try:
        messages = until(server, lambda seen: finished(seen) >= 2)
    finally:
        spoke.stop()
        hub.close()
    assert len([x for x in messages if isinstance(x, m.CaseResult)]) == 2
    assert errors(messages) == []
    beats = [x for x in messages + inbox(server) if isinstance(x, m.SpokeHeartbeat)]
    assert beats, "the spoke sends a heartbeat when it starts"
    sent = datetime.fromisoformat(beats[0].sent_at)
    assert abs((sent - clock.now).total_seconds()) < 5  # the heartbeat tells its own clock


def test_a_deadline_already_passed_at_the_hub_when_the_order_arrives(site: Path) -> None:
    server = InMemoryBroker()
    clock = Clock(HUB_NOW)
    engine = FakeEngine(write_score)
    created = HUB_NOW - timedelta(hours=2)
    # Created two hours ago (hub time) with a deadline one hour ago: a lower bound of the
    # hub's clock (created_at) is not past it yet, so the spoke runs; the hub decides.
    spoke = start(site, engine, clock, server)
    hub = server.connect()
    send_order(hub, order(created_at=stamp(created), deadline=stamp(created + timedelta(hours=1))))
    try:
        messages = until(server, lambda seen: finished(seen) >= 2)
    finally:
        spoke.stop()
        hub.close()
    assert len(engine.specs) == 2
    assert errors(messages) == []


def test_a_state_database_that_cannot_be_written_halts_the_spoke_and_sends_no_result(
    site: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(self: SpokeState, case: CaseRow, *args: Any, **kwargs: Any) -> str:
        with self.transaction() as db:
            db.execute("UPDATE cases SET state = 'done'")  # rolled back: SQLite refuses
            raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(SpokeState, "finish", full_disk)
    server = InMemoryBroker()
    cfg = dataclasses.replace(config(site), concurrency=1)
    spoke = Spoke(cfg, server.connect(), FakeEngine(write_score))
    spoke.start()
    hub = server.connect()
    send_order(hub, order())
    try:
        assert spoke.failed.wait(10), "the spoke did not halt"
        time.sleep(0.3)  # a wrongly sent result would reach the inbox by now
        messages = inbox(server)
        rows = spoke.state.cases()
    finally:
        spoke.stop()
        hub.close()
    assert not [x for x in messages if isinstance(x, m.CaseResult)]
    assert [r.state for r in rows] == ["running", "queued"]  # nothing settled half-way
    assert spoke.failure is not None and "disk is full" in str(spoke.failure)
    assert any(r.levelname == "ERROR" and "halted" in r.getMessage() for r in caplog.records)
    events = [line for line in cfg.audit_path.read_text().splitlines() if "spoke.halted" in line]
    assert len(events) == 1

    # Disk space back, the spoke restarted: the interrupted case runs again, once.
    monkeypatch.undo()
    server2 = InMemoryBroker()
    again = Spoke(cfg, server2.connect(), FakeEngine(write_score))
    again.start()
    try:
        messages = until(server2, lambda seen: finished(seen) >= 2)
    finally:
        again.stop()
    results = [x for x in messages if isinstance(x, m.CaseResult)]
    assert sorted(r.attempt for r in results) == [1, 1]
    assert len({r.participant_id for r in results}) == 2


def test_a_result_for_a_case_cancelled_while_it_ran_is_withheld(tmp_path: Path) -> None:
    state = SpokeState(tmp_path / "state.sqlite")
    state.store_order("exp-1", "h" * 64, b"{}")
    case = CaseRow("exp-1", "p-1", "score", 1, "MRN-1", "queued")
    state.add_cases([case], [])
    claimed = state.claim_next(lambda c: [])
    assert claimed is not None
    state.cancel(
        "exp-1", lambda _: []
    )  # arrives while the case runs: only queued cases are touched

    written = state.finish(claimed, "done", [("/queue/hub", b"result")], None, [("/q", b"cxl")])

    assert written == "cancelled"
    assert [item.body for item in state.pending()] == [b"cxl"]
    assert [c.state for c in state.cases()] == ["cancelled"]
    state.close()
