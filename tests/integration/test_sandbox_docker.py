"""The sandbox on a real Docker Engine: every misbehaviour is a failed run with its own code.

Each run goes through ``CaseRunner`` exactly as at a spoke. After every run, whatever its
verdict, no container of the image is left, the staged work folder is gone, and the case's
DICOM files are byte-identical with the same mode and mtime.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from workbench.core.contract import LABEL_OUTPUT_SCHEMA, algo_arg_env
from workbench.core.pseudonym import Pseudonymizer
from workbench.core.run_errors import RunErrorCode
from workbench.errors import EngineError
from workbench.spoke_service.run_local import case_from_folder
from workbench.spoke_service.runner import CaseRunner, RunResult
from workbench.spoke_service.sandbox import Limits, SandboxSpec, docker_run_argv
from workbench.spoke_service.staging import Staging

pytestmark = pytest.mark.docker

MiB = 1024**2
# Small but ample for a python3 that reads eight tiny DICOM files.
LIMITS = Limits(timeout_s=60, memory_bytes=128 * MiB, pids=32, tmp_bytes=16 * MiB)
# For the runs that never end on their own.
SHORT = Limits(timeout_s=4, memory_bytes=128 * MiB, pids=32)
PROBE_LIMITS = Limits(timeout_s=60, memory_bytes=96 * MiB, cpus=0.5, pids=24, tmp_bytes=8 * MiB)
SECRET = b"integration-test-secret-32-bytes"


class Run:
    """Runs one case through ``CaseRunner`` and checks what every run must leave behind."""

    def __init__(self, engine: Any, case: Any, tmp_path: Path, leftovers: Any) -> None:
        self.engine = engine
        self.case = case
        self.work_dir = tmp_path / "work"
        self.log_dir = tmp_path / "logs"
        self.leftovers = leftovers

    def __call__(
        self, image: str, args: dict[str, Any] | None = None, limits: Limits = LIMITS
    ) -> RunResult:
        case, _ = case_from_folder(self.case.folder, Pseudonymizer(SECRET))
        before = self.case.snapshot()
        image_id = self.engine.client.images.get(image).id
        runner = CaseRunner(self.engine, self.work_dir, self.log_dir)

        result = runner.run(case, image, args, limits)

        assert self.leftovers(image_id) == [], "a container of the run is still there"
        assert list(self.work_dir.iterdir()) == [], "the staged case was not removed"
        assert self.case.snapshot() == before, "the input DICOM changed"
        return result


@pytest.fixture
def run(docker_engine: Any, ct_case: Any, tmp_path: Path, no_leftover_containers: Any) -> Run:
    return Run(docker_engine, ct_case, tmp_path, no_leftover_containers)


MISBEHAVIOURS = [
    ("nothing", RunErrorCode.OUTPUT_MISSING, LIMITS),
    ("invalid_json", RunErrorCode.OUTPUT_INVALID_JSON, LIMITS),
    ("not_object", RunErrorCode.OUTPUT_NOT_OBJECT, LIMITS),
    ("schema", RunErrorCode.OUTPUT_SCHEMA_VIOLATION, LIMITS),
    ("big", RunErrorCode.OUTPUT_TOO_LARGE, LIMITS),
    ("symlink", RunErrorCode.OUTPUT_UNSAFE, LIMITS),
    ("extra_file", RunErrorCode.OUTPUT_UNSAFE, LIMITS),
    ("exit3", RunErrorCode.NONZERO_EXIT, LIMITS),
    ("sleep", RunErrorCode.TIMEOUT, SHORT),
    ("forkbomb", RunErrorCode.PIDS_EXHAUSTED, SHORT),
    ("oom", RunErrorCode.OUT_OF_MEMORY, Limits(timeout_s=30, memory_bytes=64 * MiB, pids=32)),
]
NEVER_ENDING = {"sleep", "forkbomb"}


@pytest.mark.parametrize(
    ("mode", "code", "limits"), [pytest.param(*m, id=m[0]) for m in MISBEHAVIOURS]
)
def test_each_misbehaviour_is_a_failed_run_with_its_own_code(
    run: Run, sandbox_images: Any, mode: str, code: RunErrorCode, limits: Limits
) -> None:
    result = run(sandbox_images.misbehave, {"mode": mode}, limits)

    assert not result.ok
    assert result.error is not None
    assert result.error.code is code, result.detail
    assert result.output is None
    assert result.output_bytes is None
    if mode in NEVER_ENDING:  # stopped at its limit, not left to run for an hour
        assert limits.timeout_s <= result.seconds < limits.timeout_s + 15


def test_exit_code_wins_over_a_valid_output(run: Run, sandbox_images: Any) -> None:
    result = run(sandbox_images.misbehave, {"mode": "exit3"})

    assert result.error is not None and result.error.code is RunErrorCode.NONZERO_EXIT
    assert result.exit_code == 3


def test_a_good_run_returns_its_output_and_keeps_the_log_at_the_spoke(
    run: Run, sandbox_images: Any, ct_case: Any, tmp_path: Path
) -> None:
    result = run(sandbox_images.misbehave, {"mode": "ok", "threshold_hu": -900})

    assert result.ok, result.detail
    assert result.exit_code == 0
    assert result.output == {
        "mode": "ok",
        "dicom_files": len(ct_case.files),
        "args": {"mode": "ok", "threshold_hu": -900},
    }
    assert result.output_bytes is not None
    assert json.loads(result.output_bytes) == result.output
    assert result.log_path is not None and result.log_path.parent == tmp_path / "logs"
    assert b"mode ok" in result.log_path.read_bytes()


def test_tampering_with_inputs_and_root_filesystem_is_refused(
    run: Run, sandbox_images: Any
) -> None:
    # From the image whose default user is root: the sandbox, not the image, must stop it.
    result = run(sandbox_images.misbehave_root, {"mode": "tamper"})

    assert result.ok, result.detail
    assert result.output is not None
    attempts = result.output["attempts"]
    assert len(attempts) >= 15
    assert [name for name, worked in attempts.items() if worked] == []


def test_the_sandbox_seen_from_inside(
    run: Run, sandbox_images: Any, docker_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKBENCH_SECRET", "xyz")
    limits = PROBE_LIMITS
    image = docker_engine.client.images.get(sandbox_images.misbehave_root)
    image_env = {item.partition("=")[0] for item in image.attrs["Config"]["Env"] or []}

    result = run(sandbox_images.misbehave_root, {"mode": "probe"}, limits)

    assert result.ok, result.detail
    seen = result.output
    assert seen is not None
    assert (seen["uid"], seen["gid"], seen["euid"]) == (65534, 65534, 65534)
    assert 0 not in seen["groups"]
    assert seen["root_writable"] is False
    assert seen["var_tmp_writable"] is False  # world-writable in the image: only ro stops it
    assert "ro" in seen["mounts"]["/"]
    assert seen["input_writable"] is False
    assert seen["participant_writable"] is False
    assert seen["dicom_writable"] is False
    assert "ro" in seen["mounts"]["/elic/input"]
    assert "ro" in seen["mounts"]["/elic/dicom"]
    assert seen["output_writable"] is True
    assert "rw" in seen["mounts"]["/elic/output"]
    assert seen["tmp_writable"] is True
    assert seen["tmp_bytes"] == limits.tmp_bytes
    assert "noexec" in seen["mounts"]["/tmp"]
    assert seen["interfaces"] == ["lo"]
    assert seen["connect_localhost"] is False
    assert seen["connect_internet"] is False
    assert int(seen["cap_eff"], 16) == 0
    assert int(seen["cap_prm"], 16) == 0
    assert int(seen["cap_bnd"], 16) == 0
    assert seen["no_new_privs"] == "1"
    # Docker itself sets HOSTNAME and HOME; everything else comes from the image or the spoke.
    assert set(seen["env_names"]) - image_env - {"HOSTNAME", "HOME"} == {"ALGO_ARG"}
    assert "WORKBENCH_SECRET" not in seen["env_names"]
    assert int(seen["memory_limit"]) == limits.memory_bytes
    assert int(seen["pids_limit"]) == limits.pids
    assert seen["cpus"] == pytest.approx(limits.cpus)


def comparable(probe: dict[str, Any]) -> dict[str, Any]:
    """A probe report without the overlay layer paths, which differ from run to run."""
    layers = ("lowerdir=", "upperdir=", "workdir=")
    mounts = {
        path: [o for o in options if not o.startswith(layers)]
        for path, options in probe["mounts"].items()
    }
    return {**probe, "mounts": mounts}


def test_the_docker_run_command_line_builds_the_same_sandbox(
    run: Run, sandbox_images: Any, docker_engine: Any, docker_cli: str, tmp_path: Path
) -> None:
    via_sdk = run(sandbox_images.misbehave_root, {"mode": "probe"}, PROBE_LIMITS).output
    case, _ = case_from_folder(run.case.folder, Pseudonymizer(SECRET))
    image_id = docker_engine.client.images.get(sandbox_images.misbehave_root).id

    with Staging(tmp_path / "by-hand", case, PROBE_LIMITS.output_bytes) as staged:
        spec = SandboxSpec(
            image=image_id,
            algo_arg=algo_arg_env({"mode": "probe"}),
            input_dir=str(staged.input_dir),
            dicom_dir=str(staged.dicom_dir),
            output_dir=str(staged.output_dir),
            limits=PROBE_LIMITS,
        )
        done = subprocess.run(
            docker_run_argv(spec, docker_cli), capture_output=True, text=True, timeout=60
        )
        by_hand = json.loads((staged.output_dir / "output.json").read_bytes())

    assert done.returncode == 0, done.stderr
    assert via_sdk is not None
    assert comparable(by_hand) == comparable(via_sdk)
    assert run.leftovers(image_id) == []


def test_an_image_from_the_contract_alone_runs_unmodified(
    run: Run, sandbox_images: Any, ct_case: Any
) -> None:
    result = run(sandbox_images.contract_only)

    assert result.ok, result.detail
    assert result.output is not None
    assert result.output["timepoints"] == 1
    assert result.output["series"] == 1
    assert result.output["slices"] == len(ct_case.files)
    assert result.output["first_series_mean_hu"] == pytest.approx(float(np.mean(ct_case.hu)))


def test_an_unknown_image_is_refused_before_anything_starts(
    docker_engine: Any, ct_case: Any, tmp_path: Path
) -> None:
    case, _ = case_from_folder(ct_case.folder, Pseudonymizer(SECRET))
    runner = CaseRunner(docker_engine, tmp_path / "work", tmp_path / "logs")

    with pytest.raises(EngineError) as raised:
        runner.run(case, "elic-test/no-such-algorithm:0", {}, LIMITS)

    assert raised.value.code is RunErrorCode.IMAGE_NOT_FOUND
    assert not (tmp_path / "work").exists()  # nothing was staged, so nothing was started
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("name", ["lung-lav950", "nodule-volume", "naive-baseline"])
def test_reference_algorithm_succeeds_on_a_synthetic_case(
    run: Run, algorithm_images: dict[str, str], docker_engine: Any, name: str
) -> None:
    image = algorithm_images[name]
    schema = json.loads(docker_engine.client.images.get(image).labels[LABEL_OUTPUT_SCHEMA])
    limits = Limits(timeout_s=120, memory_bytes=512 * MiB, pids=32)

    result = run(image, {}, limits)

    assert result.ok, f"{result.detail}: {result.log_path and result.log_path.read_text()}"
    assert result.output is not None
    jsonschema.validate(result.output, schema)
    # What the phantom holds: lungs with a patch below -950 HU, and one solid nodule.
    if name == "lung-lav950":
        assert 0 < result.output["lav950_percent"] < 100
        assert result.output["lung_volume_ml"] > 0
    elif name == "nodule-volume":
        assert result.output["nodule_found"] is True
    else:
        assert 0 < result.output["malignancy_score"] < 1
