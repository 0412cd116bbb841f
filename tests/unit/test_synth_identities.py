"""Fake identifiers and site profiles: realistic, unique where they must be, deterministic."""

from __future__ import annotations

import datetime as dt

import numpy as np

from workbench.synth.identities import PatientIdentity, SiteRegistry
from workbench.synth.scanners import site_profile


def test_patient_ids_and_accessions_are_unique_within_a_site() -> None:
    registry = SiteRegistry(2, np.random.default_rng(1))
    rng = np.random.default_rng(2)
    day = dt.date(2019, 3, 1)

    patients = [registry.new_patient(rng, day) for _ in range(300)]
    studies = [registry.new_study(rng, day) for _ in range(600)]

    assert len({p.patient_id for p in patients}) == 300
    assert len({s.accession for s in studies}) == 600
    assert len({s.study_id for s in studies}) == 600


def test_patients_look_like_screening_participants() -> None:
    registry = SiteRegistry(0, np.random.default_rng(3))
    rng = np.random.default_rng(4)
    baseline = dt.date(2020, 6, 15)

    patients = [registry.new_patient(rng, baseline) for _ in range(100)]

    assert {p.sex for p in patients} == {"F", "M"}
    for p in patients:
        family, given = p.name.split("^")
        assert family and given
        assert 55 <= int(p.age(baseline)[:3]) <= 80 and p.age(baseline).endswith("Y")
        assert p.patient_id.isalnum()
    assert any(not p.name.isascii() for p in patients)  # accents, as in real headers


def test_age_counts_whole_years() -> None:
    patient = PatientIdentity(
        name="Moreau^Claire", patient_id="801", birth_date=dt.date(1950, 6, 15), sex="F"
    )

    assert patient.age(dt.date(2020, 6, 14)) == "069Y"
    assert patient.age(dt.date(2020, 6, 15)) == "070Y"


def test_sites_differ_in_locale_and_format() -> None:
    day = dt.date(2021, 2, 2)
    ids = []
    for index in range(6):
        registry = SiteRegistry(index, np.random.default_rng(index))
        patient = registry.new_patient(np.random.default_rng(10), day)
        ids.append((registry.site.institution, len(patient.patient_id), patient.patient_id[0]))

    assert len({institution for institution, _, _ in ids}) == 6
    assert len({(length, first) for _, length, first in ids}) >= 4


def test_the_same_generator_gives_the_same_identities() -> None:
    def draw() -> list[str]:
        registry = SiteRegistry(1, np.random.default_rng(7))
        rng = np.random.default_rng(8)
        day = dt.date(2018, 8, 8)
        p = registry.new_patient(rng, day)
        s = registry.new_study(rng, day)
        return [p.name, p.patient_id, str(p.birth_date), s.accession, registry.site.station]

    assert draw() == draw()


def test_site_profiles_vary_and_cycle() -> None:
    profiles = [site_profile(i) for i in range(8)]

    assert len({p.manufacturer for p in profiles[:6]}) == 4
    assert len({p.thickness(False) for p in profiles[:6]}) >= 3
    assert {p.patient_position for p in profiles} == {"HFS", "FFS"}
    assert profiles[6].manufacturer == profiles[0].manufacturer
    assert profiles[6].noise_sd > profiles[0].noise_sd
    for p in profiles:
        assert 3.0 <= p.thickness(False) <= 5.0 and 0.5 <= p.thickness(True) <= 2.5
        assert p.matrix(False) == 96 and p.matrix(True) == 512
        # The same field of view in both modes.
        assert abs(p.pixel_spacing(True) * 512 - p.pixel_spacing(False) * 96) < 0.1
        assert f"{p.thickness(False):g}" in p.series_description(False)
