"""Queue statistics from the managed broker, and the CONNECT probe, over a minimal STOMP client.

``StompSession`` is a synchronous STOMP 1.2 exchange on one socket (no threads, no stomp.py):
enough for ``connect_probe`` (does the broker answer a CONNECT, and which version is it) and
for ``queue_stats``, which asks ActiveMQ's statistics broker plugin about every queue. The
plugin's replies are ``jms-map-xml`` bodies, which need XStream on the broker's classpath
(docs/broker.md tells why).

On a locked-down broker (``stomp+ssl``, client certificates required) the session speaks TLS
with a ``ClientTls`` identity, which must be the Hub's: only the Hub may use the statistics
plugin and temporary queues. A broker that refuses the identity (in the TLS handshake, or
with an ERROR frame to CONNECT) is a ``BrokerError`` saying so.

>>> connect_probe(40513, timeout=1.0)                           # doctest: +SKIP
'ActiveMQ/5.17.2'
>>> [q.name for q in queue_stats(40513, timeout=5.0)]          # doctest: +SKIP
['/queue/elic.hub.inbox']
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from xml.etree import ElementTree

from workbench.transport.activemq_config import HOST, BrokerError
from workbench.transport.stomp_connection import ClientTls, tls_refusal_reason

__all__ = ["QueueStats", "StompSession", "connect_probe", "parse_map", "queue_stats"]

_STATS_QUERY = "/queue/ActiveMQ.Statistics.Destination.>"
_STATS_END = "ActiveMQ.Statistics.Destination.List.End.With.Null"


@dataclass(frozen=True)
class QueueStats:
    """One queue as the broker counts it."""

    name: str  # "/queue/elic.hub.inbox"
    depth: int  # stored and not yet acknowledged (includes in-flight)
    in_flight: int  # delivered to a consumer, not yet acknowledged
    consumers: int
    enqueued: int  # since the broker started
    dequeued: int  # acknowledged since the broker started


class StompSession:
    """One STOMP connection to the broker on loopback ``port``, read and written in turn.

    With ``tls``, over TLS with that client certificate.

    Raises:
        BrokerError: the broker refused the TLS handshake or does not have a certificate
            that ``tls`` trusts.
        OSError: the connection failed.
    """

    def __init__(self, port: int, timeout: float, tls: ClientTls | None = None) -> None:
        raw = socket.create_connection((HOST, port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock: socket.socket = raw
        if tls is not None:
            try:
                self.sock = tls.context().wrap_socket(raw, server_hostname=HOST)
            except ssl.SSLError as e:
                raw.close()
                reason = tls_refusal_reason(e)
                if reason is None:
                    raise ConnectionError(f"the TLS handshake failed: {e}") from e
                raise BrokerError(reason) from e
            except BaseException:
                raw.close()
                raise
        self.buf = b""

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def send(self, command: str, headers: dict[str, str]) -> None:
        """Send one frame without a body."""
        lines = [command, *(f"{k}:{v}" for k, v in headers.items()), "", ""]
        self.sock.sendall("\n".join(lines).encode() + b"\0")

    def read(self) -> tuple[str, dict[str, str], bytes]:
        """The next frame: command, headers and body (heart-beats are skipped)."""
        while True:
            self.buf = self.buf.lstrip(b"\r\n")  # heart-beats
            head_end = self.buf.find(b"\n\n")
            if head_end >= 0:
                head = self.buf[:head_end].decode(errors="replace").split("\n")
                headers = dict(line.split(":", 1) for line in head[1:] if ":" in line)
                start = head_end + 2
                if "content-length" in headers:
                    end = start + int(headers["content-length"])
                else:
                    end = self.buf.find(b"\0", start)
                if 0 <= end < len(self.buf):
                    body, self.buf = self.buf[start:end], self.buf[end + 1 :]
                    return head[0].strip(), headers, body
            try:
                chunk = self.sock.recv(65536)
            except ssl.SSLError as e:  # TLS 1.3: a refused client certificate shows up here
                reason = tls_refusal_reason(e)
                if reason is None:
                    raise ConnectionError(f"the TLS connection failed: {e}") from e
                raise BrokerError(reason) from e
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            self.buf += chunk

    def connect(self) -> str:
        """CONNECT; the ``server`` header of the CONNECTED answer.

        Raises:
            BrokerError: the broker answered with an ERROR frame (it refused this client).
            ConnectionError: the connection closed before an answer.
        """
        self.send("CONNECT", {"accept-version": "1.2", "host": HOST})
        command, headers, body = self.read()
        if command == "ERROR":
            message = headers.get("message", "") or body[:200].decode(errors="replace")
            raise BrokerError(f"the broker refused the CONNECT: {message}")
        if command != "CONNECTED":
            raise ConnectionError(f"{command}: {headers.get('message', body[:200].decode())}")
        return headers.get("server", "")


def connect_probe(port: int, timeout: float, tls: ClientTls | None = None) -> str | None:
    """The ``server`` header of a CONNECTED answer on ``port``, or None when not answering.

    Raises:
        BrokerError: the broker answered and refused this client (TLS or CONNECT).
        OSError: no connection.
    """
    session = StompSession(port, timeout, tls)
    try:
        server = session.connect()
        session.send("DISCONNECT", {})
        return server
    except (ConnectionError, TimeoutError):
        return None
    finally:
        session.close()


def queue_stats(port: int, timeout: float, tls: ClientTls | None = None) -> tuple[QueueStats, ...]:
    """Ask the statistics plugin about every queue; its replies end with an empty map.

    Raises:
        BrokerError: the broker answered with an ERROR frame or an unreadable reply, or the
            plugin did not answer within ``timeout`` seconds.
        OSError: the connection failed.
    """
    session = StompSession(port, timeout, tls)
    try:
        session.connect()
        reply_to = "/temp-queue/workbench-stats"
        session.send(
            "SUBSCRIBE",
            {
                "id": "stats",
                "destination": reply_to,
                "ack": "auto",
                "transformation": "jms-map-xml",
            },
        )
        session.send(
            "SEND", {"destination": _STATS_QUERY, "reply-to": reply_to, _STATS_END: "true"}
        )
        found = []
        while True:
            command, headers, body = session.read()
            if command == "ERROR":
                raise BrokerError(f"the statistics query failed: {headers.get('message', '')}")
            if command != "MESSAGE":
                continue
            entries = parse_map(body)
            if not entries:
                break
            name = entries.get("destinationName", "")
            found.append(
                QueueStats(
                    name="/queue/" + name.removeprefix("queue://"),
                    depth=int(entries.get("size", 0)),
                    in_flight=int(entries.get("inflightCount", 0)),
                    consumers=int(entries.get("consumerCount", 0)),
                    enqueued=int(entries.get("enqueueCount", 0)),
                    dequeued=int(entries.get("dequeueCount", 0)),
                )
            )
        session.send("DISCONNECT", {})
        return tuple(sorted(found, key=lambda q: q.name))
    except TimeoutError as e:
        raise BrokerError(
            f"the statistics plugin did not answer within {timeout:g} s (is XStream on the "
            "broker's classpath? see docs/broker.md)"
        ) from e
    finally:
        session.close()


def parse_map(body: bytes) -> dict[str, str]:
    """A ``jms-map-xml`` body: ``<map><entry><string>key</string><long>1</long></entry>``."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as e:
        raise BrokerError(f"unreadable statistics reply: {body[:120]!r}") from e
    entries = {}
    for entry in root.iter("entry"):
        children = list(entry)
        if len(children) == 2 and children[0].text is not None:
            entries[children[0].text] = children[1].text or ""
    return entries
