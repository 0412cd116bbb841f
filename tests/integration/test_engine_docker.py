"""DockerEngine operations a spoke needs besides running: finding its orphans."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from workbench.images.base import BASE_IMAGE

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
