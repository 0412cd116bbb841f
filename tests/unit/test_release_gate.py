from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dicom_factory import Identity, write_ct_series

from workbench.core.headers import InstanceHeader
from workbench.core.run_errors import REASONS, RunErrorCode
from workbench.spoke_service.dicom_headers import read_header
from workbench.spoke_service.policy import SpokePolicy
from workbench.spoke_service.release_gate import Decision, GateVerdict, ReleaseGate

IDENT = Identity()  # Moreau^Claire, MRN-4711-0042, born 19560314, study 20190402
SCHEMA = {
    "type": "object",
    "properties": {"lav950": {"type": "number"}},
    "required": ["lav950"],
}


def headers_of(folder: Path, identity: Identity) -> list[InstanceHeader]:
    headers = [read_header(p) for p in write_ct_series(folder, identity, slices=2, size=8)]
    assert all(isinstance(h, InstanceHeader) for h in headers)
    return headers  # type: ignore[return-value]


@pytest.fixture(scope="module")
def headers(tmp_path_factory: pytest.TempPathFactory) -> list[InstanceHeader]:
    return headers_of(tmp_path_factory.mktemp("case"), IDENT)


def check(
    output: dict[str, Any],
    headers: list[InstanceHeader],
    policy: SpokePolicy | None = None,
    schema: dict[str, Any] | None = None,
) -> GateVerdict:
    return ReleaseGate(policy).check(output, json.dumps(output).encode(), headers, schema)


def assert_phi(verdict: GateVerdict, kind: str, field: str) -> None:
    assert verdict.decision is Decision.REJECT
    assert verdict.error is not None and verdict.error.code is RunErrorCode.OUTPUT_PHI
    assert verdict.error.reason == REASONS[RunErrorCode.OUTPUT_PHI]
    assert (field, kind) in {(f.field, f.kind) for f in verdict.findings}
    assert f"{field} (" in verdict.detail and kind in verdict.detail


def test_a_clean_output_passes(headers: list[InstanceHeader]) -> None:
    output = {"lav950": 12.5, "lung_volume_ml": 5234.25, "note": "segmentation converged"}

    verdict = check(output, headers, schema=SCHEMA)

    assert verdict.decision is Decision.PASS and verdict.passed
    assert verdict.error is None and verdict.findings == ()
    assert "clean" in verdict.summary


@pytest.mark.parametrize(
    "name",
    ["Moreau^Claire", "moreau", "MOREAU", "Claire", "claire moreau", "Moreau, Claire",
     "MoreauClaire", "reviewed for Mme Moreau."],
)  # fmt: skip
def test_the_patient_name_whole_or_in_part_is_rejected(
    headers: list[InstanceHeader], name: str
) -> None:
    verdict = check({"lav950": 1.0, "note": name}, headers)

    assert_phi(verdict, "patient_name", "/note")


@pytest.mark.parametrize(
    "spelling", ["20190402", "2019-04-02", "02.04.2019", "02/04/2019", "2019-04-02T09:30:00"]
)
def test_the_study_date_in_each_spelling_is_rejected(
    headers: list[InstanceHeader], spelling: str
) -> None:
    verdict = check({"lav950": 1.0, "scan": {"when": spelling}}, headers)

    assert_phi(verdict, "study_date", "/scan/when")


def test_the_study_date_as_a_number_is_rejected(headers: list[InstanceHeader]) -> None:
    verdict = check({"lav950": 1.0, "acquired": 20190402}, headers)

    assert_phi(verdict, "study_date", "/acquired")


def test_the_birth_date_is_rejected(headers: list[InstanceHeader]) -> None:
    verdict = check({"lav950": 1.0, "dob": "14.03.1956"}, headers)

    assert_phi(verdict, "birth_date", "/dob")


def test_the_accession_number_is_rejected(headers: list[InstanceHeader]) -> None:
    verdict = check({"lav950": 1.0, "order": "acc-20190402-77"}, headers)

    assert_phi(verdict, "accession", "/order")


def test_the_institution_is_rejected(headers: list[InstanceHeader]) -> None:
    verdict = check({"lav950": 1.0, "site": "HOPITAL SAINT-EXEMPLE"}, headers)

    assert_phi(verdict, "institution", "/site")


@pytest.mark.parametrize("which", ["study_uid", "series_uid", "sop_uid"])
def test_every_uid_is_rejected(headers: list[InstanceHeader], which: str) -> None:
    uid = getattr(headers[-1], which)

    verdict = check({"lav950": 1.0, "series": [{"ref": f"uid={uid}"}]}, headers)

    assert_phi(verdict, "uid", "/series/0/ref")


def test_the_patient_id_as_a_number_is_rejected(tmp_path: Path) -> None:
    numeric = headers_of(tmp_path, Identity(patient_id="20481632"))

    verdict = check({"lav950": 1.0, "subject": 20481632}, numeric)

    assert_phi(verdict, "patient_id", "/subject")


def test_the_patient_id_as_text_is_rejected(headers: list[InstanceHeader]) -> None:
    verdict = check({"lav950": 1.0, "labels": ["mrn-4711-0042"]}, headers)

    assert_phi(verdict, "patient_id", "/labels/0")


def test_an_identifying_key_is_rejected_and_redacted_in_the_detail(
    headers: list[InstanceHeader],
) -> None:
    verdict = check({"lav950": 1.0, "per_patient": {"Moreau": {"volume": 3.0}}}, headers)

    assert_phi(verdict, "patient_name", "/per_patient/<key>")
    assert verdict.findings[0].in_key
    assert "moreau" not in verdict.detail.lower()


def test_nothing_the_gate_says_holds_the_identifying_value(headers: list[InstanceHeader]) -> None:
    output = {"lav950": 1.0, "note": "Moreau Claire 2019-04-02 ACC-20190402-77"}

    verdict = check(output, headers)

    assert verdict.rejected
    said = " ".join([verdict.detail, verdict.summary, repr(verdict.error)]).lower()
    for secret in ("moreau", "claire", "2019-04-02", "20190402", "acc-20190402-77"):
        assert secret not in said
    assert {f.kind for f in verdict.findings} == {"patient_name", "study_date", "accession"}


def test_short_common_values_do_not_cause_false_positives(tmp_path: Path) -> None:
    short = headers_of(
        tmp_path,
        Identity(patient_id="1", patient_name="Lee^Bo", accession="12", institution="X"),
    )
    output = {"lav950": 1.0, "count": 1, "accession_like": 12, "label": "nodule 1",
              "x": "sleep apnoea", "mode": "X"}  # fmt: skip

    verdict = check(output, short)

    assert verdict.passed, verdict.detail


def test_a_surname_of_three_letters_is_still_caught_as_a_word(tmp_path: Path) -> None:
    short = headers_of(tmp_path, Identity(patient_name="Lee^Bo"))

    verdict = check({"lav950": 1.0, "note": "patient lee, follow-up"}, short)

    assert_phi(verdict, "patient_name", "/note")


def test_a_numeric_id_inside_a_longer_number_is_not_a_match(tmp_path: Path) -> None:
    numeric = headers_of(tmp_path, Identity(patient_id="20481632"))

    verdict = check({"lav950": 0.120481632, "volume": 1204816321}, numeric)

    assert verdict.passed, verdict.detail


def test_manual_release_holds_a_clean_output(headers: list[InstanceHeader]) -> None:
    verdict = check({"lav950": 3.5}, headers, SpokePolicy(manual_release=True), SCHEMA)

    assert verdict.decision is Decision.HOLD and verdict.held
    assert verdict.error is None
    assert "manual release" in verdict.summary


def test_manual_release_never_holds_a_leaking_output(headers: list[InstanceHeader]) -> None:
    verdict = check({"lav950": 3.5, "n": "Moreau"}, headers, SpokePolicy(manual_release=True))

    assert_phi(verdict, "patient_name", "/n")


def test_an_output_over_the_policy_size_limit_is_rejected(headers: list[InstanceHeader]) -> None:
    output = {"lav950": 1.0, "pad": "x" * 2000}

    verdict = check(output, headers, SpokePolicy(max_output_bytes=1024))

    assert verdict.rejected
    assert verdict.error is not None and verdict.error.code is RunErrorCode.OUTPUT_TOO_LARGE


def test_an_output_breaking_its_schema_is_rejected(headers: list[InstanceHeader]) -> None:
    verdict = check({"lav950": "high"}, headers, schema=SCHEMA)

    assert verdict.error is not None
    assert verdict.error.code is RunErrorCode.OUTPUT_SCHEMA_VIOLATION
    assert "lav950" in verdict.detail


def test_a_leak_is_reported_before_a_schema_violation(headers: list[InstanceHeader]) -> None:
    verdict = check({"lav950": "Moreau"}, headers, schema=SCHEMA)

    assert_phi(verdict, "patient_name", "/lav950")


def test_bytes_that_differ_from_the_output_are_rejected(headers: list[InstanceHeader]) -> None:
    verdict = ReleaseGate().check({"lav950": 1.0}, b'{"lav950": 2.0}', headers)

    assert verdict.error is not None and verdict.error.code is RunErrorCode.INTERNAL


def test_without_headers_the_gate_fails_closed() -> None:
    verdict = ReleaseGate().check({"lav950": 1.0}, b'{"lav950": 1.0}', [])

    assert verdict.error is not None and verdict.error.code is RunErrorCode.INTERNAL
