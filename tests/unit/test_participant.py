from __future__ import annotations

import json
from dataclasses import replace

import pytest

from workbench.core.headers import InstanceHeader
from workbench.core.participant import build_case
from workbench.core.pseudonym import Pseudonymizer
from workbench.core.run_errors import RunErrorCode
from workbench.errors import CaseError

P = Pseudonymizer(b"k" * 32)

BASE = InstanceHeader(
    path="/data/Moreau_Claire/20190402/IM1.dcm", file_size=1000,
    sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_uid="1.2.3.4.1", patient_id="MRN-4711-0042",
    patient_name="Moreau^Claire",
    birth_date="19560314", study_uid="1.2.3.10", study_date="20190402", accession="ACC-998877",
    institution="Hopital Saint-Exemple", series_uid="1.2.3.20", series_number=2,
    instance_number=1, modality="CT", manufacturer="SIEMENS", manufacturer_model="SOMATOM",
    convolution_kernel="B30f", body_part="CHEST", slice_thickness_mm=2.5, kvp=120.0,
    pixel_spacing_mm=(0.7, 0.7), rows=512, columns=512, slice_z_mm=0.0,
)  # fmt: skip


def instance(n: int, **changes: object) -> InstanceHeader:
    return replace(
        BASE, sop_uid=f"1.2.3.4.{n}", path=f"/data/IM{n}.dcm", instance_number=n, **changes
    )  # type: ignore[arg-type]


def two_timepoints() -> list[InstanceHeader]:
    baseline = [instance(i, slice_z_mm=-2.5 * i) for i in range(1, 4)]
    follow_up = [
        instance(10 + i, study_uid="1.2.3.11", study_date="20200415", series_uid="1.2.3.21",
                 accession="ACC-112233", slice_z_mm=-2.5 * i)
        for i in range(1, 3)
    ]  # fmt: skip
    return follow_up + baseline  # deliberately out of order


def test_time_points_are_ordered_by_study_day_with_offsets() -> None:
    case = build_case(two_timepoints(), P, "site-01")
    tps = case.document["timepoints"]
    assert [tp["index"] for tp in tps] == [0, 1]
    assert [tp["day_offset"] for tp in tps] == [0, 379]  # 2019-04-02 -> 2020-04-15
    assert [s["instance_count"] for tp in tps for st in tp["studies"] for s in st["series"]] == [
        3,
        2,
    ]


def test_no_identifier_date_or_uid_reaches_the_document() -> None:
    headers = two_timepoints()
    text = json.dumps(build_case(headers, P, "site-01").document)
    for h in headers:
        for value in [*h.identifiers, "Moreau", "Claire", h.path, "2019", "2020", "1956"]:
            assert value not in text


def test_allow_listed_acquisition_fields_are_copied() -> None:
    series = build_case(two_timepoints(), P, "site-01").document["timepoints"][0]["studies"][0][
        "series"
    ][0]
    assert series["manufacturer"] == "SIEMENS"
    assert series["convolution_kernel"] == "B30f"
    assert series["slice_thickness_mm"] == 2.5
    assert series["pixel_spacing_mm"] == [0.7, 0.7]
    assert series["dicom_dir"] == f"/elic/dicom/{series['series_key']}"


def test_files_are_mounted_in_slice_order() -> None:
    case = build_case(two_timepoints(), P, "site-01")
    assert case.series[0].paths == (
        "/data/IM3.dcm",
        "/data/IM2.dcm",
        "/data/IM1.dcm",
    )  # z ascending


def test_pseudonyms_are_stable_and_keyed() -> None:
    a = build_case(two_timepoints(), P, "site-01").document
    b = build_case(list(reversed(two_timepoints())), P, "site-01").document
    other = build_case(two_timepoints(), Pseudonymizer(b"q" * 32), "site-01").document
    assert a == b
    assert a["participant_id"] != other["participant_id"]


def test_duplicate_instances_count_once() -> None:
    headers = two_timepoints()
    copy = replace(headers[0], path="/backup/copy.dcm")
    assert build_case([*headers, copy], P, "s").instance_count == len(headers)


def test_empty_and_mixed_inputs_are_refused_with_their_codes() -> None:
    with pytest.raises(CaseError) as empty:
        build_case([], P, "s")
    assert empty.value.code is RunErrorCode.INPUT_EMPTY
    with pytest.raises(CaseError) as mixed:
        build_case([instance(1), instance(2, patient_id="MRN-OTHER")], P, "s")
    assert mixed.value.code is RunErrorCode.INPUT_MIXED_PARTICIPANTS


def test_guard_refuses_an_identifier_hidden_in_an_allow_listed_field() -> None:
    leaky = [instance(1, manufacturer_model="Hopital Saint-Exemple scanner 2")]
    with pytest.raises(CaseError) as refused:
        build_case(leaky, P, "s")
    assert refused.value.code is RunErrorCode.INTERNAL


def test_missing_dates_give_null_offsets_after_dated_studies() -> None:
    headers = [instance(1), instance(2, study_uid="9.9", study_date="", series_uid="9.9.1")]
    tps = build_case(headers, P, "s").document["timepoints"]
    assert [tp["day_offset"] for tp in tps] == [0, None]
