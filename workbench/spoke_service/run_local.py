"""``run-local``: one folder of DICOM, one algorithm image, run exactly as a spoke would.

The folder is read as one participant case (one or more series, any folder layout), its
participant JSON is built with a local pseudonym secret, the image runs under the spoke's
sandbox, and the output folder receives ``output.json`` and the ``participant.json`` the
algorithm saw (plus ``container.log`` for the developer, since here the developer is the
spoke operator).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.core.participant import Case, build_case
from workbench.core.pseudonym import Pseudonymizer
from workbench.core.run_errors import RunErrorCode
from workbench.errors import CaseError
from workbench.spoke_service.dicom_headers import Unreadable, find_files, scan_headers
from workbench.spoke_service.engine import ContainerEngine
from workbench.spoke_service.runner import CaseRunner, RunResult
from workbench.spoke_service.sandbox import Limits

LOCAL_SITE_ID = "local"


@dataclass(frozen=True)
class LocalRun:
    """A ``run-local`` verdict and what was skipped while reading the folder."""

    result: RunResult
    case: Case
    skipped: dict[str, int]


def case_from_folder(
    dicom_dir: Path, pseudonymizer: Pseudonymizer, site_id: str = LOCAL_SITE_ID, workers: int = 1
) -> tuple[Case, dict[str, int]]:
    """Read every file below ``dicom_dir`` as one participant's case.

    Returns the case and the count of skipped files by kind (``not_dicom``, ``corrupt``, ...).

    Raises:
        CaseError: the folder is missing or holds no DICOM image (``INPUT_EMPTY``), or holds
            more than one participant (``INPUT_MIXED_PARTICIPANTS``).
    """
    if not dicom_dir.is_dir():
        raise CaseError(RunErrorCode.INPUT_EMPTY, f"not a folder: {dicom_dir}")
    headers, skipped = [], Counter[str]()
    for outcome in scan_headers(find_files(dicom_dir), workers=workers):
        if isinstance(outcome, Unreadable):
            skipped[outcome.kind] += 1
        else:
            headers.append(outcome)
    if not headers:
        raise CaseError(
            RunErrorCode.INPUT_EMPTY,
            f"no readable DICOM image below {dicom_dir} ({sum(skipped.values())} other files)",
        )
    return build_case(headers, pseudonymizer, site_id), dict(skipped)


def run_local(
    engine: ContainerEngine,
    image: str,
    dicom_dir: Path,
    out_dir: Path,
    pseudonymizer: Pseudonymizer,
    args: dict[str, Any] | None = None,
    limits: Limits | None = None,
) -> LocalRun:
    """Run ``image`` on the case in ``dicom_dir`` and write its results into ``out_dir``."""
    case, skipped = case_from_folder(dicom_dir, pseudonymizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("output.json", "participant.json", "container.log"):
        (out_dir / stale).unlink(missing_ok=True)
    runner = CaseRunner(engine, work_dir=out_dir / ".staging", log_dir=out_dir / ".logs")
    try:
        result = runner.run(case, image, args, limits)
    finally:
        shutil.rmtree(out_dir / ".staging", ignore_errors=True)
    (out_dir / "participant.json").write_text(json.dumps(case.document, indent=2) + "\n")
    if result.output_bytes is not None:
        (out_dir / "output.json").write_bytes(result.output_bytes)
    if result.log_path is not None:
        shutil.move(result.log_path, out_dir / "container.log")
    shutil.rmtree(out_dir / ".logs", ignore_errors=True)
    return LocalRun(result, case, skipped)
