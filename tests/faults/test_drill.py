"""The fault drill in the test suite: each scenario through a real federation, counted.

One federation (ActiveMQ, registry, hub and three spoke processes running real containers)
serves every scenario of this module; each scenario launches its own experiment, breaks a
part mid-study and heals it, and the drill counts from the hub's and the spokes' databases.
The last tests show that the counting is not vacuous: a result row deleted from a copy of
the hub's database is a loss, a second row for a case is a duplicate, and a spoke that never
answered its order loses its cases.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from services import need

from workbench.drill import Drill
from workbench.drill_report import count_results
from workbench.drill_scenarios import SCENARIOS

pytestmark = pytest.mark.faults


def real_federation(test: Any) -> Any:
    """The marks of a test that needs ActiveMQ, Docker and a few minutes."""
    for mark in (pytest.mark.docker, pytest.mark.broker, pytest.mark.slow,
                 pytest.mark.timeout(900)):  # fmt: skip
        test = mark(test)
    return test


class Lines:
    """Collects the drill's progress lines, to show the last ones when a test fails."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])


@pytest.fixture(scope="module")
def said() -> Lines:
    return Lines()


@pytest.fixture(scope="module")
def drill(
    tmp_path_factory: pytest.TempPathFactory, algorithm_images: dict[str, str], said: Lines
) -> Iterator[Drill]:
    from workbench.transport.activemq import BrokerError

    out = tmp_path_factory.mktemp("drill")
    try:
        opened = Drill.open(out, participants=4, say=said)
    except BrokerError as e:
        if "not installed" in str(e):
            need(str(e))
        raise
    with opened:
        yield opened


@real_federation
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_loses_and_doubles_nothing(drill: Drill, said: Lines, name: str) -> None:
    result = drill.run(name)

    why = f"{result.problems}\n{said.tail()}"
    assert result.lost == 0, why
    assert result.duplicates == 0, why
    assert result.ingested == result.cases > 0, why
    assert result.failed == 0, why
    assert result.passed, why


def _passed_experiment(drill: Drill) -> str:
    """An experiment of a scenario that passed (running the quickest one if none ran)."""
    for result in drill.results:
        if result.passed:
            return result.experiment_id
    result = drill.run("hub-down")
    assert result.passed, result.problems
    return result.experiment_id


def _copy(source: Path, target: Path) -> Path:
    """A consistent copy of a live SQLite database (the backup API, WAL included)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return target


def _spokes(drill: Drill) -> dict[str, Path]:
    return {s: drill.spoke_db(s) for s in drill.spoke_ids}


@real_federation
def test_the_count_catches_a_lost_result(drill: Drill, tmp_path: Path) -> None:
    experiment_id = _passed_experiment(drill)
    hub = _copy(drill.hub_db, tmp_path / "hub.sqlite")
    before = count_results(hub, _spokes(drill), experiment_id)
    with sqlite3.connect(hub) as db:
        db.execute(
            "DELETE FROM results WHERE id = (SELECT max(id) FROM results WHERE experiment_id = ?)",
            (experiment_id,),
        )

    after = count_results(hub, _spokes(drill), experiment_id)

    assert (before.lost, before.ingested) == (0, before.cases)
    assert after.lost == 1
    assert after.ingested == before.ingested - 1
    assert after.cases == before.cases


@real_federation
def test_the_count_catches_a_case_counted_twice(drill: Drill, tmp_path: Path) -> None:
    experiment_id = _passed_experiment(drill)
    hub = _copy(drill.hub_db, tmp_path / "hub.sqlite")
    with sqlite3.connect(hub) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(results)") if r[1] != "id"]
        values = ", ".join("attempt + 1" if c == "attempt" else c for c in columns)
        db.execute(
            f"INSERT INTO results ({', '.join(columns)}) SELECT {values} FROM results"
            " WHERE id = (SELECT min(id) FROM results WHERE experiment_id = ?)",
            (experiment_id,),
        )

    count = count_results(hub, _spokes(drill), experiment_id)

    assert count.duplicates == 1
    assert count.lost == 0


@real_federation
def test_the_count_catches_a_spoke_that_never_answered(drill: Drill, tmp_path: Path) -> None:
    experiment_id = _passed_experiment(drill)
    hub = _copy(drill.hub_db, tmp_path / "hub.sqlite")
    silent = drill.spoke_ids[0]
    with sqlite3.connect(hub) as db:
        for table in ("results", "case_statuses"):
            db.execute(
                f"DELETE FROM {table} WHERE experiment_id = ? AND spoke_id = ?",
                (experiment_id, silent),
            )
        db.execute(
            "UPDATE experiment_spokes SET cases = NULL, accepted_at = NULL"
            " WHERE experiment_id = ? AND spoke_id = ?",
            (experiment_id, silent),
        )
    spokes = {s: p for s, p in _spokes(drill).items() if s != silent}
    due = {s: drill.due for s in drill.spoke_ids}

    count = count_results(hub, spokes, experiment_id, due)

    assert count.silent == (silent,)
    assert count.lost == drill.due == 4
    assert count.cases == 3 * drill.due


@real_federation
def test_the_command_writes_drill_json_and_exits_zero(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "drill", "--out", str(tmp_path),
         "--scenario", "hub-down", "--participants", "2"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    document: dict[str, Any] = json.loads((tmp_path / "drill.json").read_text())
    (scenario,) = document["scenarios"]
    assert scenario["name"] == "hub-down"
    assert {"name", "cases", "ingested", "lost", "duplicates", "passed", "seconds"} <= set(scenario)
    assert scenario["passed"] is True
    assert scenario["cases"] == scenario["ingested"] == 3 * 2
    assert (scenario["lost"], scenario["duplicates"]) == (0, 0)
    assert "hub-down" in done.stdout and "yes" in done.stdout


def test_the_command_offers_exactly_the_drill_scenarios() -> None:
    from workbench.cli import drill as drill_cli

    assert tuple(SCENARIOS) == drill_cli.SCENARIO_NAMES


def test_an_unknown_scenario_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from workbench.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["drill", "--scenario", "meteor-strike"])

    assert done.value.code == 2
    assert "invalid choice: 'meteor-strike'" in capsys.readouterr().err
