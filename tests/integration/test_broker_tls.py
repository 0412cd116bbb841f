"""The locked-down broker: STOMP over mutual TLS, a certificate allowlist, per-queue rights.

Every test runs against the real ActiveMQ (``tls_activemq``: the hub, spoke-a and spoke-b
allowed) with certificates from a consortium CA made by ``workbench.trust.pki``
(``consortium``). Refusals are asserted by the broker's own words ("not authorized to read",
"No user for client certificate") or by the TLS alert, and each refusal test also shows the
allowed counterpart working, so that a check that let everything through would fail.
The last tests need no broker: URL and option checks of the client.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any
from xml.etree import ElementTree

import pytest
from broker_fixtures import Consortium, Inbox, wait_until

from workbench.core.messages import HUB_INBOX, orders_queue
from workbench.errors import ConfigError
from workbench.transport.activemq import BrokerError, ManagedBroker
from workbench.transport.base import DEAD_LETTER_QUEUE, TransportError
from workbench.transport.factory import connect
from workbench.transport.stomp_broker import StompBroker
from workbench.transport.stomp_connection import parse_url, uses_tls

ORDERS_A, ORDERS_B = orders_queue("spoke-a"), orders_queue("spoke-b")
Client = Callable[..., StompBroker]


@pytest.fixture
def client(tls_activemq: Any, consortium: Consortium) -> Iterator[Client]:
    """``client(name)``: a TLS connection as identity ``name``; all are closed afterwards."""
    opened: list[StompBroker] = []

    def make(name: str, **options: Any) -> StompBroker:
        opened.append(
            StompBroker.from_url(tls_activemq.stomp_url, tls=consortium.client(name), **options)
        )
        return opened[-1]

    yield make
    for connection in opened:
        connection.close()


def unique(text: str) -> bytes:
    return f"{text}-{time.monotonic_ns()}".encode()


# -- what the allowlist lets through ---------------------------------------------------------------


@pytest.mark.broker
def test_the_hub_sends_an_order_to_a_spoke_and_that_spoke_receives_it(client: Client) -> None:
    hub, spoke_a = client("hub"), client("spoke-a")
    inbox = Inbox(ack=True)
    spoke_a.subscribe(ORDERS_A, inbox)
    order = unique("order")

    hub.send(ORDERS_A, order, {"x-natural-key": "e1/spoke-a"})

    [delivery] = inbox.wait_body(order)
    assert delivery.destination == ORDERS_A
    assert delivery.headers["x-natural-key"] == "e1/spoke-a"


@pytest.mark.broker
def test_a_spoke_writes_the_hub_inbox_and_the_hub_reads_it(client: Client) -> None:
    hub, spoke_a = client("hub"), client("spoke-a")
    inbox = Inbox(ack=True)
    hub.subscribe(HUB_INBOX, inbox, prefetch=10)
    result = unique("result")

    spoke_a.send(HUB_INBOX, result)

    inbox.wait_body(result)


@pytest.mark.broker
def test_a_spoke_rejecting_an_order_sends_it_to_the_dead_letters_only_the_hub_reads(
    client: Client,
) -> None:
    hub, spoke_b = client("hub"), client("spoke-b")
    poison = unique("poison")
    spoke_b.subscribe(ORDERS_B, lambda d: d.reject() if d.body == poison else d.ack())
    dead = Inbox(ack=True)
    hub.subscribe(DEAD_LETTER_QUEUE, dead)

    hub.send(ORDERS_B, poison)

    [delivery] = [d for d in dead.wait_body(poison) if d.body == poison]
    assert delivery.headers["original-destination"] == ORDERS_B
    with pytest.raises(TransportError, match="not authorized to read"):
        spoke_b.subscribe(DEAD_LETTER_QUEUE, Inbox())


# -- what the authorization map refuses ------------------------------------------------------------


@pytest.mark.broker
def test_a_spoke_reading_another_spokes_orders_is_refused(client: Client) -> None:
    spoke_a = client("spoke-a")
    spoke_a.subscribe(ORDERS_A, Inbox())  # its own: allowed

    with pytest.raises(
        TransportError, match=r"not authorized to read from: queue://elic\.spoke\.spoke-b"
    ):
        spoke_a.subscribe(ORDERS_B, Inbox())
    with pytest.raises(
        TransportError, match=r"not authorized to read from: queue://elic\.hub\.inbox"
    ):
        spoke_a.subscribe(HUB_INBOX, Inbox())
    assert spoke_a.connected  # a refusal does not cost the connection


@pytest.mark.broker
def test_a_spoke_writing_an_orders_queue_is_refused(client: Client) -> None:
    hub, spoke_a, spoke_b = client("hub"), client("spoke-a"), client("spoke-b")
    stolen = Inbox(ack=True)
    spoke_b.subscribe(ORDERS_B, stolen)
    forged = unique("forged")

    with pytest.raises(
        TransportError, match=r"not authorized to write to: queue://elic\.spoke\.spoke-b"
    ):
        spoke_a.send(ORDERS_B, forged)
    with pytest.raises(
        TransportError, match=r"not authorized to write to: queue://elic\.spoke\.spoke-a"
    ):
        spoke_a.send(ORDERS_A, forged)
    with pytest.raises(TransportError, match="not authorized to write"):
        spoke_a.send("/queue/elic.anything.else", forged)

    genuine = unique("genuine")
    hub.send(ORDERS_B, genuine)
    assert forged not in [d.body for d in stolen.wait_body(genuine)]


# -- who cannot connect at all ---------------------------------------------------------------------


@pytest.mark.broker
def test_a_spoke_with_a_valid_certificate_but_not_on_the_allowlist_cannot_connect(
    client: Client,
) -> None:
    client("spoke-b")  # issued by the same CA and allowed: connects
    started = time.monotonic()

    # The broker's message names the DN as Java prints it: what users.properties must hold.
    with pytest.raises(
        TransportError, match="No user for client certificate: CN=spoke-x, O=ELIC Consortium"
    ):
        client("spoke-x", connect_timeout=30)

    assert time.monotonic() - started < 5  # refused at once, not retried until the timeout


@pytest.mark.broker
def test_a_certificate_from_another_ca_cannot_connect(
    tls_activemq: Any, consortium: Consortium
) -> None:
    from workbench.transport.stomp_connection import ClientTls

    outsider = consortium.outsider  # the same subject as the real spoke-a, another issuer
    as_spoke_a = ClientTls(outsider.certificate, outsider.key, consortium.ca / "ca.crt")
    started = time.monotonic()

    with pytest.raises(
        TransportError, match="refused this client's certificate in the TLS handshake"
    ):
        StompBroker.from_url(tls_activemq.stomp_url, tls=as_spoke_a, connect_timeout=30)
    # ... and a client trusting only the other CA does not accept the broker either.
    trusting_other = ClientTls(outsider.certificate, outsider.key, outsider.ca_certificate)
    with pytest.raises(TransportError, match="broker's certificate is not trusted"):
        StompBroker.from_url(tls_activemq.stomp_url, tls=trusting_other, connect_timeout=30)

    assert time.monotonic() - started < 5


@pytest.mark.broker
def test_a_client_without_a_certificate_cannot_connect(
    tls_activemq: Any, consortium: Consortium
) -> None:
    context = ssl.create_default_context(cafile=str(consortium.ca / "ca.crt"))
    hub = consortium.identities["hub"]
    port = tls_activemq.stomp_port

    def connect_frame(with_certificate: bool) -> bytes:
        if with_certificate:
            context.load_cert_chain(hub.certificate, hub.key)
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"CONNECT\naccept-version:1.2\nhost:127.0.0.1\n\n\0")
            return tls.recv(4096)

    with pytest.raises(ssl.SSLError, match="alert"):
        connect_frame(with_certificate=False)
    assert connect_frame(with_certificate=True).startswith(b"CONNECTED")


@pytest.mark.broker
def test_the_broker_offers_no_plain_stomp(tls_activemq: Any) -> None:
    root = ElementTree.parse(tls_activemq.config_path).getroot()
    uris = [
        c.get("uri", "")
        for c in root.iter("{http://activemq.apache.org/schema/core}transportConnector")
    ]
    plain_url = tls_activemq.stomp_url.replace("stomp+ssl://", "stomp://")

    with pytest.raises(TransportError):
        StompBroker.from_url(plain_url, connect_timeout=1.0)

    assert len(uris) == 1
    assert uris[0].startswith(f"stomp+ssl://127.0.0.1:{tls_activemq.stomp_port}?")
    assert "needClientAuth=true" in uris[0]


# -- the managed broker and the client over TLS ----------------------------------------------------


@pytest.mark.broker
def test_status_reads_queue_depths_over_tls_with_the_hub_identity(
    tls_activemq: Any, client: Client
) -> None:
    hub = client("hub")
    before = {q.name: q.enqueued for q in tls_activemq.status().queues}
    hub.send(ORDERS_B, unique("counted"))

    status = tls_activemq.status()
    anonymous = ManagedBroker(tls_activemq.directory).status()

    assert status.tls and status.stomp_url == tls_activemq.stomp_url
    assert status.stomp_url.startswith("stomp+ssl://")
    assert {q.name: q.enqueued for q in status.queues}[ORDERS_B] == before[ORDERS_B] + 1
    assert anonymous.running and anonymous.queues is None
    assert any("Hub's identity" in p for p in anonymous.problems)


@pytest.mark.broker
def test_the_security_files_hold_java_dns_and_the_password_file_is_private(
    tls_activemq: Any,
) -> None:
    conf = tls_activemq.directory / "conf"

    users = (conf / "users.properties").read_text().splitlines()
    xml = tls_activemq.config_path.read_text()
    password = tls_activemq.tls.password_file.read_text().strip()

    assert "spoke-a=CN=spoke-a, O=ELIC Consortium" in users
    assert "hub=CN=hub, O=ELIC Consortium" in users
    assert not any(line.startswith("spoke-x=") for line in users)
    assert password not in xml and password in (conf / "tls.properties").read_text()
    assert (conf / "tls.properties").stat().st_mode & 0o777 == 0o600


@pytest.mark.broker
def test_tcp_nodelay_is_set_on_a_tls_connection(client: Client) -> None:
    assert client("hub").tcp_nodelay is True
    assert client("hub", tcp_nodelay=False).tcp_nodelay is False


@pytest.mark.broker
def test_the_factory_connects_with_the_clients_identity(
    tls_activemq: Any, consortium: Consortium
) -> None:
    broker = connect([tls_activemq.stomp_url], tls=consortium.client("spoke-a"))
    try:
        broker.send(HUB_INBOX, unique("via the factory"))
    finally:
        broker.close()
    with pytest.raises(ConfigError, match="give the client's certificate"):
        connect(tls_activemq.stomp_url)


@pytest.mark.broker
def test_start_fails_at_once_when_the_broker_refuses_the_status_identity(
    consortium: Consortium, tmp_path: Any
) -> None:
    broker = ManagedBroker.from_env(tmp_path / "broker", tls=consortium.settings(client="spoke-x"))
    started = time.monotonic()
    try:
        with pytest.raises(BrokerError, match=r"refused the status identity.*No user for client"):
            broker.start(timeout=60)
        assert time.monotonic() - started < 30
        assert broker.pid() is None
    finally:
        broker.stop(timeout=10)


@pytest.mark.broker
def test_a_tls_client_notices_the_broker_going_away_and_reconnects(
    tls_activemq: Any, client: Client
) -> None:
    # No heart-beats: only the end of the TLS stream can tell the client. stomp.py alone
    # spins on that socket and never reports the loss (docs/broker.md).
    hub = client("hub", heartbeat_ms=0, send_timeout=60)
    hub.send(ORDERS_A, unique("before"))

    tls_activemq.stop()
    try:
        wait_until(lambda: not hub.connected, timeout=5, what="the client noticing the loss")
    finally:
        tls_activemq.start()
    hub.send(ORDERS_A, unique("after"))  # on the new connection

    assert hub.connected


# -- the client's URLs and options (no broker) -----------------------------------------------------


def test_stomp_ssl_urls_parse_and_mixed_lists_are_refused() -> None:
    assert parse_url("stomp+ssl://127.0.0.1:61614") == [("127.0.0.1", 61614)]
    assert parse_url("failover:(stomp+ssl://a:1,stomp+ssl://b:2)") == [("a", 1), ("b", 2)]
    assert uses_tls("failover:(stomp+ssl://a:1,stomp+ssl://b:2)") is True
    assert uses_tls("stomp://a:1") is False
    with pytest.raises(ConfigError, match="mix"):
        uses_tls("stomp://a:1,stomp+ssl://b:2")


def test_the_scheme_and_the_tls_identity_must_agree(consortium: Consortium) -> None:
    with pytest.raises(ConfigError, match="give the client's certificate"):
        StompBroker.from_url("stomp+ssl://127.0.0.1:1")
    with pytest.raises(ConfigError, match="use stomp\\+ssl://"):
        StompBroker.from_url("stomp://127.0.0.1:1", tls=consortium.client("hub"))


@pytest.mark.broker
@pytest.mark.parametrize("every", [1, 200])
def test_a_direct_subscription_over_tls_drains_a_backlog_from_the_dispatcher(
    client: Client, every: int
) -> None:
    """As the hub ingests (``direct``, acks singly or in batches), over TLS.

    stomp.py writes a TLS socket from its receiver loop only, and that loop writes nothing
    while a backlog streams in: acks queued from inside it wait until the prefetch window
    is full, and the consumer stalls. Over TLS a direct handler runs on the dispatcher.
    """
    import threading

    from workbench.hub_kernel.config import HubConfig
    from workbench.transport.base import Delivery, settle_all

    hub, spoke_a = client("hub"), client("spoke-a")
    tag = unique("backlog").decode()
    total = 3000
    for start in range(0, total, 250):
        spoke_a.send_many(
            [(HUB_INBOX, f"{tag}-{i}".encode(), None) for i in range(start, start + 250)]
        )
    waiting: list[tuple[Delivery, bool]] = []
    seen: set[bytes] = set()

    threads: set[str] = set()

    def handler(delivery: Delivery) -> None:
        threads.add(threading.current_thread().name)
        if delivery.body.startswith(tag.encode()):
            seen.add(delivery.body)
        waiting.append((delivery, True))
        if len(waiting) >= every or len(seen) == total:
            settle_all(waiting)
            waiting.clear()

    sub = hub.subscribe(HUB_INBOX, handler, prefetch=HubConfig().prefetch, direct=True)
    wait_until(lambda: len(seen) == total, timeout=60, what=f"all {total} messages")
    sub.cancel()
    assert threads == {"stomp-dispatch"}
    again = Inbox(ack=True)
    client("hub").subscribe(HUB_INBOX, again, prefetch=500)
    marker = unique("marker")
    spoke_a.send(HUB_INBOX, marker)
    again.wait_body(marker)
    assert not [b for b in again.bodies if b.startswith(tag.encode())]  # every one was acked
