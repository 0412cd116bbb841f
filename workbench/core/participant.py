"""Builds one participant case and its de-identified participant JSON from header records.

Only allow-listed acquisition fields are copied. The patient, study and series identifiers
become keyed pseudonyms; dates become day offsets from the participant's first study; no UID,
name, date or institution reaches the document. As a last guard the finished document is
scanned for every identifying value of the input headers, so a future allow-list mistake
fails loudly instead of leaking.

>>> # headers come from workbench.spoke_service.dicom_headers.read_header(...)
>>> # case = build_case(headers, Pseudonymizer(secret), site_id="site-01")
>>> # json.dumps(case.document)  -> what the algorithm sees at /elic/input/participant.json
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from workbench.core.contract import CONTRACT, series_dir
from workbench.core.headers import InstanceHeader
from workbench.core.pseudonym import Pseudonymizer, day_offset, parse_dicom_date
from workbench.core.run_errors import RunErrorCode
from workbench.errors import CaseError

_MAX_TEXT = 64
# Identifying values shorter than this are too generic to scan for ("1", "M", "CT").
_MIN_SCANNED_IDENTIFIER = 6


@dataclass(frozen=True)
class CaseSeries:
    """One series of a case: its pseudonymous key and its files in slice order."""

    series_key: str
    paths: tuple[str, ...]


@dataclass(frozen=True)
class Case:
    """One participant case, ready to run: the participant JSON and the series to mount."""

    participant_id: str
    document: dict[str, Any]
    series: tuple[CaseSeries, ...]

    @property
    def instance_count(self) -> int:
        """How many DICOM files the case mounts."""
        return sum(len(s.paths) for s in self.series)


def build_case(
    headers: Iterable[InstanceHeader], pseudonymizer: Pseudonymizer, site_id: str
) -> Case:
    """Turn the headers of one participant's files into a ``Case``.

    Raises:
        CaseError: ``INPUT_EMPTY`` when there are no headers,
            ``INPUT_MIXED_PARTICIPANTS`` when they name more than one PatientID.
    """
    unique = _dedupe(headers)
    if not unique:
        raise CaseError(RunErrorCode.INPUT_EMPTY, "no DICOM instances in the case")
    patients = {h.patient_id for h in unique}
    if len(patients) > 1:
        raise CaseError(
            RunErrorCode.INPUT_MIXED_PARTICIPANTS,
            f"the case holds {len(patients)} different PatientIDs; give one participant's files",
        )
    by_study: dict[str, list[InstanceHeader]] = defaultdict(list)
    for h in unique:
        by_study[h.study_uid].append(h)
    study_dates = {uid: parse_dicom_date(hs[0].study_date) for uid, hs in by_study.items()}
    known = [d for d in study_dates.values() if d is not None]
    origin = min(known) if known else None

    timepoints: dict[int | None, list[dict[str, Any]]] = defaultdict(list)
    case_series: list[CaseSeries] = []
    for study_uid in sorted(by_study, key=lambda u: _study_order(study_dates[u], u)):
        offset = day_offset(study_dates[study_uid], origin)
        series_docs = []
        for series_headers in _group_series(by_study[study_uid]):
            key = pseudonymizer.series(series_headers[0].series_uid)
            series_docs.append(_series_document(key, series_headers))
            case_series.append(CaseSeries(key, tuple(h.path for h in series_headers)))
        timepoints[offset].append(
            {
                "study_key": pseudonymizer.study(study_uid),
                "day_offset": offset,
                "series": series_docs,
            }
        )
    ordered = sorted(timepoints, key=lambda o: (o is None, o or 0))
    participant_id = pseudonymizer.participant(next(iter(patients)))
    document = {
        "contract": CONTRACT,
        "participant_id": participant_id,
        "site_id": site_id,
        "timepoints": [
            {"index": i, "day_offset": offset, "studies": timepoints[offset]}
            for i, offset in enumerate(ordered)
        ],
    }
    _assert_no_identifiers(document, unique)
    return Case(participant_id, document, tuple(case_series))


def _dedupe(headers: Iterable[InstanceHeader]) -> list[InstanceHeader]:
    # The same instance stored twice (a re-export, a copy) must not count twice.
    seen: dict[str, InstanceHeader] = {}
    for h in headers:
        seen.setdefault(h.sop_uid or h.path, h)
    return list(seen.values())


def _study_order(day: date | None, uid: str) -> tuple[bool, date, str]:
    return (day is None, day or date.min, uid)


def _group_series(headers: Sequence[InstanceHeader]) -> list[list[InstanceHeader]]:
    by_series: dict[str, list[InstanceHeader]] = defaultdict(list)
    for h in headers:
        by_series[h.series_uid].append(h)
    groups = [sorted(hs, key=_slice_order) for hs in by_series.values()]
    return sorted(groups, key=lambda hs: (hs[0].series_number or 0, hs[0].series_uid))


def _slice_order(h: InstanceHeader) -> tuple[float, int, str]:
    z = h.slice_z_mm if h.slice_z_mm is not None else float("inf")
    return (z, h.instance_number or 0, h.path)


def _series_document(key: str, headers: Sequence[InstanceHeader]) -> dict[str, Any]:
    first = headers[0]
    return {
        "series_key": key,
        "modality": _text(first.modality),
        "manufacturer": _text(first.manufacturer),
        "manufacturer_model": _text(first.manufacturer_model),
        "convolution_kernel": _text(first.convolution_kernel),
        "body_part": _text(first.body_part),
        "slice_thickness_mm": first.slice_thickness_mm,
        "kvp": first.kvp,
        "pixel_spacing_mm": list(first.pixel_spacing_mm) if first.pixel_spacing_mm else None,
        "rows": first.rows,
        "columns": first.columns,
        "instance_count": len(headers),
        "dicom_dir": series_dir(key),
    }


def _text(value: str) -> str | None:
    value = value.strip()
    return value[:_MAX_TEXT] if value else None


def _assert_no_identifiers(document: dict[str, Any], headers: Sequence[InstanceHeader]) -> None:
    text = json.dumps(document).lower()
    values = {v.strip().lower() for h in headers for v in h.identifiers}
    # A name's components ("Moreau^Claire") can leak one at a time.
    values |= {part for v in list(values) for part in v.replace("^", " ").split()}
    leaked = sorted(v for v in values if len(v) >= _MIN_SCANNED_IDENTIFIER and v in text)
    if leaked:
        raise CaseError(
            RunErrorCode.INTERNAL,
            "an identifying header value reached the participant JSON; refusing the case",
        )
