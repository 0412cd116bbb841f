"""The federation a drill runs in: ``DrillFederation`` and ``start_federation``.

``start_federation`` builds (cached) the base and ``naive-baseline`` images, generates the
synthetic cohort (cached by its settings), starts a fresh ``DrillFederation`` (a managed
ActiveMQ, a private registry, the hub and one process per spoke) and registers the algorithm
by digest, signed as the federation's publisher.

Spoke ids are drawn fresh for every federation (``drill-<4 hex>-<n>``): a spoke removes every
container labelled with its id when it starts, and another federation on the same Docker
Engine (a demo, a test) may run its own ``site-01``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.drill_report import DrillError
from workbench.federation import LocalFederation, Site
from workbench.transport.stomp_connection import ClientTls

ALGORITHM = "naive-baseline"


class DrillFederation(LocalFederation):
    """A ``LocalFederation`` whose processes can also be frozen (SIGSTOP) and thawed."""

    def pid(self, name: str) -> int | None:
        """The process id of ``hub`` or a spoke, while it runs."""
        process = self._processes.get(name)
        return process.pid if process is not None and process.poll() is None else None

    def freeze(self, name: str) -> None:
        """Stop the process in its tracks (SIGSTOP): it holds its sockets and says nothing.

        Raises:
            DrillError: the process does not run.
        """
        pid = self.pid(name)
        if pid is None:
            raise DrillError(f"{name} does not run: it cannot be frozen")
        os.kill(pid, signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        """Let a frozen process go on (SIGCONT); harmless when it was not frozen."""
        pid = self.pid(name)
        if pid is not None:
            os.kill(pid, signal.SIGCONT)

    def client_tls(self, name: str) -> ClientTls | None:
        """The TLS identity of ``hub`` or a spoke on a locked-down broker; None on plain STOMP."""
        if self.broker.tls is None:
            return None
        from workbench.trust.pki import identity

        found = identity(self.root / "pki" / "issued", name)
        return ClientTls(found.certificate, found.key, found.ca_certificate)


def start_federation(
    out: Path, spokes: int, participants: int, say: Callable[[str], None]
) -> tuple[DrillFederation, Any]:
    """A started federation under ``out/federation`` with ``naive-baseline`` registered.

    Returns the federation and the Docker SDK client. Whatever ``out/federation`` held is
    replaced (a broker still running there is stopped first); the cohort in ``out/cohort``
    is kept when it has the same settings.

    Raises:
        WorkbenchError: an image, the cohort, a process or the registration failed;
            everything that had started is stopped again.
    """
    from workbench.images.algorithms import build_algorithms
    from workbench.images.base import build_base
    from workbench.spoke_service.engine import DockerEngine
    from workbench.synth.cohort import generate_cohort, has_cohort

    engine = DockerEngine.from_env()
    build_base(engine.client, progress=say)
    built = build_algorithms(engine.client, names=[ALGORITHM], progress=say)
    cohort = out / "cohort"
    if not has_cohort(cohort, spokes, participants):
        say(f"generating a synthetic cohort: {spokes} sites x {participants} participants")
        generate_cohort(cohort, spokes, participants, seed=2026)
    tag = secrets.token_hex(2)
    sites = [
        Site(f"drill-{tag}-{n}", p / "dicom", p / "reference.csv")
        for n, p in enumerate(sorted(cohort.glob("site-*")), start=1)
    ]
    federation = DrillFederation(_fresh(out / "federation"), sites)
    say(f"starting the federation: ActiveMQ, registry, hub and {len(sites)} spoke processes")
    try:
        federation.start()
        federation.register(engine.client, [b.reference for b in built])
    except BaseException:
        federation.stop()
        raise
    say(f"hub at {federation.hub_url}; broker {federation.broker.stomp_url}")
    return federation, engine.client


def _fresh(root: Path) -> Path:
    """``root`` emptied: a new hub, new spokes, a new broker (one left running is stopped)."""
    from workbench.transport.activemq import ManagedBroker

    if root.exists():
        ManagedBroker.from_env(root / "broker").stop()
        shutil.rmtree(root)
    return root
