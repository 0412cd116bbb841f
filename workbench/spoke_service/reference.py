"""The site-local reference standard: per participant truth, keyed by the site's PatientID.

Only the fields a study asks for leave the spoke, and only as numbers (a label such as
``malignant`` is 0/1; a measurement is a float), so no identifier, date or free text can
ride along with a result.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from workbench.errors import ConfigError

log = logging.getLogger(__name__)

KEY_COLUMN = "patient_id"


class SiteReference:
    """The reference standard of one site, read from a CSV with a ``patient_id`` column."""

    def __init__(self, rows: dict[str, dict[str, str]]) -> None:
        self._rows = rows

    @classmethod
    def empty(cls) -> SiteReference:
        """A site without a reference standard."""
        return cls({})

    @classmethod
    def from_csv(cls, path: Path) -> SiteReference:
        """Read ``path``; every row must have a ``patient_id``."""
        try:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or KEY_COLUMN not in reader.fieldnames:
                    raise ConfigError(f"{path} has no {KEY_COLUMN!r} column")
                return cls({row[KEY_COLUMN]: row for row in reader})
        except OSError as e:
            raise ConfigError(f"cannot read the reference standard {path}: {e}") from e

    def for_patient(self, patient_id: str, fields: tuple[str, ...]) -> dict[str, float | None]:
        """The requested fields for one patient, as numbers (``None`` when absent)."""
        row = self._rows.get(patient_id, {})
        values: dict[str, float | None] = {}
        for name in fields:
            raw = (row.get(name) or "").strip()
            try:
                number = float(raw) if raw else None
            except ValueError:
                log.warning("reference field %s is not a number; withheld", name)
                number = None
            values[name] = int(number) if number is not None and number.is_integer() else number
        return values
