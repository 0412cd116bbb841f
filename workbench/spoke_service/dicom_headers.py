"""Reads DICOM headers (never pixels) into ``InstanceHeader`` records, one file or many.

A folder at a hospital holds more than clean DICOM: reports, thumbnails, half-copied files.
``read_header`` sorts every file into a header or an ``Unreadable`` outcome with a kind
(``not_dicom``, ``corrupt``, ``truncated``, ``not_image``), and ``scan_headers`` does that
for many files across worker processes. Nothing here raises for a bad file.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError

from workbench.core.headers import InstanceHeader

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
            ds = pydicom.dcmread(f, stop_before_pixels=True)
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
    return sorted(stat_files(root))


def stat_files(root: str | os.PathLike[str]) -> dict[str, os.stat_result]:
    """Every regular file below ``root`` with its ``stat``, one system call per file."""
    found: dict[str, os.stat_result] = {}
    pending = [os.fspath(root)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    found[entry.path] = entry.stat(follow_symlinks=False)
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
    raw = _Raw(ds)
    missing = [k for k in _REQUIRED if not raw.text(k)]
    if missing:
        raise _Reject("corrupt", f"missing {', '.join(missing)}")
    rows, columns = raw.us("Rows"), raw.us("Columns")
    if rows is None or columns is None:
        raise _Reject("not_image", "no Rows/Columns: not an image instance")
    _check_complete(raw, ds, size - pixels_at, rows, columns)
    spacing = raw.numbers("PixelSpacing")
    position = raw.numbers("ImagePositionPatient")
    return InstanceHeader(
        path=path,
        file_size=size,
        sop_class_uid=raw.text("SOPClassUID"),
        sop_uid=raw.text("SOPInstanceUID"),
        patient_id=raw.text("PatientID"),
        patient_name=raw.text("PatientName"),
        birth_date=raw.text("PatientBirthDate"),
        study_uid=raw.text("StudyInstanceUID"),
        study_date=raw.text("StudyDate"),
        accession=raw.text("AccessionNumber"),
        institution=raw.text("InstitutionName"),
        series_uid=raw.text("SeriesInstanceUID"),
        series_number=raw.integer("SeriesNumber"),
        instance_number=raw.integer("InstanceNumber"),
        modality=raw.text("Modality"),
        manufacturer=raw.text("Manufacturer"),
        manufacturer_model=raw.text("ManufacturerModelName"),
        convolution_kernel=raw.text("ConvolutionKernel"),
        body_part=raw.text("BodyPartExamined"),
        slice_thickness_mm=raw.number("SliceThickness"),
        kvp=raw.number("KVP"),
        pixel_spacing_mm=(spacing[0], spacing[1]) if len(spacing) == 2 else None,
        rows=rows,
        columns=columns,
        slice_z_mm=position[2] if len(position) == 3 else None,
    )


_TAG_OF: dict[str, int] = {k: int(tag_for_keyword(k) or 0) for k in (
    "SOPClassUID", "SOPInstanceUID", "PatientID", "PatientName", "PatientBirthDate",
    "StudyInstanceUID", "StudyDate", "AccessionNumber", "InstitutionName",
    "SeriesInstanceUID", "SeriesNumber", "InstanceNumber", "Modality", "Manufacturer",
    "ManufacturerModelName", "ConvolutionKernel", "BodyPartExamined", "SliceThickness",
    "KVP", "PixelSpacing", "Rows", "Columns", "ImagePositionPatient", "BitsAllocated",
    "SamplesPerPixel", "NumberOfFrames", "SpecificCharacterSet",
)}  # fmt: skip


class _Raw:
    """Decodes the few values the catalog needs straight from pydicom's raw elements.

    pydicom converts a value on first access, and that conversion costs more than reading
    the file; decoding these simple VRs (text, IS, DS, US) directly keeps indexing at the
    speed of a bare ``dcmread``.
    """

    def __init__(self, ds: Any) -> None:
        # The element dict itself: ``tag in ds`` and ``ds.get_item`` normalise the tag on
        # every call, which costs as much here as the rest of the decoding.
        self._elements: dict[int, Any] = ds._dict
        self._encoding = "latin-1"  # the default repertoire is ASCII, which latin-1 covers
        if "192" in self.text("SpecificCharacterSet"):
            self._encoding = "utf-8"

    def _element(self, keyword: str) -> Any:
        return self._elements.get(_TAG_OF[keyword])

    def _value(self, keyword: str) -> Any:
        element = self._element(keyword)
        return element.value if isinstance(element, RawDataElement) else element

    def text(self, keyword: str) -> str:
        value = self._value(keyword)
        if value is None:
            return ""
        if isinstance(value, bytes):
            return value.decode(self._encoding, "replace").strip(" \x00")
        return str(value.value if hasattr(value, "value") else value).strip()

    def numbers(self, keyword: str) -> list[float]:
        text = self.text(keyword)
        return [float(part) for part in text.split("\\")] if text else []

    def number(self, keyword: str) -> float | None:
        values = self.numbers(keyword)
        return values[0] if values else None

    def integer(self, keyword: str) -> int | None:
        value = self.number(keyword)
        return None if value is None else int(value)

    def us(self, keyword: str) -> int | None:
        element = self._element(keyword)
        if element is None:
            return None
        if isinstance(element, RawDataElement):
            data = element.value or b""
            if len(data) < 2:
                return None
            order = "<" if element.is_little_endian else ">"
            return int(struct.unpack(order + "H", data[:2])[0])
        return int(element.value)


def _check_complete(raw: _Raw, ds: Any, remaining: int, rows: int, columns: int) -> None:
    # Headers alone cannot show a file cut short inside its pixel data; the bytes left after
    # them can, for uncompressed transfer syntaxes, since every pixel must be there.
    if _transfer_syntax(ds) not in _UNCOMPRESSED:
        return
    bits = raw.us("BitsAllocated") or 16
    samples = raw.us("SamplesPerPixel") or 1
    frames = raw.integer("NumberOfFrames") or 1
    needed = rows * columns * samples * frames * bits // 8 + _PIXEL_ELEMENT_HEADER
    if remaining < needed:
        raise _Reject("truncated", f"{remaining} bytes of pixel data on disk, {needed} needed")


# Native (uncompressed) transfer syntaxes: implicit and explicit little, explicit big endian.
_UNCOMPRESSED = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})
_TRANSFER_SYNTAX_TAG = 0x00020010


def _transfer_syntax(ds: Any) -> str:
    # Read raw, like the other values: pydicom's attribute access would convert it first.
    meta = getattr(ds, "file_meta", None)
    element = getattr(meta, "_dict", {}).get(_TRANSFER_SYNTAX_TAG)
    if element is None:
        return ""
    value = element.value if isinstance(element, RawDataElement) else str(element.value)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip(" \x00")


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__
