"""A cancel sent while a spoke is offline takes effect when it comes back (real ActiveMQ).

The hub and the spoke are the real services over the session's ActiveMQ; the container
engine is the fake one, whose run lasts until the spoke stops that experiment's containers,
so any case the spoke starts before the cancel reaches it is running when it does.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from broker_fixtures import wait_until
from dicom_factory import Identity, write_ct_series
from fakes import IMAGE_ID, SCHEMA, FakeEngine

from workbench.hub_kernel.models import AlgorithmSpec
from workbench.hub_kernel.service import Hub
from workbench.hub_kernel.store import ResultsStore
from workbench.hub_kernel.studies import StudyCatalog
from workbench.spoke_service.config import SpokeConfig
from workbench.spoke_service.policy import SpokePolicy
from workbench.spoke_service.service import Spoke
from workbench.transport.stomp_broker import StompBroker
from workbench.trust.image_signature import sign_image
from workbench.trust.keys import TrustStore, generate_key, key_id, new_key_pair

pytestmark = pytest.mark.broker

STUDIES = Path(__file__).resolve().parents[2] / "studies"
PEOPLE = [Identity(patient_id=f"MRN-20{n}", patient_name=f"Doe^P{n}") for n in range(3)]


def write_site(root: Path) -> None:
    for person in PEOPLE:
        write_ct_series(root / "dicom" / person.patient_id / "t0", person, slices=2)
        later = Identity(**{**person.__dict__, "study_date": "20200415", "accession": "ACC-2"})
        write_ct_series(root / "dicom" / person.patient_id / "t1", later, slices=2)


def test_a_cancel_sent_while_the_spoke_is_offline_takes_effect_when_it_reconnects(
    activemq: Any, tmp_path: Path
) -> None:
    spoke_id = f"cx-{uuid.uuid4().hex[:8]}"  # the session broker is shared: a queue of our own
    hub_key, spoke_key, publisher = generate_key(), generate_key(), generate_key()
    keys = tmp_path / "keys"
    new_key_pair(keys / "hub", hub_key)
    new_key_pair(keys / "publisher", publisher)
    spoke_pair = new_key_pair(keys / "spoke", spoke_key)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    for name in ("hub", "publisher"):
        (trusted / f"{name}.pem").write_bytes((keys / name / "public.pem").read_bytes())
    spoke_trust = TrustStore()
    spoke_trust.add(spoke_key.public_key(), name=spoke_id)
    write_site(tmp_path)

    from workbench.trust.wire import WireSigner

    store = ResultsStore.open(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    hub = Hub(
        store, StompBroker.from_url(activemq.stomp_url), StudyCatalog(STUDIES),
        allowed_spokes=(spoke_id,), signer=WireSigner(hub_key), trust=spoke_trust,
    )  # fmt: skip
    hub.start()
    spoke: Spoke | None = None
    try:
        hub.registry.register(AlgorithmSpec(
            name="score", version="1", image="elic/score:1", digest=IMAGE_ID,
            output_schema=SCHEMA, signature=sign_image("elic/score:1", IMAGE_ID, publisher),
        ))  # fmt: skip
        # The spoke is offline: it has never connected. Launch, then cancel.
        launched = hub.experiments.launch(
            {"study": "lung-screening", "algorithms": ["score"], "spokes": [spoke_id]}
        )
        experiment_id = launched.experiment_id
        assert hub.experiments.cancel(experiment_id).state == "cancelled"
        assert launched.spokes[0].order_sent

        def run_until_stopped(out: Path) -> None:
            deadline = time.monotonic() + 20
            while not engine.stopped and time.monotonic() < deadline:
                time.sleep(0.01)
            (out / "output.json").write_text('{"score": 0.5}')

        engine = FakeEngine(run_until_stopped)
        config = SpokeConfig(
            spoke_id=spoke_id, state_dir=tmp_path / "spoke", dicom_dir=tmp_path / "dicom",
            broker=(activemq.stomp_url,), heartbeat_s=3600, trusted_keys=(trusted,),
            signing_key=spoke_pair.private, concurrency=2,
            policy=SpokePolicy(signers=frozenset({key_id(hub_key), key_id(publisher)})),
        )  # fmt: skip
        spoke = Spoke(config, config.connect(), engine)
        spoke.start()  # reconnects: the order, then the cancel, wait in its queue

        def settled() -> bool:
            (progress,) = hub.experiments.status(experiment_id).spokes
            return progress.accepted and progress.cancelled == progress.expected == 3

        wait_until(settled, what="every case cancelled at the hub")
        time.sleep(0.5)  # a wrongly released result would be ingested by now
        status = hub.experiments.status(experiment_id)
    finally:
        if spoke is not None:
            spoke.stop()
        hub.stop()
    (progress,) = status.spokes
    assert status.results == 0 and store.result_count(experiment_id) == 0
    assert (progress.done, progress.failed, progress.running, progress.queued) == (0, 0, 0, 0)
    assert status.rejections == {}  # no result was even sent
    # A case the spoke had started before the cancel reached it was killed, not finished.
    if engine.specs:
        assert engine.stopped == [
            {"org.elic.spoke": spoke_id, "org.elic.experiment": experiment_id}
        ]
    store.close()
