"""Keyed pseudonyms and day offsets: how real identifiers and dates leave the case.

A pseudonym is an HMAC-SHA-256 of the identifier under a secret that never leaves the spoke.
The same identifier at the same spoke always gets the same pseudonym (so longitudinal studies
line up across runs and experiments), while without the secret nobody can link a pseudonym
back to a patient or across spokes. A domain prefix keeps the kinds apart: a patient id and
a study UID that happen to be equal still get different pseudonyms.

>>> p = Pseudonymizer(b"0" * 32)
>>> p.participant("MRN-0042") == p.participant("MRN-0042")
True
>>> p.participant("MRN-0042").startswith("p-")
True
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import date

MIN_SECRET_BYTES = 16
_DIGITS = 16  # hex digits kept: 64 bits, plenty for one site's participants


class Pseudonymizer:
    """Maps identifiers to stable keyed pseudonyms with one spoke's secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"a pseudonym secret needs at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret

    def key(self, domain: str, value: str) -> str:
        """The pseudonym of ``value`` in ``domain`` (``p``, ``st``, ``se``, ...)."""
        mac = hmac.new(self._secret, f"{domain}\x00{value}".encode(), hashlib.sha256)
        return f"{domain}-{mac.hexdigest()[:_DIGITS]}"

    def participant(self, patient_id: str) -> str:
        """The pseudonymous participant id for a site's PatientID."""
        return self.key("p", patient_id)

    def study(self, study_uid: str) -> str:
        """The pseudonymous key of a study."""
        return self.key("st", study_uid)

    def series(self, series_uid: str) -> str:
        """The pseudonymous key of a series (also its folder name in the container)."""
        return self.key("se", series_uid)


def parse_dicom_date(value: str) -> date | None:
    """A DICOM DA value (``YYYYMMDD``) as a date, or ``None`` when absent or malformed."""
    value = value.strip()
    if len(value) != 8 or not value.isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


def day_offset(day: date | None, origin: date | None) -> int | None:
    """Whole days from ``origin`` to ``day``; ``None`` when either is unknown."""
    if day is None or origin is None:
        return None
    return (day - origin).days
