"""Hub ingestion of signed ``case.result`` messages against a raw stomp.py consumer, same run.

One managed ActiveMQ; N identical-in-shape result messages (distinct participants), each
signed by the spoke's Ed25519 key as a spoke sends them (canonical JSON body, signature in
the ``elic-signature`` header), are queued twice: once on a scratch queue that a raw
stomp.py consumer drains with ``ack:client-individual`` and the hub's prefetch,
acknowledging each message as it arrives (no verification, no parsing, no database); once
on the hub inbox, which a ``Hub`` configured as in production (its signing key, the
spoke's public key, an audit log) drains into its SQLite results store: verify the
signature, parse and validate, check spoke and experiment, detect replays, insert
idempotently, commit, append the batch to the audit log, then acknowledge. ``ratio`` is
raw time over hub time: 1.0 means ingestion costs nothing beyond the transport. Untimed
rounds of each warm the broker up (``--warmup``: its JIT compiler otherwise takes up to a
core during the first tens of thousands of messages, more in some drains than others);
then rounds alternate the order; medians are reported.
``--unsigned`` runs the hub with ``insecure_unsigned`` on unsigned messages instead.

Each timed drain also reports the CPU it took per message: this process's (the raw
consumer's, or the hub's: all threads, and its signature checker process) and the
broker's (its JVM, from ``/proc``; and of that, its JIT compiler threads'). On a
machine with few cores they explain the ratio: if the raw drain already keeps every core
busy (broker plus raw consumer), the hub can only come close to it by spending little more
CPU per message than the raw consumer does, whatever runs in parallel.

    .venv/bin/python -m bench.bench_ingest [--messages 5000] [--rounds 3] [--warmup 4] [--unsigned]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.bench_transport import consume_raw, raw_connection
from workbench.core import messages as m
from workbench.hub_kernel.config import HubConfig, default_studies_dir
from workbench.hub_kernel.service import Hub, freeze_startup_heap
from workbench.hub_kernel.store import ResultsStore
from workbench.hub_kernel.studies import StudyCatalog
from workbench.transport.activemq import ManagedBroker
from workbench.transport.stomp_broker import StompBroker
from workbench.trust.audit import AuditLog
from workbench.trust.checks import WorkerChecks
from workbench.trust.keys import TrustStore, generate_key
from workbench.trust.wire import WireSigner

DIGEST = "sha256:" + "e" * 64
PREFETCH = HubConfig().prefetch  # the hub's own default; the raw consumer gets the same
Frame = tuple[bytes, dict[str, str]]
# seconds; CPU seconds of this process (and of the hub's signature checker), of the broker,
# of the broker's JIT compiler; of the signature checker alone
Drain = tuple[float, float, float, float, float]


class Meter:
    """Wall time and CPU time (this process; the broker's process, and of that its JIT
    compiler threads) of a stretch of work."""

    def __init__(self, broker_pid: int | None) -> None:
        self.broker_pid = broker_pid

    def read(self) -> tuple[float, float, float, float]:
        return (
            time.perf_counter(),
            time.process_time(),
            _cpu_seconds(self.broker_pid),
            _jit_cpu_seconds(self.broker_pid),
        )

    def since(self, start: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        now = self.read()
        return now[0] - start[0], now[1] - start[1], now[2] - start[2], now[3] - start[3]


def _cpu_seconds(pid: int | None, task: str = "") -> float:
    """User plus system CPU seconds of process ``pid`` (all its threads; or one thread,
    ``task/TID``), 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/{task}stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _jit_cpu_seconds(pid: int | None) -> float:
    """CPU seconds of the JVM's JIT compiler threads (``C1/C2 CompilerThread``) in ``pid``."""
    if pid is None:
        return 0.0
    total = 0.0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text()
        except OSError:
            continue
        if name.startswith(("C1 CompilerThre", "C2 CompilerThre")):
            total += _cpu_seconds(pid, f"task/{tid}/")
    return total


def results(
    experiment_id: str,
    manifest_hash: str,
    n: int,
    start: int = 0,
    key: Ed25519PrivateKey | None = None,
) -> list[Frame]:
    """``n`` results of site-01 as it sends them: signed with ``key``, else unsigned."""
    timepoint = {"index": 0, "nodule_volume_mm3": 812.5, "diameter_mm": 11.6}
    output = {"nodule_found": True, "nodule_volume_mm3": 812.5, "malignancy_score": 0.61,
              "timepoints": [timepoint]}  # fmt: skip
    body = json.dumps(output).encode()
    signer = WireSigner(key) if key is not None else None
    frames: list[Frame] = []
    for i in range(start, start + n):
        message = m.CaseResult(
            experiment_id=experiment_id,
            spoke_id="site-01",
            participant_id=f"p-{i:016x}",
            algorithm="nodule-volume",
            manifest_hash=manifest_hash,
            image_digest=DIGEST,
            output=output,
            output_sha256=hashlib.sha256(body).hexdigest(),
            reference={"malignant": i % 2, "nodule_volume_mm3_t0": 800.0},
            audit_head=f"{i + 1}:" + "0" * 64,
        )
        if signer is None:
            frames.append((m.encode(message), {}))
        else:
            frames.append(signer.sign(message.model_dump(mode="json")))
    return frames


def fill(port: int, queue: str, frames: list[Frame]) -> None:
    conn = raw_connection(port)
    for body, headers in frames[:-1]:
        conn.send(queue, body, headers={**headers, "persistent": "true"})
    receipt = uuid.uuid4().hex
    done: list[str] = []

    class Receipts:
        def on_receipt(self, frame: object) -> None:
            done.append(frame.headers["receipt-id"])  # type: ignore[attr-defined]

    conn.set_listener("r", Receipts())
    body, headers = frames[-1]
    conn.send(queue, body, headers={**headers, "persistent": "true", "receipt": receipt})
    deadline = time.monotonic() + 60
    while receipt not in done:
        if time.monotonic() > deadline:
            raise TimeoutError("no receipt for the last message")
        time.sleep(0.005)
    conn.disconnect()


def hub_round(
    url: str,
    port: int,
    workdir: Path,
    n: int,
    spoke_key: Ed25519PrivateKey | None,
    meter: Meter | None = None,
) -> Drain:
    """Seconds (and CPU seconds, see ``Meter``) for a hub to ingest ``n`` results (signed by
    ``spoke_key``, if given)."""
    name = f"hub-{uuid.uuid4().hex}"
    store = ResultsStore.open(f"sqlite:///{workdir / f'{name}.sqlite'}")
    store.allow_spokes(["site-01"])
    broker = StompBroker.from_url(url)
    trust = None
    if spoke_key is not None:
        trust = TrustStore()
        trust.add(spoke_key.public_key(), name="site-01")
    audit = AuditLog(workdir / f"{name}.audit.jsonl")
    hub = Hub(store, broker, StudyCatalog(default_studies_dir()), allowed_spokes=["site-01"],
              prefetch=PREFETCH, signer=WireSigner(generate_key()), trust=trust, audit=audit,
              insecure_unsigned=spoke_key is None, owns_audit=True)  # fmt: skip
    hub.registry.register({
        "name": "nodule-volume", "version": "1.0.0", "image": "elic/nodule-volume:1.0.0",
        "digest": DIGEST, "output_schema": {"type": "object"},
    })  # fmt: skip
    status = hub.experiments.launch(
        {"study": "lung-screening", "algorithms": ["nodule-volume"], "spokes": ["site-01"]}
    )
    experiment_id = status.experiment_id
    fill(port, m.HUB_INBOX, results(experiment_id, status.manifest_hash, n, key=spoke_key))
    freeze_startup_heap()  # as `workbench hub serve` does before it starts the hub
    meter = meter or Meter(None)
    started = meter.read()
    hub.start()
    deadline = time.monotonic() + 300
    # Watch the ingestor's own counter (committed and acknowledged), not the database: a
    # count query every few milliseconds would compete with the ingestion it measures.
    while hub.ingestor.stats.accepted < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"hub ingested {hub.ingestor.stats.accepted} of {n}")
        time.sleep(0.002)
    wall, cpu, broker_cpu, jit_cpu = meter.since(started)
    # The signature checker process (if the hub has one) started with the hub: all its CPU
    # counts, its start included.
    worker_cpu = _cpu_seconds(hub.checks.pid) if isinstance(hub.checks, WorkerChecks) else 0.0
    drain = (wall, cpu + worker_cpu, broker_cpu, jit_cpu, worker_cpu)
    assert store.result_count(experiment_id) == n
    if spoke_key is not None:
        assert hub.experiments.status(experiment_id).results_verified == n
    hub.stop()
    broker.close()
    store.close()
    return drain


def raw_round(port: int, queue: str, n: int, meter: Meter) -> Drain:
    """Seconds (from SUBSCRIBE to the last message, as ``consume_raw`` times them) and CPU
    seconds (the call's, connecting included) for a raw stomp.py consumer to drain ``n``."""
    started = meter.read()
    seconds = consume_raw(port, queue, n, PREFETCH)
    _, cpu, broker_cpu, jit_cpu = meter.since(started)
    return seconds, cpu, broker_cpu, jit_cpu, 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--warmup", type=int, default=4, help="untimed drains of each kind first (default 4)"
    )
    parser.add_argument(
        "--unsigned", action="store_true", help="unsigned messages, hub insecure_unsigned"
    )
    ns = parser.parse_args()
    spoke_key = None if ns.unsigned else generate_key()
    with tempfile.TemporaryDirectory(prefix="elic-bench-ingest-") as tmp:
        broker = ManagedBroker(Path(tmp) / "broker")
        status = broker.start()
        port = status.stomp_port
        assert port is not None
        sample = results("exp-x", "0" * 64, ns.messages, key=spoke_key)
        broker_pid = broker.pid()
        if broker_pid is None:
            raise RuntimeError("the broker's process id is unknown: its CPU cannot be read")
        meter = Meter(broker_pid)
        raw_drains: list[Drain] = []
        hub_drains: list[Drain] = []
        try:
            # ActiveMQ's JIT compiler keeps a core busy for tens of thousands of messages
            # after start, more during some drains than others: untimed drains of each
            # kind first, so that the timed ones measure the broker as it runs for days.
            for _ in range(ns.warmup):
                warm = f"/queue/bench.warm.{uuid.uuid4().hex}"
                fill(port, warm, sample)
                consume_raw(port, warm, ns.messages, PREFETCH)
                hub_round(broker.stomp_url, port, Path(tmp), ns.messages, spoke_key)
            for round_no in range(ns.rounds):
                scratch = f"/queue/bench.raw.{uuid.uuid4().hex}"
                fill(port, scratch, sample)
                order = ["raw", "hub"] if round_no % 2 == 0 else ["hub", "raw"]
                for which in order:
                    if which == "raw":
                        raw_drains.append(raw_round(port, scratch, ns.messages, meter))
                    else:
                        hub_drains.append(
                            hub_round(
                                broker.stomp_url, port, Path(tmp), ns.messages, spoke_key, meter
                            )
                        )
        finally:
            broker.stop()
    raw = statistics.median(d[0] for d in raw_drains)
    hub = statistics.median(d[0] for d in hub_drains)

    def us_per_message(drains: list[Drain], which: int) -> int:
        median: float = statistics.median(d[which] for d in drains)
        return round(median / ns.messages * 1e6)

    result = {
        "messages": ns.messages,
        "signed": spoke_key is not None,
        "bytes_per_message": len(sample[0][0]),
        "raw_stomp_msgs_per_s": round(ns.messages / raw),
        "hub_ingest_msgs_per_s": round(ns.messages / hub),
        "ratio": round(raw / hub, 2),
        "target": 0.7,
        "cores": os.cpu_count(),
        "cpu_us_per_message": {
            "raw_consumer": us_per_message(raw_drains, 1),
            "broker_during_raw": us_per_message(raw_drains, 2),
            "hub": us_per_message(hub_drains, 1),  # its signature checker's included
            "hub_signature_checker": us_per_message(hub_drains, 4),
            "broker_during_hub": us_per_message(hub_drains, 2),
        },
        # Of the broker's CPU above, what its JIT compiler threads took: near 0 once warm.
        "broker_jit_cpu_us_per_message": {
            "during_raw": us_per_message(raw_drains, 3),
            "during_hub": us_per_message(hub_drains, 3),
        },
    }
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
