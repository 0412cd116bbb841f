"""Getting algorithm images to spokes: a private registry, push by the hub, pull by digest.

``ManagedRegistry`` runs Docker Distribution (Debian's ``docker-registry``) on loopback with
its storage in a folder of ours, for the demo and the tests; a consortium runs its own.
``push`` tags a local image into the registry and returns the reference a spoke pulls:
``host:port/elic/name@sha256:<manifest digest>``, never a tag, so what runs is exactly what
was registered. Docker treats registries on 127.0.0.0/8 as insecure (plain HTTP) by default,
which is what makes the loopback registry work without TLS.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from workbench.errors import ImageBuildError

log = logging.getLogger(__name__)

REGISTRY_BINARY = "docker-registry"
_CONFIG = """version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ManagedRegistry:
    """A Docker Distribution registry on 127.0.0.1, its files in ``directory``."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = Path(directory)
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, the registry part of image references."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        """Start the registry and wait until it answers ``/v2/``."""
        binary = shutil.which(REGISTRY_BINARY)
        if binary is None:
            raise ImageBuildError(
                f"{REGISTRY_BINARY} is not installed (apt-get install -y docker-registry)"
            )
        if _answers(self.port):
            raise ImageBuildError(f"port {self.port} on 127.0.0.1 is already in use")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "config.yml"
        config.write_text(_CONFIG.format(data=self.directory / "data", port=self.port))
        log_file = open(self.directory / "registry.log", "ab")  # noqa: SIM115 - owned by the child
        self._process = subprocess.Popen(
            [binary, "serve", str(config)], stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log_file.close()
        deadline = time.monotonic() + timeout
        while not _answers(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                tail = (self.directory / "registry.log").read_text(errors="replace")[-800:]
                self.stop()
                raise ImageBuildError(f"the registry did not start:\n{tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the registry (its stored images stay in the folder)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(5)
        self._process = None

    def __enter__(self) -> ManagedRegistry:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as reply:
            return int(reply.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def push(client: Any, image: str, registry: str) -> str:
    """Push local ``image`` to ``registry``; returns ``registry/name@sha256:...``.

    Raises:
        ImageBuildError: the image is missing or the registry refused it.
    """
    from docker.errors import DockerException

    name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
    repository = f"{registry}/{name}"
    try:
        local = client.images.get(image)
        local.tag(repository, tag=tag)
        digest = None
        for event in client.images.push(repository, tag=tag, stream=True, decode=True):
            if "error" in event:
                raise ImageBuildError(f"pushing {image} failed: {event['error']}")
            digest = event.get("aux", {}).get("Digest", digest)
    except DockerException as e:
        raise ImageBuildError(f"pushing {image} to {registry} failed: {e}") from e
    if not digest:
        raise ImageBuildError(f"the registry reported no digest for {image}")
    return f"{repository}@{digest}"


def forget_references(client: Any, registry: str) -> int:
    """Remove this engine's names for images in ``registry``: tags and pulled digests.

    The demo and the drill run a registry on a fresh port each time; without this, every
    run would leave its ``127.0.0.1:PORT/elic/...`` names behind in ``docker images``. Only
    names are removed (``noprune``), and only from images known by another name too, so no
    image goes. Returns how many names were removed.
    """
    from docker.errors import DockerException, NotFound

    prefix = f"{registry}/"
    removed = 0
    for image in client.api.images():  # the summaries: no inspection per image
        names = [*(image.get("RepoTags") or []), *(image.get("RepoDigests") or [])]
        ours = [name for name in names if name.startswith(prefix)]
        if not ours or len(ours) == len(names):
            continue
        for name in ours:
            try:
                client.images.remove(name, noprune=True)
                removed += 1
            except NotFound:
                pass  # went with a name removed before it (a tag takes its digest along)
            except DockerException as e:
                log.warning("cannot remove the image name %s: %s", name, e)
    return removed
