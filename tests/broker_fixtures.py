"""Broker fixtures (a pytest plugin, loaded by ``conftest.py``).

``activemq`` is one real ActiveMQ for the whole session, started by ``ManagedBroker`` in a
temporary directory on a free loopback port, and stopped at the end. Where ActiveMQ is not
installed it skips locally and fails in CI (``need``). Fault tests call ``restart_activemq``
(a crash and a start on the same port and data) and leave the broker running for the rest.

``consortium`` is a consortium PKI made once per session (``workbench.trust.pki``): a CA,
the broker, the hub and spokes ``spoke-a``, ``spoke-b`` (allowed) and ``spoke-x`` (issued
by the CA but left off the allowlist), plus an ``outsider``: a ``spoke-a`` certificate from
another CA. ``tls_activemq`` is a second session broker, locked down with those identities
(STOMP over mutual TLS only, the hub and spokes a and b allowed).

``Inbox`` collects deliveries on the handler thread and lets the test wait for a condition
with a deadline instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from services import need

WAIT_S = 20.0


@pytest.fixture(scope="session")
def activemq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A running ``ManagedBroker`` (skips or fails when ActiveMQ is not installed)."""
    from workbench.transport.activemq import ManagedBroker

    broker = ManagedBroker.from_env(tmp_path_factory.mktemp("activemq"))
    _start_or_need(broker)
    yield broker
    broker.stop()


ALLOWED_SPOKES = ("spoke-a", "spoke-b")


@dataclass(frozen=True)
class Consortium:
    """A CA and the identities it issued (``pki.Identity`` by name), and an outsider's."""

    root: Path
    ca: Path
    identities: dict[str, Any]
    outsider: Any  # "spoke-a", issued by another CA

    def client(self, name: str) -> Any:
        """The ``ClientTls`` of identity ``name``."""
        from workbench.transport.stomp_connection import ClientTls

        found = self.identities[name]
        return ClientTls(found.certificate, found.key, found.ca_certificate)

    def user(self, name: str) -> Any:
        """The ``BrokerUser`` of identity ``name``: its CN and its DN as Java prints it."""
        from workbench.transport.activemq_security import BrokerUser
        from workbench.trust import pki

        return BrokerUser(name, pki.java_dn(self.identities[name].certificate))

    def settings(self, spokes: Sequence[str] = ALLOWED_SPOKES, client: str = "hub") -> Any:
        """``TlsSettings`` for a broker that lets in the hub and ``spokes``."""
        from workbench.transport.activemq_security import TlsSettings

        broker = self.identities["broker"]
        return TlsSettings(
            keystore=broker.keystore, truststore=broker.truststore,
            password_file=broker.password_file, hub=self.user("hub"),
            spokes=[self.user(s) for s in spokes], client=self.client(client),
        )  # fmt: skip


@pytest.fixture(scope="session")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    """A CA; broker, hub, spoke-a, spoke-b and spoke-x identities; an outsider's spoke-a."""
    from workbench.trust import pki

    root = tmp_path_factory.mktemp("pki")
    pki.init_ca(root / "ca")
    roles = {"broker": "broker", "hub": "hub", "spoke-a": "spoke", "spoke-b": "spoke"}
    roles["spoke-x"] = "spoke"
    identities = {
        name: pki.issue(root / "ca", name, role, root / name) for name, role in roles.items()
    }
    pki.init_ca(root / "other-ca", name="Other CA", organization="ELIC Consortium")
    outsider = pki.issue(root / "other-ca", "spoke-a", "spoke", root / "outsider")
    return Consortium(root, root / "ca", identities, outsider)


@pytest.fixture(scope="session")
def tls_activemq(tmp_path_factory: pytest.TempPathFactory, consortium: Consortium) -> Iterator[Any]:
    """A running locked-down ``ManagedBroker``: mutual TLS, the hub, spoke-a and spoke-b."""
    from workbench.transport.activemq import ManagedBroker

    broker = ManagedBroker.from_env(
        tmp_path_factory.mktemp("activemq-tls"), tls=consortium.settings()
    )
    _start_or_need(broker)
    yield broker
    broker.stop()


@pytest.fixture
def restart_activemq(activemq: Any) -> Callable[..., None]:
    """``restart(crash=True)``: kill (or stop) the session broker and start it again."""

    def restart(crash: bool = True) -> None:
        if crash:
            activemq.kill()
        else:
            activemq.stop()
        activemq.start()

    return restart


class Inbox:
    """A handler that records deliveries (and optionally acks them); waits with deadlines."""

    def __init__(self, ack: bool = False) -> None:
        self.deliveries: list[Any] = []
        self._auto_ack = ack
        self._cond = threading.Condition()

    def __call__(self, delivery: Any) -> None:
        if self._auto_ack:
            delivery.ack()  # before recording: a test that saw it may close the connection
        with self._cond:
            self.deliveries.append(delivery)
            self._cond.notify_all()

    @property
    def bodies(self) -> list[bytes]:
        with self._cond:
            return [d.body for d in self.deliveries]

    def wait_for(
        self, condition: Callable[[list[Any]], bool], timeout: float = WAIT_S
    ) -> list[Any]:
        """Wait until ``condition(deliveries)`` holds; fail the test at the deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not condition(self.deliveries):
                left = deadline - time.monotonic()
                if left <= 0:
                    bodies = [d.body for d in self.deliveries][:20]
                    pytest.fail(f"condition not met in {timeout:g} s; received {bodies}")
                self._cond.wait(left)
            return list(self.deliveries)

    def wait_count(self, n: int, timeout: float = WAIT_S) -> list[Any]:
        return self.wait_for(lambda ds: len(ds) >= n, timeout)

    def wait_body(self, body: bytes, timeout: float = WAIT_S) -> list[Any]:
        return self.wait_for(lambda ds: any(d.body == body for d in ds), timeout)


def wait_until(condition: Callable[[], bool], timeout: float = WAIT_S, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what or 'condition'} not met within {timeout:g} s")
        time.sleep(0.02)


def unique_queue(name: str) -> str:
    """A queue name no other test uses (the session broker is shared)."""
    import uuid

    return f"/queue/test.{name}.{uuid.uuid4().hex[:10]}"


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log, for failure messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _start_or_need(broker: Any) -> None:
    """Start ``broker``; ActiveMQ not installed is a skip (a failure under CI=true)."""
    from workbench.transport.activemq import BrokerError

    try:
        broker.start()
    except BrokerError as e:
        if "not installed" in str(e):
            need(str(e))
        raise
