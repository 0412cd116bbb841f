"""Reads DICOM headers (never pixels) into ``InstanceHeader`` records, one file or many.

A folder at a hospital holds more than clean DICOM: reports, thumbnails, half-copied files.
``read_header`` sorts every file into a header or an ``Unreadable`` outcome with a kind
(``not_dicom``, ``corrupt``, ``truncated``, ``not_image``), and ``scan_headers`` does that
for many files across worker processes. Nothing here raises for a bad file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from workbench.core.headers import InstanceHeader

# Only these elements are parsed; pydicom skips the values of all others.
_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "PatientID", "PatientName", "PatientBirthDate",
    "StudyInstanceUID", "StudyDate", "AccessionNumber", "InstitutionName",
    "SeriesInstanceUID", "SeriesNumber", "InstanceNumber", "Modality", "Manufacturer",
    "ManufacturerModelName", "ConvolutionKernel", "BodyPartExamined", "SliceThickness", "KVP",
    "PixelSpacing", "Rows", "Columns", "ImagePositionPatient", "BitsAllocated",
    "SamplesPerPixel", "NumberOfFrames",
]  # fmt: skip
_REQUIRED = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_CHUNK = 64
_PIXEL_ELEMENT_HEADER = 8  # tag and length; explicit VR OW adds 4 more, so this is lenient


@dataclass(frozen=True)
class Unreadable:
    """A file that is not a usable DICOM image, and why."""

    path: str
    kind: str  # not_dicom | corrupt | truncated | not_image
    detail: str


Outcome = InstanceHeader | Unreadable


def read_header(path: str | os.PathLike[str]) -> Outcome:
    """Read one file's header; a file that is not a usable DICOM image becomes ``Unreadable``."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_TAGS)
            pixels_at = f.tell()  # reading stops at the start of the pixel data element
    except InvalidDicomError as e:
        return Unreadable(path, "not_dicom", _short(e))
    except Exception as e:  # any parser failure on a bad file is data, not a crash
        return Unreadable(path, "corrupt", f"{type(e).__name__}: {_short(e)}")
    try:
        return _header(path, size, pixels_at, ds)
    except _Reject as e:
        return Unreadable(path, e.kind, e.detail)
    except Exception as e:  # malformed values (bad DS/IS strings, wrong VM)
        return Unreadable(path, "corrupt", f"{type(e).__name__}: {_short(e)}")


def scan_headers(
    paths: Sequence[str],
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[Outcome]:
    """Read many files' headers, in ``workers`` processes when more than one.

    Results come back in chunks as they finish; ``progress(done, total)`` follows them.
    """
    total = len(paths)
    chunks = [paths[i : i + _CHUNK] for i in range(0, total, _CHUNK)]
    if workers <= 1 or len(chunks) <= 1:
        yield from _counted(map(_read_chunk, chunks), total, progress)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from _counted(pool.map(_read_chunk, chunks), total, progress)


def find_files(root: str | os.PathLike[str]) -> list[str]:
    """Every regular file below ``root``, sorted; links are not followed."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and not os.path.islink(full):
                found.append(full)
    return found


def _counted(
    chunks: Iterable[list[Outcome]], total: int, progress: Callable[[int, int], None] | None
) -> Iterator[Outcome]:
    done = 0
    for chunk in chunks:
        yield from chunk
        done += len(chunk)
        if progress is not None:
            progress(done, total)


def _read_chunk(paths: Sequence[str]) -> list[Outcome]:
    return [read_header(p) for p in paths]


class _Reject(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def _header(path: str, size: int, pixels_at: int, ds: Any) -> InstanceHeader:
    missing = [k for k in _REQUIRED if not str(ds.get(k, "") or "")]
    if missing:
        raise _Reject("corrupt", f"missing {', '.join(missing)}")
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    if rows is None or columns is None:
        raise _Reject("not_image", "no Rows/Columns: not an image instance")
    _check_complete(ds, size - pixels_at, rows, columns)
    spacing = ds.get("PixelSpacing")
    position = ds.get("ImagePositionPatient")
    return InstanceHeader(
        path=path,
        file_size=size,
        sop_class_uid=_str(ds, "SOPClassUID"),
        sop_uid=_str(ds, "SOPInstanceUID"),
        patient_id=_str(ds, "PatientID"),
        patient_name=_str(ds, "PatientName"),
        birth_date=_str(ds, "PatientBirthDate"),
        study_uid=_str(ds, "StudyInstanceUID"),
        study_date=_str(ds, "StudyDate"),
        accession=_str(ds, "AccessionNumber"),
        institution=_str(ds, "InstitutionName"),
        series_uid=_str(ds, "SeriesInstanceUID"),
        series_number=_int(ds, "SeriesNumber"),
        instance_number=_int(ds, "InstanceNumber"),
        modality=_str(ds, "Modality"),
        manufacturer=_str(ds, "Manufacturer"),
        manufacturer_model=_str(ds, "ManufacturerModelName"),
        convolution_kernel=_str(ds, "ConvolutionKernel"),
        body_part=_str(ds, "BodyPartExamined"),
        slice_thickness_mm=_float(ds, "SliceThickness"),
        kvp=_float(ds, "KVP"),
        pixel_spacing_mm=(float(spacing[0]), float(spacing[1])) if spacing else None,
        rows=rows,
        columns=columns,
        slice_z_mm=float(position[2]) if position and len(position) == 3 else None,
    )


def _check_complete(ds: Any, remaining: int, rows: int, columns: int) -> None:
    # Headers alone cannot show a file cut short inside its pixel data; the bytes left after
    # them can, for uncompressed transfer syntaxes, since every pixel must be there.
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or syntax.is_compressed:
        return
    bits = _int(ds, "BitsAllocated") or 16
    samples = _int(ds, "SamplesPerPixel") or 1
    frames = _int(ds, "NumberOfFrames") or 1
    needed = rows * columns * samples * frames * bits // 8 + _PIXEL_ELEMENT_HEADER
    if remaining < needed:
        raise _Reject("truncated", f"{remaining} bytes of pixel data on disk, {needed} needed")


def _str(ds: Any, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _int(ds: Any, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return int(value)


def _float(ds: Any, keyword: str) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return float(value)


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__
