"""DockerEngine operations a spoke needs besides running: finding its orphans, stopping an
experiment's running containers when it is cancelled."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from workbench.core.pseudonym import Pseudonymizer
from workbench.core.run_errors import RunErrorCode
from workbench.images.base import BASE_IMAGE
from workbench.spoke_service.run_local import case_from_folder
from workbench.spoke_service.runner import CaseRunner
from workbench.spoke_service.sandbox import Limits

pytestmark = pytest.mark.docker


def test_a_spoke_removes_only_its_own_orphaned_containers(
    docker_engine: Any, algorithm_images: dict[str, str]
) -> None:
    client = docker_engine.client

    def sleeper(spoke: str) -> Any:
        labels = {"org.elic.spoke": spoke, "org.elic.managed": "true"}
        return client.containers.run(BASE_IMAGE, ["sleep", "60"], detach=True, labels=labels)

    mine, other = sleeper("site-x"), sleeper("site-y")
    try:
        removed = docker_engine.remove_containers({"org.elic.spoke": "site-x"})
        left = {c.id for c in client.containers.list(all=True)}
        assert removed == 1
        assert mine.id not in left
        assert other.id in left
    finally:
        for container in (mine, other):
            with contextlib.suppress(Exception):  # already gone is fine
                container.remove(force=True)


def test_stopping_an_experiments_containers_ends_its_running_case_and_no_other(
    docker_engine: Any, sandbox_images: Any, ct_case: Any, tmp_path: Path
) -> None:
    client = docker_engine.client
    case, _ = case_from_folder(ct_case.folder, Pseudonymizer(b"integration-test-secret-32-bytes"))
    runner = CaseRunner(docker_engine, tmp_path / "work", tmp_path / "logs")
    limits = Limits(timeout_s=120, memory_bytes=128 * 1024**2, pids=32, tmp_bytes=16 * 1024**2)
    labels = {"org.elic.spoke": "site-x", "org.elic.experiment": "exp-stop"}
    other = client.containers.run(
        BASE_IMAGE, ["sleep", "60"], detach=True,
        labels={"org.elic.spoke": "site-x", "org.elic.experiment": "exp-keep"},
    )  # fmt: skip
    outcome: list[Any] = []
    thread = threading.Thread(
        target=lambda: outcome.append(
            runner.run(case, sandbox_images.misbehave, {"mode": "sleep"}, limits, labels=labels)
        )
    )
    started = time.monotonic()
    try:
        thread.start()

        def running() -> bool:
            return bool(client.containers.list(filters={"label": "org.elic.experiment=exp-stop"}))

        while not running():
            assert time.monotonic() - started < 60, "the case never started"
            time.sleep(0.1)
        stopped = docker_engine.stop_containers(labels)
        thread.join(60)
        other.reload()
        assert other.status == "running"  # another experiment's container is left alone
    finally:
        with contextlib.suppress(Exception):
            other.remove(force=True)
    assert stopped == 1
    (result,) = outcome
    assert result.error is not None and result.error.code is RunErrorCode.NONZERO_EXIT
    assert result.exit_code == 137 and time.monotonic() - started < 60  # killed, not timed out
    assert client.containers.list(all=True, filters={"label": "org.elic.experiment=exp-stop"}) == []
