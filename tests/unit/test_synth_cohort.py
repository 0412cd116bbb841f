"""The synthetic cohort on disk: layout, DICOM validity, identifiers, UIDs, settings."""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import json
import re
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from workbench.errors import SynthError
from workbench.synth import CohortSummary, generate_cohort

SITES = 2
PARTICIPANTS = 3
SEED = 11
REFERENCE_HEADER = [
    "patient_id",
    "malignant",
    "nodule_volume_mm3_t0",
    "nodule_volume_mm3_t1",
    "lav950_percent_t0",
    "lav950_percent_t1",
]
REQUIRED = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyDate",
    "StudyTime",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "ContentDate",
    "ContentTime",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "OperatorsName",
    "StationName",
    "AccessionNumber",
    "StudyID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PatientPosition",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "KVP",
    "ConvolutionKernel",
    "Manufacturer",
    "ManufacturerModelName",
    "StudyDescription",
    "SeriesDescription",
    "InstanceNumber",
    "SliceLocation",
    "SeriesNumber",
    "BodyPartExamined",
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[CohortSummary, list[int]]:
    out = tmp_path_factory.mktemp("cohort") / "out"
    calls: list[int] = []

    def progress(done: int, total: int) -> None:
        assert total == SITES * PARTICIPANTS * 2
        calls.append(done)

    summary = generate_cohort(out, SITES, PARTICIPANTS, seed=SEED, progress=progress)
    return summary, calls


def _headers(out: Path) -> dict[Path, list[pydicom.Dataset]]:
    """Every series folder with its datasets (without pixels), in file-name order."""
    series: dict[Path, list[pydicom.Dataset]] = {}
    for path in sorted(out.glob("site-*/dicom/*/*/*/*.dcm")):
        series.setdefault(path.parent, []).append(pydicom.dcmread(path, stop_before_pixels=True))
    return series


@pytest.fixture(scope="module")
def headers(cohort: tuple[CohortSummary, list[int]]) -> dict[Path, list[pydicom.Dataset]]:
    return _headers(cohort[0].out)


def test_summary_counts_what_is_on_disk(cohort: tuple[CohortSummary, list[int]]) -> None:
    summary, calls = cohort
    files = list(summary.out.rglob("*.dcm"))

    assert summary.sites == ("site-01", "site-02")
    assert summary.participants == SITES * PARTICIPANTS
    assert summary.series == SITES * PARTICIPANTS * 2
    assert summary.files == len(files)
    assert summary.bytes == sum(f.stat().st_size for f in files)
    assert calls == list(range(1, summary.series + 1))


def test_cohort_json_describes_the_sites(cohort: tuple[CohortSummary, list[int]]) -> None:
    summary, _ = cohort

    manifest = json.loads((summary.out / "cohort.json").read_text(encoding="utf-8"))

    assert manifest["generator"] == "workbench.synth"
    assert manifest["version"] == 1
    assert manifest["seed"] == SEED
    assert manifest["full"] is False
    assert [s["site_id"] for s in manifest["sites"]] == ["site-01", "site-02"]
    for site in manifest["sites"]:
        assert set(site) == {
            "site_id",
            "manufacturer",
            "manufacturer_model",
            "convolution_kernel",
            "slice_thickness_mm",
            "participants",
        }
        assert site["participants"] == PARTICIPANTS
    # Sites differ in vendor and protocol, which is the point of a multi-site cohort.
    assert manifest["sites"][0]["manufacturer"] != manifest["sites"][1]["manufacturer"]
    assert manifest["sites"][0]["slice_thickness_mm"] != manifest["sites"][1]["slice_thickness_mm"]


def test_folders_follow_the_pacs_export_layout(
    cohort: tuple[CohortSummary, list[int]], headers: dict[Path, list[pydicom.Dataset]]
) -> None:
    out = cohort[0].out

    top = sorted(p.name for p in out.iterdir())
    assert top == ["cohort.json", "site-01", "site-02"]
    for folder, datasets in headers.items():
        first = datasets[0]
        rel = folder.relative_to(out).parts
        assert rel[1] == "dicom"
        assert rel[2] == first.PatientID
        assert rel[3] == f"{first.StudyDate}_{first.AccessionNumber}"
        assert rel[4].startswith(f"{first.SeriesNumber}_")
        assert re.fullmatch(r"[A-Za-z0-9.+_-]+", rel[4])
        names = sorted(p.name for p in folder.iterdir())
        assert names == [f"IM{i:05d}.dcm" for i in range(1, len(datasets) + 1)]


def test_files_are_valid_ct_image_storage(headers: dict[Path, list[pydicom.Dataset]]) -> None:
    for datasets in headers.values():
        for ds in datasets:
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.SOPClassUID == CTImageStorage
            assert ds.Modality == "CT"
            assert ds.BodyPartExamined == "CHEST"
            assert ds.PatientPosition in {"HFS", "FFS"}
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert ds.SamplesPerPixel == 1
            assert ds.PhotometricInterpretation == "MONOCHROME2"
            assert float(ds.RescaleIntercept) == -1024
            assert float(ds.RescaleSlope) == 1
            assert ds.BitsAllocated == 16
            assert ds.HighBit == ds.BitsStored - 1
            assert ds.PixelRepresentation in {0, 1}
            missing = [k for k in REQUIRED if k not in ds or ds[k].is_empty]
            assert not missing


def test_pixels_decode_with_the_declared_representation(
    headers: dict[Path, list[pydicom.Dataset]],
) -> None:
    for folder in headers:
        path = next(folder.glob("*.dcm"))

        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array

        assert pixels.shape == (ds.Rows, ds.Columns) == (96, 96)
        assert pixels.dtype.kind == ("i" if ds.PixelRepresentation else "u")
        assert pixels.min() >= 0 and pixels.max() < 2**ds.BitsStored


def test_files_are_what_pydicom_itself_would_write(
    headers: dict[Path, list[pydicom.Dataset]],
) -> None:
    for folder in list(headers)[:3]:
        path = sorted(folder.glob("*.dcm"))[5]
        ds = pydicom.dcmread(path)

        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)

        assert buffer.getvalue() == path.read_bytes()


def test_slices_are_contiguous_and_consistently_placed(
    headers: dict[Path, list[pydicom.Dataset]],
) -> None:
    for datasets in headers.values():
        z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
        thickness = float(datasets[0].SliceThickness)

        steps = {round(b - a, 3) for a, b in itertools.pairwise(z)}
        assert len(steps) == 1 and abs(abs(steps.pop()) - thickness) < 1e-3
        assert float(datasets[0].SpacingBetweenSlices) == thickness
        assert [ds.InstanceNumber for ds in datasets] == list(range(1, len(datasets) + 1))
        assert all(float(ds.SliceLocation) == zz for ds, zz in zip(datasets, z, strict=True))
        assert 230 <= abs(z[-1] - z[0]) + thickness <= 250
        assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
        assert len({ds.SeriesInstanceUID for ds in datasets}) == 1


def test_uids_are_unique_where_they_must_be(headers: dict[Path, list[pydicom.Dataset]]) -> None:
    all_ds = [ds for datasets in headers.values() for ds in datasets]
    series = {ds.SeriesInstanceUID for ds in all_ds}
    studies = {ds.StudyInstanceUID for ds in all_ds}
    frames = {ds.FrameOfReferenceUID for ds in all_ds}

    assert len({ds.SOPInstanceUID for ds in all_ds}) == len(all_ds)
    assert len(series) == len(studies) == len(frames) == len(headers)
    assert not (series & studies) and not (series & frames)
    for value in series | studies | frames:
        assert re.fullmatch(r"[0-9]+(\.[0-9]+)+", value) and len(value) <= 64


def test_each_participant_has_a_baseline_and_a_later_follow_up(
    headers: dict[Path, list[pydicom.Dataset]],
) -> None:
    studies: dict[tuple[str, str], set[tuple[str, str, str]]] = {}
    for folder, datasets in headers.items():
        ds = datasets[0]
        key = (folder.parts[-5], ds.PatientID)
        studies.setdefault(key, set()).add((ds.StudyDate, ds.AccessionNumber, ds.StudyID))

    assert len(studies) == SITES * PARTICIPANTS
    for found in studies.values():
        assert len(found) == 2
        (d0, a0, _), (d1, a1, _) = sorted(found)
        gap = dt.datetime.strptime(d1, "%Y%m%d") - dt.datetime.strptime(d0, "%Y%m%d")
        assert 300 <= gap.days <= 500
        assert a0 != a1


def test_headers_carry_identifiers_for_de_identification_to_remove(
    headers: dict[Path, list[pydicom.Dataset]],
) -> None:
    for datasets in headers.values():
        ds = datasets[0]
        born = dt.datetime.strptime(ds.PatientBirthDate, "%Y%m%d").date()
        scanned = dt.datetime.strptime(ds.StudyDate, "%Y%m%d").date()

        family, given = str(ds.PatientName).split("^")[:2]
        assert family and given
        assert ds.PatientSex in {"F", "M"}
        age = int(ds.PatientAge.rstrip("Y"))
        assert 54 <= age <= 81
        assert abs((scanned - born).days / 365.25 - age) < 1.01
        assert str(ds.ReferringPhysicianName) and str(ds.OperatorsName)
        assert len(ds.InstitutionName) > 5 and len(ds.InstitutionAddress) > 10
        assert ds.StationName and ds.AccessionNumber and ds.StudyID


def test_reference_lists_every_patient_of_the_site(
    cohort: tuple[CohortSummary, list[int]], headers: dict[Path, list[pydicom.Dataset]]
) -> None:
    out = cohort[0].out
    for site in ("site-01", "site-02"):
        with (out / site / "reference.csv").open(encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
        patients = {ds[0].PatientID for folder, ds in headers.items() if site in folder.parts}

        assert reader.fieldnames == REFERENCE_HEADER
        assert {r["patient_id"] for r in rows} == patients
        assert {r["malignant"] for r in rows} <= {"0", "1"}
        assert sum(r["malignant"] == "1" for r in rows) == 1  # round(35% of 3)
        for r in rows:
            assert float(r["nodule_volume_mm3_t0"]) > 0 and float(r["nodule_volume_mm3_t1"]) > 0
            assert 0 <= float(r["lav950_percent_t0"]) <= 100


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    a = generate_cohort(tmp_path / "a", 1, 1, seed=5)
    b = generate_cohort(tmp_path / "b", 1, 1, seed=5)
    c = generate_cohort(tmp_path / "c", 1, 1, seed=6)

    def content(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    assert content(a.out) == content(b.out)
    assert a.bytes == b.bytes and a.files == b.files
    assert content(a.out) != content(c.out)
    assert (a.out / "site-01" / "reference.csv").read_bytes() != (
        c.out / "site-01" / "reference.csv"
    ).read_bytes()


def test_an_earlier_cohort_is_replaced(tmp_path: Path) -> None:
    generate_cohort(tmp_path, 2, 1, seed=1)
    (tmp_path / "notes.txt").write_text("kept", encoding="utf-8")

    summary = generate_cohort(tmp_path, 1, 1, seed=2)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort.json", "notes.txt", "site-01"]
    assert summary.files == len(list(tmp_path.rglob("*.dcm")))
    assert json.loads((tmp_path / "cohort.json").read_text(encoding="utf-8"))["seed"] == 2


def test_an_interrupted_cohort_has_no_manifest_and_can_be_redone(tmp_path: Path) -> None:
    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_cohort(tmp_path, 1, 2, progress=stop)
    assert not (tmp_path / "cohort.json").exists()
    assert list(tmp_path.rglob("*.dcm"))

    summary = generate_cohort(tmp_path, 1, 1)

    assert (tmp_path / "cohort.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort.json", "site-01"]
    assert summary.files == len(list(tmp_path.rglob("*.dcm")))


def test_a_folder_that_is_not_a_cohort_is_refused(tmp_path: Path) -> None:
    (tmp_path / "precious.dcm").write_bytes(b"not ours")

    with pytest.raises(SynthError):
        generate_cohort(tmp_path, 1, 1)

    assert (tmp_path / "precious.dcm").read_bytes() == b"not ours"
    assert not (tmp_path / "site-01").exists()


def test_a_foreign_cohort_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cohort.json").write_text('{"generator": "someone else"}', encoding="utf-8")

    with pytest.raises(SynthError):
        generate_cohort(tmp_path, 1, 1)


def test_a_file_as_output_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x", encoding="utf-8")

    with pytest.raises(SynthError):
        generate_cohort(target, 1, 1)


@pytest.mark.parametrize(
    ("sites", "participants", "seed"),
    [(0, 1, 0), (1, 0, 0), (-1, 1, 0), (100, 1, 0), (1, 1, -1), (True, 1, 0), (1, 2.5, 0)],
)
def test_impossible_settings_raise(
    tmp_path: Path, sites: int, participants: int, seed: int
) -> None:
    with pytest.raises(SynthError):
        generate_cohort(tmp_path / "out", sites, participants, seed=seed)

    assert not (tmp_path / "out").exists()
