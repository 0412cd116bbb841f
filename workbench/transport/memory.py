"""``InMemoryBroker``: the ``Broker`` protocol in one process, for unit tests.

``InMemoryBroker`` is the server (queues and the dead-letter queue); ``connect()`` gives a
client connection implementing ``Broker``, with its own delivery thread as a STOMP
connection has. Closing a connection returns its unacknowledged messages to the front of
their queues, marked redelivered, which is what ActiveMQ does when a client goes away.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from workbench.transport.base import (
    DEAD_LETTER_QUEUE,
    Delivery,
    Handler,
    Outgoing,
    PartialSend,
    TransportError,
)

_LOG = logging.getLogger(__name__)


@dataclass
class _Stored:
    message_id: str
    body: bytes
    headers: dict[str, str]
    redelivered: bool = False


@dataclass
class _Sub:
    connection: InMemoryConnection
    destination: str
    handler: Handler
    prefetch: int
    unacked: dict[str, _Stored] = field(default_factory=dict)
    active: bool = True

    def cancel(self) -> None:
        self.connection._cancel(self)


class InMemoryBroker:
    """Queues in memory; many connections may share one broker."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._queues: dict[str, deque[_Stored]] = {}
        self._ids = itertools.count(1)
        self._connections: list[InMemoryConnection] = []
        self.sent = 0

    def connect(self) -> InMemoryConnection:
        """A new client connection."""
        connection = InMemoryConnection(self)
        with self._lock:
            self._connections.append(connection)
        return connection

    def depth(self, destination: str) -> int:
        """Messages waiting in ``destination`` (not counting those delivered and unacked)."""
        with self._lock:
            return len(self._queues.get(destination, ()))

    def drain(self, destination: str) -> list[bytes]:
        """Remove and return every waiting message body of ``destination`` (for tests)."""
        with self._lock:
            queue = self._queues.pop(destination, deque())
            return [m.body for m in queue]

    def _put(self, destination: str, stored: _Stored, front: bool = False) -> None:
        with self._lock:
            queue = self._queues.setdefault(destination, deque())
            queue.appendleft(stored) if front else queue.append(stored)
            self._lock.notify_all()


class InMemoryConnection:
    """One client connection to an ``InMemoryBroker``; implements ``Broker``."""

    def __init__(self, server: InMemoryBroker) -> None:
        self._server = server
        self._subs: list[_Sub] = []
        self._closed = False
        self._thread = threading.Thread(target=self._deliver_loop, daemon=True)
        self._thread.start()

    def send(self, destination: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Queue ``body`` at ``destination``."""
        if self._closed:
            raise TransportError("the connection is closed")
        message_id = f"mem-{next(self._server._ids)}"
        self._server._put(destination, _Stored(message_id, bytes(body), dict(headers or {})))
        self._server.sent += 1

    def send_many(self, messages: Sequence[Outgoing]) -> None:
        """Queue each message in order."""
        for done, (destination, body, headers) in enumerate(messages):
            try:
                self.send(destination, body, headers)
            except TransportError as e:
                raise PartialSend(str(e), done) from e

    def subscribe(
        self, destination: str, handler: Handler, prefetch: int = 1, direct: bool = False
    ) -> _Sub:
        """Deliver ``destination``'s messages to ``handler`` on this connection's thread.

        ``direct`` changes nothing here: there is no receiver thread to run it on.
        """
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        sub = _Sub(self, destination, handler, prefetch)
        with self._server._lock:
            self._subs.append(sub)
            self._server._lock.notify_all()
        return sub

    def close(self) -> None:
        """Disconnect; every unacknowledged message goes back to its queue's front."""
        with self._server._lock:
            self._closed = True
            for sub in self._subs:
                self._return_unacked(sub)
            self._subs.clear()
            self._server._lock.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _cancel(self, sub: _Sub) -> None:
        with self._server._lock:
            if sub in self._subs:
                self._subs.remove(sub)
                self._return_unacked(sub)
            self._server._lock.notify_all()

    def _return_unacked(self, sub: _Sub) -> None:
        sub.active = False
        for stored in reversed(list(sub.unacked.values())):
            stored.redelivered = True
            queue = self._server._queues.setdefault(sub.destination, deque())
            queue.appendleft(stored)
        sub.unacked.clear()

    def _next(self) -> tuple[_Sub, _Stored] | None:
        with self._server._lock:
            while not self._closed:
                for sub in self._subs:
                    queue = self._server._queues.get(sub.destination)
                    if queue and len(sub.unacked) < sub.prefetch:
                        stored = queue.popleft()
                        sub.unacked[stored.message_id] = stored
                        return sub, stored
                self._server._lock.wait(timeout=0.5)
        return None

    def _deliver_loop(self) -> None:
        while (item := self._next()) is not None:
            sub, stored = item
            delivery = Delivery(
                body=stored.body,
                destination=sub.destination,
                message_id=stored.message_id,
                headers=dict(stored.headers),
                redelivered=stored.redelivered,
                _ack=functools.partial(self._settle, sub, stored, None),
                _reject=functools.partial(self._settle, sub, stored, DEAD_LETTER_QUEUE),
            )
            try:
                sub.handler(delivery)
            except Exception:
                # As on a STOMP connection: the message stays unacknowledged (it comes back
                # after a reconnect) and the connection goes on delivering.
                _LOG.exception("the handler for %s failed", sub.destination)

    def _settle(self, sub: _Sub, stored: _Stored, move_to: str | None) -> None:
        with self._server._lock:
            if sub.unacked.pop(stored.message_id, None) is None:
                return  # already returned to the queue by a close: the ack comes too late
            if move_to is not None:
                queue = self._server._queues.setdefault(move_to, deque())
                queue.append(stored)
            self._server._lock.notify_all()
