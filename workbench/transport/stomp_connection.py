"""One STOMP connection of a ``StompBroker``: its addresses, its opening, and its listener.

- ``parse_url``: broker addresses from ``stomp://host:port`` URLs (and ActiveMQ's
  ``failover:(...)``);
- ``open_connection``: one attempt over every address with stomp.py, which either returns a
  connection that answered CONNECTED or raises ``AttemptFailed``;
- ``Listener``: what stomp.py's receiver thread calls for each frame of that connection; it
  queues MESSAGE frames for the dispatcher and settles ``Waiter``s.

Reconnection, subscriptions and sends are ``StompBroker``'s (``workbench.transport.stomp_broker``);
this module knows nothing of them: the listener reports through the callables it is given.

>>> parse_url("failover:(stomp://a:61613,stomp://b:61613)?randomize=false")
[('a', 61613), ('b', 61613)]
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import stomp
from stomp.exception import StompException

from workbench.errors import ConfigError

__all__ = [
    "IO_ERRORS",
    "AttemptFailed",
    "Listener",
    "Waiter",
    "describe",
    "open_connection",
    "parse_url",
]

# StompBroker's logger, as before this module was split from it: logging configured by that
# name keeps covering what the listener reports.
_LOG = logging.getLogger("workbench.transport.stomp_broker")
IO_ERRORS = (StompException, OSError)


def parse_url(url: str | Sequence[str]) -> list[tuple[str, int]]:
    """Broker addresses from ``stomp://host:port``, a comma-separated list or a sequence of
    them, or ActiveMQ's ``failover:(stomp://a:61613,stomp://b:61613)``.

    Raises:
        ConfigError: not a STOMP URL with a host and a port.
    """
    pieces = []
    for text in [url] if isinstance(url, str) else list(url):
        text = text.strip()
        if text.startswith("failover:"):
            text = text.removeprefix("failover:")
            text = text[1 : text.find(")")] if text.startswith("(") else text.split("?", 1)[0]
        pieces += [p.strip() for p in text.split(",") if p.strip()]
    addresses = []
    for piece in pieces:
        split = urlsplit(piece)
        try:
            port = split.port
        except ValueError:
            port = None
        if split.scheme != "stomp" or not split.hostname or port is None:
            raise ConfigError(f"not a broker URL like stomp://127.0.0.1:61613: {piece!r}")
        addresses.append((split.hostname, port))
    if not addresses:
        raise ConfigError(f"no broker address in {url!r}")
    return addresses


def describe(addresses: Sequence[tuple[str, int]]) -> str:
    """``host:port, host:port`` for messages."""
    return ", ".join(f"{h}:{p}" for h, p in addresses)


class AttemptFailed(Exception):
    """No broker of the list accepted this connection attempt (the next one may succeed)."""


class Waiter:
    """A receipt we wait for: ``outcome`` becomes receipt, error or lost."""

    def __init__(self, receipt: str, generation: int) -> None:
        self.receipt = receipt
        self.generation = generation
        self.event = threading.Event()
        self.outcome = ""
        self.message = ""

    def settle(self, outcome: str, message: str = "") -> None:
        """Record the first outcome and wake the waiting thread; later ones are ignored."""
        if not self.event.is_set():
            self.outcome, self.message = outcome, message
            self.event.set()


class Listener:
    """stomp.py calls ``on_<frame>`` by name on its receiver thread; one per connection.

    Args:
        generation: the number of the connection this listener belongs to.
        tcp_nodelay: set ``TCP_NODELAY`` on the socket before CONNECT goes out.
        inbox: where MESSAGE frames go, as ``(generation, frame)``, for the dispatcher.
        receipt: ``receipt(receipt_id, outcome, message)`` settles a waiter (RECEIPT, or an
            ERROR that names a receipt).
        lost: ``lost(generation)`` once the connection is closed.
    """

    def __init__(
        self,
        generation: int,
        *,
        tcp_nodelay: bool,
        inbox: queue.SimpleQueue[tuple[int, Any] | None],
        receipt: Callable[[str, str, str], None],
        lost: Callable[[int], None],
    ) -> None:
        self.generation = generation
        self.conn: Any = None  # set by open_connection before it connects
        self.tcp_nodelay, self.inbox, self.receipt, self.lost = tcp_nodelay, inbox, receipt, lost
        self.answered = threading.Event()  # CONNECTED, ERROR or closed: the attempt is decided
        self.connected = False
        self.closed = threading.Event()
        self.error = ""

    def on_connecting(self, host_and_port: tuple[str, int]) -> None:
        # Runs after the TCP connect and before the CONNECT frame goes out.
        sock = self.conn.transport.socket
        if sock is not None and self.tcp_nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_connected(self, frame: Any) -> None:
        self.connected = True
        self.answered.set()

    def on_message(self, frame: Any) -> None:
        self.inbox.put((self.generation, frame))

    def on_receipt(self, frame: Any) -> None:
        self.receipt(frame.headers.get("receipt-id", ""), "receipt", "")

    def on_error(self, frame: Any) -> None:
        message = frame.headers.get("message", "") or _text(frame.body)[:200]
        if not self.connected:
            self.error = message
            self.answered.set()
        elif "receipt-id" in frame.headers:
            self.receipt(frame.headers["receipt-id"], "error", message)
        else:
            _LOG.warning("broker error: %s", message)

    def on_disconnected(self) -> None:
        self.closed.set()
        self.answered.set()
        self.lost(self.generation)

    def on_heartbeat_timeout(self) -> None:
        _LOG.warning("no heart-beat from the broker: reconnecting")

    # stomp.py looks these up for every frame (and catches an AttributeError for on_send).
    def on_send(self, frame: Any) -> None:
        pass

    def on_before_message(self, frame: Any) -> None:
        pass

    def on_heartbeat(self) -> None:
        pass


def open_connection(
    addresses: list[tuple[str, int]],
    listener: Listener,
    *,
    login: str | None,
    passcode: str | None,
    heartbeat_ms: int,
) -> Any:
    """A stomp.py connection over ``addresses`` (tried in order) that answered CONNECTED.

    ``listener`` is installed on it before it connects.

    Raises:
        AttemptFailed: no address accepted the TCP connection, or the broker refused the
            CONNECT (ERROR frame), or no answer came in 10 s.
    """
    conn = stomp.Connection12(
        host_and_ports=addresses, prefer_localhost=False, try_loopback_connect=False,
        reconnect_sleep_initial=0.0, reconnect_attempts_max=1, timeout=5.0,
        heartbeats=(heartbeat_ms, heartbeat_ms), auto_decode=False,
    )  # fmt: skip
    listener.conn = conn
    conn.set_listener("workbench", listener)
    try:
        conn.connect(username=login, passcode=passcode, wait=False)
    except IO_ERRORS as e:
        raise AttemptFailed(f"no broker at {describe(addresses)}: {e or type(e).__name__}") from e
    listener.answered.wait(10.0)
    if not listener.connected or listener.closed.is_set():
        with contextlib.suppress(*IO_ERRORS):
            conn.transport.disconnect_socket()
        problem = listener.error or "no CONNECTED frame"
        raise AttemptFailed(f"{describe(addresses)} refused the connection: {problem}")
    return conn


def _text(body: Any) -> str:
    return body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
