from __future__ import annotations

from datetime import date

import pytest

from workbench.core.pseudonym import Pseudonymizer, day_offset, parse_dicom_date

SECRET = bytes(range(32))


def test_same_identifier_same_secret_gives_the_same_pseudonym() -> None:
    assert Pseudonymizer(SECRET).participant("MRN-1") == Pseudonymizer(SECRET).participant("MRN-1")


def test_pseudonyms_depend_on_secret_identifier_and_domain() -> None:
    a = Pseudonymizer(SECRET)
    b = Pseudonymizer(bytes(reversed(SECRET)))
    assert a.participant("MRN-1") != b.participant("MRN-1")
    assert a.participant("MRN-1") != a.participant("MRN-2")
    assert a.study("1.2.3").removeprefix("st-") != a.series("1.2.3").removeprefix("se-")


def test_pseudonym_does_not_contain_the_identifier() -> None:
    pseudonym = Pseudonymizer(SECRET).participant("MRN-4711")
    assert "4711" not in pseudonym
    assert pseudonym.startswith("p-") and len(pseudonym) == 2 + 16


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        Pseudonymizer(b"short")


def test_dates_become_day_offsets() -> None:
    assert parse_dicom_date("20200229") == date(2020, 2, 29)
    assert parse_dicom_date("20210229") is None
    assert parse_dicom_date("") is None
    assert parse_dicom_date("2020-02-29") is None
    assert day_offset(date(2021, 3, 1), date(2020, 3, 1)) == 365
    assert day_offset(None, date(2020, 3, 1)) is None
