"""The container engine behind a small protocol, and its Docker Engine implementation.

``ContainerEngine`` is all the runner needs: look an image up, and run one sandboxed
container to completion. ``DockerEngine`` implements it with the docker SDK; the unit tests
use a hand-written fake. Docker's errors are wrapped once, here, into ``EngineError`` with a
code from the run-error table.

Process exhaustion (a fork bomb) leaves no trace in the container's final state, so while a
container runs a small thread watches its cgroup's ``pids.events`` counter, which the kernel
increments each time a fork is refused for the limit.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from workbench.core.run_errors import RunErrorCode
from workbench.errors import EngineError
from workbench.spoke_service.sandbox import SandboxSpec

log = logging.getLogger(__name__)

_LOG_LIMIT = 1024 * 1024
_CGROUP_CANDIDATES = (
    "/sys/fs/cgroup/pids/docker/{id}/pids.events",  # cgroup v1, cgroupfs driver
    "/sys/fs/cgroup/pids/system.slice/docker-{id}.scope/pids.events",  # v1, systemd driver
    "/sys/fs/cgroup/docker/{id}/pids.events",  # cgroup v2, cgroupfs driver
    "/sys/fs/cgroup/system.slice/docker-{id}.scope/pids.events",  # v2, systemd driver
)


@dataclass(frozen=True)
class ImageInfo:
    """An image as the engine knows it: its content id and its labels."""

    id: str
    labels: dict[str, str]


@dataclass(frozen=True)
class ContainerOutcome:
    """How a container ended. ``logs`` stay at the spoke."""

    exit_code: int | None
    timed_out: bool
    oom_killed: bool
    pids_exhausted: bool
    logs: bytes
    seconds: float


class ContainerEngine(Protocol):
    """What the runner needs from a container engine."""

    def image(self, reference: str) -> ImageInfo:
        """Look ``reference`` up locally; raise ``EngineError(IMAGE_NOT_FOUND)`` if absent."""
        ...

    def run(self, spec: SandboxSpec) -> ContainerOutcome:
        """Run one container to completion or timeout, always removing it afterwards."""
        ...

    def pull(self, reference: str) -> ImageInfo:
        """Fetch ``reference`` (``registry/name@sha256:...``) from a private registry."""
        ...

    def remove_containers(self, labels: dict[str, str]) -> int:
        """Remove every container carrying all ``labels`` (orphans of a crash); how many."""
        ...

    def stop_containers(self, labels: dict[str, str]) -> int:
        """Kill every running container carrying all ``labels``; how many.

        The ``run`` waiting on such a container returns as for any killed container, and
        removes it as usual (a cancelled experiment's running cases).
        """
        ...


class DockerEngine:
    """``ContainerEngine`` over Docker Engine, through the docker SDK."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    def from_env(cls) -> DockerEngine:
        """Connect as the ``docker`` command would (``DOCKER_HOST`` or the local socket)."""
        import docker
        from docker.errors import DockerException

        try:
            client = docker.from_env(timeout=30)
            client.ping()
        except DockerException as e:
            raise EngineError(
                RunErrorCode.ENGINE_UNAVAILABLE,
                f"cannot reach Docker Engine ({e}); is dockerd running and may you use it?",
            ) from e
        return cls(client)

    @property
    def client(self) -> Any:
        """The underlying docker SDK client."""
        return self._client

    def image(self, reference: str) -> ImageInfo:
        from docker.errors import DockerException, ImageNotFound

        try:
            image = self._client.images.get(reference)
        except ImageNotFound as e:
            raise EngineError(
                RunErrorCode.IMAGE_NOT_FOUND, f"no image {reference!r} at this spoke"
            ) from e
        except DockerException as e:
            raise EngineError(RunErrorCode.ENGINE_UNAVAILABLE, str(e)) from e
        return ImageInfo(image.id, dict(image.labels or {}))

    def pull(self, reference: str) -> ImageInfo:
        from docker.errors import DockerException

        repository, sep, digest = reference.partition("@")
        if not sep:
            raise EngineError(
                RunErrorCode.IMAGE_NOT_FOUND, f"refusing to pull {reference!r}: not by digest"
            )
        try:
            self._client.images.pull(repository, tag=digest)
        except DockerException as e:
            raise EngineError(RunErrorCode.IMAGE_NOT_FOUND, f"cannot pull {reference}: {e}") from e
        return self.image(reference)

    def remove_containers(self, labels: dict[str, str]) -> int:
        from docker.errors import DockerException

        wanted = [f"{k}={v}" for k, v in labels.items()]
        try:
            found = self._client.containers.list(all=True, filters={"label": wanted})
        except DockerException as e:
            raise EngineError(RunErrorCode.ENGINE_UNAVAILABLE, str(e)) from e
        for container in found:
            _remove(container)
        return len(found)

    def stop_containers(self, labels: dict[str, str]) -> int:
        from docker.errors import DockerException, NotFound

        wanted = [f"{k}={v}" for k, v in labels.items()]
        try:
            found = self._client.containers.list(filters={"label": wanted})  # running only
        except DockerException as e:
            raise EngineError(RunErrorCode.ENGINE_UNAVAILABLE, str(e)) from e
        stopped = 0
        for container in found:
            try:
                container.kill()
                stopped += 1
            except NotFound:
                pass  # it ended meanwhile
            except DockerException as e:
                log.error("could not stop container %s: %s", container.short_id, e)
        return stopped

    def run(self, spec: SandboxSpec) -> ContainerOutcome:
        from docker.errors import DockerException
        from docker.types import Mount

        mounts = [
            Mount(target, source, type="bind", read_only=ro) for source, target, ro in spec.binds
        ]
        try:
            container = self._client.containers.create(
                spec.image,
                environment=spec.environment,
                mounts=mounts,
                labels=spec.labels,
                detach=True,
                **spec.host_config(),
            )
        except DockerException as e:
            raise EngineError(RunErrorCode.ENGINE_ERROR, f"cannot create the container: {e}") from e
        try:
            return self._start_and_wait(container, spec)
        finally:
            _remove(container)

    def _start_and_wait(self, container: Any, spec: SandboxSpec) -> ContainerOutcome:
        from docker.errors import DockerException
        from requests.exceptions import ConnectionError, ReadTimeout

        watcher = _PidsWatcher(container.id)
        started = time.monotonic()
        try:
            container.start()
        except DockerException as e:
            raise EngineError(RunErrorCode.ENGINE_ERROR, f"cannot start the container: {e}") from e
        watcher.start()
        timed_out = False
        exit_code: int | None = None
        try:
            status = container.wait(timeout=spec.limits.timeout_s)
            exit_code = int(status.get("StatusCode", -1))
        except (ReadTimeout, ConnectionError):
            timed_out = True
            try:
                container.kill()
                container.wait(timeout=30)
            except DockerException as e:
                log.warning("could not kill timed-out container %s: %s", container.short_id, e)
        finally:
            watcher.stop()
        seconds = time.monotonic() - started
        try:
            container.reload()
            oom = bool(container.attrs.get("State", {}).get("OOMKilled", False))
            logs = container.logs(stdout=True, stderr=True, tail=2000)[-_LOG_LIMIT:]
        except DockerException as e:
            log.warning("could not read container %s's state: %s", container.short_id, e)
            oom, logs = False, b""
        return ContainerOutcome(exit_code, timed_out, oom, watcher.exhausted, logs, seconds)


def _remove(container: Any) -> None:
    from docker.errors import DockerException, NotFound

    try:
        container.remove(force=True, v=True)
    except NotFound:
        pass
    except DockerException as e:
        log.error("could not remove container %s: %s", container.short_id, e)


class _PidsWatcher:
    """Watches a running container's cgroup for refused forks."""

    _INTERVAL_S = 0.05

    def __init__(self, container_id: str) -> None:
        self._id = container_id
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self.exhausted = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=1)

    def _watch(self) -> None:
        path: Path | None = None
        while not self._done.is_set():
            path = path or _events_file(self._id)
            if path is not None and _refused_forks(path) > 0:
                self.exhausted = True
                return
            self._done.wait(self._INTERVAL_S)


def _events_file(container_id: str) -> Path | None:
    for pattern in _CGROUP_CANDIDATES:
        candidate = Path(pattern.format(id=container_id))
        if candidate.exists():
            return candidate
    return None


def _refused_forks(path: Path) -> int:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "max":
                return int(value)
    except (OSError, ValueError):
        pass
    return 0
