"""``workbench images build-base``: a Debian bookworm image made offline with debootstrap.

No registry is reachable from a spoke (or from CI), so nothing is pulled: debootstrap
installs a minimal Debian with python3, numpy and pydicom from the machine's own apt mirror
into a folder, that folder is trimmed (documentation, apt caches) and imported with
``docker import``. The image carries a label with the hash of its recipe; a second call
finds the image with the same recipe and returns at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import ImageBuildError
from workbench.images.apt_sources import debian_mirror

log = logging.getLogger(__name__)

BASE_REPOSITORY = "elic/base"
BASE_TAG = "bookworm"
BASE_IMAGE = f"{BASE_REPOSITORY}:{BASE_TAG}"
RECIPE_LABEL = "org.elic.base.recipe"

SUITE = "bookworm"
PACKAGES = ("python3", "python3-numpy", "python3-pydicom")
_TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
         "var/cache/apt/archives", "var/lib/apt/lists", "var/log")  # fmt: skip

# debootstrap's "I: <Phase> <package>" lines that are worth counting for progress.
_PHASES = ("retrieving", "extracting", "unpacking", "configuring")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BaseImage:
    """The base image that was built or found."""

    reference: str
    id: str
    cached: bool


def recipe_hash() -> str:
    """A short hash of what goes into the base image; it changes when the recipe does."""
    recipe = {"suite": SUITE, "variant": "minbase", "packages": sorted(PACKAGES), "trim": _TRIM}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def find_base(client: Any) -> BaseImage | None:
    """The base image if it exists with the current recipe, else ``None``."""
    from docker.errors import ImageNotFound

    try:
        image = client.images.get(BASE_IMAGE)
    except ImageNotFound:
        return None
    if (image.labels or {}).get(RECIPE_LABEL) != recipe_hash():
        return None
    return BaseImage(BASE_IMAGE, image.id, cached=True)


def build_base(
    client: Any, force: bool = False, progress: Progress | None = None, work_dir: Path | None = None
) -> BaseImage:
    """Build (or find) the base image.

    Raises:
        ImageBuildError: not root, debootstrap or tar missing, no apt source for the suite,
            debootstrap or the import failed.
    """
    say = progress or (lambda message: None)
    if not force and (found := find_base(client)) is not None:
        say(f"{BASE_IMAGE} is up to date ({found.id[:19]})")
        return found
    _check_prerequisites()
    mirror = debian_mirror(SUITE)
    with tempfile.TemporaryDirectory(prefix="elic-base-", dir=work_dir) as tmp:
        rootfs = Path(tmp) / "rootfs"
        _debootstrap(rootfs, mirror, say)
        for relative in _TRIM:
            shutil.rmtree(rootfs / relative, ignore_errors=True)
        (rootfs / "var/log").mkdir(exist_ok=True)
        say("packing the root filesystem")
        archive = Path(tmp) / "rootfs.tar"
        _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(archive), "."], "tar")
        say(f"importing {archive.stat().st_size // 2**20} MiB as {BASE_IMAGE}")
        image_id = _import(client, archive)
    say(f"built {BASE_IMAGE} ({image_id[:19]})")
    return BaseImage(BASE_IMAGE, image_id, cached=False)


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise ImageBuildError("building the base image needs root (debootstrap must chroot)")
    for tool in ("debootstrap", "tar"):
        if shutil.which(tool) is None:
            raise ImageBuildError(f"{tool} is not installed (apt-get install -y {tool})")


def _debootstrap(rootfs: Path, mirror: str, say: Progress) -> None:
    argv = [
        "debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
        SUITE, str(rootfs), mirror,
    ]  # fmt: skip
    say(f"debootstrap {SUITE} (minbase + {', '.join(PACKAGES)}) from the machine's apt mirror")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    counts: dict[str, int] = {}
    for line in proc.stdout:
        tail = [*tail[-20:], line.rstrip()]
        phase = line[3:].split(" ", 1)[0].lower() if line.startswith("I: ") else ""
        if phase in _PHASES:
            counts[phase] = counts.get(phase, 0) + 1
            if counts[phase] == 1 or counts[phase] % 25 == 0:
                say(f"  {phase} packages: {counts[phase]}")
    if proc.wait() != 0:
        raise ImageBuildError("debootstrap failed:\n" + "\n".join(tail))


def _import(client: Any, archive: Path) -> str:
    from docker.errors import DockerException

    changes = [
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        "ENV PYTHONDONTWRITEBYTECODE=1",
        f"LABEL {RECIPE_LABEL}={recipe_hash()}",
        'CMD ["python3"]',
    ]
    try:
        client.api.import_image_from_file(
            str(archive), repository=BASE_REPOSITORY, tag=BASE_TAG, changes=changes
        )
        return str(client.images.get(BASE_IMAGE).id)
    except DockerException as e:
        raise ImageBuildError(f"docker import failed: {e}") from e


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ImageBuildError(f"{what} failed: {done.stderr.strip()[-500:]}")
