"""Cohort criteria: does a de-identified participant case belong to a study's cohort?

Criteria are evaluated on the participant JSON alone, so a spoke selects cases with exactly
the information the algorithm will see. Known criteria:

- ``modality``: at least one series of that modality in every counted time point;
- ``min_timepoints``: at least this many time points with such a series.

>>> matches({"timepoints": []}, {"min_timepoints": 1})
False
"""

from __future__ import annotations

from typing import Any

KNOWN = frozenset({"modality", "min_timepoints"})


def check_criteria(criteria: dict[str, Any]) -> None:
    """Raise ``ValueError`` for criteria this version does not understand."""
    unknown = set(criteria) - KNOWN
    if unknown:
        raise ValueError(f"unknown cohort criteria: {', '.join(sorted(unknown))}")
    if int(criteria.get("min_timepoints", 0)) < 0:
        raise ValueError("min_timepoints must not be negative")


def matches(document: dict[str, Any], criteria: dict[str, Any]) -> bool:
    """Whether the participant JSON ``document`` meets ``criteria``."""
    modality = criteria.get("modality")
    usable = 0
    for timepoint in document.get("timepoints", []):
        series = [s for study in timepoint.get("studies", []) for s in study.get("series", [])]
        if any(modality is None or s.get("modality") == modality for s in series):
            usable += 1
    return usable >= int(criteria.get("min_timepoints", 1))
