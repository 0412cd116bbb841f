"""The hub at scale: one experiment dispatched to 100 spokes, and 100,000 results stored.

(a) Dispatch: a real ActiveMQ and a ``Hub`` with 100 allow-listed spokes; the time to launch
    one experiment, i.e. freeze and store the manifest and send 100 persistent orders, each
    confirmed by a broker receipt.
(b) Scale: 100,000 ``case.result`` messages ingested into the SQLite store through the
    ingestor's own path (parse, check, batch insert, commit); then the hub process's resident
    memory, and the time of the API calls a dashboard makes (experiment status, one page of
    results), through the HTTP API.

    .venv/bin/python -m bench.bench_hub_scale [--spokes 100] [--results 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_ingest import DIGEST, results
from workbench.core import messages as m
from workbench.hub_kernel.client import HubClient
from workbench.hub_kernel.config import default_studies_dir
from workbench.hub_kernel.ingest import Ingestor
from workbench.hub_kernel.service import Hub
from workbench.hub_kernel.store import ResultsStore
from workbench.hub_kernel.studies import StudyCatalog
from workbench.transport.activemq import ManagedBroker
from workbench.transport.base import Delivery
from workbench.transport.stomp_broker import StompBroker


def rss_mib() -> float:
    """Current resident memory of this process (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(call: object, repeat: int = 20) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spokes", type=int, default=100)
    parser.add_argument("--results", type=int, default=100_000)
    ns = parser.parse_args()
    spokes = [f"site-{i:03d}" for i in range(1, ns.spokes + 1)]
    with tempfile.TemporaryDirectory(prefix="elic-bench-scale-") as tmp:
        broker = ManagedBroker(Path(tmp) / "broker")
        broker.start()
        try:
            store = ResultsStore.open(f"sqlite:///{tmp}/hub.sqlite")
            hub = Hub(store, StompBroker.from_url(broker.stomp_url),
                      StudyCatalog(default_studies_dir()), allowed_spokes=spokes)  # fmt: skip
            hub.start()
            hub.registry.register({
                "name": "nodule-volume", "version": "1.0.0", "image": "elic/nodule-volume:1.0.0",
                "digest": DIGEST, "output_schema": {"type": "object"},
            })  # fmt: skip
            started = time.perf_counter()
            status = hub.experiments.launch(
                {"study": "lung-screening", "algorithms": ["nodule-volume"], "spokes": spokes}
            )
            dispatch_s = time.perf_counter() - started
            orders = broker.status().queues
            queued = sum(q.depth for q in orders if q.name.startswith("/queue/elic.spoke."))

            rss_before = rss_mib()
            ingestor = Ingestor(store, batch_size=500)
            bodies = results(status.experiment_id, status.manifest_hash, ns.results)
            bodies = [
                b.replace(
                    b'"spoke_id":"site-01"', f'"spoke_id":"{spokes[i % len(spokes)]}"'.encode()
                )
                for i, b in enumerate(bodies)
            ]
            started = time.perf_counter()
            for i, body in enumerate(bodies):
                ingestor.handle(Delivery(body=body, destination=m.HUB_INBOX, message_id=str(i)))
                if ingestor.pending() >= 500:
                    ingestor.flush()
            ingestor.flush()
            fill_s = time.perf_counter() - started
            del bodies
            rss_filled = rss_mib()
            client = HubClient(hub.url)
            stored = store.result_count(status.experiment_id)
            status_ms = timed(lambda: client.experiment(status.experiment_id))
            page = f"/experiments/{status.experiment_id}/results?after=0&limit=1000"
            page_ms = timed(lambda: client._call("GET", page))  # one dashboard page
            rss_after = rss_mib()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            hub.stop()
            hub.broker.close()
        finally:
            broker.stop()
    result = {
        "spokes": ns.spokes,
        "dispatch_one_experiment_s": round(dispatch_s, 3),
        "orders_confirmed_in_queues": queued,
        "results_stored": stored,
        "ingest_results_per_s": round(stored / fill_s),
        "status_call_median_ms": round(status_ms, 1),
        "results_page_1000_median_ms": round(page_ms, 1),
        "hub_rss_mib_before_results": round(rss_before, 1),
        "hub_rss_mib_with_100k_results": round(rss_filled, 1),
        "hub_rss_mib_after_api_calls": round(rss_after, 1),
        "peak_rss_mib": round(peak, 1),
    }
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
