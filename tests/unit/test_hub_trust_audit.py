"""The hub's audit log, signed algorithm images in the registry, and trust through the API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from hub_world import (
    DIGESTS,
    LAV,
    NODULE,
    SPOKES,
    STUDIES,
    Keys,
    Settled,
    make_world,
    result,
    spec,
    wait_until,
)

from workbench.core import messages as m
from workbench.errors import BadRequestError
from workbench.hub_kernel.client import HubClient
from workbench.hub_kernel.models import ExperimentStatus
from workbench.hub_kernel.service import Hub
from workbench.hub_kernel.store import ResultsStore
from workbench.hub_kernel.studies import StudyCatalog
from workbench.transport.base import DEAD_LETTER_QUEUE
from workbench.transport.memory import InMemoryBroker
from workbench.trust.audit import AuditLog, ChainHead, verify
from workbench.trust.image_signature import sign_image, verify_image_signature
from workbench.trust.keys import TrustStore, generate_key, key_id
from workbench.trust.wire import SIGNATURE_HEADER


def _entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_hub_audit_log_records_launch_orders_batches_and_cancel_and_verifies(
    tmp_path: Path,
) -> None:
    world = make_world(tmp_path)
    assert world.keys is not None and world.audit is not None
    status = world.launch()
    settled = Settled()
    ingestor = world.ingestor()
    good = result(status, "p-1", {"lav950_percent": 3.5})
    body, headers = world.keys.sign(result(status, "p-2", {"lav950_percent": 1.0}))

    ingestor.handle(settled.delivery(world.keys.sign(good), "d-good"))
    altered = body.replace(b'"participant_id":"p-2"', b'"participant_id":"p-9"')
    assert altered != body
    ingestor.handle(settled.delivery(altered, "d-forged", headers))
    ingestor.flush()
    world.experiments.cancel(status.experiment_id)

    path = tmp_path / "hub.audit.jsonl"
    report = verify(path, expected_head=world.audit.head())
    entries = _entries(path)
    events = [e["event"] for e in entries]
    by_event = {e["event"]: e["data"] for e in entries}
    assert report.ok, str(report)
    assert events == [
        "experiment.launched", "order.sent", "order.sent", "inbox.accepted", "inbox.rejected",
        "experiment.cancelled", "cancel.sent", "cancel.sent",
    ]  # fmt: skip
    assert by_event["experiment.launched"]["manifest_hash"] == status.manifest_hash
    assert {e["data"]["spoke_id"] for e in entries if e["event"] == "order.sent"} == set(SPOKES)
    assert by_event["order.sent"]["key_id"] == world.keys.hub_signer.key_id
    (accepted,) = by_event["inbox.accepted"]["messages"]
    signer = key_id(world.keys.spokes["site-01"])
    assert accepted == f"{'/'.join(good.natural_key)} {good.id} {signer}"
    (refused,) = by_event["inbox.rejected"]["messages"]
    assert (refused["code"], refused["delivery_id"], refused["spoke_id"]) == (
        "bad_signature", "d-forged", "site-01",
    )  # fmt: skip


def test_ingestion_appends_one_entry_per_batch_not_per_message(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    assert world.keys is not None and world.audit is not None
    status = world.launch()
    ingestor = world.ingestor()
    before = world.audit.head().seq

    for i in range(50):
        ingestor.handle(Settled().delivery(world.keys.sign(result(status, f"p{i}", {})), f"d{i}"))
    ingestor.flush()

    (batch,) = _entries(tmp_path / "hub.audit.jsonl")[before:]
    assert batch["event"] == "inbox.accepted" and batch["data"]["count"] == 50


def test_the_latest_audit_head_per_spoke_only_moves_forward(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    assert world.keys is not None
    status = world.launch()
    ingestor = world.ingestor()
    heads = {n: f"{n}:" + f"{n:x}" * 64 for n in (5, 9, 7)}

    for n, head in heads.items():
        signed = world.keys.sign(result(status, f"p{n}", {}, audit_head=head))
        ingestor.handle(Settled().delivery(signed, f"d{n}"))
        ingestor.flush()

    spoke = next(s for s in world.store.spokes() if s.spoke_id == "site-01")
    assert spoke.audit_head == heads[9]


def test_a_spoke_log_is_checked_against_the_head_the_hub_received(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    assert world.keys is not None
    status = world.launch()
    spoke_log = tmp_path / "spoke.audit.jsonl"
    with AuditLog(spoke_log) as log:
        log.append("result.released", {"participant": "p-1"})
        head = log.head()
        log.append("result.released", {"participant": "p-2"})
    ingestor = world.ingestor()
    signed = world.keys.sign(result(status, "p-1", {}, audit_head=str(head)))
    ingestor.handle(Settled().delivery(signed, "d1"))
    ingestor.flush()
    received = next(s for s in world.store.spokes() if s.spoke_id == "site-01").audit_head
    assert received is not None

    intact = verify(spoke_log, expected_head=ChainHead.parse(received))
    spoke_log.write_text("")  # the spoke's log cut back to nothing
    truncated = verify(spoke_log, expected_head=ChainHead.parse(received))

    assert intact.ok
    assert not truncated.ok and truncated.problem == "truncated"


def test_an_algorithm_registered_with_its_image_signature_carries_it_to_the_spokes(
    tmp_path: Path,
) -> None:
    world = make_world(tmp_path, register=False)
    assert world.recorder is not None
    publisher = generate_key()
    signature = sign_image(f"elic/{LAV}:1.0.0", DIGESTS[LAV], publisher)
    world.registry.register(spec(LAV).model_copy(update={"signature": signature}))
    world.registry.register(spec(NODULE))

    world.launch(spokes=("site-01",))

    order = m.parse_message(world.recorder.to("site-01")[0].body)
    assert isinstance(order, m.ExperimentOrder)
    lav, nodule = order.manifest.algorithms
    trust = TrustStore()
    trust.add(publisher.public_key(), name="publisher")
    assert lav.signature is not None and nodule.signature is None
    assert verify_image_signature(lav.signature, lav.digest, trust).key_id == key_id(publisher)
    assert world.registry.get(LAV).signature == signature


def test_a_signature_of_another_digest_is_refused_at_registration(tmp_path: Path) -> None:
    world = make_world(tmp_path, register=False)
    signature = sign_image(f"elic/{LAV}:1.0.0", DIGESTS[NODULE], generate_key())

    with pytest.raises(BadRequestError) as other:
        world.registry.register(spec(LAV).model_copy(update={"signature": signature}))
    with pytest.raises(BadRequestError) as garbage:
        world.registry.register(spec(LAV).model_copy(update={"signature": {"x": 1}}))

    assert other.value.code == "signature_mismatch" and DIGESTS[NODULE] in other.value.message
    assert garbage.value.code == "bad_signature_document"
    assert world.registry.list() == []


def test_an_older_database_gains_the_new_columns_when_opened(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.sqlite'}"
    ResultsStore.open(url).close()
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:  # as the previous release made it
        conn.exec_driver_sql("DROP INDEX rejections_by_experiment")
        for column in ("code", "experiment_id", "key_id"):
            conn.exec_driver_sql(f"ALTER TABLE rejections DROP COLUMN {column}")
        conn.exec_driver_sql("ALTER TABLE results DROP COLUMN signer_key_id")

    ResultsStore.open(url).close()

    inspector = sqlalchemy.inspect(engine)
    columns = {c["name"] for c in inspector.get_columns("rejections")}
    assert {"code", "experiment_id", "key_id"} <= columns
    assert "signer_key_id" in {c["name"] for c in inspector.get_columns("results")}
    assert "rejections_by_experiment" in {i["name"] for i in inspector.get_indexes("rejections")}
    engine.dispose()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Hub, InMemoryBroker, Keys]]:
    server, keys = InMemoryBroker(), Keys.make()
    store = ResultsStore.open(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    hub = Hub(
        store, server.connect(), StudyCatalog(STUDIES), signer=keys.hub_signer,
        trust=keys.trust(), audit=AuditLog(tmp_path / "hub.audit.jsonl"), owns_audit=True,
        signature_worker=True,
    )  # fmt: skip
    with hub:
        yield hub, server, keys
    store.close()


def test_refusals_replays_and_chain_heads_are_visible_through_the_api(
    served: tuple[Hub, InMemoryBroker, Keys], tmp_path: Path
) -> None:
    hub, server, keys = served
    client = HubClient(hub.url, timeout=10)
    for name in (LAV, NODULE):
        client.register_algorithm(spec(name).model_dump(mode="json"))
    status = ExperimentStatus.model_validate(client.launch("lung-screening", [LAV], ["site-01"]))
    spoke = server.connect()
    head = "3:" + "c" * 64
    signed = keys.sign(result(status, "p-1", {"lav950_percent": 2.0}, audit_head=head))

    spoke.send(m.HUB_INBOX, *signed)
    spoke.send(m.HUB_INBOX, *signed)  # a replay
    keys.send(spoke, result(status, "p-2", {"lav950_percent": 2.0}), by="stranger")
    spoke.send(m.HUB_INBOX, m.encode(result(status, "p-3", {})), {SIGNATURE_HEADER: ""})
    wait_until(lambda: hub.ingestor.stats.replayed == 1, "the replay")
    wait_until(lambda: server.depth(DEAD_LETTER_QUEUE) == 2, "two dead letters")

    got = client.experiment(status.experiment_id)
    unknown = client.rejections(code="unknown_key")
    mine = client.rejections(experiment_id=status.experiment_id)
    health = client.health()
    site = next(s for s in client.spokes() if s["spoke_id"] == "site-01")
    assert (got["results"], got["results_verified"]) == (1, 1)
    assert got["rejections"] == {"replayed": 1, "unknown_key": 1, "unsigned": 1}
    assert len(unknown) == 1 and unknown[0]["key_id"] == key_id(keys.stranger)
    assert len(mine) == 3
    assert site["audit_head"] == head and site["last_key_id"] == key_id(keys.spokes["site-01"])
    assert health["audit"]["path"] == str(tmp_path / "hub.audit.jsonl")
    assert health["audit"]["head"] == str(hub.audit.head())
    assert health["trust"]["hub_key_id"] == keys.hub_signer.key_id
    assert health["ingest"]["replayed"] == 1 and health["ingest"]["rejected"] == 2
    assert health["ingest"]["signature_checks"] == "worker"
    assert verify(tmp_path / "hub.audit.jsonl").ok


class _RefusingBroker:
    """A broker connection that refuses every subscription."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def subscribe(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("the broker refused the subscription")


def test_a_hub_that_cannot_subscribe_leaves_no_checker_thread_or_socket(tmp_path: Path) -> None:
    import threading

    keys = Keys.make()
    store = ResultsStore.open(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    hub = Hub(
        store, _RefusingBroker(InMemoryBroker().connect()), StudyCatalog(STUDIES),
        signer=keys.hub_signer, trust=keys.trust(), audit=AuditLog(tmp_path / "a.jsonl"),
        owns_audit=True, signature_worker=True,
    )  # fmt: skip
    with pytest.raises(ConnectionError, match="refused"):
        hub.start()
    assert hub.checks.pid is None  # type: ignore[attr-defined]
    assert "hub-ingest" not in {t.name for t in threading.enumerate()}
    with pytest.raises(RuntimeError, match="not started"):
        _ = hub.url
    store.close()
