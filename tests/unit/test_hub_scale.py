from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from hub_world import DIGESTS, LAV, NODULE, SPOKES, make_world
from sqlalchemy import event

from workbench.core import messages as m
from workbench.core.run_errors import RunErrorCode
from workbench.hub_kernel.effects import Inbound
from workbench.hub_kernel.models import ExperimentStatus
from workbench.hub_kernel.tables import utcnow

PER_SPOKE_AND_ALGORITHM = 25_000  # 2 spokes x 2 algorithms: 100,000 results
BATCH = 2_000


def _inbound(message: m.Message, n: int) -> Inbound:
    return Inbound(f"id-{n}", "0" * 64, 100, utcnow(), message=message)


def _results(status: ExperimentStatus) -> list[Inbound]:
    items: list[Inbound] = []
    for spoke in SPOKES:
        for algorithm in (LAV, NODULE):
            for i in range(PER_SPOKE_AND_ALGORITHM):
                message = m.CaseResult.model_construct(
                    id=f"r{len(items)}", v=1, type="case.result", attempt=1,
                    experiment_id=status.experiment_id, spoke_id=spoke,
                    participant_id=f"p-{i}", algorithm=algorithm,
                    manifest_hash=status.manifest_hash, image_digest=DIGESTS[algorithm],
                    output={"score": i / PER_SPOKE_AND_ALGORITHM}, output_sha256="1" * 64,
                    reference={"malignant": i % 2}, seconds=1.0,
                )  # fmt: skip
                items.append(_inbound(message, len(items)))
    return items


def _statuses(status: ExperimentStatus, state: m.CaseState, count: int, at: int) -> list[Inbound]:
    error = m.ErrorInfo(code=RunErrorCode.TIMEOUT, reason="late") if state == "failed" else None
    items: list[Inbound] = []
    for n in range(at, at + count):
        message = m.CaseStatus(
            experiment_id=status.experiment_id, spoke_id=SPOKES[1], participant_id=f"x-{n}",
            algorithm=LAV, state=state, error=error,
        )  # fmt: skip
        items.append(_inbound(message, n))
    return items


@pytest.mark.slow
def test_progress_of_100000_results_is_exact_and_counted_in_sql(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    status = world.launch()
    items = _results(status)
    items += _statuses(status, "failed", 3000, 0)
    items += _statuses(status, "running", 2000, 3000)
    items += _statuses(status, "queued", 1000, 5000)
    for start in range(0, len(items), BATCH):
        world.store.apply(items[start : start + BATCH])
    world.store.apply(items[:BATCH])  # a redelivered batch changes nothing
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.lower())

    event.listen(world.store._engine, "before_cursor_execute", record)
    started = time.perf_counter()
    got = world.experiments.status(status.experiment_id)
    seconds = time.perf_counter() - started
    event.remove(world.store._engine, "before_cursor_execute", record)

    one, two = got.spokes
    assert (one.expected, one.done, one.results, one.failed) == (50_000, 50_000, 50_000, 0)
    assert (two.expected, two.done, two.failed) == (56_000, 50_000, 3000)
    assert (two.running, two.queued, two.results) == (2000, 1000, 50_000)
    assert two.errors == {"TIMEOUT": 3000}
    assert got.results == 100_000 and got.state == "running"
    reading_results = [s for s in statements if "from results" in s]
    assert reading_results and all("count(" in s and "output" not in s for s in reading_results)
    assert seconds < 2.0, f"status took {seconds:.2f} s"
