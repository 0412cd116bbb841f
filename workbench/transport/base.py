"""The ``Broker`` protocol: what Hub and Spokes need from a message broker, and no more.

Semantics every implementation keeps (the contract tests in ``tests/contract`` check them
against ``InMemoryBroker`` and against ``StompBroker`` on a real ActiveMQ):

- ``send`` is persistent and returns only once the broker has confirmed it (a STOMP
  receipt); it raises ``TransportError`` if that confirmation does not come.
- ``send_many`` sends several messages the same way, in order, as one unit (a STOMP
  transaction on ActiveMQ); it returns once all are confirmed, or raises ``PartialSend``
  saying how many of the first ones were (none, for a transaction).
- A subscription delivers each message to ``handler`` on the broker's own thread, at most
  ``prefetch`` unacknowledged at a time. The handler calls ``delivery.ack()`` when, and only
  when, the message's effect is durable; an unacknowledged message is delivered again after
  the connection is re-established (at-least-once).
- ``delivery.reject()`` moves a message that can never be processed to the dead-letter
  queue (STOMP ``NACK`` on ActiveMQ), so that it stops blocking the queue.
- Messages on one queue from one sender arrive in the order they were sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from workbench.errors import WorkbenchError

DEAD_LETTER_QUEUE = "/queue/ActiveMQ.DLQ"


class TransportError(WorkbenchError):
    """The broker is unreachable, refused a frame, or did not confirm a send."""


class PartialSend(TransportError):
    """``send_many`` stopped: only the first ``confirmed`` messages are known to be kept."""

    def __init__(self, message: str, confirmed: int) -> None:
        super().__init__(message)
        self.confirmed = confirmed


Outgoing = tuple[str, bytes, dict[str, str] | None]
"""A message to send: destination, body, extra headers."""


@dataclass
class Delivery:
    """One received message. Exactly one of ``ack``/``reject`` should be called, once."""

    body: bytes
    destination: str
    message_id: str
    headers: dict[str, str] = field(default_factory=dict)
    redelivered: bool = False
    _ack: Callable[[], None] = field(default=lambda: None, repr=False)
    _reject: Callable[[], None] = field(default=lambda: None, repr=False)
    # A broker that can settle many deliveries at once (one write) sets both: its batch
    # function, and what it needs to know of this delivery. See ``settle_all``.
    _settle_batch: SettleBatch | None = field(default=None, repr=False, compare=False)
    _token: Any = field(default=None, repr=False, compare=False)

    def ack(self) -> None:
        """The message's effect is durable: the broker may forget it."""
        self._ack()

    def reject(self) -> None:
        """The message can never be processed: send it to the dead-letter queue."""
        self._reject()


Handler = Callable[[Delivery], None]
SettleBatch = Callable[[Sequence[tuple["Delivery", bool]]], None]


def settle_all(decisions: Sequence[tuple[Delivery, bool]]) -> None:
    """Acknowledge (``True``) or reject (``False``) each delivery, in one go where possible.

    Deliveries of a broker that settles in batches (``StompBroker``: every ACK and NACK in
    one socket write instead of one each) go to it together; others one by one. As for
    ``ack``/``reject``, a delivery already settled is left alone.
    """
    batches: dict[SettleBatch, list[tuple[Delivery, bool]]] = {}
    for delivery, accept in decisions:
        if delivery._settle_batch is None:
            delivery.ack() if accept else delivery.reject()
        else:
            batches.setdefault(delivery._settle_batch, []).append((delivery, accept))
    for settle, batch in batches.items():
        settle(batch)


class Subscription(Protocol):
    """A live subscription; ``cancel`` stops deliveries (unacknowledged ones return)."""

    def cancel(self) -> None:
        """Stop receiving."""
        ...


class Broker(Protocol):
    """A connection to a message broker."""

    def send(self, destination: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Send persistently; return once the broker confirmed receipt."""
        ...

    def send_many(self, messages: Sequence[Outgoing]) -> None:
        """Send each persistently, in order, as one unit; return once all are confirmed.

        Raises ``PartialSend`` with how many of the first messages were confirmed.
        """
        ...

    def subscribe(
        self, destination: str, handler: Handler, prefetch: int = 1, direct: bool = False
    ) -> Subscription:
        """Deliver messages from ``destination`` to ``handler`` (client-individual acks).

        ``direct``: ``handler`` neither blocks nor sends, so it may run on the thread that
        reads the connection (a thread switch less per message, where that applies).
        """
        ...

    def close(self) -> None:
        """Disconnect; unacknowledged deliveries go back to their queues."""
        ...
