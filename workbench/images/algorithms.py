"""``workbench images build-algorithms``: the reference algorithm images, FROM the base.

Each folder ``studies/algorithms/<name>/`` holds ``algorithm.json`` (name, version,
description, argument schema), ``output.schema.json``, ``algo.py`` and a ``Dockerfile``.
The build context is assembled in a temporary folder with the shared reader
``studies/algorithms/common/elic_io.py`` beside ``algo.py``; the declaration becomes image
labels (``org.elic.*``), so a spoke learns an image's output schema from the image itself.
Builds never pull and never use the network.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.core.contract import (
    CONTRACT,
    LABEL_ARGS_SCHEMA,
    LABEL_CONTRACT,
    LABEL_NAME,
    LABEL_OUTPUT_SCHEMA,
    LABEL_VERSION,
)
from workbench.core.output_schema import check_schema
from workbench.errors import ImageBuildError
from workbench.images.base import BASE_IMAGE, find_base

COMMON = "common"
REPOSITORY_PREFIX = "elic/"


@dataclass(frozen=True)
class AlgorithmSource:
    """One algorithm folder's declaration."""

    folder: Path
    name: str
    version: str
    description: str
    output_schema: dict[str, Any]
    args_schema: dict[str, Any] | None

    @property
    def reference(self) -> str:
        """The local image reference, ``elic/<name>:<version>``."""
        return f"{REPOSITORY_PREFIX}{self.name}:{self.version}"

    def labels(self) -> dict[str, str]:
        """The image labels that declare the algorithm under the contract."""
        labels = {
            LABEL_CONTRACT: CONTRACT,
            LABEL_NAME: self.name,
            LABEL_VERSION: self.version,
            LABEL_OUTPUT_SCHEMA: _compact(self.output_schema),
        }
        if self.args_schema is not None:
            labels[LABEL_ARGS_SCHEMA] = _compact(self.args_schema)
        return labels


@dataclass(frozen=True)
class BuiltAlgorithm:
    """An algorithm image that was built."""

    name: str
    reference: str
    id: str


def default_algorithms_dir() -> Path:
    """``studies/algorithms`` of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "studies" / "algorithms"


def discover(root: Path) -> list[AlgorithmSource]:
    """Every algorithm folder below ``root`` (each with an ``algorithm.json``), by name."""
    if not root.is_dir():
        raise ImageBuildError(f"no algorithms folder at {root}")
    found = [load(p.parent) for p in sorted(root.glob("*/algorithm.json"))]
    if not found:
        raise ImageBuildError(f"no algorithm.json below {root}")
    return found


def load(folder: Path) -> AlgorithmSource:
    """Read and check one algorithm folder's declaration."""
    try:
        meta = json.loads((folder / "algorithm.json").read_text())
        output_schema = json.loads((folder / "output.schema.json").read_text())
        name, version = str(meta["name"]), str(meta["version"])
        check_schema(output_schema)
        args_schema = meta.get("args_schema")
        if args_schema is not None:
            check_schema(args_schema)
    except (OSError, ValueError, KeyError) as e:
        raise ImageBuildError(f"bad algorithm declaration in {folder}: {e}") from e
    except Exception as e:  # jsonschema.SchemaError
        raise ImageBuildError(f"bad JSON Schema in {folder}: {e}") from e
    for required in ("Dockerfile", "algo.py"):
        if not (folder / required).is_file():
            raise ImageBuildError(f"{folder} has no {required}")
    return AlgorithmSource(
        folder, name, version, str(meta.get("description", "")), output_schema, args_schema
    )


def build_algorithms(
    client: Any,
    root: Path | None = None,
    names: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[BuiltAlgorithm]:
    """Build every algorithm image below ``root`` (or only ``names``), FROM the base image.

    Raises:
        ImageBuildError: the base image is missing, a declaration is invalid, or a build failed.
    """
    say = progress or (lambda message: None)
    root = root or default_algorithms_dir()
    if find_base(client) is None:
        raise ImageBuildError(f"{BASE_IMAGE} is missing: run `workbench images build-base` first")
    sources = discover(root)
    if names:
        unknown = set(names) - {s.name for s in sources}
        if unknown:
            raise ImageBuildError(f"unknown algorithm(s): {', '.join(sorted(unknown))}")
        sources = [s for s in sources if s.name in names]
    built = []
    for source in sources:
        say(f"building {source.reference}")
        image_id = _build_one(client, source, root / COMMON)
        built.append(BuiltAlgorithm(source.name, source.reference, image_id))
        say(f"  {source.reference} = {image_id[:19]}")
    return built


def _build_one(client: Any, source: AlgorithmSource, common: Path) -> str:
    from docker.errors import BuildError, DockerException

    with tempfile.TemporaryDirectory(prefix="elic-algo-") as tmp:
        context = Path(tmp)
        for item in source.folder.iterdir():
            if item.is_file() and (item.suffix in {".py", ".json"} or item.name == "Dockerfile"):
                shutil.copy2(item, context / item.name)
        if common.is_dir():
            for module in common.glob("*.py"):
                shutil.copy2(module, context / module.name)
        try:
            image, _ = client.images.build(
                path=str(context),
                tag=source.reference,
                labels=source.labels(),
                pull=False,
                rm=True,
                forcerm=True,
                network_mode="none",
            )
        except BuildError as e:
            lines = [str(c.get("stream", c.get("error", ""))).strip() for c in e.build_log]
            tail = "\n".join(line for line in lines if line)[-800:]
            raise ImageBuildError(f"building {source.reference} failed: {e.msg}\n{tail}") from e
        except DockerException as e:
            raise ImageBuildError(f"building {source.reference} failed: {e}") from e
    return str(image.id)


def _compact(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"))
