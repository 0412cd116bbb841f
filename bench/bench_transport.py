"""``StompBroker`` against raw stomp.py on one managed ActiveMQ, in the same run.

(a) Consuming: each consumer drains its own queue filled with the same N persistent
    messages, ``ack:client-individual`` per message, the same prefetch. Rounds alternate
    which consumer goes first; medians are reported. ``ratio_consume`` is ours over raw.
    ``ours_batched`` is ``StompBroker`` as the hub uses it: a ``direct`` subscription whose
    handler acknowledges every ``prefetch // 2`` deliveries together (``settle_all``: the
    ACK frames in one socket write).
(b) Request/reply: a requester sends a persistent request (waiting for its receipt) and
    waits for the reply a responder sends back (ack, then a persistent send with a receipt),
    ~200 round trips each. Ours sets TCP_NODELAY; raw stomp.py does not (its default), and
    ``ours_without_nodelay`` shows the same code with Nagle left on.

Prints one JSON object.

    .venv/bin/python -m bench.bench_transport [--messages 5000] [--prefetch 100] [--trips 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import stomp

from workbench.transport.activemq import ManagedBroker
from workbench.transport.base import Delivery, settle_all
from workbench.transport.stomp_broker import StompBroker

TIMEOUT_S = 120.0


def raw_connection(port: int) -> Any:
    conn = stomp.Connection12([("127.0.0.1", port)], heartbeats=(10_000, 10_000), auto_decode=False)
    conn.connect(wait=True)
    return conn


class RawReceipts:
    """A stomp.py listener that lets a thread wait for one receipt, as ``StompBroker`` does."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seen: set[str] = set()

    def on_receipt(self, frame: Any) -> None:
        with self.cond:
            self.seen.add(frame.headers["receipt-id"])
            self.cond.notify_all()

    def send(self, conn: Any, destination: str, body: bytes, headers: dict[str, str]) -> None:
        receipt = uuid.uuid4().hex
        conn.send(destination, body, headers={**headers, "persistent": "true", "receipt": receipt})
        with self.cond:
            if not self.cond.wait_for(lambda: receipt in self.seen, TIMEOUT_S):
                raise TimeoutError("no receipt")
            self.seen.discard(receipt)


def fill(port: int, queue: str, n: int) -> None:
    conn = raw_connection(port)
    receipts = RawReceipts()
    conn.set_listener("receipts", receipts)
    for i in range(n - 1):
        conn.send(queue, f"message {i:06d}".encode(), headers={"persistent": "true"})
    receipts.send(conn, queue, b"last", {})  # frames are in order: all n are stored now
    conn.disconnect()


def consume_ours(url: str, queue: str, n: int, prefetch: int) -> float:
    broker = StompBroker.from_url(url)
    done = threading.Event()
    count = 0

    def handler(delivery: Delivery) -> None:
        nonlocal count
        delivery.ack()
        count += 1
        if count == n:
            done.set()

    started = time.perf_counter()
    broker.subscribe(queue, handler, prefetch=prefetch)
    if not done.wait(TIMEOUT_S):
        raise TimeoutError(f"ours received {count} of {n}")
    elapsed = time.perf_counter() - started
    broker.close()
    return elapsed


def consume_ours_batched(url: str, queue: str, n: int, prefetch: int) -> float:
    broker = StompBroker.from_url(url)
    done = threading.Event()
    waiting: list[tuple[Delivery, bool]] = []
    count = 0
    every = max(1, prefetch // 2)

    def handler(delivery: Delivery) -> None:
        nonlocal count
        waiting.append((delivery, True))
        count += 1
        if len(waiting) >= every or count == n:
            settle_all(waiting)
            waiting.clear()
        if count == n:
            done.set()

    started = time.perf_counter()
    broker.subscribe(queue, handler, prefetch=prefetch, direct=True)
    if not done.wait(TIMEOUT_S):
        raise TimeoutError(f"ours (batched) received {count} of {n}")
    elapsed = time.perf_counter() - started
    broker.close()
    return elapsed


def consume_raw(port: int, queue: str, n: int, prefetch: int) -> float:
    conn = raw_connection(port)
    done = threading.Event()
    state = {"count": 0}

    class Listener:
        def on_message(self, frame: Any) -> None:
            conn.ack(id=frame.headers["ack"])
            state["count"] += 1
            if state["count"] == n:
                done.set()

    conn.set_listener("consumer", Listener())
    started = time.perf_counter()
    conn.subscribe(
        queue, id="1", ack="client-individual", headers={"activemq.prefetchSize": str(prefetch)}
    )
    if not done.wait(TIMEOUT_S):
        raise TimeoutError(f"raw received {state['count']} of {n}")
    elapsed = time.perf_counter() - started
    conn.disconnect()
    return elapsed


def round_trips_ours(url: str, trips: int, nodelay: bool) -> list[float]:
    requests, replies = (
        f"/queue/bench.req.{uuid.uuid4().hex}",
        f"/queue/bench.rep.{uuid.uuid4().hex}",
    )
    responder = StompBroker.from_url(url, tcp_nodelay=nodelay)
    requester = StompBroker.from_url(url, tcp_nodelay=nodelay)
    got = threading.Event()
    answered = threading.Semaphore(0)

    def respond(delivery: Delivery) -> None:
        delivery.ack()
        responder.send(delivery.headers["reply-to"], delivery.body)
        answered.release()

    def on_reply(delivery: Delivery) -> None:
        delivery.ack()
        got.set()

    responder.subscribe(requests, respond, prefetch=1)
    requester.subscribe(replies, on_reply, prefetch=1)
    times = []
    for i in range(trips):
        got.clear()
        started = time.perf_counter()
        requester.send(requests, f"ping {i}".encode(), {"reply-to": replies})
        if not got.wait(TIMEOUT_S):
            raise TimeoutError("no reply")
        times.append(time.perf_counter() - started)
        answered.acquire(timeout=TIMEOUT_S)  # the reply's receipt reached the responder
    responder.close()
    requester.close()
    return times


def round_trips_raw(port: int, trips: int) -> list[float]:
    requests, replies = (
        f"/queue/bench.req.{uuid.uuid4().hex}",
        f"/queue/bench.rep.{uuid.uuid4().hex}",
    )
    responder, requester = raw_connection(port), raw_connection(port)
    responder_receipts, requester_receipts = RawReceipts(), RawReceipts()
    got = threading.Event()
    # Handlers run on stomp.py's receiver thread, which also reads the receipts: the
    # responder must reply from a thread of its own, as StompBroker's dispatcher does.
    pending: list[Any] = []
    wake = threading.Condition()

    class Responder:
        def on_message(self, frame: Any) -> None:
            with wake:
                pending.append(frame)
                wake.notify()

    class Requester:
        def on_message(self, frame: Any) -> None:
            requester.ack(id=frame.headers["ack"])
            got.set()

    def respond_loop() -> None:
        while True:
            with wake:
                wake.wait_for(lambda: pending)
                frame = pending.pop(0)
            if frame is None:
                return
            responder.ack(id=frame.headers["ack"])
            responder_receipts.send(responder, frame.headers["reply-to"], frame.body, {})

    responder.set_listener("receipts", responder_receipts)
    responder.set_listener("responder", Responder())
    requester.set_listener("receipts", requester_receipts)
    requester.set_listener("requester", Requester())
    worker = threading.Thread(target=respond_loop, daemon=True)
    worker.start()
    prefetch = {"activemq.prefetchSize": "1"}
    responder.subscribe(requests, id="1", ack="client-individual", headers=prefetch)
    requester.subscribe(replies, id="1", ack="client-individual", headers=prefetch)
    times = []
    for i in range(trips):
        got.clear()
        started = time.perf_counter()
        requester_receipts.send(requester, requests, f"ping {i}".encode(), {"reply-to": replies})
        if not got.wait(TIMEOUT_S):
            raise TimeoutError("no reply")
        times.append(time.perf_counter() - started)
    with wake:
        pending.append(None)
        wake.notify()
    worker.join(5)
    responder.disconnect()
    requester.disconnect()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--trips", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp:
        broker = ManagedBroker.from_env(Path(tmp))
        status = broker.start()
        try:
            url, port = broker.stomp_url, int(broker.stomp_url.rsplit(":", 1)[1])
            ours, raw, batched = [], [], []
            # The broker's JIT takes some thousand messages to settle: one untimed drain each.
            warm = [f"/queue/bench.warm.{uuid.uuid4().hex}" for _ in range(2)]
            for queue in warm:
                fill(port, queue, ns.messages)
            consume_ours(url, warm[0], ns.messages, ns.prefetch)
            consume_raw(port, warm[1], ns.messages, ns.prefetch)
            for r in range(ns.rounds):
                runs = [("ours", ours), ("raw", raw), ("batched", batched)]
                for name, results in runs if r % 2 == 0 else runs[::-1]:
                    queue = f"/queue/bench.drain.{name}.{uuid.uuid4().hex}"
                    fill(port, queue, ns.messages)
                    if name == "ours":
                        results.append(consume_ours(url, queue, ns.messages, ns.prefetch))
                    elif name == "batched":
                        results.append(consume_ours_batched(url, queue, ns.messages, ns.prefetch))
                    else:
                        results.append(consume_raw(port, queue, ns.messages, ns.prefetch))
            round_trips_ours(url, 20, True)  # warm-up
            rtt_ours = round_trips_ours(url, ns.trips, True)
            rtt_raw = round_trips_raw(port, ns.trips)
            rtt_ours_nagle = round_trips_ours(url, ns.trips, False)
        finally:
            broker.stop()
    ours_rate = ns.messages / statistics.median(ours)
    raw_rate = ns.messages / statistics.median(raw)
    batched_rate = ns.messages / statistics.median(batched)
    ms = 1000.0
    result = {
        "activemq": status.version,
        "messages": ns.messages,
        "prefetch": ns.prefetch,
        "ours_msgs_per_s": round(ours_rate),
        "raw_stomp_py_msgs_per_s": round(raw_rate),
        "ratio_consume": round(ours_rate / raw_rate, 2),
        "ours_batched_msgs_per_s": round(batched_rate),
        "ratio_consume_batched": round(batched_rate / raw_rate, 2),
        "round_trips": ns.trips,
        "rtt_ours_nodelay_median_ms": round(statistics.median(rtt_ours) * ms, 3),
        "rtt_raw_stomp_py_median_ms": round(statistics.median(rtt_raw) * ms, 3),
        "rtt_ours_without_nodelay_median_ms": round(statistics.median(rtt_ours_nagle) * ms, 3),
        "ratio_rtt_raw_over_ours": round(
            statistics.median(rtt_raw) / statistics.median(rtt_ours), 1
        ),
    }
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
