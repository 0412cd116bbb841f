"""One STOMP connection of a ``StompBroker``: its addresses, its opening, and its listener.

- ``parse_url``: broker addresses from ``stomp://host:port`` or ``stomp+ssl://host:port`` URLs
  (and ActiveMQ's ``failover:(...)``); ``uses_tls`` tells which of the two a URL asks for;
- ``ClientTls``: a client's identity for mutual TLS (certificate, key, and the CA that must
  have signed the broker's certificate);
- ``open_connection``: one attempt over every address with stomp.py, which either returns a
  connection that answered CONNECTED or raises ``AttemptFailed`` (``permanent`` when the
  broker refused this client, rather than being unreachable);
- ``Listener``: what stomp.py's receiver thread calls for each frame of that connection; it
  queues MESSAGE frames for the dispatcher and settles ``Waiter``s.

Reconnection, subscriptions and sends are ``StompBroker``'s (``workbench.transport.stomp_broker``);
this module knows nothing of them: the listener reports through the callables it is given.

>>> parse_url("failover:(stomp://a:61613,stomp://b:61613)?randomize=false")
[('a', 61613), ('b', 61613)]
>>> uses_tls("stomp+ssl://127.0.0.1:61614")
True
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import stomp
import stomp.transport
from stomp.connect import BaseConnection
from stomp.exception import StompException
from stomp.protocol import Protocol12

from workbench.errors import ConfigError
from workbench.transport.stomp_frames import FastFrames

__all__ = [
    "IO_ERRORS",
    "SCHEMES",
    "AttemptFailed",
    "ClientTls",
    "Listener",
    "Waiter",
    "describe",
    "open_connection",
    "parse_url",
    "tls_refusal",
    "uses_tls",
]

# StompBroker's logger, as before this module was split from it: logging configured by that
# name keeps covering what the listener reports.
_LOG = logging.getLogger("workbench.transport.stomp_broker")
IO_ERRORS = (StompException, OSError)
_RECV_BYTES = 16384  # stomp.py's default read size
SCHEMES = ("stomp", "stomp+ssl")


@dataclass(frozen=True)
class ClientTls:
    """A client's identity for mutual TLS with the broker (``workbench pki issue`` writes it).

    Args:
        certificate: the client's certificate (PEM), signed by the consortium CA.
        key: its private key (PEM, unencrypted, mode 0600).
        ca_certificate: the CA that must have signed the broker's certificate (PEM).

    The broker's certificate must name the host the client connects to (subjectAltName
    127.0.0.1 or localhost on loopback).

    >>> tls = ClientTls(Path("hub/hub.crt"), Path("hub/hub.key"), Path("hub/ca.crt"))
    """

    certificate: Path
    key: Path
    ca_certificate: Path

    def check_files(self) -> None:
        """Raise ``ConfigError`` naming the first of the three files that is missing."""
        for what, path in (
            ("certificate", self.certificate),
            ("key", self.key),
            ("CA certificate", self.ca_certificate),
        ):
            if not Path(path).is_file():
                raise ConfigError(f"the client's {what} {path} does not exist")

    def context(self) -> ssl.SSLContext:
        """A client ``SSLContext``: trusts only the CA, verifies the host, presents the cert.

        Raises:
            ConfigError: a file is missing or not a PEM certificate or key, or the key does
                not belong to the certificate.
        """
        self.check_files()
        try:
            context = ssl.create_default_context(cafile=str(self.ca_certificate))
            context.load_cert_chain(str(self.certificate), str(self.key))
        except ssl.SSLError as e:
            raise ConfigError(f"unusable TLS identity {self.certificate}: {e}") from e
        return context


def parse_url(url: str | Sequence[str]) -> list[tuple[str, int]]:
    """Broker addresses from ``stomp://host:port`` or ``stomp+ssl://host:port``, a
    comma-separated list or a sequence of them, or ActiveMQ's
    ``failover:(stomp://a:61613,stomp://b:61613)``.

    Raises:
        ConfigError: not a STOMP URL with a host and a port.
    """
    return [(host, port) for _, host, port in _endpoints(url)]


def uses_tls(url: str | Sequence[str]) -> bool:
    """Whether the URL(s) ask for TLS (``stomp+ssl://``) or plain STOMP (``stomp://``).

    Raises:
        ConfigError: a malformed URL, or a list that mixes the two schemes.
    """
    schemes = {scheme for scheme, _, _ in _endpoints(url)}
    if len(schemes) > 1:
        raise ConfigError(f"broker URLs mix stomp:// and stomp+ssl://: {url!r}")
    return schemes == {"stomp+ssl"}


def _endpoints(url: str | Sequence[str]) -> list[tuple[str, str, int]]:
    pieces = []
    for text in [url] if isinstance(url, str) else list(url):
        text = text.strip()
        if text.startswith("failover:"):
            text = text.removeprefix("failover:")
            text = text[1 : text.find(")")] if text.startswith("(") else text.split("?", 1)[0]
        pieces += [p.strip() for p in text.split(",") if p.strip()]
    endpoints = []
    for piece in pieces:
        split = urlsplit(piece)
        try:
            port = split.port
        except ValueError:
            port = None
        if split.scheme not in SCHEMES or not split.hostname or port is None:
            raise ConfigError(
                f"not a broker URL like stomp://127.0.0.1:61613 or stomp+ssl://...: {piece!r}"
            )
        endpoints.append((split.scheme, split.hostname, port))
    if not endpoints:
        raise ConfigError(f"no broker address in {url!r}")
    return endpoints


def describe(addresses: Sequence[tuple[str, int]]) -> str:
    """``host:port, host:port`` for messages."""
    return ", ".join(f"{h}:{p}" for h, p in addresses)


class AttemptFailed(Exception):
    """No broker of the list accepted this connection attempt.

    ``permanent``: a broker answered and refused this client (its certificate, or an ERROR
    frame to CONNECT): trying again will not help until someone changes a configuration.
    Otherwise the next attempt may succeed.
    """

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


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
        inbox: called with each MESSAGE frame as ``(generation, frame)``, on the receiver
            thread (``StompBroker`` routes it to a direct handler or its dispatcher).
        receipt: ``receipt(receipt_id, outcome, message)`` settles a waiter (RECEIPT, or an
            ERROR that names a receipt).
        lost: ``lost(generation)`` once the connection is closed.
    """

    def __init__(
        self,
        generation: int,
        *,
        tcp_nodelay: bool,
        inbox: Callable[[tuple[int, Any]], None],
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
        self.inbox((self.generation, frame))

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
    tls: ClientTls | None = None,
) -> Any:
    """A stomp.py connection over ``addresses`` (tried in order) that answered CONNECTED.

    ``listener`` is installed on it before it connects. With ``tls`` every address is
    reached over TLS with that client certificate, and the broker's certificate must be
    signed by ``tls.ca_certificate`` and name the host.

    Raises:
        AttemptFailed: no address accepted the TCP connection, or the broker refused the
            CONNECT (ERROR frame) or the TLS handshake (both ``permanent``), or no answer
            came in 10 s.
    """
    if tls is None:
        conn = _Connection12(_Transport, addresses, heartbeat_ms)
    else:
        conn = _Connection12(_TlsTransport, addresses, heartbeat_ms)
        conn.set_ssl(
            for_hosts=addresses, cert_file=str(tls.certificate), key_file=str(tls.key),
            ca_certs=str(tls.ca_certificate),
        )  # fmt: skip
    listener.conn = conn
    conn.set_listener("workbench", listener)
    try:
        conn.connect(username=login, passcode=passcode, wait=False)
    except IO_ERRORS as e:
        # stomp.py logs why the TLS handshake failed and raises a bare exception: ask again.
        reason = None if tls is None else tls_refusal(addresses, tls)
        if reason is not None:
            raise AttemptFailed(f"{describe(addresses)}: {reason}", permanent=True) from e
        raise AttemptFailed(f"no broker at {describe(addresses)}: {e or type(e).__name__}") from e
    listener.answered.wait(10.0)
    if not listener.connected or listener.closed.is_set():
        with contextlib.suppress(*IO_ERRORS):
            conn.transport.disconnect_socket()
        tls_error = getattr(conn.transport, "tls_error", "")
        if listener.error or tls_error:
            problem = listener.error or tls_error
            raise AttemptFailed(
                f"{describe(addresses)} refused the connection: {problem}", permanent=True
            )
        raise AttemptFailed(f"{describe(addresses)} refused the connection: no CONNECTED frame")
    return conn


# -- TLS ----------------------------------------------------------------------------------------


def tls_refusal(
    addresses: Sequence[tuple[str, int]], tls: ClientTls, timeout: float = 5.0
) -> str | None:
    """Why the broker refuses a TLS handshake with ``tls``, or None if it does not.

    The first address that answers decides. Only for explaining a failed connection:
    stomp.py logs the handshake's error and raises a bare exception.
    """
    try:
        context = tls.context()
    except ConfigError as e:
        return str(e)
    for host, port in addresses:
        try:
            with (
                socket.create_connection((host, port), timeout) as raw,
                context.wrap_socket(raw, server_hostname=host),
            ):
                return None
        except ssl.SSLError as e:
            return tls_refusal_reason(e)
        except OSError:
            continue
    return None


def tls_refusal_reason(error: ssl.SSLError) -> str | None:
    """A sentence for a TLS refusal (an untrusted certificate, a TLS alert), else None.

    None for errors that are no refusal (an EOF, a reset): the next attempt may succeed.
    """
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"the broker's certificate is not trusted ({error.verify_message}): it must be "
            "signed by the consortium CA and name the host connected to"
        )
    reason = str(error.reason or error).lower().replace("_", " ")
    if "alert" in reason:
        return f"the broker refused this client's certificate in the TLS handshake ({reason})"
    return None


class _Transport(FastFrames, stomp.transport.Transport):  # type: ignore[misc]
    """stomp.py's transport, parsing received frames with ``stomp_frames.parse_frame``."""


class _TlsTransport(_Transport):
    """stomp.py's transport, but a TLS connection's receiver loop ends when the broker closes.

    After the handshake stomp.py reads a TLS socket in non-blocking mode and takes an empty
    read (or a TLS alert) for "no data yet": when the broker closes the connection, or
    refuses the client certificate after a TLS 1.3 handshake, its receiver thread spins on a
    socket that is always readable and never reports the loss. Here an empty read or a TLS
    error on a non-blocking socket ends the loop, which reports the disconnection, and a TLS
    error is kept in ``tls_error``.
    """

    tls_error = ""

    def receive(self) -> Any:
        if self.blocking:  # plain sockets, and TLS ones while stomp.py shuts them down
            return super().receive()
        sock = self.socket
        if sock is None:
            self.running = False
            return b""
        try:
            data = sock.recv(_RECV_BYTES)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # no data yet: stomp.py waits for the socket to become readable
        except OSError as e:  # a TLS alert, a reset
            if isinstance(e, ssl.SSLError):
                self.tls_error = tls_refusal_reason(e) or ""
            self.running = False
            raise
        if not data:  # the broker closed the connection
            self.running = False
        return data


class _Connection12(stomp.Connection12):  # type: ignore[misc]
    """``stomp.Connection12`` on one of our transports (set up as stomp.py's constructor does)."""

    def __init__(
        self,
        transport_class: type[_Transport],
        addresses: list[tuple[str, int]],
        heartbeat_ms: int,
    ) -> None:
        transport = transport_class(
            host_and_ports=addresses, prefer_localhost=False, try_loopback_connect=False,
            reconnect_sleep_initial=0.0, reconnect_attempts_max=1, timeout=5.0,
            auto_decode=False,
        )  # fmt: skip
        BaseConnection.__init__(self, transport)
        Protocol12.__init__(self, transport, (heartbeat_ms, heartbeat_ms), True)


def _text(body: Any) -> str:
    return body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
