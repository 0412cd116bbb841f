"""``workbench drill``: a study through each fault, counting every case exactly once.

``Drill.open`` starts a ``LocalFederation`` (a managed ActiveMQ, a private registry, the hub
and three spoke processes running real containers) on a small synthetic cohort, registers
``naive-baseline`` and keeps the federation for every scenario. ``Drill.run(name)`` launches
one experiment, lets the scenario (``workbench.drill_scenarios``) break a part mid-study and
bring it back, waits until the experiment has settled, and counts what the stores hold
(``workbench.drill_report.count_results``: cases, ingested, lost, duplicates), never what
a process says about itself.

A scenario ``passed`` when it settled, nothing was lost or doubled, every case came back
(``ingested == cases > 0``), no case failed, and the scenario's own checks held (for
instance, that the spoke crash really interrupted a running container: a fault that hit
nothing proves nothing). ``run_drill`` runs the named scenarios in one federation and
writes ``drill.json``.

>>> with Drill.open(Path("drill-out")) as drill:                  # doctest: +SKIP
...     drill.run("broker-restart").passed
True
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.drill_federation import ALGORITHM, DrillFederation, start_federation
from workbench.drill_report import (
    Count,
    DrillError,
    ScenarioResult,
    count_results,
    read_db,
    write_report,
)
from workbench.errors import WorkbenchError

log = logging.getLogger(__name__)

Say = Callable[[str], None]

STUDY = "lung-screening"
SPOKES = 3
SETTLE_S = 240.0  # the longest a scenario's experiment may take to settle after its fault
_POLL_S = 0.25
_SAY_EVERY_S = 10.0


@dataclass
class Trial:
    """What a scenario did: its experiment, the fault as it happened, what went wrong."""

    experiment_id: str
    fault: str = ""
    settled: bool = False
    problems: list[str] = field(default_factory=list)


class Drill:
    """A running federation and the means to run fault scenarios through it.

    Args:
        federation: a started ``DrillFederation`` with ``naive-baseline`` registered.
        docker: a Docker SDK client (to watch the spokes' containers).
        say: where progress lines go.
        due: the cases each spoke must run (its participants, all in the study's cohort);
            a spoke that never answers its order then counts as losing them.
        settle_s: the deadline for an experiment to settle once its fault is over.
    """

    def __init__(
        self,
        federation: DrillFederation,
        docker: Any,
        say: Say,
        due: int = 0,
        settle_s: float = SETTLE_S,
    ) -> None:
        self.federation = federation
        self.docker = docker
        self.say = say
        self.due = due
        self.settle_s = settle_s
        self.client = federation.client()
        self.spoke_ids = [s.spoke_id for s in federation.sites]
        self.results: list[ScenarioResult] = []  # every scenario run, in order

    @classmethod
    def open(cls, out: Path, participants: int = 4, say: Say | None = None) -> Drill:
        """Build (cached) the images and cohort under ``out``, start the federation, register.

        Raises:
            WorkbenchError: an image, the cohort, a process or the registration failed
                (everything started is stopped again).
        """
        say = say or _quiet
        federation, docker = start_federation(Path(out).absolute(), SPOKES, participants, say)
        return cls(federation, docker, say, due=participants)

    def close(self) -> None:
        """Stop every process of the federation."""
        for spoke_id in self.spoke_ids:
            self.federation.thaw(spoke_id)
        self.federation.stop()

    def __enter__(self) -> Drill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # running a scenario ---------------------------------------------------------------

    def run(self, name: str) -> ScenarioResult:
        """Run scenario ``name`` on a new experiment and count what came back.

        Raises:
            DrillError: an unknown scenario name.
        """
        from workbench.drill_scenarios import SCENARIOS

        if name not in SCENARIOS:
            raise DrillError(f"no scenario {name!r}; there are {', '.join(SCENARIOS)}")
        self.say(f"--- {name}")
        started = time.monotonic()
        try:
            trial = SCENARIOS[name](self)
        except WorkbenchError as e:
            log.exception("scenario %s broke off", name)
            trial = Trial("", problems=[f"the scenario broke off: {e}"])
        finally:
            self.heal()
        seconds = round(time.monotonic() - started, 1)
        if not trial.experiment_id:
            broken = ScenarioResult(
                name, 0, 0, 0, 0, False, seconds, problems=tuple(trial.problems)
            )
            self.results.append(broken)
            return broken
        count = self.count(trial.experiment_id)
        problems = list(trial.problems)
        if not trial.settled:
            problems.append(f"the experiment did not settle within {self.settle_s:g} s")
        if count.silent:
            problems.append(f"no answer to the order from {', '.join(count.silent)}")
        if count.unplanned:
            problems.append(f"{count.unplanned} results for cases no spoke planned")
        if count.failed:
            problems.append(f"{count.failed} cases failed or were cancelled")
        passed = (
            not problems
            and count.lost == 0
            and count.duplicates == 0
            and count.ingested == count.cases > 0
        )
        result = ScenarioResult(
            name, count.cases, count.ingested, count.lost, count.duplicates, passed, seconds,
            trial.experiment_id, count.failed, trial.fault, tuple(problems),
        )  # fmt: skip
        self.results.append(result)
        verdict = "passed" if passed else "FAILED"
        self.say(f"{name}: {verdict}: {count.ingested}/{count.cases} ingested, {count.lost} lost, "
                 f"{count.duplicates} duplicates, {seconds:.1f} s")  # fmt: skip
        for problem in problems:
            self.say(f"  problem: {problem}")
        return result

    def heal(self) -> None:
        """Bring every part back (a scenario that broke off may have left one down)."""
        if self.federation.broker.pid() is None:
            self.say("restarting the broker left down")
            self.federation.broker.start()
        for spoke_id in self.spoke_ids:
            self.federation.thaw(spoke_id)
            if not self.federation.running(spoke_id):
                self.say(f"restarting {spoke_id}, left down")
                self.federation.start_spoke(spoke_id)
        if not self.federation.running("hub"):
            self.say("restarting the hub, left down")
            self.federation.start_hub()

    # what scenarios use -----------------------------------------------------------------

    @property
    def hub_db(self) -> Path:
        """The hub's SQLite results store."""
        return self.federation.root / "hub" / "hub.sqlite"

    def spoke_db(self, spoke_id: str) -> Path:
        """One spoke's state database."""
        return self.federation.spoke_dir(spoke_id) / "state" / "state.sqlite"

    def launch(self) -> str:
        """Launch the drill's study at every spoke; returns the experiment id."""
        status = self.client.launch(STUDY, [ALGORITHM], self.spoke_ids)
        experiment_id = str(status["experiment_id"])
        self.say(f"launched {experiment_id} at {len(self.spoke_ids)} spokes")
        return experiment_id

    def count(self, experiment_id: str) -> Count:
        """Count the experiment's cases and results from the databases."""
        spokes = {s: self.spoke_db(s) for s in self.spoke_ids}
        due = {s: self.due for s in self.spoke_ids}
        return count_results(self.hub_db, spokes, experiment_id, due)

    def ingested(self, experiment_id: str) -> int:
        """Result rows at the hub now (read from its database: works while it is down)."""
        with read_db(self.hub_db) as db:
            row = db.execute(
                "SELECT count(*) FROM results WHERE experiment_id = ?", (experiment_id,)
            ).fetchone()
        return int(row[0])

    def spoke_cases(self, experiment_id: str, spoke_ids: list[str] | None = None) -> dict[str, int]:
        """Case states of the experiment at the spokes (from their state databases)."""
        totals: dict[str, int] = {}
        for spoke_id in spoke_ids or self.spoke_ids:
            path = self.spoke_db(spoke_id)
            if not path.exists():
                continue
            with read_db(path) as db:
                for state, n in db.execute(
                    "SELECT state, count(*) FROM cases WHERE experiment_id = ? GROUP BY state",
                    (experiment_id,),
                ):
                    totals[state] = totals.get(state, 0) + n
        return totals

    def unsent(self, spoke_id: str) -> int:
        """Case messages (status and result) in a spoke's outbox, not yet confirmed."""
        with read_db(self.spoke_db(spoke_id)) as db:
            row = db.execute(
                "SELECT count(*) FROM outbox WHERE sent_at IS NULL"
                ' AND (CAST(body AS TEXT) LIKE \'%"type":"case.%\''
                ' OR CAST(body AS TEXT) LIKE \'%"type":"experiment.accepted"%\')'
            ).fetchone()
        return int(row[0])

    def spokes_finished(self, experiment_id: str) -> bool:
        """Every spoke planned and ran its cases and its outbox holds no case message."""
        for spoke_id in self.spoke_ids:
            states = self.spoke_cases(experiment_id, [spoke_id])
            if not states or states.get("queued", 0) + states.get("running", 0):
                return False
            if self.unsent(spoke_id):
                return False
        return True

    def inbox_depth(self) -> int | None:
        """Messages waiting in the hub's inbox queue, or None if the broker cannot say."""
        from workbench.core.messages import HUB_INBOX

        queues = self.federation.broker.status().queues
        if queues is None:
            return None
        return next((q.depth for q in queues if q.name == HUB_INBOX), 0)

    def wait(self, what: str, condition: Callable[[], bool], timeout: float) -> bool:
        """Poll ``condition`` until it holds (True) or ``timeout`` passes (False, said).

        A condition that cannot be read yet (a store or service briefly unavailable) counts
        as not holding. Every ``_SAY_EVERY_S`` the wait says it is still waiting.
        """
        started = time.monotonic()
        said = started
        while True:
            if self._holds(condition, what):
                return True
            now = time.monotonic()
            if now - started > timeout:
                self.say(f"gave up waiting for {what} after {timeout:g} s")
                return False
            if now - said >= _SAY_EVERY_S:
                self.say(f"  still waiting for {what} ({now - started:.0f} s)")
                said = now
            time.sleep(_POLL_S)

    def settle(self, experiment_id: str, timeout: float | None = None) -> bool:
        """Wait until the experiment is complete at the hub, with nothing left in flight.

        Settled: the hub says ``complete``; no spoke has a case of it queued or running or
        a case message unsent; the hub's inbox is (nearly) empty, so late copies are in;
        and the result count held still between two polls.
        """
        timeout = self.settle_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        shown, last = "", -1
        while True:
            line, complete = self._progress(experiment_id)
            if line != shown:
                self.say(f"  {line}")
                shown = line
            quiet = complete and self._holds(
                lambda: self.spokes_finished(experiment_id) and self._inbox_quiet(), "quiet"
            )
            if quiet:
                now = self.ingested(experiment_id)
                if now == last:
                    return True
                last = now
            if time.monotonic() > deadline:
                self.say(f"  not settled after {timeout:g} s: {line}")
                return False
            time.sleep(_POLL_S * 2)

    @staticmethod
    def _holds(condition: Callable[[], bool], what: str) -> bool:
        try:
            return condition()
        except (WorkbenchError, sqlite3.Error) as e:
            log.info("while waiting for %s: %s", what, e)
            return False

    def _progress(self, experiment_id: str) -> tuple[str, bool]:
        try:
            status = self.client.experiment(experiment_id)
        except WorkbenchError:
            results = self.ingested(experiment_id)
            return f"hub not answering; {results} results in its database", False
        spokes = status["spokes"]
        expected = sum(s["expected"] or 0 for s in spokes)
        settled = sum(s["done"] + s["failed"] + s["cancelled"] for s in spokes)
        return _bar(settled, expected, int(status["results"])), status["state"] == "complete"

    def _inbox_quiet(self) -> bool:
        depth = self.inbox_depth()
        # Each spoke sends a heartbeat every few seconds: one of those may be in flight.
        return depth is None or depth <= len(self.spoke_ids)

    def containers(self, spoke_id: str) -> list[Any]:
        """The spoke's containers (any state), found by the label the spoke puts on them."""
        from docker.errors import DockerException

        from workbench.spoke_service.sandbox import SPOKE_LABEL

        try:
            found = self.docker.containers.list(
                all=True, filters={"label": f"{SPOKE_LABEL}={spoke_id}"}
            )
        except DockerException as e:
            raise DrillError(f"cannot list {spoke_id}'s containers: {e}") from e
        return list(found)


def _bar(settled: int, expected: int, results: int) -> str:
    width = 24
    if not expected:
        return "[" + "." * width + "] waiting for the spokes to accept the order"
    filled = width * min(settled, expected) // expected
    return f"[{'#' * filled}{'.' * (width - filled)}] {settled}/{expected} cases, {results} results"


def _quiet(message: str) -> None:
    log.info("%s", message)


def run_drill(
    out: Path, scenarios: list[str] | None = None, participants: int = 4, say: Say | None = None
) -> list[ScenarioResult]:
    """Run ``scenarios`` (all by default) in one federation; writes ``out/drill.json``.

    Raises:
        DrillError: an unknown scenario name, or the federation did not start.
    """
    from workbench.drill_scenarios import SCENARIOS

    names = list(scenarios or SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise DrillError(f"no scenario {', '.join(unknown)}; there are {', '.join(SCENARIOS)}")
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with Drill.open(out, participants, say) as drill:
        for name in names:
            results.append(drill.run(name))
            write_report(out / "drill.json", results)
    return results
