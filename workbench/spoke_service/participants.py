"""Participants as a spoke's runs need them: the de-identified case and the DICOM headers.

Planning an order builds each matching participant's case (the cohort criteria are checked
on it); running each of that participant's cases moments later needs the same case, and the
release gate needs the same headers to scan the output for identifiers. ``Participants``
keeps the most recently used ones, so the catalog is read once per participant and order,
not once per algorithm.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from workbench.core.headers import InstanceHeader
from workbench.core.participant import Case, build_case
from workbench.core.pseudonym import Pseudonymizer
from workbench.spoke_service.catalog import Catalog

__all__ = ["Participants"]


class Participants:
    """The cases and headers of the ``size`` participants used last; safe between threads.

    Args:
        catalog: where the headers are read.
        pseudonymizer: names the case's participant and series without identifiers.
        spoke_id: the spoke the cases belong to.
        size: how many participants are kept.
    """

    def __init__(
        self, catalog: Catalog, pseudonymizer: Pseudonymizer, spoke_id: str, size: int = 256
    ) -> None:
        self._catalog = catalog
        self._pseudonymizer = pseudonymizer
        self._spoke_id = spoke_id
        self._size = size
        self._kept: OrderedDict[str, tuple[Case, list[InstanceHeader]]] = OrderedDict()
        self._lock = threading.Lock()

    def case(self, patient_id: str) -> Case:
        """The participant's de-identified case (what the container sees)."""
        return self._get(patient_id)[0]

    def headers(self, patient_id: str) -> list[InstanceHeader]:
        """The participant's DICOM headers (never leave the spoke)."""
        return self._get(patient_id)[1]

    def _get(self, patient_id: str) -> tuple[Case, list[InstanceHeader]]:
        with self._lock:
            if patient_id in self._kept:
                self._kept.move_to_end(patient_id)
                return self._kept[patient_id]
        # Built outside the lock: two threads may both build one; both get the same case.
        headers = self._catalog.participant_headers(patient_id)
        entry = (build_case(headers, self._pseudonymizer, self._spoke_id), headers)
        with self._lock:
            self._kept[patient_id] = entry
            while len(self._kept) > self._size:
                self._kept.popitem(last=False)
        return entry
