"""The hub's side of the trust boundary: inbox messages verified, orders signed.

Each refusal is its own test. Every one also sends a correctly signed result in the same
batch, which is stored: so it is the check under test that refuses, not something else.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hub_world import SPOKES, Keys, Settled, World, make_world, result
from sqlalchemy import select

from workbench.core import messages as m
from workbench.errors import ConfigError, SignatureError
from workbench.hub_kernel import tables as t
from workbench.hub_kernel.models import ExperimentStatus
from workbench.hub_kernel.service import Hub
from workbench.hub_kernel.studies import StudyCatalog
from workbench.trust.keys import TrustStore, generate_key, key_id
from workbench.trust.wire import SIGNATURE_HEADER, verify_wire

HEAD = "7:" + "ab" * 32


def _launched(tmp_path: Path) -> tuple[World, ExperimentStatus]:
    world = make_world(tmp_path)
    return world, world.launch()


def _refused_alone(
    world: World, status: ExperimentStatus, body: bytes, headers: dict[str, str]
) -> tuple[Settled, list[str]]:
    """Ingest ``body`` next to a good signed result; the settlements and rejection codes."""
    assert world.keys is not None
    settled = Settled()
    ingestor = world.ingestor()
    good = world.keys.sign(result(status, "p-good", {"lav950_percent": 1.0}))

    ingestor.handle(settled.delivery(body, "suspect", headers))
    ingestor.handle(settled.delivery(good, "good"))
    ingestor.flush()

    assert settled.of("ack") == ["good"], settled.events
    assert world.store.result_count(status.experiment_id) == 1
    return settled, [r.code or "" for r in world.store.rejections()]


def test_a_signed_result_is_stored_with_its_signer_and_the_spokes_audit_head(
    tmp_path: Path,
) -> None:
    world, status = _launched(tmp_path)
    assert world.keys is not None
    settled = Settled()
    ingestor = world.ingestor()
    message = result(status, "p-1", {"lav950_percent": 3.5}, audit_head=HEAD)

    ingestor.handle(settled.delivery(world.keys.sign(message), "d1"))
    ingestor.flush()

    kid = key_id(world.keys.spokes["site-01"])
    with world.store._read() as conn:
        row = conn.execute(select(t.results.c.signer_key_id, t.results.c.audit_head)).one()
    spoke = next(s for s in world.store.spokes() if s.spoke_id == "site-01")
    got = world.experiments.status(status.experiment_id)
    assert settled.of("ack") == ["d1"]
    assert (row.signer_key_id, row.audit_head) == (kid, HEAD)
    assert (spoke.audit_head, spoke.last_key_id) == (HEAD, kid)
    assert got.results == got.results_verified == 1 and got.rejections == {}


def test_a_forged_signature_is_rejected(tmp_path: Path) -> None:
    world, status = _launched(tmp_path)
    assert world.keys is not None
    body, _ = world.keys.sign(result(status, "p-1", {"lav950_percent": 99.0}))
    forged = base64.b64encode(generate_key().sign(body)).decode()
    kid = key_id(world.keys.spokes["site-01"])  # names site-01's key; not made with it

    settled, codes = _refused_alone(world, status, body, {SIGNATURE_HEADER: f"{kid}:{forged}"})

    assert settled.of("reject") == ["suspect"]
    assert codes == ["bad_signature"]
    assert world.store.rejections()[0].key_id == kid


def test_a_valid_signature_over_altered_content_is_rejected(tmp_path: Path) -> None:
    world, status = _launched(tmp_path)
    assert world.keys is not None
    body, headers = world.keys.sign(result(status, "p-1", {"lav950_percent": 3.5}))
    altered = body.replace(b'"lav950_percent":3.5', b'"lav950_percent":35')
    assert altered != body

    settled, codes = _refused_alone(world, status, altered, headers)

    assert settled.of("reject") == ["suspect"]
    assert codes == ["bad_signature"]
    assert "altered or forged" in world.store.rejections()[0].reason


def test_a_replayed_result_is_acknowledged_counted_once_and_recorded(tmp_path: Path) -> None:
    world, status = _launched(tmp_path)
    assert world.keys is not None
    settled = Settled()
    ingestor = world.ingestor()
    signed = world.keys.sign(result(status, "p-1", {"lav950_percent": 3.5}))

    ingestor.handle(settled.delivery(signed, "original"))
    ingestor.flush()
    ingestor.handle(settled.delivery(signed, "replay-1"))
    ingestor.handle(settled.delivery(signed, "replay-2"))
    ingestor.flush()

    rejections = world.store.rejections()
    got = world.experiments.status(status.experiment_id)
    assert settled.of("ack") == ["original", "replay-1", "replay-2"]
    assert world.store.result_count(status.experiment_id) == 1
    assert [(r.message_id, r.code) for r in rejections] == [
        ("replay-2", "replayed"), ("replay-1", "replayed"),
    ]  # fmt: skip
    assert (ingestor.stats.accepted, ingestor.stats.replayed, ingestor.stats.rejected) == (1, 2, 0)
    assert got.results == 1 and got.rejections == {"replayed": 2}


def test_a_replay_within_one_batch_is_recorded_too(tmp_path: Path) -> None:
    world, status = _launched(tmp_path)
    assert world.keys is not None
    settled = Settled()
    ingestor = world.ingestor()
    signed = world.keys.sign(result(status, "p-1", {"lav950_percent": 3.5}))

    ingestor.handle(settled.delivery(signed, "original"))
    ingestor.handle(settled.delivery(signed, "replay"))
    ingestor.flush()

    assert settled.of("ack") == ["original", "replay"]
    assert [r.code for r in world.store.rejections()] == ["replayed"]
    assert world.store.result_count(status.experiment_id) == 1


def test_a_result_signed_by_a_key_the_hub_does_not_know_is_rejected(tmp_path: Path) -> None:
    world, status = _launched(tmp_path)
    assert world.keys is not None
    body, headers = world.keys.sign(result(status, "p-1", {"x": 1}), by="stranger")

    settled, codes = _refused_alone(world, status, body, headers)

    assert settled.of("reject") == ["suspect"]
    assert codes == ["unknown_key"]
    assert world.store.rejections()[0].key_id == key_id(world.keys.stranger)


def test_spoke_b_cannot_sign_a_result_in_spoke_as_name(tmp_path: Path) -> None:
    world, status = _launched(tmp_path)
    assert world.keys is not None
    claims_a = result(status, "p-1", {"x": 1}, spoke="site-01")
    body, headers = world.keys.sign(claims_a, by="site-02")  # a trusted key, of another spoke

    settled, codes = _refused_alone(world, status, body, headers)

    (rejection,) = world.store.rejections()
    assert settled.of("reject") == ["suspect"]
    assert codes == ["wrong_signer"]
    assert rejection.spoke_id == "site-01" and "site-02" in rejection.reason
    assert rejection.experiment_id == status.experiment_id


def test_an_unsigned_result_is_rejected(tmp_path: Path) -> None:
    world, status = _launched(tmp_path)

    settled, codes = _refused_alone(world, status, m.encode(result(status, "p-1", {"x": 1})), {})

    assert settled.of("reject") == ["suspect"]
    assert codes == ["unsigned"]


def test_a_garbled_signature_header_is_malformed(tmp_path: Path) -> None:
    world, status = _launched(tmp_path)
    body = m.encode(result(status, "p-1", {"x": 1}))

    settled, codes = _refused_alone(world, status, body, {SIGNATURE_HEADER: "not-a-signature"})

    assert settled.of("reject") == ["suspect"]
    assert codes == ["malformed"]


def test_a_heartbeat_must_be_signed_by_its_spoke_too(tmp_path: Path) -> None:
    world = make_world(tmp_path, allowed=())
    assert world.keys is not None
    settled = Settled()
    ingestor = world.ingestor()
    beat = m.SpokeHeartbeat(spoke_id="site-03", sent_at="2026-01-01T00:00:00Z")

    ingestor.handle(settled.delivery(world.keys.sign(beat, by="site-01"), "posing"))
    ingestor.handle(settled.delivery(world.keys.sign(beat), "own"))
    ingestor.flush()

    assert settled.of("reject") == ["posing"] and settled.of("ack") == ["own"]
    assert [s.spoke_id for s in world.store.spokes()] == ["site-03"]


def test_orders_and_cancels_carry_the_hubs_signature_and_resends_are_identical(
    tmp_path: Path,
) -> None:
    world, status = _launched(tmp_path)
    assert world.keys is not None and world.recorder is not None
    record = world.store.experiment(status.experiment_id)
    assert record is not None
    world.dispatcher.send_order(record.manifest, record.manifest_hash, "site-01", resend=True)
    world.experiments.cancel(status.experiment_id)
    other = TrustStore()
    other.add(generate_key().public_key(), name="hub")

    order, resent, cancel = world.recorder.to("site-01")
    for sent in (order, resent, cancel):
        assert verify_wire(sent.body, sent.headers, world.keys.hub_trust(), "hub") == "hub"
        with pytest.raises(SignatureError) as refused:
            verify_wire(sent.body, sent.headers, other, "hub")
        assert refused.value.reason == "unknown_key"
    parsed = m.parse_message(order.body)
    assert isinstance(parsed, m.ExperimentOrder)
    assert m.manifest_hash(parsed.manifest) == parsed.manifest_hash == status.manifest_hash
    assert (resent.body, resent.headers) == (order.body, order.headers)
    assert isinstance(m.parse_message(cancel.body), m.ExperimentCancel)
    assert [s.spoke_id for s in world.experiments.status(status.experiment_id).spokes] == list(
        SPOKES
    )


def test_a_float_argument_hashes_the_same_at_the_hub_and_after_the_signed_order(
    tmp_path: Path,
) -> None:
    world = make_world(tmp_path)
    assert world.recorder is not None

    status = world.launch(args={"lung-lav950": {"threshold_hu": -950.0}})

    order = m.parse_message(world.recorder.to("site-01")[0].body)
    assert isinstance(order, m.ExperimentOrder)
    assert m.manifest_hash(order.manifest) == status.manifest_hash


def test_a_hub_without_keys_refuses_to_start_unless_insecure_unsigned(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    keys = Keys.make()
    studies = StudyCatalog(tmp_path)

    with pytest.raises(ConfigError) as no_trust:
        Hub(world.store, world.broker, studies, signer=keys.hub_signer)
    with pytest.raises(ConfigError):
        Hub(world.store, world.broker, studies, trust=keys.trust())
    insecure = Hub(world.store, world.broker, studies, insecure_unsigned=True)

    assert "insecure_unsigned" in str(no_trust.value)
    assert insecure.trust is None and insecure.signer is None
