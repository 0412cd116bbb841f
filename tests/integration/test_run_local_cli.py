"""``workbench algorithm run-local`` as a developer runs it: a subprocess on a real engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.docker

LIMIT_FLAGS = ["--timeout", "60", "--memory", "256m", "--pids", "32"]


def run_local(
    tmp_path: Path,
    image: str,
    dicom: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the command in a fresh interpreter; results go to ``tmp_path/out``."""
    argv = [
        sys.executable, "-m", "workbench.cli", "algorithm", "run-local", image,
        "--dicom", str(dicom), "--out", str(tmp_path / "out"),
        "--secret-file", str(tmp_path / "pseudonym.key"), *LIMIT_FLAGS, *extra,
    ]  # fmt: skip
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def test_success_writes_output_and_participant_json(
    tmp_path: Path, sandbox_images: Any, ct_case: Any
) -> None:
    before = ct_case.snapshot()

    done = run_local(tmp_path, sandbox_images.misbehave, ct_case.folder, "--arg", "mode=ok")

    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    output = json.loads((out / "output.json").read_text())
    assert output["mode"] == "ok"
    assert output["dicom_files"] == len(ct_case.files)
    participant = json.loads((out / "participant.json").read_text())
    assert participant["contract"] == "elic-algo/1"
    [timepoint] = participant["timepoints"]
    [study] = timepoint["studies"]
    [series] = study["series"]
    assert series["instance_count"] == len(ct_case.files)
    assert series["dicom_dir"] == f"/elic/dicom/{series['series_key']}"
    assert not (out / ".staging").exists()
    assert ct_case.snapshot() == before


def test_participant_json_holds_no_identifier_date_or_uid_from_the_headers(
    tmp_path: Path, sandbox_images: Any, ct_case: Any
) -> None:
    identifying = ct_case.identifying_values()

    done = run_local(tmp_path, sandbox_images.misbehave, ct_case.folder, "--arg", "mode=ok")

    assert done.returncode == 0, done.stderr
    text = (tmp_path / "out" / "participant.json").read_text().lower()
    assert len(identifying) > 20  # names, name parts, IDs, dates, institution, UIDs
    assert sorted(v for v in identifying if v.lower() in text) == []


def test_an_argument_reaches_the_algorithm_with_its_json_type(
    tmp_path: Path, sandbox_images: Any, ct_case: Any
) -> None:
    done = run_local(
        tmp_path, sandbox_images.misbehave, ct_case.folder,
        "--arg", "mode=ok", "--arg", "threshold_hu=-900",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    seen = json.loads((tmp_path / "out" / "output.json").read_text())["args"]
    assert seen == {"mode": "ok", "threshold_hu": -900}
    assert type(seen["threshold_hu"]) is int


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        ("exit3", "NONZERO_EXIT"),
        ("invalid_json", "OUTPUT_INVALID_JSON"),
        ("nothing", "OUTPUT_MISSING"),
    ],
)
def test_a_failed_run_exits_1_with_one_line_naming_the_code(
    tmp_path: Path, sandbox_images: Any, ct_case: Any, mode: str, code: str
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "output.json").write_text('{"from": "an earlier run"}')

    done = run_local(tmp_path, sandbox_images.misbehave, ct_case.folder, "--arg", f"mode={mode}")

    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert code in lines[0]
    assert not (tmp_path / "out" / "output.json").exists()


def test_an_unknown_image_exits_1_naming_the_code(tmp_path: Path, ct_case: Any) -> None:
    done = run_local(tmp_path, "elic-test/no-such-algorithm:0", ct_case.folder)

    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "IMAGE_NOT_FOUND" in done.stderr
    assert not (tmp_path / "out" / "output.json").exists()


def test_input_problems_exit_1_naming_the_code(
    tmp_path: Path, sandbox_images: Any, make_ct_case: Any
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    not_dicom = tmp_path / "not-dicom"
    not_dicom.mkdir()
    (not_dicom / "report.txt").write_text("Findings: none.\n")
    (not_dicom / "scan.dcm").write_bytes(b"not really DICOM " * 64)
    (not_dicom / "thumbnail.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    mixed = tmp_path / "mixed"
    make_ct_case(mixed / "a")
    make_ct_case(mixed / "b", patient_id="SYN-99001-2", patient_name="Blanc^Louis")
    expected = {empty: "INPUT_EMPTY", not_dicom: "INPUT_EMPTY", mixed: "INPUT_MIXED_PARTICIPANTS"}

    done = {
        folder: run_local(tmp_path / folder.name, sandbox_images.misbehave, folder)
        for folder in expected
    }

    for folder, code in expected.items():
        assert done[folder].returncode == 1, folder.name
        lines = done[folder].stderr.splitlines()
        assert len(lines) == 1, done[folder].stderr
        assert code in lines[0]
        assert not (tmp_path / folder.name / "out" / "output.json").exists()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--arg", "threshold_hu"], "KEY=VALUE"),
        (["--arg", "=5"], "KEY=VALUE"),
        (["--memory", "12q"], "12q"),
        (["--memory", "4m"], "memory"),
    ],
    ids=["arg-without-equals", "arg-without-key", "memory-unit", "memory-too-small"],
)
def test_bad_flags_exit_non_zero_with_a_clear_message(
    tmp_path: Path, sandbox_images: Any, ct_case: Any, flags: list[str], named: str
) -> None:
    done = run_local(tmp_path, sandbox_images.misbehave, ct_case.folder, *flags)

    assert done.returncode != 0
    assert named in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_an_unreachable_engine_exits_1_naming_the_code(tmp_path: Path, ct_case: Any) -> None:
    done = run_local(
        tmp_path, "elic-test/misbehave:1", ct_case.folder,
        env={"DOCKER_HOST": "unix:///nonexistent.sock"},
    )  # fmt: skip

    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "ENGINE_UNAVAILABLE" in done.stderr
    assert not (tmp_path / "out" / "output.json").exists()
