"""The three reference algorithms, run as their containers run them, on a synthetic cohort.

One site of eight participants is generated with ``workbench.synth``; every case gets a
hand-built participant.json pointing at its two series, and each ``algo.py`` runs in a
subprocess beside a copy of ``elic_io.py`` (as in the image). The outputs are checked against
each algorithm's output schema and against the cohort's ``reference.csv``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import pytest

from workbench.synth.cohort import generate_cohort

pytestmark = pytest.mark.slow

ALGORITHMS = Path(__file__).resolve().parents[2] / "studies" / "algorithms"
FOLDERS = ("lung_lav950", "nodule_volume", "naive_baseline")
PARTICIPANTS = 8


def participant_document(patient_dir: Path) -> dict:
    """participant.json for one patient folder: a time point per study, dated by folder."""
    timepoints, first = [], None
    for index, study in enumerate(sorted(patient_dir.iterdir())):
        day = dt.datetime.strptime(study.name.split("_")[0], "%Y%m%d").date()
        first = first or day
        offset = (day - first).days
        series = [
            {
                "series_key": f"se-{index}-{n}",
                "modality": "CT",
                "instance_count": len(list(folder.iterdir())),
                "dicom_dir": str(folder),
            }
            for n, folder in enumerate(sorted(study.iterdir()))
        ]
        study_doc = {"study_key": f"st-{index}", "day_offset": offset, "series": series}
        timepoints.append({"index": index, "day_offset": offset, "studies": [study_doc]})
    return {
        "contract": "elic-algo/1",
        "participant_id": f"p-{patient_dir.name}",
        "site_id": "site-01",
        "timepoints": timepoints,
    }


def run_case(opt: Path, folder: str, case_dir: Path) -> tuple[int, str, Path]:
    out = case_dir / folder
    out.mkdir()
    algo_arg = {
        "contract": "elic-algo/1",
        "participant": str(case_dir / "participant.json"),
        "output": str(out / "output.json"),
        "args": {},
    }
    env = {"PATH": os.environ.get("PATH", ""), "ALGO_ARG": json.dumps(algo_arg)}
    proc = subprocess.run(
        [sys.executable, str(opt / folder / "algo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stderr, out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every algorithm's output.json for every participant, with the reference row."""
    root = tmp_path_factory.mktemp("synth")
    generate_cohort(root / "cohort", 1, PARTICIPANTS, seed=0)
    site = root / "cohort" / "site-01"
    with (site / "reference.csv").open(newline="") as f:
        reference = {row["patient_id"]: row for row in csv.DictReader(f)}
    opt = root / "opt"
    for folder in FOLDERS:
        (opt / folder).mkdir(parents=True)
        shutil.copy(ALGORITHMS / folder / "algo.py", opt / folder)
        shutil.copy(ALGORITHMS / "common" / "elic_io.py", opt / folder)
    jobs = []
    for patient_dir in sorted((site / "dicom").iterdir()):
        case_dir = root / "cases" / patient_dir.name
        case_dir.mkdir(parents=True)
        document = participant_document(patient_dir)
        (case_dir / "participant.json").write_text(json.dumps(document))
        jobs += [(patient_dir.name, folder, case_dir) for folder in FOLDERS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(pool.map(lambda job: run_case(opt, job[1], job[2]), jobs))
    outputs: dict[str, dict] = {pid: {"reference": reference[pid]} for pid in reference}
    for (pid, folder, _), (code, stderr, out) in zip(jobs, runs, strict=True):
        assert code == 0, f"{folder} failed on {pid}: {stderr}"
        assert sorted(p.name for p in out.iterdir()) == ["output.json"]
        outputs[pid][folder] = json.loads((out / "output.json").read_text())
    return outputs


def auc(scores: list[tuple[float, bool]]) -> float:
    """Mann-Whitney AUC: the chance a malignant case outscores a benign one (ties half)."""
    pos = [s for s, malignant in scores if malignant]
    neg = [s for s, malignant in scores if not malignant]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_every_output_matches_its_schema(results):
    schemas = {
        folder: json.loads((ALGORITHMS / folder / "output.schema.json").read_text())
        for folder in FOLDERS
    }

    for case in results.values():
        for folder in FOLDERS:
            jsonschema.validate(case[folder], schemas[folder])

    assert len(results) == PARTICIPANTS


def test_lav950_matches_the_reference_at_both_time_points(results):
    for case in results.values():
        measured = [t["lav950_percent"] for t in case["lung_lav950"]["timepoints"]]
        expected = [float(case["reference"][f"lav950_percent_t{i}"]) for i in (0, 1)]

        assert measured == pytest.approx(expected, abs=1.5)


def test_nodule_volume_matches_the_reference_for_nodules_of_200_mm3_or_more(results):
    compared = 0
    for case in results.values():
        for i, timepoint in enumerate(case["nodule_volume"]["timepoints"]):
            expected = float(case["reference"][f"nodule_volume_mm3_t{i}"])
            if expected >= 200.0:
                assert timepoint["nodule_volume_mm3"] == pytest.approx(expected, rel=0.3)
                compared += 1

    assert compared >= PARTICIPANTS


def test_nodule_volume_scores_malignant_nodules_higher_than_the_naive_baseline_does(results):
    labelled = {
        folder: [
            (case[folder]["malignancy_score"], case["reference"]["malignant"] == "1")
            for case in results.values()
        ]
        for folder in ("nodule_volume", "naive_baseline")
    }
    malignant = [s for s, m in labelled["nodule_volume"] if m]
    benign = [s for s, m in labelled["nodule_volume"] if not m]

    assert malignant and benign
    assert sum(malignant) / len(malignant) > sum(benign) / len(benign)
    assert auc(labelled["nodule_volume"]) > auc(labelled["naive_baseline"])
