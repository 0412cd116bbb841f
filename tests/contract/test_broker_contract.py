"""One contract for every ``Broker``: ``InMemoryBroker`` and ``StompBroker`` on a real ActiveMQ.

Each test gets ``connect``, a factory of new client connections to one broker server (a
fresh ``InMemoryBroker``, or the session's ActiveMQ), and works on queues no other test
uses. The fault tests at the end run against the real broker only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from broker_fixtures import Inbox, unique_queue

from workbench.transport.base import (
    DEAD_LETTER_QUEUE,
    Broker,
    Delivery,
    PartialSend,
    TransportError,
)
from workbench.transport.memory import InMemoryBroker
from workbench.transport.stomp_broker import StompBroker

Connect = Callable[[], Broker]


@pytest.fixture(params=["memory", pytest.param("activemq", marks=pytest.mark.broker)])
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    """A factory of new connections to one broker; all are closed after the test."""
    opened: list[Broker] = []
    if request.param == "memory":
        server = InMemoryBroker()

        def make() -> Broker:
            opened.append(server.connect())
            return opened[-1]
    else:
        url = request.getfixturevalue("activemq").stomp_url

        def make() -> Broker:
            opened.append(StompBroker.from_url(url, send_timeout=15.0))
            return opened[-1]

    yield make
    for connection in opened:
        connection.close()


def test_a_message_makes_the_round_trip_with_its_body_and_headers(connect: Connect) -> None:
    queue = unique_queue("roundtrip")
    broker = connect()
    inbox = Inbox(ack=True)
    broker.subscribe(queue, inbox)
    body = b"\x00binary\xff\npayload:{}"

    broker.send(queue, body, {"x-natural-key": "e1/site-01/p-1"})

    [delivery] = inbox.wait_count(1)
    assert delivery.body == body
    assert delivery.headers["x-natural-key"] == "e1/site-01/p-1"
    assert delivery.destination == queue
    assert delivery.message_id
    assert delivery.redelivered is False


def test_messages_from_one_sender_arrive_in_the_order_sent(connect: Connect) -> None:
    queue = unique_queue("order")
    sender, receiver = connect(), connect()
    sent = [f"m{i:03d}".encode() for i in range(60)]
    for body in sent:
        sender.send(queue, body)
    inbox = Inbox(ack=True)

    receiver.subscribe(queue, inbox, prefetch=10)

    inbox.wait_count(len(sent))
    assert inbox.bodies == sent


def test_an_unacknowledged_message_is_redelivered_after_its_consumer_disconnects(
    connect: Connect,
) -> None:
    queue = unique_queue("redeliver")
    sender, first, second = connect(), connect(), connect()
    sender.send(queue, b"order-1")
    held = Inbox(ack=False)
    first.subscribe(queue, held)
    [original] = held.wait_count(1)

    first.close()
    again = Inbox(ack=True)
    second.subscribe(queue, again)

    [redelivered] = again.wait_count(1)
    assert (original.body, original.redelivered) == (b"order-1", False)
    assert (redelivered.body, redelivered.redelivered) == (b"order-1", True)


def test_an_acknowledged_message_is_gone_for_good(connect: Connect) -> None:
    queue = unique_queue("acked")
    sender, first, second = connect(), connect(), connect()
    sender.send(queue, b"done-once")
    acked = Inbox(ack=True)
    first.subscribe(queue, acked)
    acked.wait_count(1)

    first.close()
    later = Inbox(ack=True)
    second.subscribe(queue, later)
    sender.send(queue, b"marker")

    later.wait_body(b"marker")
    assert later.bodies == [b"marker"]


def test_a_rejected_message_goes_to_the_dead_letter_queue_not_back(connect: Connect) -> None:
    queue = unique_queue("reject")
    sender, consumer, watcher = connect(), connect(), connect()
    dead = Inbox(ack=True)
    watcher.subscribe(DEAD_LETTER_QUEUE, dead, prefetch=100)
    seen = Inbox(ack=False)

    def reject_poison(delivery: Delivery) -> None:
        seen(delivery)
        if delivery.body == b"poison":
            delivery.reject()
        else:
            delivery.ack()

    consumer.subscribe(queue, reject_poison, prefetch=1)
    sender.send(queue, b"poison")
    sender.send(queue, b"after")

    dead.wait_body(b"poison")
    seen.wait_body(b"after")
    assert seen.bodies == [b"poison", b"after"]  # NACK on ActiveMQ is not a retry


def test_prefetch_bounds_the_unacknowledged_deliveries_of_a_consumer(connect: Connect) -> None:
    queue = unique_queue("prefetch")
    sender, slow, other = connect(), connect(), connect()
    sent = [f"job-{i}".encode() for i in range(5)]
    for body in sent:
        sender.send(queue, body)
    holding = Inbox(ack=False)
    slow.subscribe(queue, holding, prefetch=2)
    holding.wait_count(2)

    rest = Inbox(ack=True)
    other.subscribe(queue, rest, prefetch=10)

    rest.wait_count(3)  # only possible if the slow consumer was given no more than 2
    assert len(holding.bodies) == 2
    assert sorted(holding.bodies + rest.bodies) == sorted(sent)


def test_a_consumer_of_another_queue_sees_none_of_its_messages(connect: Connect) -> None:
    mine, theirs = unique_queue("mine"), unique_queue("theirs")
    sender, consumer = connect(), connect()
    inbox = Inbox(ack=True)
    consumer.subscribe(mine, inbox)

    sender.send(theirs, b"not for me")
    sender.send(mine, b"marker")

    inbox.wait_body(b"marker")
    assert inbox.bodies == [b"marker"]


def test_cancel_stops_deliveries_and_returns_the_unacknowledged(connect: Connect) -> None:
    queue = unique_queue("cancel")
    sender, first, second = connect(), connect(), connect()
    sender.send(queue, b"held")
    held = Inbox(ack=False)
    subscription = first.subscribe(queue, held)
    held.wait_count(1)

    subscription.cancel()
    sender.send(queue, b"next")
    other = Inbox(ack=True)
    second.subscribe(queue, other)

    other.wait_for(lambda ds: {d.body for d in ds} == {b"held", b"next"})
    assert held.bodies == [b"held"]
    assert [d.redelivered for d in other.deliveries if d.body == b"held"] == [True]


def test_a_failing_handler_leaves_its_message_unacknowledged_and_delivery_goes_on(
    connect: Connect,
) -> None:
    queue = unique_queue("raises")
    sender, first, second = connect(), connect(), connect()
    inbox = Inbox(ack=False)

    def handler(delivery: Delivery) -> None:
        inbox(delivery)
        if delivery.body == b"boom":
            raise RuntimeError("handler bug")
        delivery.ack()

    first.subscribe(queue, handler, prefetch=2)
    sender.send(queue, b"boom")
    sender.send(queue, b"fine")
    inbox.wait_body(b"fine")
    first.close()
    again = Inbox(ack=True)
    second.subscribe(queue, again)

    [back] = again.wait_count(1)
    assert (back.body, back.redelivered) == (b"boom", True)


def test_many_messages_drain_with_nothing_lost_or_doubled(connect: Connect) -> None:
    queue = unique_queue("many")
    sender, consumer = connect(), connect()
    n = 2000
    inbox = Inbox(ack=True)
    consumer.subscribe(queue, inbox, prefetch=100)

    for i in range(n):
        sender.send(queue, f"{i}".encode())
    sender.send(queue, b"end")

    inbox.wait_body(b"end", timeout=120)
    bodies = [b for b in inbox.bodies if b != b"end"]
    assert len(bodies) == n
    assert sorted(int(b) for b in bodies) == list(range(n))


def test_a_closed_connection_refuses_to_send(connect: Connect) -> None:
    broker = connect()
    broker.close()

    with pytest.raises(TransportError):
        broker.send(unique_queue("closed"), b"late")


def test_send_many_delivers_every_message_in_order_with_its_headers(connect: Connect) -> None:
    first, second = unique_queue("many-a"), unique_queue("many-b")
    sender, receiver = connect(), connect()
    batch = [
        (first if i % 3 else second, f"m{i:03d}".encode(), {"x-index": str(i)}) for i in range(40)
    ]

    sender.send_many(batch)

    inbox_a, inbox_b = Inbox(ack=True), Inbox(ack=True)
    receiver.subscribe(first, inbox_a, prefetch=50)
    receiver.subscribe(second, inbox_b, prefetch=50)
    got_a = inbox_a.wait_count(sum(1 for q, _, _ in batch if q == first))
    got_b = inbox_b.wait_count(sum(1 for q, _, _ in batch if q == second))
    assert [d.body for d in got_a] == [b for q, b, _ in batch if q == first]
    assert [d.body for d in got_b] == [b for q, b, _ in batch if q == second]
    assert all(d.headers["x-index"] == d.body.decode()[1:].lstrip("0") or d.body == b"m000"
               for d in got_a + got_b)  # fmt: skip


def test_send_many_on_a_closed_connection_confirms_none(connect: Connect) -> None:
    broker = connect()
    broker.close()

    with pytest.raises(PartialSend) as raised:
        broker.send_many([(unique_queue("closed-many"), b"late", None)] * 3)
    assert raised.value.confirmed == 0


# -- the real broker only -------------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.faults
def test_persistent_messages_survive_a_broker_crash(
    activemq: Any, restart_activemq: Callable[..., None]
) -> None:
    queue = unique_queue("survive")
    sender = StompBroker.from_url(activemq.stomp_url)
    sent = [b"r1", b"r2", b"r3"]
    for body in sent:
        sender.send(queue, body)
    sender.close()

    restart_activemq(crash=True)
    consumer = StompBroker.from_url(activemq.stomp_url)
    inbox = Inbox(ack=True)
    consumer.subscribe(queue, inbox)

    try:
        inbox.wait_count(3)
        assert inbox.bodies == sent
    finally:
        consumer.close()


@pytest.mark.broker
@pytest.mark.faults
def test_clients_reconnect_resubscribe_and_get_unacknowledged_work_back_after_a_restart(
    activemq: Any, restart_activemq: Callable[..., None]
) -> None:
    queue = unique_queue("reconnect")
    sender = StompBroker.from_url(activemq.stomp_url, send_timeout=30.0)
    consumer = StompBroker.from_url(activemq.stomp_url)
    inbox = Inbox(ack=False)
    consumer.subscribe(queue, inbox, prefetch=1)
    sender.send(queue, b"unfinished")
    inbox.wait_count(1)

    restart_activemq(crash=True)
    sender.send(queue, b"after-restart")  # waits for the sender's own reconnection

    try:
        back = inbox.wait_for(lambda ds: [d.body for d in ds].count(b"unfinished") == 2)
        back[-1].ack()
        inbox.wait_body(b"after-restart")
        assert inbox.bodies == [b"unfinished", b"unfinished", b"after-restart"]
    finally:
        sender.close()
        consumer.close()


def test_a_direct_subscription_delivers_in_order_and_acks(connect: Connect) -> None:
    import threading

    queue = unique_queue("direct")
    sender, receiver = connect(), connect()
    threads: set[str] = set()
    got: list[bytes] = []
    done = threading.Event()

    def handler(delivery: Delivery) -> None:
        threads.add(threading.current_thread().name)
        got.append(delivery.body)
        delivery.ack()
        if len(got) == 30:
            done.set()

    receiver.subscribe(queue, handler, prefetch=5, direct=True)
    sender.send_many([(queue, f"m{i:02d}".encode(), None) for i in range(30)])

    assert done.wait(20)
    assert got == [f"m{i:02d}".encode() for i in range(30)]
    assert "stomp-dispatch" not in threads  # StompBroker: on the receiver thread itself
    receiver.close()
    later = Inbox(ack=True)
    connect().subscribe(queue, later)
    sender.send(queue, b"marker")
    later.wait_body(b"marker")
    assert later.bodies == [b"marker"]  # every one of the 30 was acknowledged
