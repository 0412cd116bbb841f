from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hub_world import STUDIES

from workbench.errors import BadRequestError, NotFoundError
from workbench.hub_kernel.studies import StudyCatalog


def _study(**changes: Any) -> dict[str, Any]:
    study: dict[str, Any] = {
        "name": "s1",
        "title": "A study",
        "cohort": {"modality": "CT", "min_timepoints": 1},
        "reference_fields": ["malignant"],
        "metrics": [{"kind": "roc", "output": "score", "reference": "malignant"}],
    }
    study.update(changes)
    return study


def _catalog(tmp_path: Path, study: dict[str, Any], folder: str = "s1") -> StudyCatalog:
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "study.json").write_text(json.dumps(study))
    return StudyCatalog(tmp_path)


def test_the_projects_lung_screening_study_is_valid() -> None:
    study = StudyCatalog(STUDIES).get("lung-screening")

    assert (study.cohort.modality, study.cohort.min_timepoints) == ("CT", 2)
    assert [m.kind for m in study.metrics] == ["roc", "agreement", "agreement"]
    assert "lav950_percent_t0" in study.reference_fields


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"metrics": [{"kind": "kappa", "output": "a", "reference": "malignant"}]}, "kind"),
        ({"metrics": [{"kind": "roc", "output": "a", "reference": "biopsy"}]}, "'biopsy'"),
        ({"cohort": {"modality": "CT", "min_timepoint": 2}}, "min_timepoint"),
        ({"cohort": {"min_timepoints": 0}}, "min_timepoints"),
        ({"reference_fields": ["malignant", "malignant"]}, "repeat"),
        ({"title": ""}, "title"),
    ],
)
def test_an_invalid_study_is_refused_with_the_problem(
    tmp_path: Path, changes: dict[str, Any], problem: str
) -> None:
    catalog = _catalog(tmp_path, _study(**changes))

    with pytest.raises(BadRequestError) as raised:
        catalog.get("s1")

    assert raised.value.code == "bad_study"
    assert problem in raised.value.message


def test_a_study_must_live_in_the_folder_of_its_name(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, _study(), folder="other")

    with pytest.raises(BadRequestError) as raised:
        catalog.get("other")

    assert "named 's1'" in raised.value.message


def test_a_study_file_that_is_not_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "study.json").write_text("{")

    with pytest.raises(BadRequestError):
        StudyCatalog(tmp_path).get("s1")


@pytest.mark.parametrize("name", ["nope", "..", "s1/../s1"])
def test_an_unknown_study_is_not_found(tmp_path: Path, name: str) -> None:
    catalog = _catalog(tmp_path, _study())

    with pytest.raises(NotFoundError) as raised:
        catalog.get(name)

    assert raised.value.code == "unknown_study"


def test_all_lists_valid_studies_and_the_problems_of_the_others(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, _study())
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "study.json").write_text("[]")

    studies, problems = catalog.all()

    assert [s.name for s in studies] == ["s1"]
    assert list(problems) == ["broken"]
