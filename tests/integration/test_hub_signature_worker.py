"""The hub checking signatures in its worker process, over the real ActiveMQ.

Signed results (and one altered after signing, one signed by a stranger) go through the
session's broker to a hub whose Ed25519 checks run in a child process: every good result is
stored once and acknowledged, the two bad ones are refused with their reasons, and the
checker is a process of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from broker_fixtures import wait_until

from workbench.core import messages as m
from workbench.hub_kernel.client import HubClient
from workbench.hub_kernel.service import Hub
from workbench.hub_kernel.store import ResultsStore
from workbench.hub_kernel.studies import StudyCatalog
from workbench.transport.stomp_broker import StompBroker
from workbench.trust.checks import WorkerChecks
from workbench.trust.keys import TrustStore, generate_key
from workbench.trust.wire import WireSigner

pytestmark = pytest.mark.broker

STUDIES = Path(__file__).resolve().parents[2] / "studies"
DIGEST = "sha256:" + "c" * 64
GOOD = 600


def test_results_checked_in_the_worker_process_are_stored_once_and_forgeries_refused(
    activemq: Any, tmp_path: Path
) -> None:
    spoke_id = f"sw-{uuid.uuid4().hex[:8]}"  # the session broker is shared
    spoke_key, stranger = generate_key(), generate_key()
    trust = TrustStore()
    trust.add(spoke_key.public_key(), name=spoke_id)
    store = ResultsStore.open(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    hub = Hub(
        store, StompBroker.from_url(activemq.stomp_url), StudyCatalog(STUDIES),
        allowed_spokes=(spoke_id,), signer=WireSigner(generate_key()), trust=trust,
        signature_worker=True, owns_broker=True, owns_store=True,
    )  # fmt: skip
    hub.start()
    sender = StompBroker.from_url(activemq.stomp_url)
    try:
        hub.registry.register({
            "name": "nodule-volume", "version": "1.0.0", "image": "elic/nodule-volume:1.0.0",
            "digest": DIGEST, "output_schema": {"type": "object"},
        })  # fmt: skip
        launched = hub.experiments.launch(
            {"study": "lung-screening", "algorithms": ["nodule-volume"], "spokes": [spoke_id]}
        )

        def signed(i: int, key: Any = spoke_key) -> tuple[bytes, dict[str, str]]:
            output = {"nodule_found": True, "malignancy_score": i / GOOD}
            message = m.CaseResult(
                experiment_id=launched.experiment_id, spoke_id=spoke_id,
                participant_id=f"p-{i:05d}", algorithm="nodule-volume",
                manifest_hash=launched.manifest_hash, image_digest=DIGEST, output=output,
                output_sha256=hashlib.sha256(json.dumps(output).encode()).hexdigest(),
            )  # fmt: skip
            return WireSigner(key).sign(message.model_dump(mode="json"))

        body, headers = signed(GOOD)
        altered = body.replace(f"p-{GOOD:05d}".encode(), b"p-99999")
        assert altered != body
        batch = [signed(i) for i in range(GOOD)] + [(altered, headers), signed(GOOD + 1, stranger)]
        for start in range(0, len(batch), 200):
            sender.send_many([(m.HUB_INBOX, b, h) for b, h in batch[start : start + 200]])

        wait_until(
            lambda: len(store.rejections(experiment_id=launched.experiment_id)) == 2
            and store.result_count(launched.experiment_id) == GOOD,
            timeout=60, what=f"{GOOD} results and 2 refusals",
        )  # fmt: skip
        codes = sorted(r.code for r in store.rejections(experiment_id=launched.experiment_id))
        assert codes == ["bad_signature", "unknown_key"]
        status = hub.experiments.status(launched.experiment_id)
        assert status.results_verified == GOOD
        assert isinstance(hub.checks, WorkerChecks)
        assert hub.checks.pid not in (None, os.getpid())
        assert hub.checks._restarts == 0, "every batch was checked by the worker, none here"
        health = HubClient(hub.url).health()
        assert health["ingest"]["signature_checks"] == "worker"
        wait_until(lambda: hub.ingestor.pending() == 0, what="everything written and settled")
    finally:
        sender.close()
        hub.stop()
    assert hub.checks.pid is None, "the worker stops with the hub"
