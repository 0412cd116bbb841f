"""Per-case overhead of ``run_local`` beyond a bare ``docker run`` with the same flags.

Both run the same image on the same participant, alternating, in the same run. The bare
baseline gets its input folders prepared once beforehand (participant JSON, DICOM folder,
output folder) and runs ``docker run --rm`` with exactly the sandbox flags of
``workbench.spoke_service.sandbox.docker_run_argv``. ``run_local`` does everything a spoke
does per case: read the folder's headers, build the participant JSON, stage, run through the
SDK, judge and validate the output, write the results, clean up.

    .venv/bin/python -m bench.bench_run_local [--image elic/naive-baseline:1.0.0] [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cohort_data import cohort, participant_folders
from workbench.core.contract import algo_arg_env
from workbench.core.pseudonym import Pseudonymizer
from workbench.spoke_service.engine import DockerEngine
from workbench.spoke_service.run_local import case_from_folder, run_local
from workbench.spoke_service.sandbox import Limits, SandboxSpec, docker_run_argv
from workbench.spoke_service.staging import Staging


def docker_cli() -> str:
    # Debian's client matches Debian's daemon; fall back to whatever docker is on PATH.
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="elic/naive-baseline:1.0.0")
    parser.add_argument("--runs", type=int, default=10)
    ns = parser.parse_args()
    engine = DockerEngine.from_env()
    image_id = engine.image(ns.image).id
    folder = participant_folders(cohort(1, 2))[0]
    secret = Pseudonymizer(b"bench-secret-0123456789abcdef")
    case, _ = case_from_folder(folder, secret)
    limits = Limits()
    bare, ours = [], []
    with (
        tempfile.TemporaryDirectory(prefix="elic-bench-") as tmp,
        Staging(Path(tmp) / "bare", case, limits.output_bytes) as staged,
    ):
        spec = SandboxSpec(
            image=image_id, algo_arg=algo_arg_env(), input_dir=str(staged.input_dir),
            dicom_dir=str(staged.dicom_dir), output_dir=str(staged.output_dir), limits=limits,
        )  # fmt: skip
        argv = docker_run_argv(spec, docker_cli())
        for i in range(ns.runs + 1):  # the first round warms caches and is not counted
            for item in staged.output_dir.iterdir():
                item.unlink()
            started = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True)
            t_bare = time.perf_counter() - started
            assert (staged.output_dir / "output.json").exists()
            out = Path(tmp) / "ours"
            started = time.perf_counter()
            done = run_local(engine, ns.image, folder, out, secret, None, limits)
            t_ours = time.perf_counter() - started
            assert done.result.ok, done.result.detail
            shutil.rmtree(out)
            if i:
                bare.append(t_bare)
                ours.append(t_ours)
    b, o = statistics.median(bare), statistics.median(ours)
    result = {
        "image": ns.image,
        "files_in_case": case.instance_count,
        "runs": ns.runs,
        "bare_docker_run_median_s": round(b, 3),
        "run_local_median_s": round(o, 3),
        "overhead_ms": round((o - b) * 1000, 1),
        "overhead_percent": round(100 * (o - b) / b, 1),
        "budget_ms": round(max(0.15 * b, 0.050) * 1000, 1),
        "within_budget": (o - b) <= max(0.15 * b, 0.050),
    }
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
