"""``connect``: a ``Broker`` from configured URLs (the one place that picks the transport)."""

from __future__ import annotations

from collections.abc import Sequence

from workbench.errors import ConfigError
from workbench.transport.base import Broker


def connect(urls: str | Sequence[str], **options: object) -> Broker:
    """Connect to the first reachable broker of ``urls`` (``stomp://host:port``, failover list).

    Raises:
        ConfigError: a URL of an unknown scheme.
        TransportError: no broker answered.
    """
    listed = [urls] if isinstance(urls, str) else list(urls)
    if not listed or not all(u.startswith(("stomp://", "failover:")) for u in listed):
        raise ConfigError(f"broker URLs must be stomp://host:port, got {listed}")
    from workbench.transport.stomp_broker import StompBroker

    return StompBroker.from_url(",".join(listed), **options)
