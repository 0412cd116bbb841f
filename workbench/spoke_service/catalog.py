"""The spoke's local DICOM catalog: headers of every indexed file in one SQLite database.

Instances are the stored rows; participants, studies and series are views over them, so the
catalog can never disagree with itself. Files that are not usable DICOM images are kept in a
``problems`` table with their kind, counted and reported, and never stop an index run.
Re-indexing a folder reads only files that are new or changed (by size and mtime) and drops
rows of files that are gone.

Example::

    catalog = Catalog.open(Path("spoke/catalog.sqlite"))
    report = catalog.index(Path("/data/dicom"), workers=2)
    print(report.indexed, report.problems)
    headers = catalog.participant_headers("MRN-0042")
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.core.headers import InstanceHeader
from workbench.errors import CatalogError
from workbench.spoke_service.dicom_headers import Unreadable, scan_headers, stat_files

_FIELDS = InstanceHeader.field_names()
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS instances (
    {", ".join(f"{name}" for name in _FIELDS)},
    mtime_ns INTEGER NOT NULL,
    PRIMARY KEY (path)
);
CREATE INDEX IF NOT EXISTS instances_patient ON instances (patient_id);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_uid);
CREATE TABLE IF NOT EXISTS problems (
    path TEXT PRIMARY KEY, kind TEXT NOT NULL, detail TEXT NOT NULL, file_size INTEGER,
    mtime_ns INTEGER
);
CREATE VIEW IF NOT EXISTS series AS
    SELECT series_uid, study_uid, patient_id, modality, manufacturer, convolution_kernel,
           slice_thickness_mm, count(*) AS instance_count, sum(file_size) AS bytes
    FROM instances GROUP BY series_uid;
CREATE VIEW IF NOT EXISTS studies AS
    SELECT study_uid, patient_id, study_date, count(DISTINCT series_uid) AS series_count,
           count(*) AS instance_count
    FROM instances GROUP BY study_uid;
CREATE VIEW IF NOT EXISTS participants AS
    SELECT patient_id, count(DISTINCT study_uid) AS study_count,
           count(DISTINCT series_uid) AS series_count, count(*) AS instance_count,
           sum(file_size) AS bytes
    FROM instances GROUP BY patient_id;
"""


@dataclass(frozen=True)
class IndexReport:
    """What one index run found."""

    files_seen: int
    indexed: int
    unchanged: int
    removed: int
    problems: dict[str, int] = field(default_factory=dict)

    @property
    def problem_count(self) -> int:
        """How many files were not usable DICOM images."""
        return sum(self.problems.values())


@dataclass(frozen=True)
class CatalogCounts:
    """Totals over the whole catalog."""

    participants: int
    studies: int
    series: int
    instances: int
    bytes: int
    problems: int


class Catalog:
    """A spoke's DICOM catalog in one SQLite file (or ``:memory:``)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        self._db.executescript(_SCHEMA)
        # A spoke's worker threads share one catalog; sqlite3 serialises nothing by itself.
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: Path | str) -> Catalog:
        """Open (creating if needed) the catalog at ``path``."""
        try:
            if str(path) != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            return cls(sqlite3.connect(str(path), check_same_thread=False))
        except (sqlite3.Error, OSError) as e:
            raise CatalogError(f"cannot open the catalog at {path}: {e}") from e

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def index(
        self,
        root: Path | str,
        workers: int = 1,
        progress: Callable[[int, int], None] | None = None,
    ) -> IndexReport:
        """Index every file below ``root``: read new or changed headers, drop vanished files."""
        root = Path(root)
        if not root.is_dir():
            raise CatalogError(f"not a folder: {root}")
        prefix = os.path.join(os.path.abspath(root), "")
        on_disk = stat_files(os.path.abspath(root))
        known = self._known_under(prefix)
        todo = [p for p, st in on_disk.items() if known.get(p) != (st.st_size, st.st_mtime_ns)]
        gone = [p for p in known if p not in on_disk]
        kinds: Counter[str] = Counter()
        rows: list[tuple[Any, ...]] = []
        problems: list[tuple[Any, ...]] = []
        try:
            with self._lock, self._db:
                self._delete(gone + todo)
                for outcome in scan_headers(todo, workers=workers, progress=progress):
                    st = on_disk[outcome.path]
                    if isinstance(outcome, Unreadable):
                        kinds[outcome.kind] += 1
                        problems.append(
                            (outcome.path, outcome.kind, outcome.detail, st.st_size, st.st_mtime_ns)
                        )
                    else:
                        rows.append((*_row(outcome), st.st_mtime_ns))
                    if len(rows) >= _BATCH:
                        self._db.executemany(_INSERT, rows)
                        rows.clear()
                self._db.executemany(_INSERT, rows)
                self._db.executemany("INSERT INTO problems VALUES (?, ?, ?, ?, ?)", problems)
        except sqlite3.Error as e:
            raise CatalogError(f"cannot write the catalog: {e}") from e
        indexed = len(todo) - sum(kinds.values())
        return IndexReport(
            files_seen=len(on_disk),
            indexed=indexed,
            unchanged=len(on_disk) - len(todo),
            removed=len(gone),
            problems=dict(kinds),
        )

    def counts(self) -> CatalogCounts:
        """Totals of participants, studies, series, instances, bytes and problem files."""
        with self._lock:
            participants, studies, series, instances, size = self._db.execute(
                "SELECT count(DISTINCT patient_id), count(DISTINCT study_uid),"
                " count(DISTINCT series_uid), count(*), coalesce(sum(file_size), 0)"
                " FROM instances"
            ).fetchone()
            problems = self._db.execute("SELECT count(*) FROM problems").fetchone()[0]
        return CatalogCounts(participants, studies, series, instances, size, problems)

    def acquisition_summary(self) -> dict[str, dict[str, int]]:
        """Series counts by manufacturer, kernel and slice thickness (no identifiers)."""
        summary: dict[str, dict[str, int]] = {}
        with self._lock:
            for column in ("modality", "manufacturer", "convolution_kernel", "slice_thickness_mm"):
                rows = self._db.execute(
                    f"SELECT coalesce({column}, ''), count(*) FROM series GROUP BY 1 ORDER BY 1"
                ).fetchall()
                summary[column] = {str(value): int(n) for value, n in rows}
        return summary

    def problems(self) -> list[tuple[str, str, str]]:
        """Every problem file as ``(path, kind, detail)``."""
        with self._lock:
            return list(self._db.execute("SELECT path, kind, detail FROM problems ORDER BY path"))

    def patient_ids(self) -> list[str]:
        """The PatientIDs in the catalog, sorted (local identifiers: they stay at the spoke)."""
        with self._lock:
            rows = self._db.execute("SELECT patient_id FROM participants ORDER BY 1").fetchall()
        return [r[0] for r in rows]

    def participant_headers(self, patient_id: str) -> list[InstanceHeader]:
        """Every instance header of one participant."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(_FIELDS)} FROM instances WHERE patient_id = ? ORDER BY path",
                (patient_id,),
            ).fetchall()
        return [_header(r) for r in rows]

    def _known_under(self, prefix: str) -> dict[str, tuple[int, int]]:
        known: dict[str, tuple[int, int]] = {}
        for table in ("instances", "problems"):
            for path, size, mtime in self._db.execute(
                f"SELECT path, file_size, mtime_ns FROM {table} WHERE substr(path, 1, ?) = ?",
                (len(prefix), prefix),
            ):
                known[path] = (size, mtime)
        return known

    def _delete(self, paths: list[str]) -> None:
        for table in ("instances", "problems"):
            self._db.executemany(f"DELETE FROM {table} WHERE path = ?", [(p,) for p in paths])


_BATCH = 500
_INSERT = f"INSERT INTO instances VALUES ({', '.join('?' * (len(_FIELDS) + 1))})"


def _row(h: InstanceHeader) -> tuple[Any, ...]:
    values = [getattr(h, name) for name in _FIELDS]
    spacing = _FIELDS.index("pixel_spacing_mm")
    if h.pixel_spacing_mm is not None:
        values[spacing] = f"{h.pixel_spacing_mm[0]!r}\\{h.pixel_spacing_mm[1]!r}"
    return tuple(values)


def _header(row: tuple[Any, ...]) -> InstanceHeader:
    values = dict(zip(_FIELDS, row, strict=True))
    spacing = values["pixel_spacing_mm"]
    if spacing is not None:
        a, b = spacing.split("\\")
        values["pixel_spacing_mm"] = (float(a), float(b))
    return InstanceHeader(**values)
