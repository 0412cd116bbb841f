"""Writes small synthetic CT DICOM files for tests (never real patient data).

One helper for every test that needs a DICOM file on disk, with identifying headers filled
in so that de-identification has something to remove. By default each slice is a uniform
``hu`` plane; pass a volume to write chosen pixels (the integration tests' chest phantom)::

    write_ct_series(tmp_path, slices=2)  # two 16x16 slices of -850 HU
    write_ct_series(tmp_path, hu=volume, pixel_spacing_mm=10.0, slice_step_mm=10.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


@dataclass(frozen=True)
class Identity:
    """The identifying values a test patient's headers carry (an empty one is not written)."""

    patient_id: str = "MRN-4711-0042"
    patient_name: str = "Moreau^Claire"
    birth_date: str = "19560314"
    institution: str = "Hopital Saint-Exemple"
    accession: str = "ACC-20190402-77"
    study_date: str = "20190402"
    study_time: str = ""
    institution_address: str = ""
    referring_physician: str = ""
    study_id: str = ""
    sex: str = ""


def write_ct_series(
    folder: Path,
    identity: Identity | None = None,
    slices: int = 4,
    size: int = 16,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    hu: int | np.ndarray = -850,
    pixel_spacing_mm: float = 0.75,
    slice_step_mm: float = -2.5,
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> list[Path]:
    """Write one CT series into ``folder`` (created), one file per slice; returns the paths.

    ``hu`` is either one value for every pixel of ``slices`` planes of ``size`` x ``size``, or
    a volume [slice, row, column] in HU whose shape then decides slices, rows and columns.
    Slice ``i`` sits at ``origin_mm`` moved ``i * slice_step_mm`` along z; the slice thickness
    is the size of that step.
    """
    ident = identity or Identity()
    volume = np.asarray(hu) if isinstance(hu, np.ndarray) else np.full((slices, size, size), hu)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    surname = ident.patient_name.split("^")[0]
    x, y, z = origin_mm
    paths = []
    for i, plane in enumerate(volume):
        ds = _ct_slice(ident, study_uid, series_uid, frame_uid, series_number, i, plane)
        ds.SliceThickness = abs(slice_step_mm)
        ds.PixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
        ds.ImagePositionPatient = [x, y, z + slice_step_mm * i]
        ds.SliceLocation = z + slice_step_mm * i
        path = folder / f"{ident.patient_id}_{surname}_{series_number}_{i + 1:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _ct_slice(
    ident: Identity, study_uid: str, series_uid: str, frame_uid: str, series_number: int,
    index: int, plane: np.ndarray,
) -> Dataset:  # fmt: skip
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.PatientID = ident.patient_id
    ds.PatientName = ident.patient_name
    ds.PatientBirthDate = ident.birth_date
    ds.InstitutionName = ident.institution
    ds.AccessionNumber = ident.accession
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = ident.study_date
    optional = {
        "PatientSex": ident.sex,
        "StudyTime": ident.study_time,
        "InstitutionAddress": ident.institution_address,
        "ReferringPhysicianName": ident.referring_physician,
        "StudyID": ident.study_id,
    }
    for keyword, value in optional.items():
        if value:
            setattr(ds, keyword, value)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = index + 1
    ds.Modality = "CT"
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = "SOMATOM Test"
    ds.ConvolutionKernel = "B30f"
    ds.BodyPartExamined = "CHEST"
    ds.KVP = 120
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.Rows, ds.Columns = (int(n) for n in plane.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.PixelData = np.round(plane).astype("<i2").tobytes()
    return ds
