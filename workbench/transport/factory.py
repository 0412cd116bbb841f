"""``connect``: a ``Broker`` from configured URLs (the one place that picks the transport)."""

from __future__ import annotations

from collections.abc import Sequence

from workbench.errors import ConfigError
from workbench.transport.base import Broker
from workbench.transport.stomp_connection import ClientTls


def connect(urls: str | Sequence[str], tls: ClientTls | None = None, **options: object) -> Broker:
    """Connect to the first reachable broker of ``urls``.

    Args:
        urls: ``stomp://host:port``, ``stomp+ssl://host:port``, a list of them or a
            ``failover:(...)`` URL; all of one scheme.
        tls: the client's certificate, key and CA (``ClientTls``); required for
            ``stomp+ssl://`` and refused for ``stomp://``.
        options: passed to ``StompBroker``.

    Raises:
        ConfigError: a URL of an unknown scheme, or ``tls`` and the scheme disagree.
        TransportError: no broker answered, or the broker refused this client.
    """
    listed = [urls] if isinstance(urls, str) else list(urls)
    schemes = ("stomp://", "stomp+ssl://", "failover:")
    if not listed or not all(u.startswith(schemes) for u in listed):
        raise ConfigError(f"broker URLs must be stomp://host:port or stomp+ssl://..., got {listed}")
    from workbench.transport.stomp_broker import StompBroker

    return StompBroker.from_url(",".join(listed), tls=tls, **options)
