"""``InstanceHeader``: the DICOM header fields the spoke reads from one file.

The catalog stores these, the participant JSON builder picks its allow-listed fields from
them, and the release gate (later) scans outputs for the identifying ones. Reading them from
files lives in ``workbench.spoke_service.dicom_headers``; this module only holds the record.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class InstanceHeader:
    """One DICOM instance's header, reduced to what the workbench uses.

    Identifying fields (``patient_id``, ``patient_name``, dates, UIDs, ``institution``,
    ``accession``) are kept only inside the spoke. Empty strings stand for absent values.
    """

    path: str
    file_size: int
    sop_class_uid: str
    sop_uid: str
    patient_id: str
    patient_name: str
    birth_date: str
    study_uid: str
    study_date: str
    accession: str
    institution: str
    series_uid: str
    series_number: int | None
    instance_number: int | None
    modality: str
    manufacturer: str
    manufacturer_model: str
    convolution_kernel: str
    body_part: str
    slice_thickness_mm: float | None
    kvp: float | None
    pixel_spacing_mm: tuple[float, float] | None
    rows: int | None
    columns: int | None
    slice_z_mm: float | None

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The record's field names, in declaration order (the catalog's column order)."""
        return tuple(f.name for f in fields(cls))

    @property
    def identifiers(self) -> tuple[str, ...]:
        """The values that identify the patient or the encounter (never to leave the spoke)."""
        return (
            self.patient_id,
            self.patient_name,
            self.birth_date,
            self.study_uid,
            self.study_date,
            self.accession,
            self.institution,
            self.series_uid,
            self.sop_uid,
        )
