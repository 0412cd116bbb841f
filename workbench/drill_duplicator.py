"""``Duplicator``: the drill's way of delivering every message on a queue twice.

It takes each message off a queue and puts two copies back, then acknowledges the original,
so whoever consumes the queue next receives everything twice. A copy is the message as its
sender sent it, body and headers (the signature among them, which stays valid: a faithful
replay, as a broker redelivery or a sender's retry would produce), plus a ``drillcopy``
header; the duplicator's subscription has the JMS selector ``drillcopy IS NULL``, so it
never takes its own copies. The original is acknowledged only once the broker confirmed
both copies (receipts): a drill that dies half-way loses nothing.

On a locked-down broker it reads as one identity and writes as another (a spoke's orders
queue can be read only by that spoke and written only by the hub).

>>> Duplicator("stomp://127.0.0.1:61613", HUB_INBOX).run(expect=40)   # doctest: +SKIP
44
"""

from __future__ import annotations

import contextlib
import queue
import time
from typing import Any

from workbench.drill_report import DrillError
from workbench.transport.stomp_broker import StompBroker
from workbench.transport.stomp_connection import (
    IO_ERRORS,
    AttemptFailed,
    ClientTls,
    Listener,
    open_connection,
    parse_url,
)

COPY_HEADER = "drillcopy"
# Headers the broker sets on a delivered MESSAGE; the others are the sender's, and copied.
_BROKER_HEADERS = frozenset({
    "destination", "message-id", "subscription", "ack", "content-length", "expires",
    "priority", "timestamp", "redelivered", "persistent", "receipt", "transaction",
})  # fmt: skip


class Duplicator:
    """Delivers every message of ``destination`` twice (see the module docstring).

    Args:
        url: the broker's ``stomp://`` or ``stomp+ssl://`` URL.
        destination: the queue.
        reader: the identity that may read the queue (with TLS), else None.
        writer: the identity that may write it (with TLS), else None.
        copies: how many copies replace each message.
    """

    def __init__(
        self,
        url: str,
        destination: str,
        reader: ClientTls | None = None,
        writer: ClientTls | None = None,
        copies: int = 2,
    ) -> None:
        self.url = url
        self.destination = destination
        self.reader = reader
        self.writer = writer
        self.copies = copies

    def run(self, expect: int, idle_s: float = 0.5, timeout: float = 90.0) -> int:
        """Copy at least ``expect`` messages, then until none comes for ``idle_s``.

        Returns how many messages were copied. (Spokes keep sending heart-beats: waiting for
        a queue that stays empty could wait for ever.)

        Raises:
            DrillError: the broker refused a connection or did not confirm a copy.
        """
        frames: queue.SimpleQueue[tuple[int, Any] | None] = queue.SimpleQueue()
        listener = Listener(
            1, tcp_nodelay=True, inbox=frames.put, receipt=lambda *_: None, lost=lambda _: None
        )
        try:
            conn = open_connection(
                parse_url(self.url), listener, login=None, passcode=None, heartbeat_ms=0,
                tls=self.reader,
            )  # fmt: skip
        except AttemptFailed as e:
            raise DrillError(f"the duplicator cannot read {self.destination}: {e}") from e
        writer = StompBroker.from_url(self.url, tls=self.writer)
        copied = 0
        deadline = time.monotonic() + timeout
        try:
            conn.subscribe(
                self.destination, id="drill", ack="client-individual",
                headers={"activemq.prefetchSize": "100", "selector": f"{COPY_HEADER} IS NULL"},
            )  # fmt: skip
            while time.monotonic() < deadline:
                try:
                    item = frames.get(timeout=idle_s)
                except queue.Empty:
                    if copied >= expect:
                        break
                    continue
                if item is None:
                    continue
                frame = item[1]
                headers = {k: v for k, v in frame.headers.items() if k not in _BROKER_HEADERS}
                for _ in range(self.copies):
                    writer.send(self.destination, frame.body, {**headers, COPY_HEADER: "1"})
                conn.ack(id=frame.headers["ack"])
                copied += 1
        finally:
            writer.close()
            with contextlib.suppress(*IO_ERRORS):
                conn.disconnect()  # after the acks, in order on the same socket
            if not listener.closed.wait(5.0):
                with contextlib.suppress(*IO_ERRORS):
                    conn.transport.disconnect_socket()
        return copied
