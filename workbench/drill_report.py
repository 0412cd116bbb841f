"""What the drill counts, and how it reports it: from the databases, never from the processes.

``count_results`` reads one experiment's rows straight from the hub's results store and
from each spoke's state database (read-only SQLite connections, safe while those processes
write, and usable while they are down):

- ``cases``: what the spokes announced they would run (the hub's ``expected``), and for a
  spoke that never answered its order, the cases it was due to run;
- ``ingested``: cases with a result row at the hub;
- ``lost``: cases planned at a spoke, announced to the hub or due, with no result row;
- ``duplicates``: result rows beyond one per case: a second row for one natural key, or a
  case counted again under another attempt.

``ScenarioResult`` is one line of ``drill.json``; ``table`` prints them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError


class DrillError(WorkbenchError):
    """The drill could not set up its federation, read a store, or run a scenario at all."""


@dataclass(frozen=True)
class Count:
    """What the stores hold for one experiment (see the module docstring)."""

    cases: int
    ingested: int
    lost: int
    duplicates: int
    failed: int = 0  # cases the hub holds as failed or cancelled
    unplanned: int = 0  # cases with a result that no spoke planned
    silent: tuple[str, ...] = ()  # spokes that never announced their cases


def count_results(
    hub_db: Path,
    spoke_dbs: Mapping[str, Path],
    experiment_id: str,
    due: Mapping[str, int] | None = None,
) -> Count:
    """Count one experiment's cases and results from the hub's and the spokes' databases.

    Args:
        hub_db: the hub's SQLite results store.
        spoke_dbs: each spoke's state database (``state/state.sqlite``), by spoke id.
        experiment_id: the experiment.
        due: the cases each spoke must run, where the caller knows it (the drill knows its
            cohort): a spoke that never announced its cases still counts them as cases.

    Raises:
        DrillError: the hub's database does not exist.
    """
    with read_db(hub_db) as db:
        announced = dict(
            db.execute(
                "SELECT spoke_id, cases FROM experiment_spokes WHERE experiment_id = ?",
                (experiment_id,),
            ).fetchall()
        )
        rows = db.execute(
            "SELECT spoke_id, participant_id, algorithm FROM results WHERE experiment_id = ?",
            (experiment_id,),
        ).fetchall()
        known = db.execute(
            "SELECT spoke_id, participant_id, algorithm, state FROM case_statuses"
            " WHERE experiment_id = ?",
            (experiment_id,),
        ).fetchall()
    planned = {(s, p, a) for s, p, a, _ in known}
    for spoke_id, path in spoke_dbs.items():
        if path.exists():
            with read_db(path) as db:
                planned |= {
                    (spoke_id, p, a)
                    for p, a in db.execute(
                        "SELECT participant_id, algorithm FROM cases WHERE experiment_id = ?",
                        (experiment_id,),
                    )
                }
    due = due or {}
    silent = tuple(sorted(s for s in set(announced) | set(due) if announced.get(s) is None))
    cases = sum(n for n in announced.values() if n is not None)
    cases += sum(due.get(s, 0) for s in silent)
    resulted = {tuple(r) for r in rows}
    return Count(
        cases=cases,
        ingested=len(resulted),
        lost=max(len(planned - resulted), cases - len(resulted & planned)),
        duplicates=len(rows) - len(resulted),
        failed=sum(1 for *_, state in known if state in ("failed", "cancelled")),
        unplanned=len(resulted - planned),
        silent=silent,
    )


@contextmanager
def read_db(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to a (WAL-mode) SQLite file that another process writes.

    Raises:
        DrillError: there is no such file.
    """
    if not path.exists():
        raise DrillError(f"no database at {path}")
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        yield db


@dataclass(frozen=True)
class ScenarioResult:
    """One scenario's line of ``drill.json`` (the issue's keys first, then the details)."""

    name: str
    cases: int
    ingested: int
    lost: int
    duplicates: int
    passed: bool
    seconds: float
    experiment_id: str = ""
    failed: int = 0
    fault: str = ""
    problems: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The JSON object."""
        values = asdict(self)
        values["problems"] = list(self.problems)
        return values


def write_report(path: Path, results: list[ScenarioResult]) -> None:
    """Write ``{"scenarios": [...]}`` to ``path``."""
    document = {"scenarios": [r.as_dict() for r in results]}
    path.write_text(json.dumps(document, indent=2) + "\n")


def table(results: list[ScenarioResult]) -> str:
    """The results as a plain-text table, one scenario a line."""
    header = ("scenario", "cases", "ingested", "lost", "duplicates", "passed", "seconds")
    rows = [
        (r.name, str(r.cases), str(r.ingested), str(r.lost), str(r.duplicates),
         "yes" if r.passed else "NO", f"{r.seconds:.1f}")
        for r in results
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    return "\n".join(lines)
