"""Images reach spokes through a private registry, by digest, never by tag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from workbench.core.run_errors import RunErrorCode
from workbench.errors import EngineError
from workbench.images.distribution import ManagedRegistry, forget_references, push

pytestmark = pytest.mark.docker


@pytest.fixture
def registry(tmp_path: Path) -> Any:
    import shutil

    from services import need

    if shutil.which("docker-registry") is None:
        need("docker-registry is not installed")
    with ManagedRegistry(tmp_path / "registry") as running:
        yield running
        import contextlib

        import docker
        from docker.errors import DockerException

        # The tests' pushes and pulls leave names for the registry's images (no engine:
        # nothing was pushed).
        with contextlib.suppress(DockerException):
            forget_references(docker.from_env(), running.address)


def test_a_pushed_image_is_pulled_back_by_digest_with_the_same_id(
    docker_engine: Any, algorithm_images: dict[str, str], registry: ManagedRegistry
) -> None:
    client = docker_engine.client
    local = client.images.get(algorithm_images["naive-baseline"])
    reference = push(client, algorithm_images["naive-baseline"], registry.address)
    repository, _, digest = reference.partition("@")
    assert repository == f"{registry.address}/elic/naive-baseline"
    assert digest.startswith("sha256:") and len(digest) == 71
    client.images.remove(f"{repository}:1.0.0")  # as at a spoke that never had it
    with pytest.raises(EngineError) as absent:
        docker_engine.image(reference)
    assert absent.value.code is RunErrorCode.IMAGE_NOT_FOUND

    pulled = docker_engine.pull(reference)

    assert pulled.id == local.id


def test_forgetting_a_registry_removes_its_names_and_keeps_the_images(
    docker_engine: Any, algorithm_images: dict[str, str], registry: ManagedRegistry
) -> None:
    client = docker_engine.client
    image = algorithm_images["naive-baseline"]
    local = client.images.get(image)
    reference = push(client, image, registry.address)
    docker_engine.pull(reference)  # as a spoke on this engine does: a digest name too

    def names() -> list[str]:
        attrs = client.images.get(local.id).attrs
        return [*(attrs.get("RepoTags") or []), *(attrs.get("RepoDigests") or [])]

    assert any(name.startswith(f"{registry.address}/") for name in names())

    assert forget_references(client, registry.address) >= 1

    assert not [name for name in names() if name.startswith(f"{registry.address}/")]
    assert client.images.get(image).id == local.id  # the image and its own name stay
    assert forget_references(client, registry.address) == 0


def test_pulling_by_tag_is_refused(docker_engine: Any, registry: ManagedRegistry) -> None:
    with pytest.raises(EngineError, match="not by digest"):
        docker_engine.pull(f"{registry.address}/elic/naive-baseline:1.0.0")


def test_a_registry_on_a_taken_port_is_a_clear_error(tmp_path: Path, registry: Any) -> None:
    from workbench.errors import ImageBuildError

    with pytest.raises(ImageBuildError, match="already in use"):
        ManagedRegistry(tmp_path / "second", port=registry.port).start()
