from __future__ import annotations

from pathlib import Path

from dicom_factory import Identity, write_ct_series

from workbench.core.headers import InstanceHeader
from workbench.spoke_service.dicom_headers import Unreadable, find_files, read_header, scan_headers


def test_a_ct_file_gives_its_header(tmp_path: Path) -> None:
    path = write_ct_series(tmp_path, slices=1)[0]
    header = read_header(path)
    assert isinstance(header, InstanceHeader)
    assert header.patient_id == Identity().patient_id
    assert header.rows == 16 and header.pixel_spacing_mm == (0.75, 0.75)
    assert header.file_size == path.stat().st_size


def test_bad_files_are_classified_not_raised(tmp_path: Path) -> None:
    good = write_ct_series(tmp_path / "good", slices=2)
    text = tmp_path / "notes.txt"
    text.write_text("not a dicom file\n" * 20)
    cut_pixels = tmp_path / "cut_pixels.dcm"
    cut_pixels.write_bytes(good[0].read_bytes()[:-200])
    cut_header = tmp_path / "cut_header.dcm"
    cut_header.write_bytes(good[1].read_bytes()[:200])
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    kinds = {
        p.name: getattr(read_header(p), "kind", "ok") for p in [text, cut_pixels, cut_header, empty]
    }
    assert kinds == {
        "notes.txt": "not_dicom",
        "cut_pixels.dcm": "truncated",
        "cut_header.dcm": "corrupt",
        "empty.dcm": "not_dicom",
    }


def test_parallel_scan_matches_serial_scan(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "a", slices=70)
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 300)
    paths = find_files(tmp_path)
    seen: list[tuple[int, int]] = []
    serial = sorted(map(repr, scan_headers(paths, workers=1)))
    parallel = sorted(
        map(repr, scan_headers(paths, workers=2, progress=lambda d, t: seen.append((d, t))))
    )
    assert serial == parallel
    assert len(serial) == 71
    assert seen[-1] == (71, 71)
    assert sum(isinstance(o, Unreadable) for o in scan_headers(paths)) == 1


def test_find_files_does_not_follow_links(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    (tmp_path / "link").symlink_to("/etc/passwd")
    assert find_files(tmp_path) == [str(tmp_path / "a")]


def test_pydicom_sample_files_are_read_or_classified() -> None:
    from pydicom.data import get_testdata_file

    outcomes = {
        name: read_header(get_testdata_file(name))
        for name in ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm"]
    }
    assert isinstance(outcomes["CT_small.dcm"], InstanceHeader)
    assert outcomes["MR_small.dcm"].modality == "MR"  # type: ignore[union-attr]
    assert isinstance(outcomes["JPEG2000.dcm"], InstanceHeader)  # compressed: no size check
    assert getattr(outcomes["rtplan.dcm"], "kind", None) == "not_image"
