"""The outbox sender: sends queued messages until the broker confirms each one.

Messages are written to the spoke's database first (in the same transaction as the state
change they announce); this thread sends them in order and marks each sent only after the
broker's receipt. If the broker is down, it waits with capped exponential backoff and
tries again: nothing is lost, and a message sent twice after a crash between the receipt
and the mark is deduplicated by the hub on its natural key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from workbench.spoke_service.state import SpokeState
from workbench.transport.base import Broker, PartialSend, TransportError
from workbench.trust.wire import WireSigner

log = logging.getLogger(__name__)

_BACKOFF_MIN_S = 0.2
_BACKOFF_MAX_S = 10.0


class OutboxSender:
    """A background thread draining the outbox into the broker."""

    def __init__(
        self,
        state: SpokeState,
        broker: Broker,
        signer: WireSigner,
        on_sent: Callable[[list[int]], None] | None = None,
    ) -> None:
        self._state = state
        self._broker = broker
        self._signer = signer
        self._on_sent = on_sent
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)

    def start(self) -> None:
        """Start sending."""
        self._thread.start()

    def notify(self) -> None:
        """New messages were queued."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the message in flight."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty (or ``timeout``); returns whether it is."""
        deadline = time.monotonic() + timeout
        while self._state.pending(limit=1):
            if time.monotonic() > deadline:
                return False
            self._wake.set()
            time.sleep(0.05)
        return True

    def _run(self) -> None:
        backoff = _BACKOFF_MIN_S
        while not self._stop.is_set():
            self._wake.clear()
            batch = self._state.pending()
            if not batch:
                self._wake.wait(1.0)
                continue
            confirmed: list[int] = []
            try:
                # Signed as sent: Ed25519 is deterministic, so a resend is the same message.
                # Pipelined: one wait for the broker's receipts, not one per message.
                self._broker.send_many(
                    [(i.destination, i.body, self._signer.headers(i.body)) for i in batch]
                )
                confirmed = [item.seq for item in batch]
                backoff = _BACKOFF_MIN_S
            except TransportError as e:
                if isinstance(e, PartialSend):
                    confirmed = [item.seq for item in batch[: e.confirmed]]
                log.warning("outbox: broker unavailable (%s); retrying in %.1f s", e, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
            finally:
                # One commit for the batch: a crash before it re-sends these messages, which
                # the hub deduplicates on their natural keys.
                if confirmed:
                    self._state.mark_sent(confirmed)
                    if self._on_sent is not None:
                        self._on_sent(confirmed)
