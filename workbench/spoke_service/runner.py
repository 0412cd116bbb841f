"""Runs one participant case through one algorithm image, under the sandbox, to a verdict.

``CaseRunner.run`` stages the case, starts the container through a ``ContainerEngine``,
classifies how it ended into the fixed run-error table, validates ``output.json`` against
the schema the image declares, and always removes both the container and the staged files.
The container's logs are kept in the spoke's local log folder and named in the result for
the operator; they are never part of what travels.

Order of verdicts, most specific first: process exhaustion, timeout, out of memory, output
over the size limit, non-zero exit, then the output checks (unsafe folder, missing, invalid
JSON, not an object, schema).
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.core.contract import LABEL_OUTPUT_SCHEMA, algo_arg_env
from workbench.core.output_schema import check_schema, validate_output
from workbench.core.participant import Case
from workbench.core.run_errors import Error, RunErrorCode
from workbench.errors import EngineError
from workbench.spoke_service.engine import ContainerEngine, ContainerOutcome, ImageInfo
from workbench.spoke_service.output_folder import folder_bytes, read_output
from workbench.spoke_service.sandbox import MANAGED_LABEL, RUN_LABEL, Limits, SandboxSpec
from workbench.spoke_service.staging import DicomCache, Staging

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """The verdict on one run. Only ``output``/``error`` and ``image_id`` may leave the spoke."""

    run_id: str
    image_id: str
    output: dict[str, Any] | None
    output_bytes: bytes | None
    error: Error | None
    detail: str
    exit_code: int | None
    seconds: float
    log_path: Path | None

    @property
    def ok(self) -> bool:
        """Whether the run produced a valid ``output.json``."""
        return self.error is None


class CaseRunner:
    """Runs cases in sandboxed containers and judges their outputs.

    Args:
        engine: the container engine (``DockerEngine.from_env()`` at a spoke).
        work_dir: where cases are staged; on the same filesystem as the DICOM for hard links.
        log_dir: where container logs are kept, at the spoke.
        background_cleanup: remove staged files on a thread after the verdict (call
            ``close()`` before exiting); otherwise before ``run`` returns.
        labels: extra container labels (a spoke adds its id, to find its orphans later).
        dicom_cache: lay out each participant's DICOM once for all its runs (a spoke's).
    """

    def __init__(
        self,
        engine: ContainerEngine,
        work_dir: Path,
        log_dir: Path,
        background_cleanup: bool = False,
        labels: dict[str, str] | None = None,
        dicom_cache: DicomCache | None = None,
    ) -> None:
        self._engine = engine
        self._dicom_cache = dicom_cache
        self._labels = dict(labels or {})
        self._work_dir = Path(work_dir)
        self._log_dir = Path(log_dir)
        # Removing a case's staged files (a tmpfs unmount and a tree of links) takes a few
        # milliseconds that the result need not wait for: a spoke hands it to a thread.
        self._janitor = ThreadPoolExecutor(1, "staging-cleanup") if background_cleanup else None

    def close(self) -> None:
        """Finish any clean-up still pending."""
        if self._janitor is not None:
            self._janitor.shutdown(wait=True)

    def _dispose(self, staged: Staging) -> None:
        if self._janitor is None:
            staged.cleanup()
        else:
            self._janitor.submit(staged.cleanup)

    def run(
        self,
        case: Case,
        image: str,
        args: dict[str, Any] | None = None,
        limits: Limits | None = None,
        labels: dict[str, str] | None = None,
    ) -> RunResult:
        """Run ``image`` on ``case`` and return the verdict; never raises for a bad algorithm.

        ``labels`` are added to this run's container (a spoke names the experiment, so that
        a cancel can find its running containers).

        Raises:
            EngineError: the engine is unreachable or the image is absent, i.e. the spoke,
                not the algorithm, is at fault.
        """
        limits = limits or Limits()
        info = self._engine.image(image)
        schema = _declared_schema(info)
        self._work_dir.mkdir(parents=True, exist_ok=True)
        staged = Staging(self._work_dir, case, limits.output_bytes, self._dicom_cache).__enter__()
        try:
            spec = SandboxSpec(
                image=info.id,
                algo_arg=algo_arg_env(args),
                input_dir=str(staged.input_dir),
                dicom_dir=str(staged.dicom_dir),
                output_dir=str(staged.output_dir),
                limits=limits,
                labels={
                    **self._labels,
                    **(labels or {}),
                    MANAGED_LABEL: "true",
                    RUN_LABEL: staged.run_id,
                },
            )
            started = time.monotonic()
            try:
                outcome = self._engine.run(spec)
            except EngineError as e:
                return self._failed(staged.run_id, info, e.code, e.detail, None, started)
            log_path = self._keep_logs(staged.run_id, outcome)
            code, detail, data = _judge(outcome, staged.output_dir, limits.output_bytes)
            document = None
            if code is None and data is not None:
                check = validate_output(data, schema, limits.output_bytes)
                code = check.error.code if check.error else None
                detail, document = check.detail, check.document
        finally:
            self._dispose(staged)
        return RunResult(
            run_id=staged.run_id,
            image_id=info.id,
            output=document,
            output_bytes=data if code is None else None,
            error=Error.of(code) if code else None,
            detail=detail,
            exit_code=outcome.exit_code,
            seconds=outcome.seconds,
            log_path=log_path,
        )

    def _keep_logs(self, run_id: str, outcome: ContainerOutcome) -> Path | None:
        if not outcome.logs:
            return None
        self._log_dir.mkdir(parents=True, exist_ok=True)
        path = self._log_dir / f"{run_id}.log"
        path.write_bytes(outcome.logs)
        return path

    def _failed(
        self,
        run_id: str,
        info: ImageInfo,
        code: RunErrorCode,
        detail: str,
        exit_code: int | None,
        started: float,
    ) -> RunResult:
        log.warning("run %s failed: %s (%s)", run_id, code.value, detail)
        return RunResult(
            run_id, info.id, None, None, Error.of(code), detail, exit_code,
            time.monotonic() - started, None,
        )  # fmt: skip


def _declared_schema(info: ImageInfo) -> dict[str, Any] | None:
    raw = info.labels.get(LABEL_OUTPUT_SCHEMA)
    if not raw:
        return None
    try:
        schema = json.loads(raw)
        check_schema(schema)
    except Exception as e:
        raise EngineError(
            RunErrorCode.ENGINE_ERROR, f"the image's {LABEL_OUTPUT_SCHEMA} label is invalid: {e}"
        ) from e
    if not isinstance(schema, dict):
        raise EngineError(RunErrorCode.ENGINE_ERROR, "the image's output schema is not an object")
    return schema


def _judge(
    outcome: ContainerOutcome, output_dir: Path, max_bytes: int
) -> tuple[RunErrorCode | None, str, bytes | None]:
    """Classify how the container ended; on a clean exit, take ``output.json``'s bytes."""
    if outcome.pids_exhausted:
        return RunErrorCode.PIDS_EXHAUSTED, "forks were refused at the process limit", None
    if outcome.timed_out:
        return RunErrorCode.TIMEOUT, f"still running after {outcome.seconds:.1f} s", None
    if outcome.oom_killed:
        return RunErrorCode.OUT_OF_MEMORY, "killed by the memory limit", None
    written = folder_bytes(output_dir)
    if written > max_bytes:
        return RunErrorCode.OUTPUT_TOO_LARGE, f"{written} bytes written > {max_bytes}", None
    if outcome.exit_code != 0:
        return RunErrorCode.NONZERO_EXIT, f"exit code {outcome.exit_code}", None
    read = read_output(output_dir, max_bytes)
    return read.code, read.detail, read.data
