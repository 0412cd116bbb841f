"""The spoke service end to end in one process: InMemoryBroker, a fake engine, real SQLite."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from dicom_factory import Identity, write_ct_series
from fakes import IMAGE_ID, FakeEngine

from workbench.core import messages as m
from workbench.spoke_service.config import SpokeConfig
from workbench.spoke_service.pending import (
    CaseKey,
    PendingError,
    PendingStore,
    release_held,
)
from workbench.spoke_service.policy import SpokePolicy
from workbench.spoke_service.service import Spoke
from workbench.spoke_service.state import SpokeState
from workbench.transport.base import DEAD_LETTER_QUEUE
from workbench.transport.memory import InMemoryBroker, InMemoryConnection
from workbench.trust.image_signature import sign_image
from workbench.trust.keys import generate_key, key_id
from workbench.trust.wire import WireSigner

PEOPLE = [
    Identity(patient_id="MRN-1001", patient_name="Moreau^Claire", accession="ACC-A1"),
    Identity(patient_id="MRN-1002", patient_name="Okafor^Chidi", accession="ACC-B1"),
]
ONE_TIMEPOINT = Identity(patient_id="MRN-1003", patient_name="Silva^Ana")


def make_site(root: Path) -> Path:
    for person in PEOPLE:
        write_ct_series(root / "dicom" / person.patient_id / "t0", person, slices=2)
        later = Identity(**{**person.__dict__, "study_date": "20200415", "accession": "ACC-X2"})
        write_ct_series(root / "dicom" / person.patient_id / "t1", later, slices=2)
    write_ct_series(root / "dicom" / "MRN-1003", ONE_TIMEPOINT, slices=2)
    (root / "reference.csv").write_text(
        "patient_id,malignant,lav950_percent_t0\nMRN-1001,1,4.5\nMRN-1002,0,12.25\n"
    )
    return root


def write_score(out: Path) -> None:
    (out / "output.json").write_text('{"score": 0.25}')


HUB_KEY, PUBLISHER_KEY, STRANGER_KEY = generate_key(), generate_key(), generate_key()
HUB = WireSigner(HUB_KEY)


def config(root: Path, spoke_id: str = "site-01") -> SpokeConfig:
    keys = root / "trusted"
    if not keys.exists():
        keys.mkdir()
        for name, key in [("hub", HUB_KEY), ("lab", PUBLISHER_KEY)]:
            (keys / f"{name}.pem").write_bytes(public_pem(key))
    policy = SpokePolicy(signers=frozenset({key_id(HUB_KEY), key_id(PUBLISHER_KEY)}))
    return SpokeConfig(
        spoke_id=spoke_id, state_dir=root / "state", dicom_dir=root / "dicom",
        broker=("memory://",), reference_csv=root / "reference.csv", heartbeat_s=3600,
        trusted_keys=(keys,), policy=policy,
    )  # fmt: skip


def public_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def algorithm_ref(image: str = "elic/score:1", digest: str = IMAGE_ID) -> m.AlgorithmRef:
    signature = sign_image(image, digest, PUBLISHER_KEY)
    return m.AlgorithmRef(name="score", version="1", image=image, digest=digest,
                          signature=signature)  # fmt: skip


def send_order(connection: Any, body: bytes, signer: WireSigner = HUB) -> None:
    """Send as the hub does: the body signed, the signature in a header."""
    connection.send(m.orders_queue("site-01"), body, signer.headers(body))


def order(spoke_id: str = "site-01", experiment_id: str = "exp-1", **manifest: object) -> bytes:
    algorithm = algorithm_ref()
    fields: dict[str, object] = dict(
        experiment_id=experiment_id, study="lung-screening", algorithms=(algorithm,),
        spokes=(spoke_id,), cohort={"modality": "CT", "min_timepoints": 2},
        reference_fields=("malignant", "lav950_percent_t0"), created_at="2026-11-28T00:00:00Z",
    )  # fmt: skip
    fields.update(manifest)
    frozen = m.Manifest(**fields)  # type: ignore[arg-type]
    msg = m.ExperimentOrder(
        spoke_id=spoke_id, manifest=frozen, manifest_hash=m.manifest_hash(frozen)
    )
    return m.encode(msg)


def inbox(server: InMemoryBroker) -> list[m.Message]:
    return [m.parse_message(body) for body in server.drain(m.HUB_INBOX)]


def finished(messages: list[m.Message]) -> int:
    """Cases that reached a final state, as the hub would count them."""
    final = {"done", "failed", "cancelled"}
    return sum(isinstance(x, m.CaseStatus) and x.state in final for x in messages)


def until(server: InMemoryBroker, enough: Callable[[list[m.Message]], bool]) -> list[m.Message]:
    """Collect the hub inbox until ``enough(messages)``, failing after a deadline."""
    seen: list[m.Message] = []
    deadline = time.monotonic() + 20
    while not enough(seen):
        assert time.monotonic() < deadline, f"gave up waiting; saw {[x.type for x in seen]}"
        seen += inbox(server)
        time.sleep(0.02)
    return seen


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return make_site(tmp_path)


def run_spoke(site: Path, server: InMemoryBroker, engine: FakeEngine, *orders: bytes) -> Spoke:
    spoke = Spoke(config(site), server.connect(), engine)
    spoke.start()
    hub = server.connect()
    for body in orders:
        send_order(hub, body)
    hub.close()
    return spoke


def both_cases_finished(seen: list[m.Message]) -> bool:
    return finished(seen) >= 2


def run_until(
    site: Path,
    server: InMemoryBroker,
    engine: FakeEngine,
    *orders: bytes,
    enough: Callable[[list[m.Message]], bool] = both_cases_finished,
    linger_s: float = 0.0,
) -> list[m.Message]:
    """Start a spoke, send ``orders``, collect the hub inbox until ``enough``, stop the spoke.

    ``linger_s`` keeps the spoke running that much longer, for a wrong extra message to show.
    """
    spoke = run_spoke(site, server, engine, *orders)
    try:
        messages = until(server, enough)
        time.sleep(linger_s)
        return messages
    finally:
        spoke.stop()


def test_an_order_runs_every_matching_case_and_reports_results(site: Path) -> None:
    server = InMemoryBroker()
    messages = run_until(site, server, FakeEngine(write_score), order())
    accepted = [x for x in messages if isinstance(x, m.ExperimentAccepted)]
    results = [x for x in messages if isinstance(x, m.CaseResult)]
    assert [(a.participants, a.cases) for a in accepted] == [(2, 2)]  # MRN-1003 has 1 time point
    assert sorted(r.reference["malignant"] for r in results) == [0, 1]
    assert {r.output["score"] for r in results} == {0.25}
    assert all(r.image_digest == IMAGE_ID for r in results)
    states = [x.state for x in messages if isinstance(x, m.CaseStatus)]
    assert sorted(states) == sorted(["queued", "running", "done"] * 2)
    manifests = [x for x in messages if isinstance(x, m.ParticipantManifest)]
    assert manifests[0].participants == 3


def test_nothing_identifying_leaves_the_spoke(site: Path) -> None:
    server = InMemoryBroker()
    messages = run_until(site, server, FakeEngine(write_score), order())
    sent = b"".join(m.encode(x) for x in messages + inbox(server)).decode()
    for person in [*PEOPLE, ONE_TIMEPOINT]:
        for value in [person.patient_id, "Moreau", "Claire", "Okafor", person.accession,
                      person.institution, person.birth_date, "20190402", "20200415"]:  # fmt: skip
            assert value not in sent


def test_a_redelivered_order_plans_nothing_twice(site: Path) -> None:
    server = InMemoryBroker()
    # linger_s: give a wrongly re-planned second round the chance to show itself.
    messages = run_until(site, server, FakeEngine(write_score), order(), order(), linger_s=0.3)
    results = [x for x in messages + inbox(server) if isinstance(x, m.CaseResult)]
    assert len(results) == 2


def test_bad_orders_go_to_the_dead_letter_queue_and_work_continues(site: Path) -> None:
    server = InMemoryBroker()
    tampered = json.loads(order())
    tampered["manifest"]["timeout_s"] = 5.0  # the hash no longer matches
    bad = [b"{not json", order(spoke_id="site-02"), json.dumps(tampered).encode()]
    messages = run_until(site, server, FakeEngine(write_score), *bad, order())
    assert server.depth(DEAD_LETTER_QUEUE) == 3
    assert len([x for x in messages if isinstance(x, m.CaseResult)]) == 2


def test_failures_travel_as_codes_without_logs(site: Path) -> None:
    def crash(out: Path) -> None:
        (out / "output.json").write_text("Traceback: secret path /data/MRN-1001")

    server = InMemoryBroker()
    messages = run_until(site, server, FakeEngine(crash), order())
    failed = [x for x in messages if isinstance(x, m.CaseStatus) and x.state == "failed"]
    assert len(failed) == 2
    assert {f.error.code.value for f in failed if f.error} == {"OUTPUT_INVALID_JSON"}
    assert b"Traceback" not in b"".join(m.encode(x) for x in messages)


def test_no_matching_case_is_reported_as_zero_cases(site: Path) -> None:
    server = InMemoryBroker()
    messages = run_until(
        site,
        server,
        FakeEngine(write_score),
        order(cohort={"min_timepoints": 5}),
        enough=lambda seen: any(x.type == "experiment.accepted" for x in seen),
    )
    accepted = [x for x in messages if isinstance(x, m.ExperimentAccepted)]
    assert [(a.participants, a.cases) for a in accepted] == [(0, 0)]


def test_a_cancel_stops_the_running_case_and_runs_no_queued_one(site: Path) -> None:
    server = InMemoryBroker()
    hub = server.connect()

    def slow_until_stopped(out: Path) -> None:
        deadline = time.monotonic() + 10
        while not engine.stopped and time.monotonic() < deadline:
            time.sleep(0.01)
        write_score(out)

    engine = FakeEngine(slow_until_stopped)
    spoke = Spoke(config(site), server.connect(), engine)
    spoke.start()
    send_order(hub, order())
    try:
        started = until(
            server, lambda seen: any(getattr(x, "state", "") == "running" for x in seen)
        )
        send_order(hub, m.encode(m.ExperimentCancel(spoke_id="site-01", experiment_id="exp-1")))
        messages = started + until(server, lambda seen: finished(seen) >= 2)
        time.sleep(0.2)  # let a wrongly started second case show up
    finally:
        spoke.stop()
        hub.close()
    messages += inbox(server)
    states = sorted(
        x.state for x in messages if isinstance(x, m.CaseStatus) and x.state != "queued"
    )
    # The running case is killed and settled as cancelled; the queued one never starts.
    assert states == ["cancelled", "cancelled", "running"]
    assert not [x for x in messages if isinstance(x, m.CaseResult)]
    assert engine.stopped == [{"org.elic.spoke": "site-01", "org.elic.experiment": "exp-1"}]
    assert engine.specs[0].labels["org.elic.experiment"] == "exp-1"
    assert len(engine.specs) == 1


def test_an_image_absent_locally_is_pulled_by_digest_and_checked(site: Path) -> None:
    server = InMemoryBroker()
    engine = FakeEngine(write_score, local=set())
    ref = "127.0.0.1:5000/elic/score@sha256:" + "cd" * 32
    messages = run_until(site, server, engine, order(algorithms=(algorithm_ref(ref),)))
    assert engine.pulled == [ref]
    assert len([x for x in messages if isinstance(x, m.CaseResult)]) == 2


def test_a_swapped_image_fails_every_case_before_running(site: Path) -> None:
    server = InMemoryBroker()
    engine = FakeEngine(write_score)
    swapped = algorithm_ref(digest="sha256:" + "0" * 64)  # signed, but not what is local
    messages = run_until(site, server, engine, order(algorithms=(swapped,)))
    failed = [x for x in messages if isinstance(x, m.CaseStatus) and x.state == "failed"]
    assert [f.error.code.value for f in failed if f.error] == ["IMAGE_NOT_FOUND"] * 2
    assert engine.specs == []


def test_cases_interrupted_by_a_crash_run_again_on_restart(site: Path) -> None:
    server = InMemoryBroker()
    first = Spoke(config(site), server.connect(), FakeEngine(write_score))
    first.catalog.index(site / "dicom")
    first.state.store_order("exp-1", m.manifest_hash(m.parse_message(order()).manifest), order())  # type: ignore[union-attr]
    first._plan(m.parse_message(order()))  # type: ignore[arg-type]
    first.state.claim_next(lambda c: [])  # a case was running when the process died
    first.state.close()
    first.catalog.close()
    first.audit.close()  # the dead process's lock on its audit log goes with it
    (site / "state" / "work" / "leftover" / "output").mkdir(parents=True)  # a crashed run's
    engine = FakeEngine(write_score)
    messages = run_until(site, server, engine)  # no new order: the restart finds the old one
    results = [x for x in messages if isinstance(x, m.CaseResult)]
    assert len(results) == 2
    assert {r.attempt for r in results} == {1}
    assert engine.removed == [{"org.elic.spoke": "site-01"}]  # its own orphans, no one else's
    assert not (site / "state" / "work" / "leftover").exists()


def test_an_output_naming_the_patient_never_leaves(site: Path) -> None:
    def leak(out: Path) -> None:
        (out / "output.json").write_text('{"score": 0.5, "note": "nodule of MOREAU"}')

    server = InMemoryBroker()
    messages = run_until(site, server, FakeEngine(leak), order())
    failed = [x for x in messages if isinstance(x, m.CaseStatus) and x.state == "failed"]
    codes = [f.error.code.value for f in failed if f.error]
    results = [x for x in messages if isinstance(x, m.CaseResult)]
    # Only in Moreau's own case is "MOREAU" an identifier; Okafor's output names nobody of his.
    assert codes == ["OUTPUT_PHI"]
    assert len(results) == 1
    assert {failed[0].participant_id, results[0].participant_id} == {
        x.participant_id for x in messages if isinstance(x, m.CaseStatus)
    }


def manual_release(site: Path) -> SpokeConfig:
    """The site's spoke configuration with results held for a person to release."""
    base = config(site)
    return replace(base, policy=replace(base.policy, manual_release=True))


def started_with_manual_release(
    site: Path,
) -> tuple[InMemoryBroker, SpokeConfig, Spoke, InMemoryConnection]:
    """A started spoke that holds results for release, and a hub connection that has sent
    it an order: (broker, the spoke's config, the spoke, the hub's connection)."""
    server = InMemoryBroker()
    held_config = manual_release(site)
    spoke = Spoke(held_config, server.connect(), FakeEngine(write_score))
    spoke.start()
    hub = server.connect()
    send_order(hub, order())
    return server, held_config, spoke, hub


def wait_until_held(store: PendingStore, n: int) -> None:
    deadline = time.monotonic() + 20
    while len(store.list()) < n:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_with_manual_release_results_wait_for_a_person(site: Path) -> None:
    server, held_config, spoke, hub = started_with_manual_release(site)
    try:
        until(server, lambda seen: sum(getattr(x, "state", "") == "running" for x in seen) >= 2)
        store = PendingStore.open(held_config.state_dir)
        wait_until_held(store, 2)
        assert not any(isinstance(x, m.CaseResult) for x in inbox(server))
        release_held(held_config.state_dir, store.list()[0].id)
        store.close()
        released = until(server, lambda seen: any(isinstance(x, m.CaseResult) for x in seen))
    finally:
        spoke.stop()
        hub.close()
    assert len([x for x in released if isinstance(x, m.CaseResult)]) == 1


def test_a_cancel_withdraws_the_results_held_for_review(site: Path) -> None:
    server, held_config, spoke, hub = started_with_manual_release(site)
    store = PendingStore.open(held_config.state_dir)
    try:
        wait_until_held(store, 2)
        send_order(hub, m.encode(m.ExperimentCancel(spoke_id="site-01", experiment_id="exp-1")))
        seen = until(
            server,
            lambda seen: sum(getattr(x, "state", "") == "cancelled" for x in seen) >= 2,
        )
        withdrawn = store.list(state="rejected")
        with pytest.raises(PendingError, match="already rejected by hub"):
            release_held(held_config.state_dir, withdrawn[0].id)
        time.sleep(0.2)  # let a wrongly released result show up
    finally:
        spoke.stop()
        hub.close()
    seen += inbox(server)
    assert store.list() == []  # nothing waits for review any more
    assert len(withdrawn) == 2
    assert {(h.decided_by, h.reason) for h in withdrawn} == {
        ("hub", "withdrawn: the hub cancelled the experiment")
    }
    store.close()
    assert not [x for x in seen if isinstance(x, m.CaseResult)]
    cancelled = {x.participant_id for x in seen if getattr(x, "state", "") == "cancelled"}
    assert len(cancelled) == 2
    entries = [json.loads(x) for x in held_config.audit_path.read_text().splitlines()]
    withdrawals = [e["data"] for e in entries if e["event"] == "results.withdrawn"]
    assert withdrawals == [{"experiment_id": "exp-1", "results": 2}]


def test_a_spoke_that_stopped_between_a_cancel_and_the_withdrawal_withdraws_on_start(
    site: Path,
) -> None:
    held_config = manual_release(site)
    held_config.state_dir.mkdir(parents=True, exist_ok=True)
    state = SpokeState(held_config.state_path)
    state.store_order("exp-1", "0" * 64, b"{}")
    state.cancel("exp-1", lambda _: [])
    state.close()
    key = CaseKey("site-01", "exp-1", "p-1", "score", 1)
    with PendingStore.open(held_config.state_dir) as store:
        held_id = store.hold(key, b"{}", "manual release")

    spoke = Spoke(held_config, InMemoryBroker().connect(), FakeEngine(write_score))
    spoke.start()
    spoke.stop()

    with PendingStore.open(held_config.state_dir) as store:
        assert (store.get(held_id).state, store.get(held_id).decided_by) == ("rejected", "hub")


def test_unsigned_or_foreign_orders_are_refused_and_audited(site: Path) -> None:
    server = InMemoryBroker()
    spoke = Spoke(config(site), server.connect(), FakeEngine(write_score))
    spoke.start()
    hub = server.connect()
    hub.send(m.orders_queue("site-01"), order())  # no signature
    send_order(hub, order(), WireSigner(STRANGER_KEY))  # signed, by nobody the spoke trusts
    send_order(hub, order(), WireSigner(PUBLISHER_KEY))  # trusted, but not as the hub
    try:
        deadline = time.monotonic() + 20
        while server.depth(DEAD_LETTER_QUEUE) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        spoke.stop()
        hub.close()
    assert not any(isinstance(x, m.ExperimentAccepted) for x in inbox(server))
    lines = [json.loads(line) for line in (site / "state" / "audit.log").read_text().splitlines()]
    reasons = [e["data"]["reason"] for e in lines if e["event"] == "order.rejected"]
    assert reasons == ["unsigned", "unknown_key", "wrong_signer"]


def test_an_unsigned_image_never_runs(site: Path) -> None:
    server = InMemoryBroker()
    engine = FakeEngine(write_score)
    unsigned = m.AlgorithmRef(name="score", version="1", image="elic/score:1", digest=IMAGE_ID)
    forged = algorithm_ref().model_copy(
        update={"signature": sign_image("elic/score:1", IMAGE_ID, STRANGER_KEY)}
    )
    for algorithm in (unsigned, forged):
        messages = run_until(
            site, server, engine, order(algorithms=(algorithm,), experiment_id=f"e-{id(algorithm)}")
        )
        codes = [x.error.code.value for x in messages if isinstance(x, m.CaseStatus) and x.error]
        assert codes == ["IMAGE_UNTRUSTED"] * 2
    assert engine.specs == []


def test_results_are_signed_and_name_their_audit_entry(site: Path) -> None:
    from workbench.trust.keys import TrustStore, load_public_key
    from workbench.trust.wire import verify_wire

    server = InMemoryBroker()
    spoke = run_spoke(site, server, FakeEngine(write_score), order())
    received: list[tuple[bytes, dict[str, str]]] = []
    watcher = server.connect()
    watcher.subscribe(m.HUB_INBOX, lambda d: (received.append((d.body, d.headers)), d.ack()))
    try:
        deadline = time.monotonic() + 20
        while sum(b'"case.result"' in body for body, _ in received) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        watcher.close()
        spoke.stop()
    trust = TrustStore()
    trust.add(load_public_key(site / "state" / "keys" / "public.pem"), name="site-01")
    for body, headers in received:
        assert verify_wire(body, headers, trust, signer="site-01") == "site-01"
    results = [m.parse_message(b) for b, _ in received if b'"case.result"' in b]
    from workbench.trust.audit import verify as verify_audit

    report = verify_audit(site / "state" / "audit.log")
    assert report.ok
    entries = [json.loads(x) for x in (site / "state" / "audit.log").read_text().splitlines()]
    by_head = {f"{e['seq']}:{e['hash']}": e for e in entries}
    for result in results:
        entry = by_head[result.audit_head]  # type: ignore[union-attr, index]
        assert entry["event"] == "result.released"
        assert entry["data"]["output_sha256"] == result.output_sha256  # type: ignore[union-attr]
