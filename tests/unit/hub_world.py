"""A small hub world for the hub's unit tests: store, broker, parts, and message makers.

Everything is real except the broker (``InMemoryBroker``) and the database file (a SQLite
file in the test's temporary folder). The study is the project's own ``lung-screening``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from workbench.core import messages as m
from workbench.core.run_errors import RunErrorCode
from workbench.hub_kernel.dispatcher import Dispatcher
from workbench.hub_kernel.effects import Outcome
from workbench.hub_kernel.experiments import Experiments
from workbench.hub_kernel.ingest import inbound
from workbench.hub_kernel.models import AlgorithmSpec, ExperimentStatus
from workbench.hub_kernel.registry import Registry
from workbench.hub_kernel.store import ResultsStore
from workbench.hub_kernel.studies import StudyCatalog
from workbench.hub_kernel.tables import utcnow
from workbench.transport.base import Delivery
from workbench.transport.memory import InMemoryBroker, InMemoryConnection

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
class World:
    """The hub's parts over one SQLite file and one in-memory broker."""

    store: ResultsStore
    server: InMemoryBroker
    broker: InMemoryConnection
    registry: Registry
    experiments: Experiments
    dispatcher: Dispatcher

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
    dispatcher = Dispatcher(broker, store)
    experiments = Experiments(store, registry, StudyCatalog(STUDIES), dispatcher)
    return World(store, server, broker, registry, experiments, dispatcher)


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

    def delivery(self, body: bytes | BaseModel, message_id: str) -> Delivery:
        """A delivery whose ack/reject are recorded here."""
        data = body if isinstance(body, bytes) else body.model_dump_json().encode()
        return Delivery(
            body=data, destination=m.HUB_INBOX, message_id=message_id,
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
