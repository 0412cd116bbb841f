"""Recovery: broker restart to the first result ingested again, and the drain of a backlog.

One local federation (the drill's: managed ActiveMQ, registry, hub and three spoke processes
running real containers). Two measurements, printed as one JSON object:

- ``broker_restart``: a study runs; once results flow, ActiveMQ is killed (SIGKILL) and,
  once a spoke has finished a case meanwhile (its result waits in the spoke's outbox),
  started again on the same port and data. Measured: how long the broker takes to answer
  again, and from then to the first result committed at the hub (the spokes' and the hub's
  reconnection with backoff, the outbox's retry, the hub's batch). Medians of ``--rounds``.
- ``backlog_drain``: with the hub down, ``--messages`` signed ``case.result`` messages (a
  spoke's key, a launched experiment, distinct participants) are queued in the hub's inbox,
  as a spoke returning from a long outage would send them. A raw stomp.py consumer
  (client-individual, an ack per message from a second thread as the hub's, the hub's
  prefetch) drains them: no verification, no parsing, no database. The same
  messages are queued again and the hub process is started: it verifies each signature,
  parses, checks, writes in batches, commits, then acknowledges. Drain rates run from the
  first message received to the last (for the hub: to the commit that holds the last,
  polled every 10 ms); ``ratio`` is hub rate over raw rate (target 0.7). The hub's start-up
  (a Python process, its store, its subscription) is reported apart, as
  ``hub_start_to_first_result_s``.

    .venv/bin/python -m bench.bench_recovery [--messages 5000] [--rounds 3] [--warmup 2]
        [--only restart|backlog] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import queue
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import stomp
import stomp.transport

from workbench.core import messages as m
from workbench.drill import Drill
from workbench.drill_report import read_db
from workbench.hub_kernel.config import HubConfig
from workbench.transport import stomp_connection
from workbench.transport.stomp_connection import ClientTls, Listener, parse_url
from workbench.trust.keys import PRIVATE_FILE, load_private_key
from workbench.trust.wire import WireSigner

PREFETCH = HubConfig().prefetch  # the hub's own default; the raw consumer gets the same
MARK = b'"participant_id":"bench-'
TIMEOUT_S = 300.0
Frame = tuple[bytes, dict[str, str]]


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# broker restart ------------------------------------------------------------------------------


def broker_restart_round(drill: Drill) -> dict[str, float]:
    """One kill and restart mid-study; seconds to answer again and to the next result."""
    eid = drill.launch()
    fed = drill.federation
    _until(lambda: drill.ingested(eid) >= 1, "the first result")
    done = drill.spoke_cases(eid).get("done", 0)
    killed = time.monotonic()
    fed.broker.kill()
    _until(lambda: drill.spoke_cases(eid).get("done", 0) > done, "a case done meanwhile")
    # The hub commits what it had received before the kill meanwhile: count from here.
    before = drill.ingested(eid)
    started = time.monotonic()
    fed.broker.start()
    answering = time.monotonic()
    _until(lambda: drill.ingested(eid) > before, "a result after the restart", poll=0.01)
    first = time.monotonic()
    if not drill.settle(eid):
        raise RuntimeError(f"{eid} did not settle after the broker restart")
    return {
        "outage_s": round(answering - killed, 3),
        "broker_start_s": round(answering - started, 3),
        "restart_to_first_result_s": round(first - answering, 3),
    }


# backlog drain -------------------------------------------------------------------------------


def backlog(drill: Drill, experiment_id: str, n: int, start: int = 0) -> list[Frame]:
    """``n`` results of the first spoke for ``experiment_id``, signed with its key, for the
    participants ``bench-<start>`` onwards (asks the hub for the manifest hash and digest)."""
    fed = drill.federation
    spoke_id = drill.spoke_ids[0]
    manifest_hash = drill.client.experiment(experiment_id)["manifest_hash"]
    algorithm = next(a for a in drill.client.algorithms() if a["name"] == "naive-baseline")
    signer = WireSigner(load_private_key(fed.keys / "spokes" / spoke_id / PRIVATE_FILE))
    output = {"malignancy_score": 0.5}
    digest = hashlib.sha256(json.dumps(output).encode()).hexdigest()
    frames = []
    for i in range(start, start + n):
        message = m.CaseResult(
            experiment_id=experiment_id, spoke_id=spoke_id, participant_id=f"bench-{i:08d}",
            algorithm="naive-baseline", manifest_hash=manifest_hash,
            image_digest=algorithm["digest"], output=output, output_sha256=digest,
        )  # fmt: skip
        frames.append(signer.sign(message.model_dump(mode="json")))
    return frames


class _Client(Listener):
    """A raw stomp.py connection's listener: receipts, and the backlog's messages counted.

    ACKs go out from a thread of their own, as the hub's do: stomp.py reads and writes a TLS
    connection on its receiver thread, and an ACK sent from inside ``on_message`` there
    stalls the consumer (measured: 1,262 of 3,000 messages, then nothing).
    """

    def __init__(self, n: int = 0) -> None:
        super().__init__(
            1, tcp_nodelay=True, inbox=lambda _: None, receipt=self._receipt, lost=lambda _: None
        )
        self.receipts: set[str] = set()
        self.cond = threading.Condition()
        self.acks: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.n, self.count, self.first, self.last = n, 0, 0.0, 0.0
        self.done = threading.Event()

    def _receipt(self, receipt: str, outcome: str, message: str) -> None:
        with self.cond:
            self.receipts.add(receipt)
            self.cond.notify_all()

    def on_message(self, frame: Any) -> None:
        self.acks.put(frame.headers["ack"])
        if MARK in frame.body:
            now = time.perf_counter()
            self.first = self.first or now
            self.count += 1
            if self.count == self.n:
                self.last = now
                self.done.set()

    def ack_loop(self) -> None:
        while (ack_id := self.acks.get()) is not None:
            self.conn.ack(id=ack_id)


class _StompPyTlsTransport(stomp_connection._TlsTransport):
    """Our TLS transport (it notices a closed TLS connection, so no receiver thread spins
    after the raw consumer disconnects), but parsing frames with stomp.py's own parser:
    the baseline is raw stomp.py, not ``workbench.transport.stomp_frames``."""

    _BaseTransport__read_frames = stomp.transport.BaseTransport._BaseTransport__read_frames


def _connect(url: str, listener: _Client, tls: ClientTls | None) -> Any:
    """A connection for filling the inbox and for the raw consumer (stomp.py's frame parser)."""
    addresses = parse_url(url)
    if tls is None:
        conn = stomp.Connection12(addresses, heartbeats=(0, 0), auto_decode=False)
    else:
        conn = stomp_connection._Connection12(_StompPyTlsTransport, addresses, 0)
        conn.set_ssl(for_hosts=addresses, cert_file=str(tls.certificate),
                     key_file=str(tls.key), ca_certs=str(tls.ca_certificate))  # fmt: skip
    listener.conn = conn
    conn.set_listener("bench", listener)
    conn.connect(wait=True)
    return conn


def fill(url: str, tls: ClientTls | None, frames: list[Frame]) -> None:
    """Queue ``frames`` on the hub's inbox; returns once the broker stored the last."""
    listener = _Client()
    conn = _connect(url, listener, tls)
    for body, headers in frames[:-1]:
        conn.send(m.HUB_INBOX, body, headers={**headers, "persistent": "true"})
    body, headers = frames[-1]
    conn.send(m.HUB_INBOX, body, headers={**headers, "persistent": "true", "receipt": "last"})
    with listener.cond:
        if not listener.cond.wait_for(lambda: "last" in listener.receipts, TIMEOUT_S):
            raise TimeoutError("no receipt for the last message of the backlog")
    conn.disconnect()


def drain_raw(url: str, tls: ClientTls | None, n: int) -> float:
    """Seconds a raw stomp.py consumer takes from the first backlog message to the last."""
    listener = _Client(n)
    conn = _connect(url, listener, tls)
    acker = threading.Thread(target=listener.ack_loop, daemon=True)
    acker.start()
    conn.subscribe(m.HUB_INBOX, id="raw", ack="client-individual",
                   headers={"activemq.prefetchSize": str(PREFETCH)})  # fmt: skip
    if not listener.done.wait(TIMEOUT_S):
        raise TimeoutError(f"the raw consumer received {listener.count} of {n}")
    listener.acks.put(None)
    acker.join()
    conn.disconnect()
    return listener.last - listener.first


def drain_hub(drill: Drill, experiment_id: str, n: int, start: int = 0) -> tuple[float, float]:
    """Start the hub on the backlog: (seconds from the first receipt to the commit of the
    last result, seconds from the process's start to that first receipt)."""
    spawned = time.time()
    drill.federation.start_hub()

    def bench_rows(what: str) -> Any:
        with read_db(drill.hub_db) as db:
            return db.execute(
                f"SELECT {what} FROM results WHERE experiment_id = ? AND spoke_id = ?"
                " AND participant_id >= ? AND participant_id < ?",
                (experiment_id, drill.spoke_ids[0], f"bench-{start:08d}", f"bench-{start + n:08d}"),
            ).fetchone()[0]

    deadline = time.monotonic() + TIMEOUT_S
    while (count := int(bench_rows("count(*)"))) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the hub ingested {count} of {n}")
        time.sleep(0.01)
    last = time.time()
    # received_at: when the hub's delivery thread took the message (naive UTC).
    first = datetime.fromisoformat(bench_rows("min(received_at)")).replace(tzinfo=UTC)
    return last - first.timestamp(), first.timestamp() - spawned


def backlog_drain(drill: Drill, n: int, rounds: int, warmup: int = 2) -> dict[str, Any]:
    """Raw stomp.py and the hub draining the same backlog, ``rounds`` times, alternating
    which goes first; each round's backlog holds new participants, so the hub's writes are
    inserts, not replays. ``warmup`` untimed rounds of each come first: ActiveMQ's JIT
    compiler takes up to a core for the first tens of thousands of messages after a
    (re)start. Medians (see the module docstring)."""
    fed = drill.federation
    eid = drill.launch()
    if not drill.settle(eid):
        raise RuntimeError(f"{eid} did not settle")
    url = fed.broker.stomp_url
    producer, hub = fed.client_tls(drill.spoke_ids[0]), fed.client_tls("hub")
    raw_s, hub_s, start_s = [], [], []
    backlogs = [backlog(drill, eid, n, start=r * n) for r in range(warmup + rounds)]
    for round_no, frames in enumerate(backlogs):
        fed.stop_process("hub")
        timed = round_no >= warmup
        for which in ("raw", "hub") if round_no % 2 == 0 else ("hub", "raw"):
            fill(url, producer, frames)
            if which == "raw":
                drained = drain_raw(url, hub, n)
                raw_s += [drained] if timed else []
            else:
                drained, started = drain_hub(drill, eid, n, start=round_no * n)
                hub_s += [drained] if timed else []
                start_s += [started] if timed else []
                fed.stop_process("hub")
    fed.start_hub()
    raw_rate = (n - 1) / statistics.median(raw_s)
    hub_rate = (n - 1) / statistics.median(hub_s)
    return {
        "messages": n,
        "rounds": rounds,
        "bytes_per_message": len(backlogs[0][0][0]),
        "raw_stomp_msgs_per_s": round(raw_rate),
        "hub_drain_msgs_per_s": round(hub_rate),
        "ratio": round(hub_rate / raw_rate, 2),
        "target": 0.7,
        "hub_start_to_first_result_s": round(statistics.median(start_s), 2),
    }


def _until(condition: Any, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {TIMEOUT_S:g} s")
        time.sleep(poll)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed backlog rounds first")
    parser.add_argument(
        "--only", choices=("restart", "backlog"), default=None, help="one measurement only"
    )
    parser.add_argument("--out", type=Path, default=None, help="keep the federation here")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="elic-bench-recovery-") as tmp:
        out = ns.out or Path(tmp)
        with Drill.open(out, participants=6, say=_say) as drill:
            result: dict[str, Any] = {}
            if ns.only in (None, "restart"):
                rounds = [broker_restart_round(drill) for _ in range(ns.rounds)]
                result["broker_restart"] = {
                    "rounds": len(rounds),
                    **{k: statistics.median(r[k] for r in rounds) for k in rounds[0]},
                    "each": rounds,
                }
            if ns.only in (None, "backlog"):
                result["backlog_drain"] = backlog_drain(drill, ns.messages, ns.rounds, ns.warmup)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
