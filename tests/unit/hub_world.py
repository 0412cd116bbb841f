"""A small hub world for the hub's unit tests: store, broker, parts, keys, message makers.

Everything is real except the broker (``InMemoryBroker``) and the database file (a SQLite
file in the test's temporary folder). The study is the project's own ``lung-screening``.
``Keys`` is a consortium's Ed25519 keys (the hub's and one per spoke); a world's dispatcher
signs with the hub's key and writes the hub's audit log beside the database.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from workbench.core import messages as m
from workbench.core.run_errors import RunErrorCode
from workbench.hub_kernel.audit_trail import AuditTrail
from workbench.hub_kernel.dispatcher import Dispatcher
from workbench.hub_kernel.effects import Outcome
from workbench.hub_kernel.experiments import Experiments
from workbench.hub_kernel.ingest import Ingestor, inbound
from workbench.hub_kernel.models import AlgorithmSpec, ExperimentStatus
from workbench.hub_kernel.registry import Registry
from workbench.hub_kernel.store import ResultsStore
from workbench.hub_kernel.studies import StudyCatalog
from workbench.hub_kernel.tables import utcnow
from workbench.transport.base import Broker, Delivery, Handler, Subscription
from workbench.transport.memory import InMemoryBroker, InMemoryConnection
from workbench.trust.audit import AuditLog
from workbench.trust.keys import TrustStore, generate_key, key_id, new_key_pair
from workbench.trust.wire import SIGNATURE_HEADER, WireSigner

REPO = Path(__file__).resolve().parents[2]
STUDIES = REPO / "studies"
LAV = "lung-lav950"
NODULE = "nodule-volume"
DIGESTS = {LAV: "sha256:" + "a" * 64, NODULE: "sha256:" + "b" * 64}
SPOKES = ("site-01", "site-02")
ARGS_SCHEMA = {
    "type": "object",
    "properties": {"threshold_hu": {"type": "number", "minimum": -1100, "maximum": -500}},
    "additionalProperties": False,
}


def spec(name: str = LAV, version: str = "1.0.0", digest: str | None = None) -> AlgorithmSpec:
    """An algorithm registration with a small output schema."""
    return AlgorithmSpec(
        name=name,
        version=version,
        image=f"elic/{name}:{version}",
        digest=digest or DIGESTS[name],
        output_schema={"type": "object"},
        args_schema=ARGS_SCHEMA if name == LAV else None,
    )


@dataclass
class Keys:
    """A consortium's signing keys: the hub's, one per spoke, and a stranger's (trusted by no
    one)."""

    hub: Ed25519PrivateKey
    spokes: dict[str, Ed25519PrivateKey]
    stranger: Ed25519PrivateKey

    @classmethod
    def make(cls, spokes: Iterable[str] = (*SPOKES, "site-03")) -> Keys:
        """New keys for the hub and each of ``spokes``."""
        return cls(generate_key(), {s: generate_key() for s in spokes}, generate_key())

    @property
    def hub_signer(self) -> WireSigner:
        """What the hub signs orders with."""
        return WireSigner(self.hub)

    def trust(self) -> TrustStore:
        """The hub's trust store: each spoke's public key, named after the spoke."""
        store = TrustStore()
        for spoke, key in self.spokes.items():
            store.add(key.public_key(), name=spoke)
        return store

    def hub_trust(self) -> TrustStore:
        """A spoke's trust store: the hub's public key, named ``hub``."""
        store = TrustStore()
        store.add(self.hub.public_key(), name="hub")
        return store

    def sign(self, message: BaseModel, by: str | None = None) -> tuple[bytes, dict[str, str]]:
        """``message`` as a spoke sends it: canonical body and signature header.

        ``by`` names the signing spoke (``stranger`` for the untrusted key); by default the
        spoke the message names.
        """
        document = message.model_dump(mode="json")
        return WireSigner(self._key(by or document["spoke_id"])).sign(document)

    def sign_body(self, body: bytes, by: str) -> dict[str, str]:
        """The signature header of exactly ``body`` (bytes that need not be a message)."""
        key = self._key(by)
        value = base64.b64encode(key.sign(body)).decode("ascii")
        return {SIGNATURE_HEADER: f"{key_id(key)}:{value}"}

    def send(self, broker: Broker, message: BaseModel, by: str | None = None) -> None:
        """Send ``message`` to the hub's inbox, signed as ``sign`` does."""
        body, headers = self.sign(message, by)
        broker.send(m.HUB_INBOX, body, headers)

    def write(self, folder: Path) -> tuple[Path, Path]:
        """The hub's ``private.pem`` and a folder of ``<spoke>.pem`` public keys, on disk."""
        hub = new_key_pair(folder / "hub", self.hub).private
        spokes = folder / "spokes"
        spokes.mkdir(parents=True)
        for spoke, key in self.spokes.items():
            pem = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            (spokes / f"{spoke}.pem").write_bytes(pem)
        return hub, spokes

    def _key(self, name: str) -> Ed25519PrivateKey:
        return self.stranger if name == "stranger" else self.spokes[name]


@dataclass(frozen=True)
class Sent:
    """One message a ``RecordingBroker`` passed on."""

    destination: str
    body: bytes
    headers: dict[str, str]


class RecordingBroker:
    """A broker connection that records every confirmed send, with its headers."""

    def __init__(self, inner: Broker) -> None:
        self.inner = inner
        self.sent: list[Sent] = []

    def send(self, destination: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.inner.send(destination, body, headers)
        self.sent.append(Sent(destination, body, dict(headers or {})))

    def subscribe(
        self, destination: str, handler: Handler, prefetch: int = 1, direct: bool = False
    ) -> Subscription:
        return self.inner.subscribe(destination, handler, prefetch)

    def close(self) -> None:
        self.inner.close()

    def to(self, spoke_id: str) -> list[Sent]:
        """What was sent to one spoke's orders queue, in order."""
        return [s for s in self.sent if s.destination == m.orders_queue(spoke_id)]


@dataclass
class World:
    """The hub's parts over one SQLite file and one in-memory broker.

    ``keys``, ``audit`` and ``recorder`` are set by ``make_world``: the dispatcher signs
    with ``keys.hub``, the parts record into ``audit``, and ``recorder`` holds every order
    and cancel sent, with its headers.
    """

    store: ResultsStore
    server: InMemoryBroker
    broker: InMemoryConnection
    registry: Registry
    experiments: Experiments
    dispatcher: Dispatcher
    keys: Keys | None = None
    audit: AuditLog | None = None
    recorder: RecordingBroker | None = None

    def ingestor(self, **options: Any) -> Ingestor:
        """An ``Ingestor`` that requires every message signed by its spoke (``keys``) and
        records its batches in ``audit``."""
        assert self.keys is not None
        return Ingestor(
            self.store, trust=self.keys.trust(), audit=AuditTrail(self.audit), **options
        )

    def launch(self, spokes: tuple[str, ...] = SPOKES, **extra: Any) -> ExperimentStatus:
        """Launch lung-screening with both algorithms at ``spokes``."""
        request = {"study": "lung-screening", "algorithms": [LAV, NODULE], "spokes": list(spokes)}
        return self.experiments.launch({**request, **extra})

    def apply(self, *messages: m.Message) -> list[Outcome]:
        """Write messages through the store as the inbox would (one batch)."""
        items = [
            inbound(Delivery(m.encode(msg), m.HUB_INBOX, f"d-{i}"), utcnow())
            for i, msg in enumerate(messages)
        ]
        return self.store.apply(items)

    def ingest(self, *messages: m.Message) -> None:
        """``apply``, requiring every message to be accepted."""
        outcomes = self.apply(*messages)
        assert all(o.accepted for o in outcomes), outcomes

    def orders(self, spoke_id: str) -> list[m.Message]:
        """Remove and parse every message waiting in a spoke's orders queue."""
        return [m.parse_message(b) for b in self.server.drain(m.orders_queue(spoke_id))]


def make_world(tmp_path: Path, allowed: tuple[str, ...] = SPOKES, register: bool = True) -> World:
    """A world with ``allowed`` spokes allow-listed and both algorithms registered."""
    store = ResultsStore.open(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    store.allow_spokes(allowed)
    server = InMemoryBroker()
    broker = server.connect()
    registry = Registry(store)
    if register:
        registry.register(spec(LAV))
        registry.register(spec(NODULE))
    keys = Keys.make()
    audit = AuditLog(tmp_path / "hub.audit.jsonl")
    trail = AuditTrail(audit)
    recorder = RecordingBroker(broker)
    dispatcher = Dispatcher(recorder, store, keys.hub_signer, trail)
    experiments = Experiments(store, registry, StudyCatalog(STUDIES), dispatcher, audit=trail)
    return World(store, server, broker, registry, experiments, dispatcher, keys, audit, recorder)


def result(
    status: ExperimentStatus,
    participant: str,
    output: dict[str, Any],
    reference: dict[str, Any] | None = None,
    spoke: str = SPOKES[0],
    algorithm: str = LAV,
    attempt: int = 1,
    **changes: Any,
) -> m.CaseResult:
    """A valid ``case.result`` of a launched experiment."""
    body = json.dumps(output, sort_keys=True).encode()
    fields: dict[str, Any] = {
        "experiment_id": status.experiment_id, "spoke_id": spoke,
        "participant_id": participant, "algorithm": algorithm, "attempt": attempt,
        "manifest_hash": status.manifest_hash, "image_digest": DIGESTS.get(algorithm, DIGESTS[LAV]),
        "output": output, "output_sha256": hashlib.sha256(body).hexdigest(),
        "reference": reference or {},
    }  # fmt: skip
    fields.update(changes)
    return m.CaseResult(**fields)


def case_status(
    status: ExperimentStatus,
    participant: str,
    state: m.CaseState,
    spoke: str = SPOKES[0],
    algorithm: str = LAV,
    attempt: int = 1,
    error: str | None = None,
) -> m.CaseStatus:
    """A ``case.status`` of a launched experiment (``error`` is a run error code)."""
    info = None
    if error is not None:
        info = m.ErrorInfo(code=RunErrorCode(error), reason="see the table")
    return m.CaseStatus(
        experiment_id=status.experiment_id, spoke_id=spoke, participant_id=participant,
        algorithm=algorithm, attempt=attempt, state=state, error=info,
    )  # fmt: skip


@dataclass
class Settled:
    """What happened to hand-made deliveries: ``("ack" | "reject", message_id)`` in order."""

    events: list[tuple[str, str]] = field(default_factory=list)

    def delivery(
        self,
        body: bytes | BaseModel | tuple[bytes, dict[str, str]],
        message_id: str,
        headers: dict[str, str] | None = None,
    ) -> Delivery:
        """A delivery whose ack/reject are recorded here (``body`` may be ``Keys.sign``'s)."""
        if isinstance(body, tuple):
            body, signed = body
            headers = {**signed, **(headers or {})}
        data = body if isinstance(body, bytes) else body.model_dump_json().encode()
        return Delivery(
            body=data, destination=m.HUB_INBOX, message_id=message_id, headers=headers or {},
            _ack=lambda: self.events.append(("ack", message_id)),
            _reject=lambda: self.events.append(("reject", message_id)),
        )  # fmt: skip

    def of(self, kind: str) -> list[str]:
        """The message ids settled with ``kind``."""
        return [i for k, i in self.events if k == kind]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait for ``condition`` to hold, failing with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)
