"""A spoke reads a participant's headers once for planning and running, within its bound."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

from test_participant import BASE, P, two_timepoints

from workbench.spoke_service.catalog import Catalog
from workbench.spoke_service.participants import Participants


class CountingCatalog:
    """Serves two-time-point headers for any patient id, counting the reads."""

    def __init__(self) -> None:
        self.reads: list[str] = []

    def participant_headers(self, patient_id: str) -> list[Any]:
        self.reads.append(patient_id)
        return [replace(h, patient_id=patient_id) for h in two_timepoints()]


def test_a_participant_is_read_once_and_its_case_and_headers_agree() -> None:
    catalog = CountingCatalog()
    participants = Participants(cast(Catalog, catalog), P, "site-01")

    case = participants.case("MRN-1")
    headers = participants.headers("MRN-1")

    assert catalog.reads == ["MRN-1"]
    assert participants.case("MRN-1") is case
    assert {h.patient_id for h in headers} == {"MRN-1"}
    assert case.participant_id != "MRN-1"  # a pseudonym, never the identifier
    assert BASE.patient_name not in repr(case.document)


def test_only_the_most_recently_used_are_kept() -> None:
    catalog = CountingCatalog()
    participants = Participants(cast(Catalog, catalog), P, "site-01", size=2)

    participants.case("A")
    participants.case("B")
    participants.case("A")  # A is now the most recent: B goes when C comes
    participants.case("C")
    participants.case("A")
    participants.case("B")

    assert catalog.reads == ["A", "B", "C", "B"]
