from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hub_world import DIGESTS, LAV, make_world, spec

from workbench.core.contract import CONTRACT
from workbench.errors import BadRequestError, NotFoundError
from workbench.hub_kernel.registry import spec_from_image, validate_spec
from workbench.images.algorithms import default_algorithms_dir, load


@dataclass(frozen=True)
class _Image:
    id: str
    labels: dict[str, str] = field(default_factory=dict)


class _Images:
    """A hand-written image lookup holding one image per reference."""

    def __init__(self, **images: _Image) -> None:
        self.images = images

    def image(self, reference: str) -> _Image:
        return self.images[reference]


def test_an_image_declares_its_algorithm_through_its_labels() -> None:
    source = load(default_algorithms_dir() / "lung_lav950")
    images = _Images(ref=_Image(DIGESTS[LAV], source.labels()))

    found = spec_from_image(images, "ref")

    assert (found.name, found.version, found.image) == ("lung-lav950", "1.0.0", "ref")
    assert found.digest == DIGESTS[LAV]
    assert found.output_schema == source.output_schema
    assert found.args_schema == source.args_schema


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        ({}, "not an elic-algo/1 algorithm image"),
        ({"org.elic.contract": CONTRACT}, "org.elic.algorithm.name"),
        (
            {"org.elic.contract": CONTRACT, "org.elic.algorithm.name": "a",
             "org.elic.algorithm.version": "1", "org.elic.output-schema": "{nope"},
            "not JSON",
        ),
        (
            {"org.elic.contract": CONTRACT, "org.elic.algorithm.name": "a",
             "org.elic.algorithm.version": "1", "org.elic.output-schema": '{"type": 12}'},
            "not a JSON Schema",
        ),
    ],
)  # fmt: skip
def test_an_image_without_a_proper_declaration_is_refused(
    labels: dict[str, str], problem: str
) -> None:
    images = _Images(ref=_Image(DIGESTS[LAV], labels))

    with pytest.raises(BadRequestError) as raised:
        spec_from_image(images, "ref")

    assert problem in raised.value.message


def test_explicit_fields_are_validated() -> None:
    fields = json.loads(spec().model_dump_json())

    with pytest.raises(BadRequestError) as raised:
        validate_spec({**fields, "digest": "sha256:short"})

    assert "digest" in raised.value.message


def test_a_name_gives_the_highest_version_and_name_version_gives_that_one(
    tmp_path: Path,
) -> None:
    world = make_world(tmp_path, register=False)
    for version, digit in (("1.9.0", "1"), ("1.10.0", "2"), ("1.2.0", "3")):
        world.registry.register(spec(LAV, version, digest="sha256:" + digit * 64))

    latest = world.registry.get(LAV)
    pinned = world.registry.get(f"{LAV}:1.9.0")

    assert latest.version == "1.10.0"
    assert (pinned.version, pinned.digest) == ("1.9.0", "sha256:" + "1" * 64)
    assert [a.version for a in world.registry.list()] == ["1.9.0", "1.10.0", "1.2.0"]


def test_an_unregistered_algorithm_is_not_found(tmp_path: Path) -> None:
    world = make_world(tmp_path)

    with pytest.raises(NotFoundError) as raised:
        world.registry.get(f"{LAV}:2.0.0")

    assert raised.value.code == "unknown_algorithm"
    assert f"{LAV}:2.0.0" in raised.value.message
