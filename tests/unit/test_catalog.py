from __future__ import annotations

import os
from pathlib import Path

import pytest
from dicom_factory import Identity, write_ct_series

from workbench.errors import CatalogError
from workbench.spoke_service.catalog import Catalog
from workbench.spoke_service.dicom_headers import read_header

OTHER = Identity(patient_id="MRN-2", patient_name="Doe^John")


def make_site(root: Path) -> None:
    write_ct_series(root / "p1" / "s1", slices=3, series_number=1)
    write_ct_series(root / "p1" / "s2", slices=2, series_number=2)
    write_ct_series(root / "p2", OTHER, slices=4)
    (root / "README.txt").write_text("export notes")


def test_index_counts_participants_studies_series_and_problems(tmp_path: Path) -> None:
    make_site(tmp_path / "dicom")
    with Catalog.open(tmp_path / "cat.sqlite") as catalog:
        report = catalog.index(tmp_path / "dicom", workers=2)
        counts = catalog.counts()
    assert (report.files_seen, report.indexed, report.problems) == (10, 9, {"not_dicom": 1})
    assert (counts.participants, counts.studies, counts.series, counts.instances) == (2, 3, 3, 9)
    assert counts.problems == 1


def test_headers_round_trip_through_the_catalog(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "dicom", slices=2)
    with Catalog.open(":memory:") as catalog:
        catalog.index(tmp_path / "dicom")
        stored = catalog.participant_headers(Identity().patient_id)
    assert sorted(stored, key=lambda h: h.path) == sorted(
        (read_header(p) for p in paths), key=lambda h: h.path
    )


def test_reindex_reads_only_changes_and_drops_vanished_files(tmp_path: Path) -> None:
    root = tmp_path / "dicom"
    make_site(root)
    with Catalog.open(tmp_path / "cat.sqlite") as catalog:
        catalog.index(root)
        again = catalog.index(root)
        assert (again.indexed, again.unchanged, again.removed) == (0, 10, 0)
        victim = next(root.glob("p2/*.dcm"))
        victim.unlink()
        changed = next(root.glob("p1/s1/*.dcm"))
        os.utime(changed, ns=(1, 1))
        third = catalog.index(root)
        assert (third.indexed, third.removed) == (1, 1)
        assert catalog.counts().instances == 8
        assert catalog.patient_ids() == sorted([Identity().patient_id, "MRN-2"])


def test_catalog_survives_reopening(tmp_path: Path) -> None:
    make_site(tmp_path / "dicom")
    with Catalog.open(tmp_path / "cat.sqlite") as catalog:
        catalog.index(tmp_path / "dicom")
    with Catalog.open(tmp_path / "cat.sqlite") as catalog:
        assert catalog.counts().instances == 9
        assert [kind for _, kind, _ in catalog.problems()] == ["not_dicom"]


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with Catalog.open(":memory:") as catalog, pytest.raises(CatalogError, match="not a folder"):
        catalog.index(tmp_path / "nope")
