"""The managed ActiveMQ broker and the ``StompBroker`` client against it.

The CLI tests run ``workbench broker ...`` as a separate process, as an operator would, so
the broker has to outlive the command that started it. Every broker a test starts is
stopped by the test. The last tests need no ActiveMQ: a fake STOMP server on loopback that
never sends a receipt, and an address where nothing listens.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from broker_fixtures import Inbox, unique_queue, wait_until
from services import need

from workbench.errors import ConfigError
from workbench.transport.activemq import DEBIAN_HOME, ManagedBroker
from workbench.transport.base import DEAD_LETTER_QUEUE, TransportError
from workbench.transport.stomp_broker import StompBroker, parse_url

REPO = Path(__file__).resolve().parents[2]


def workbench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workbench.cli", *args],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env or dict(os.environ),
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def listening_addresses(pid: int) -> set[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """Every TCP address the process ``pid`` listens on, read from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add((ipaddress.ip_address(raw), int(port, 16)))
    return found


def process_running(pid: int) -> bool:
    """Whether ``pid`` exists and has not exited (a zombie waiting for init has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def is_loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.fixture
def installed() -> Path:
    """ActiveMQ's home (skips, or fails in CI, when it is not installed)."""
    home = Path(os.environ.get("ACTIVEMQ_HOME") or DEBIAN_HOME)
    if not (home / "bin" / "activemq.jar").is_file():
        need(f"ActiveMQ is not installed in {home}")
    return home


@pytest.fixture
def broker_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for a broker the test starts; whatever runs there is stopped afterwards."""
    directory = tmp_path / "broker"
    yield directory
    ManagedBroker(directory).stop(timeout=10)


# -- the CLI ----------------------------------------------------------------------------------


@pytest.mark.broker
def test_cli_starts_a_broker_that_outlives_it_reports_it_and_stops_it(
    installed: Path, broker_dir: Path
) -> None:
    started = workbench("broker", "start", "--dir", str(broker_dir))
    assert started.returncode == 0, started.stderr
    url = next(w for w in started.stdout.split() if w.startswith("stomp://"))
    queue = unique_queue("cli")
    client = StompBroker.from_url(url)
    for body in (b"a", b"b", b"c"):
        client.send(queue, body)
    client.close()

    shown = workbench("broker", "status", "--dir", str(broker_dir), "--json")
    stopped = workbench("broker", "stop", "--dir", str(broker_dir))
    after = workbench("broker", "status", "--dir", str(broker_dir))

    status = json.loads(shown.stdout)
    with zipfile.ZipFile(installed / "lib" / "activemq-broker.jar") as jar:
        manifest = jar.read("META-INF/MANIFEST.MF").decode()
    assert f"Implementation-Version: {status['version']}" in manifest
    assert (shown.returncode, status["running"], status["stomp_url"]) == (0, True, url)
    assert status["config"] == str(broker_dir / "conf" / "activemq.xml")
    assert {"name": queue, "depth": 3} in [
        {k: q[k] for k in ("name", "depth")} for q in status["queues"]
    ]
    assert stopped.returncode == 0
    assert not process_running(status["pid"])
    assert after.returncode == 3
    assert "not running" in after.stdout


@pytest.mark.broker
def test_a_taken_port_is_reported_clearly(installed: Path, broker_dir: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]

        result = workbench("broker", "start", "--dir", str(broker_dir), "--stomp-port", str(port))

    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "in use" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (broker_dir / "activemq.pid").exists()


@pytest.mark.broker
def test_a_broker_that_cannot_start_is_reported_with_the_tail_of_its_log(
    installed: Path, broker_dir: Path
) -> None:
    result = workbench("broker", "start", "--dir", str(broker_dir), "--heap-mb", "1")

    assert result.returncode == 1
    assert "exited during start" in result.stderr
    assert "Initial heap size" in result.stderr  # the JVM's own words, from its log
    assert not (broker_dir / "activemq.pid").exists()


def test_missing_activemq_is_a_clear_error_naming_what_to_install(tmp_path: Path) -> None:
    empty = tmp_path / "no-activemq"
    empty.mkdir()
    env = {**os.environ, "ACTIVEMQ_HOME": str(empty)}

    result = workbench("broker", "start", "--dir", str(tmp_path / "broker"), env=env)

    assert result.returncode == 1
    assert "ActiveMQ is not installed" in result.stderr
    assert "apt-get install activemq" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.broker
def test_starting_twice_in_one_directory_is_refused_and_leaves_the_broker_alone(
    activemq: Any,
) -> None:
    pid = activemq.pid()

    result = workbench("broker", "start", "--dir", str(activemq.directory))

    assert result.returncode == 1
    assert "already runs" in result.stderr and str(pid) in result.stderr
    assert activemq.pid() == pid
    assert activemq.status().version is not None  # still answers a CONNECT


@pytest.mark.broker
def test_the_broker_listens_on_loopback_only_and_on_the_stomp_port_only(activemq: Any) -> None:
    config = ElementTree.parse(activemq.config_path).getroot()
    uris = [c.get("uri", "") for c in config.iter() if c.tag.endswith("transportConnector")]

    listening = listening_addresses(activemq.pid())

    assert uris and all(uri.split("://")[1].startswith("127.0.0.1:") for uri in uris)
    assert listening, "found no listening socket of the broker"
    assert all(is_loopback(ip) for ip, _ in listening), listening
    assert {port for _, port in listening} == {int(activemq.stomp_url.rsplit(":", 1)[1])}


# -- status and the broker's behaviour ----------------------------------------------------------


@pytest.mark.broker
def test_status_reports_each_queues_depth_in_flight_and_consumers(activemq: Any) -> None:
    queue = unique_queue("depth")
    client = StompBroker.from_url(activemq.stomp_url)
    for i in range(4):
        client.send(queue, f"{i}".encode())

    def stats() -> Any:
        return next((q for q in activemq.status().queues if q.name == queue), None)

    try:
        before = stats()
        inbox = Inbox(ack=False)
        client.subscribe(queue, inbox, prefetch=1)
        [first] = inbox.wait_count(1)
        holding = stats()
        first.ack()
        inbox.wait_count(2)
        wait_until(lambda: stats().depth == 3, what="depth 3 after one ack")
        after = stats()
    finally:
        client.close()

    assert (before.depth, before.in_flight, before.consumers) == (4, 0, 0)
    assert (holding.depth, holding.in_flight, holding.consumers) == (4, 1, 1)
    assert (after.depth, after.dequeued) == (3, 1)


@pytest.mark.broker
@pytest.mark.slow
def test_nack_retries_redeliver_a_rejected_message_before_the_dead_letter_queue(
    installed: Path, broker_dir: Path
) -> None:
    broker = ManagedBroker.from_env(broker_dir, nack_retries=1, nack_delay_s=1.1)
    broker.start()
    queue = unique_queue("retry")
    client = StompBroker.from_url(broker.stomp_url)
    seen = Inbox(ack=False)

    def always_reject(delivery: Any) -> None:
        seen(delivery)
        delivery.reject()

    try:
        dead = Inbox(ack=True)
        client.subscribe(DEAD_LETTER_QUEUE, dead)
        client.subscribe(queue, always_reject)
        client.send(queue, b"flaky")

        dead.wait_body(b"flaky")
        assert seen.bodies == [b"flaky", b"flaky"]
        assert [d.redelivered for d in seen.deliveries] == [False, True]
    finally:
        client.close()
        broker.stop()


# -- StompBroker details --------------------------------------------------------------------------


@pytest.mark.broker
def test_tcp_nodelay_is_set_on_the_socket_unless_turned_off(activemq: Any) -> None:
    ours = StompBroker.from_url(activemq.stomp_url)
    plain = StompBroker.from_url(activemq.stomp_url, tcp_nodelay=False)
    try:
        assert (ours.tcp_nodelay, plain.tcp_nodelay) == (True, False)
    finally:
        ours.close()
        plain.close()


@pytest.mark.broker
def test_it_fails_over_to_the_next_address_when_the_first_is_down(activemq: Any) -> None:
    live = parse_url(activemq.stomp_url)[0]
    queue = unique_queue("failover")
    client = StompBroker([("127.0.0.1", free_port()), live], connect_timeout=10)
    inbox = Inbox(ack=True)
    try:
        client.subscribe(queue, inbox)
        client.send(queue, b"via the second address")
        inbox.wait_body(b"via the second address")
    finally:
        client.close()


def test_parse_url_reads_single_listed_and_failover_urls() -> None:
    assert parse_url("stomp://127.0.0.1:61613") == [("127.0.0.1", 61613)]
    assert parse_url("stomp://a:1, stomp://b:2") == [("a", 1), ("b", 2)]
    assert parse_url("failover:(stomp://a:1,stomp://b:2)?randomize=false") == [("a", 1), ("b", 2)]
    assert parse_url(["stomp://a:1", "failover:(stomp://b:2)"]) == [("a", 1), ("b", 2)]
    for bad in ("http://a:1", "stomp://a", "", "stomp://:5"):
        with pytest.raises(ConfigError):
            parse_url(bad)


def test_no_broker_at_the_address_is_a_transport_error_after_the_timeout() -> None:
    started = time.monotonic()

    with pytest.raises(TransportError, match="no broker"):
        StompBroker([("127.0.0.1", free_port())], connect_timeout=1.0)

    assert time.monotonic() - started < 10


class SilentStompServer:
    """Answers CONNECT with CONNECTED, then reads every frame and never sends a RECEIPT."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.frames: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            buf = b""
            while chunk := conn.recv(65536):
                buf += chunk
                while b"\0" in buf:
                    frame, buf = buf.split(b"\0", 1)
                    self.frames.append(frame.lstrip(b"\r\n"))
                    if frame.lstrip(b"\r\n").startswith((b"CONNECT", b"STOMP")):
                        conn.sendall(b"CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\0")

    def close(self) -> None:
        self.sock.close()


def test_a_send_without_a_receipt_raises_transport_error() -> None:
    server = SilentStompServer()
    client = StompBroker([("127.0.0.1", server.port)], heartbeat_ms=0, send_timeout=1.0)
    try:
        with pytest.raises(TransportError, match="no receipt"):
            client.send("/queue/x", b"lost?")
        sent = [f for f in server.frames if f.startswith(b"SEND")]
        assert sent and b"persistent:true" in sent[0] and b"\nreceipt:" in sent[0]
    finally:
        client.close()
        server.close()
