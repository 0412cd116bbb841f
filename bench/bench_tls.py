"""What mutual TLS costs: connecting, sending and consuming, plain STOMP against ``stomp+ssl``.

Two managed ActiveMQ brokers run side by side: one plain (``stomp://``), one locked down
(``stomp+ssl://`` with client certificates, the JAAS certificate login and the authorization
map), with a throwaway consortium PKI (ECDSA P-256). Measured with ``StompBroker``, the two
modes alternating:

(a) connecting: ``StompBroker`` construction until CONNECTED (TCP, the TLS handshake with
    both certificates, the broker's certificate login, STOMP CONNECT), median of ``--connects``;
    closing is timed apart;
(b) sending: persistent messages, each waiting for its receipt, as the Hub sends orders;
(c) consuming: the same messages drained with ``ack:client-individual``, prefetch 100.

Both the TLS and the plain runs use the Hub's queue ``elic.hub.inbox`` (on the locked-down
broker the Hub may write and read it). Prints one JSON object.

    .venv/bin/python -m bench.bench_tls [--connects 20] [--messages 2000] [--rounds 3]
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
from typing import Any

from workbench.core.messages import HUB_INBOX
from workbench.transport.activemq import BrokerUser, ClientTls, ManagedBroker, TlsSettings
from workbench.transport.base import Delivery
from workbench.transport.stomp_broker import StompBroker
from workbench.trust import pki

TIMEOUT_S = 120.0


def locked_down(root: Path) -> tuple[TlsSettings, ClientTls]:
    """A consortium PKI in ``root`` and the settings of a broker that lets the hub in."""
    pki.init_ca(root / "ca")
    broker = pki.issue(root / "ca", "broker", "broker", root / "broker-id")
    hub = pki.issue(root / "ca", "hub", "hub", root / "hub-id")
    client = ClientTls(hub.certificate, hub.key, hub.ca_certificate)
    settings = TlsSettings(
        keystore=broker.keystore, truststore=broker.truststore,
        password_file=broker.password_file, hub=BrokerUser("hub", pki.java_dn(hub.certificate)),
        spokes=[], client=client,
    )  # fmt: skip
    return settings, client


def connect_times(url: str, tls: ClientTls | None, n: int) -> tuple[list[float], list[float]]:
    """Seconds to connect, and to close, ``n`` times."""
    opened, closed = [], []
    for _ in range(n):
        started = time.perf_counter()
        client = StompBroker.from_url(url, tls=tls)
        opened.append(time.perf_counter() - started)
        started = time.perf_counter()
        client.close()
        closed.append(time.perf_counter() - started)
    return opened, closed


def send_and_consume(url: str, tls: ClientTls | None, n: int) -> tuple[float, float]:
    """Messages per second: sent one by one with receipts, then consumed and acked."""
    body = b"x" * 512  # about a case.result
    sender = StompBroker.from_url(url, tls=tls)
    try:
        started = time.perf_counter()
        for _ in range(n):
            sender.send(HUB_INBOX, body)
        sent = n / (time.perf_counter() - started)
    finally:
        sender.close()
    done = threading.Event()
    count = [0]

    def handler(delivery: Delivery) -> None:
        delivery.ack()
        count[0] += 1
        if count[0] >= n:
            done.set()

    consumer = StompBroker.from_url(url, tls=tls)
    try:
        started = time.perf_counter()
        consumer.subscribe(HUB_INBOX, handler, prefetch=100)
        if not done.wait(TIMEOUT_S):
            raise RuntimeError(f"consumed {count[0]} of {n} messages in {TIMEOUT_S:g} s")
        consumed = n / (time.perf_counter() - started)
    finally:
        consumer.close()
    return sent, consumed


def ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connects", type=int, default=20)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        root = Path(tmp)
        settings, client = locked_down(root / "pki")
        brokers = {
            "plain": (ManagedBroker.from_env(root / "plain"), None),
            "tls": (ManagedBroker.from_env(root / "tls", tls=settings), client),
        }
        started: list[ManagedBroker] = []
        try:
            for broker, _ in brokers.values():
                broker.start()
                started.append(broker)
            results: dict[str, Any] = {}
            for mode, (broker, tls) in brokers.items():
                connect_times(broker.stomp_url, tls, 3)  # warm-up: JIT, session caches
                send_and_consume(broker.stomp_url, tls, min(args.messages, 500))
                results[mode] = {"open": [], "close": [], "send": [], "consume": []}
            for _ in range(args.rounds):
                for mode, (broker, tls) in brokers.items():
                    opened, closed = connect_times(broker.stomp_url, tls, args.connects)
                    sent, consumed = send_and_consume(broker.stomp_url, tls, args.messages)
                    results[mode]["open"] += opened
                    results[mode]["close"] += closed
                    results[mode]["send"].append(sent)
                    results[mode]["consume"].append(consumed)
        finally:
            for broker in started:
                broker.stop()
    summary: dict[str, Any] = {
        "benchmark": "bench_tls",
        "connects_per_round": args.connects,
        "messages": args.messages,
        "rounds": args.rounds,
        "key": "ECDSA P-256",
    }
    for mode, measured in results.items():
        summary[mode] = {
            "connect_ms_median": ms(measured["open"]),
            "close_ms_median": ms(measured["close"]),
            "send_with_receipt_msg_s": round(statistics.median(measured["send"])),
            "consume_ack_msg_s": round(statistics.median(measured["consume"])),
        }
    plain, tls_ = summary["plain"], summary["tls"]
    summary["tls_connect_extra_ms"] = round(
        tls_["connect_ms_median"] - plain["connect_ms_median"], 2
    )
    summary["ratio_send_tls_over_plain"] = round(
        tls_["send_with_receipt_msg_s"] / plain["send_with_receipt_msg_s"], 2
    )
    summary["ratio_consume_tls_over_plain"] = round(
        tls_["consume_ack_msg_s"] / plain["consume_ack_msg_s"], 2
    )
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
