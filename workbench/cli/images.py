"""``workbench images``: build the offline base image and the algorithm images."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.cli.common import Sub, docker_client, group, say


def register(sub: Sub) -> None:
    """Add this area's commands to the ``workbench`` parser."""
    images = group(sub, "images", "build the offline base image and the algorithm images")
    p = images.add_parser(
        "build-base",
        help="build elic/base:bookworm with debootstrap from this machine's apt mirror",
        description="Build the Debian bookworm base image (python3, numpy, pydicom) offline: "
        "debootstrap from the mirror in /etc/apt, then docker import. Needs root, debootstrap "
        "and a running Docker Engine. A second call returns at once when the recipe is unchanged.",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if the image is current")
    p.set_defaults(handler=_images_build_base)
    p = images.add_parser(
        "build-algorithms",
        help="build the reference algorithm images FROM the base image",
        description="Build each algorithm under studies/algorithms as elic/<name>:<version>, "
        "with its declared output schema as an image label. Builds the base image first if it "
        "is missing.",
    )
    p.add_argument("names", nargs="*", help="only these algorithms (default: all)")
    p.add_argument("--algorithms-dir", type=Path, help="folder of algorithm folders")
    p.set_defaults(handler=_images_build_algorithms)


def _images_build_base(ns: argparse.Namespace) -> int:
    from workbench.images.base import build_base

    build_base(docker_client(), force=ns.force, progress=say)
    return 0


def _images_build_algorithms(ns: argparse.Namespace) -> int:
    from workbench.images.algorithms import build_algorithms
    from workbench.images.base import build_base

    client = docker_client()
    build_base(client, progress=say)
    built = build_algorithms(client, ns.algorithms_dir, ns.names or None, progress=say)
    for item in built:
        print(f"{item.reference}\t{item.id}")
    return 0
