"""Order-to-result round trip at a spoke, without the container's own run time.

A real ActiveMQ, a real ``Spoke`` (its SQLite state, catalog, outbox, audit log and worker
threads) on a one-participant synthetic site, and an engine that "runs" a container
instantly, so what is measured is the platform's own path: the hub's signed order through
the broker, the spoke verifying, storing and planning it, checking the image's signature,
claiming and judging the case, recording it in its audit chain, signing the result from its
outbox, and the result back through the broker to a listener on the hub inbox. For scale:
vantage6 nodes poll every second, NVIDIA FLARE schedules every 10 s.

    .venv/bin/python -m bench.bench_round_trip [--orders 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.cohort_data import cohort
from workbench.core import messages as m
from workbench.spoke_service.config import SpokeConfig
from workbench.spoke_service.engine import ContainerOutcome, ImageInfo
from workbench.spoke_service.policy import SpokePolicy
from workbench.spoke_service.sandbox import SandboxSpec
from workbench.spoke_service.service import Spoke
from workbench.transport.activemq import ManagedBroker
from workbench.transport.base import Delivery
from workbench.transport.stomp_broker import StompBroker
from workbench.trust.image_signature import sign_image
from workbench.trust.keys import generate_key, key_id, new_key_pair
from workbench.trust.wire import WireSigner

IMAGE_ID = "sha256:" + "ab" * 32


class InstantEngine:
    """A container engine whose containers finish the moment they start."""

    def image(self, reference: str) -> ImageInfo:
        return ImageInfo(IMAGE_ID, {})

    def pull(self, reference: str) -> ImageInfo:
        return self.image(reference)

    def remove_containers(self, labels: dict[str, str]) -> int:
        return 0

    def run(self, spec: SandboxSpec) -> ContainerOutcome:
        (Path(spec.output_dir) / "output.json").write_text('{"malignancy_score": 0.5}')
        return ContainerOutcome(0, False, False, False, b"", 0.0)


HUB_KEY, PUBLISHER_KEY = generate_key(), generate_key()
IMAGE_SIGNATURE = sign_image("instant:1", IMAGE_ID, PUBLISHER_KEY)


def order(experiment_id: str) -> bytes:
    algorithm = m.AlgorithmRef(name="instant", version="1", image="instant:1", digest=IMAGE_ID,
                               signature=IMAGE_SIGNATURE)  # fmt: skip
    manifest = m.Manifest(
        experiment_id=experiment_id, study="bench", algorithms=(algorithm,),
        spokes=("site-01",), created_at="2026-11-28T00:00:00Z",
    )  # fmt: skip
    return m.encode(m.ExperimentOrder(
        spoke_id="site-01", manifest=manifest, manifest_hash=m.manifest_hash(manifest)
    ))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=50)
    ns = parser.parse_args()
    site = cohort(1, 1) / "site-01"
    arrived: dict[str, float] = {}
    cond = threading.Condition()

    def on_inbox(delivery: Delivery) -> None:
        message = m.parse_message(delivery.body)
        delivery.ack()
        if isinstance(message, m.CaseResult):
            with cond:
                arrived[message.experiment_id] = time.perf_counter()
                cond.notify_all()

    with tempfile.TemporaryDirectory(prefix="elic-bench-rt-") as tmp:
        broker = ManagedBroker(Path(tmp) / "broker")
        broker.start()
        try:
            trusted = Path(tmp) / "trusted"
            new_key_pair(trusted / "hub", HUB_KEY)
            new_key_pair(trusted / "publisher", PUBLISHER_KEY)
            signers = frozenset({key_id(HUB_KEY), key_id(PUBLISHER_KEY)})
            config = SpokeConfig(
                spoke_id="site-01", state_dir=Path(tmp) / "spoke", dicom_dir=site / "dicom",
                broker=(broker.stomp_url,), heartbeat_s=3600,
                trusted_keys=(trusted / "hub" / "public.pem", trusted / "publisher" / "public.pem"),
                policy=SpokePolicy(signers=signers),
            )  # fmt: skip
            spoke = Spoke(config, StompBroker.from_url(broker.stomp_url), InstantEngine())
            spoke.start()
            hub = StompBroker.from_url(broker.stomp_url)
            hub_signer = WireSigner(HUB_KEY)
            hub.subscribe(m.HUB_INBOX, on_inbox, prefetch=100)
            trips = []
            for i in range(ns.orders + 1):  # the first round warms up and is not counted
                experiment_id = f"rt-{i:04d}"
                started = time.perf_counter()
                body = order(experiment_id)
                hub.send(m.orders_queue("site-01"), body, hub_signer.headers(body))
                with cond:
                    if not cond.wait_for(lambda e=experiment_id: e in arrived, 30):
                        raise TimeoutError(f"no result for {experiment_id}")
                if i:
                    trips.append(arrived[experiment_id] - started)
            hub.close()
            spoke.stop()
        finally:
            broker.stop()
    result = {
        "orders": ns.orders,
        "round_trip_median_ms": round(statistics.median(trips) * 1000, 1),
        "round_trip_p90_ms": round(statistics.quantiles(trips, n=10)[-1] * 1000, 1),
        "target_median_ms": 20,
    }
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
