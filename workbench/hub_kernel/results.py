"""Result rows as tables: flattening ``output``/``reference`` into columns, CSV and pandas.

Pure and shared by the store (``ResultsStore.results_frame``) and the hub client, so that a
frame built on the hub and one built from the HTTP API have the same columns. Nested objects
flatten with dots (``output.timepoints`` stays a list; ``output.a.b`` for ``{"a": {"b": 1}}``).

>>> flatten({"participant_id": "p-1", "output": {"score": 0.5}, "reference": {"malignant": 1}})
{'participant_id': 'p-1', 'output.score': 0.5, 'reference.malignant': 1}
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import IO, Any

BASE_COLUMNS = (
    "experiment_id",
    "spoke_id",
    "participant_id",
    "algorithm",
    "attempt",
    "output_sha256",
    "image_digest",
    "received_at",
)
NESTED = ("output", "reference")


def flatten(row: Mapping[str, Any]) -> dict[str, Any]:
    """One result row with ``output``/``reference`` spread into ``output.<key>`` columns."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if key in NESTED and isinstance(value, Mapping):
            _spread(key, value, flat)
        else:
            flat[key] = value
    return flat


def _spread(prefix: str, value: Mapping[str, Any], into: dict[str, Any]) -> None:
    for key, item in value.items():
        name = f"{prefix}.{key}"
        if isinstance(item, Mapping):
            _spread(name, item, into)
        else:
            into[name] = item


def columns(flat_rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The base columns first, then every ``output.*`` and ``reference.*`` column, sorted."""
    seen: set[str] = set()
    for row in flat_rows:
        seen.update(row)
    base = [c for c in BASE_COLUMNS if c in seen or not seen]
    extra = sorted(seen - set(BASE_COLUMNS))
    return base + extra


def to_frame(rows: Iterable[Mapping[str, Any]]) -> Any:
    """A ``pandas.DataFrame``, one row per result (``received_at`` as UTC timestamps)."""
    import pandas as pd

    flat = [flatten(r) for r in rows]
    frame = pd.DataFrame(flat, columns=columns(flat))
    if len(frame):
        frame["received_at"] = pd.to_datetime(frame["received_at"], utc=True)
        frame["attempt"] = frame["attempt"].astype("int64")
    return frame


def write_csv(rows: Iterable[Mapping[str, Any]], out: IO[str]) -> int:
    """Write rows as CSV (lists and objects as JSON text); returns how many were written."""
    flat = [flatten(r) for r in rows]
    writer = csv.DictWriter(out, fieldnames=columns(flat), extrasaction="raise")
    writer.writeheader()
    for row in flat:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return len(flat)


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value
