"""Writes small synthetic CT DICOM files for tests (never real patient data).

One helper for every test that needs a DICOM file on disk, with identifying headers filled
in so that de-identification has something to remove.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


@dataclass(frozen=True)
class Identity:
    """The identifying values a test patient's headers carry."""

    patient_id: str = "MRN-4711-0042"
    patient_name: str = "Moreau^Claire"
    birth_date: str = "19560314"
    institution: str = "Hopital Saint-Exemple"
    accession: str = "ACC-20190402-77"
    study_date: str = "20190402"


def write_ct_series(
    folder: Path,
    identity: Identity | None = None,
    slices: int = 4,
    size: int = 16,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    hu: int = -850,
) -> list[Path]:
    """Write ``slices`` CT files of one series into ``folder``; returns their paths."""
    ident = identity or Identity()
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    paths = []
    for i in range(slices):
        ds = _ct_slice(ident, study_uid, series_uid, series_number, i, size, hu)
        path = folder / f"{ident.patient_id}_{series_number}_{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _ct_slice(
    ident: Identity, study_uid: str, series_uid: str, series_number: int, index: int,
    size: int, hu: int,
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
    ds.StudyDate = ident.study_date
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = index + 1
    ds.Modality = "CT"
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = "SOMATOM Test"
    ds.ConvolutionKernel = "B30f"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = 2.5
    ds.KVP = 120
    ds.PixelSpacing = [0.75, 0.75]
    ds.ImagePositionPatient = [0.0, 0.0, -2.5 * index]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.Rows = size
    ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.PixelData = np.full((size, size), hu, dtype=np.int16).tobytes()
    return ds
