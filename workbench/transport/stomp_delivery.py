"""How a ``StompBroker``'s MESSAGE frames reach their handlers, and how each is acknowledged.

The stomp.py receiver thread only queues frames (``stomp_connection.Listener``); ``dispatch``
runs the handlers on a thread of its own, in the order the frames arrived, so that a handler
may ``send`` and wait for the receipt, which the receiver thread reads, without deadlocking.
Each ``Delivery`` carries a ``Settle``: its ``ack`` and its ``reject`` (a NACK), whichever is
called first is sent, once.

This module knows nothing of ``StompBroker``: ``dispatch`` is given how to find a frame's
subscription and how to send an ACK or NACK.

>>> inbox: queue.SimpleQueue[tuple[int, Any] | None] = queue.SimpleQueue()
>>> threading.Thread(target=dispatch, args=(inbox, find, settle)).start()  # doctest: +SKIP
>>> inbox.put(None)  # the dispatcher returns                               # doctest: +SKIP
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from workbench.transport.base import Delivery, Handler, SettleBatch

__all__ = ["Routed", "Settle", "deliver", "dispatch"]

# StompBroker's logger, as before this module was split from it: logging configured by that
# name keeps covering handler failures.
_LOG = logging.getLogger("workbench.transport.stomp_broker")


class Routed(Protocol):
    """What the dispatcher needs of a subscription (read only)."""

    @property
    def destination(self) -> str: ...

    @property
    def handler(self) -> Handler: ...


S = TypeVar("S", bound=Routed)


def dispatch(
    inbox: queue.SimpleQueue[tuple[int, Any] | None],
    find: Callable[[int, str], S | None],
    settle: Callable[[int, S, str, str], None],
    settle_batch: SettleBatch | None = None,
) -> None:
    """Hand each ``(generation, frame)`` of ``inbox`` to its subscription's handler until None.

    Args:
        inbox: MESSAGE frames with the generation of the connection they came on.
        find: ``find(generation, subscription_id)``, the live subscription of a frame, or None
            when it was cancelled or its connection is gone (the broker delivers it again).
        settle: ``settle(generation, subscription, ack_id, "ack" | "nack")`` sends the ACK or
            NACK of one delivery.
        settle_batch: settles many deliveries at once (``transport.base.settle_all``); each
            delivery's ``Settle`` is its token.

    A handler that raises is logged; its message stays unacknowledged.
    """
    while (item := inbox.get()) is not None:
        deliver(*item, find, settle, settle_batch)


def deliver(
    generation: int,
    frame: Any,
    find: Callable[[int, str], S | None],
    settle: Callable[[int, S, str, str], None],
    settle_batch: SettleBatch | None = None,
) -> None:
    """Hand one MESSAGE frame to its subscription's handler (``dispatch`` has the arguments).

    Called by ``dispatch`` for ordinary subscriptions, and on the receiver thread itself
    for a ``direct`` one.
    """
    sub = find(generation, frame.headers.get("subscription", ""))
    if sub is None:
        return  # the broker delivers it again
    settle_one = Settle(settle, generation, sub, frame.headers.get("ack", ""))
    delivery = Delivery(
        body=frame.body if isinstance(frame.body, bytes) else _bytes(frame.body),
        destination=frame.headers.get("destination", sub.destination),
        message_id=frame.headers.get("message-id", ""),
        headers=dict(frame.headers),
        redelivered=frame.headers.get("redelivered") == "true",
        _ack=settle_one.ack,
        _reject=settle_one.nack,
        _settle_batch=settle_batch,
        _token=settle_one,
    )
    try:
        sub.handler(delivery)
    except Exception:
        _LOG.exception(
            "the handler for %s failed; the message stays unacknowledged", sub.destination
        )


class Settle(Generic[S]):
    """The ack and the reject of one delivery: whichever comes first is sent, once."""

    __slots__ = ("ack_id", "done", "generation", "send", "sub")

    def __init__(
        self, send: Callable[[int, S, str, str], None], generation: int, sub: S, ack_id: str
    ) -> None:
        self.send, self.generation, self.sub, self.ack_id = send, generation, sub, ack_id
        self.done = False

    def ack(self) -> None:
        """Send the ACK, unless this delivery was settled already."""
        if not self.done:
            self.done = True
            self.send(self.generation, self.sub, self.ack_id, "ack")

    def nack(self) -> None:
        """Send the NACK, unless this delivery was settled already."""
        if not self.done:
            self.done = True
            self.send(self.generation, self.sub, self.ack_id, "nack")


def _bytes(body: Any) -> bytes:
    if body is None:
        return b""
    return body.encode() if isinstance(body, str) else bytes(body)
