"""Shared fixtures: real services when present; a missing one skips locally, fails in CI.

With ``CI=true`` every skip caused by an absent service becomes a failure, so a CI run can
never go green without the real Docker Engine and images.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from services import need

pytest_plugins = ["broker_fixtures", "pg_fixtures"]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """A ``DockerEngine`` on the local daemon (skips or fails when there is none)."""
    from workbench.errors import EngineError
    from workbench.spoke_service.engine import DockerEngine

    try:
        engine = DockerEngine.from_env()
    except EngineError as e:
        need(f"Docker Engine is not reachable: {e.detail}")
    yield engine
    engine.client.close()


@pytest.fixture(scope="session")
def algorithm_images(docker_engine: Any) -> dict[str, str]:
    """The reference algorithm images, built (cached) once per session: name -> reference."""
    from workbench.errors import ImageBuildError
    from workbench.images.algorithms import build_algorithms
    from workbench.images.base import find_base

    if find_base(docker_engine.client) is None:
        need("the base image is missing: run `workbench images build-base` (scripts/setup does)")
    try:
        built = build_algorithms(docker_engine.client)
    except ImageBuildError as e:
        pytest.fail(f"cannot build the algorithm images: {e}")
    return {b.name: b.reference for b in built}
