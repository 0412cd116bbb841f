"""The dispatcher: signed experiment orders and cancels onto each spoke's orders queue.

Each order and cancel is signed with the hub's key (``workbench.trust.wire``): the body is
the message's canonical JSON, the signature travels in the ``elic-signature`` header, and
spokes refuse what does not verify as the hub's. Orders are sent persistently (the
``Broker`` returns once the broker confirmed). An order keeps the message id it was stored
with, and a cancel's id is derived from it, so sending either again after a failure or a
hub restart sends the very same signed body (Ed25519 signatures are deterministic), which
spokes deduplicate on its natural key (experiment, spoke); ``redispatch`` does exactly that
for every order or cancel not yet confirmed. Every confirmed send is in the audit trail.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from workbench.core.messages import (
    ExperimentCancel,
    ExperimentOrder,
    Manifest,
    encode,
    orders_queue,
)
from workbench.hub_kernel.audit_trail import AuditTrail
from workbench.hub_kernel.store import ResultsStore
from workbench.transport.base import Broker, TransportError
from workbench.trust.wire import WireSigner

log = logging.getLogger(__name__)


class Dispatcher:
    """Sends signed orders and cancels, and records which ones the broker confirmed.

    Args:
        broker: the hub's broker connection.
        store: where orders are kept until confirmed.
        signer: the hub's key; ``None`` sends unsigned messages (an ``insecure_unsigned``
            hub only: spokes refuse them).
        audit: the hub's audit trail.
    """

    def __init__(
        self,
        broker: Broker,
        store: ResultsStore,
        signer: WireSigner | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        self._broker = broker
        self._store = store
        self._signer = signer
        self._audit = audit or AuditTrail(None)

    def send_order(
        self, manifest: Manifest, digest: str, spoke_id: str, resend: bool = False
    ) -> bool:
        """Send one spoke its order; ``False`` (logged) if the broker did not confirm it."""
        order = ExperimentOrder(
            id=self._store.order_message_id(manifest.experiment_id, spoke_id),
            spoke_id=spoke_id,
            manifest=manifest,
            manifest_hash=digest,
        )
        if not self._send(order, "order", manifest.experiment_id, spoke_id, resend):
            return False
        self._store.mark_sent(manifest.experiment_id, spoke_id, "order")
        log.info("sent order of %s to %s", manifest.experiment_id, spoke_id)
        return True

    def send_cancel(self, experiment_id: str, spoke_id: str, resend: bool = False) -> bool:
        """Tell one spoke to cancel; ``False`` (logged) if the broker did not confirm it."""
        order_id = self._store.order_message_id(experiment_id, spoke_id)
        cancel = ExperimentCancel(
            id=hashlib.sha256(f"cancel:{order_id}".encode()).hexdigest()[:32],
            spoke_id=spoke_id,
            experiment_id=experiment_id,
        )
        if not self._send(cancel, "cancel", experiment_id, spoke_id, resend):
            return False
        self._store.mark_sent(experiment_id, spoke_id, "cancel")
        log.info("sent cancel of %s to %s", experiment_id, spoke_id)
        return True

    def redispatch(self) -> int:
        """Send every stored order and cancel the broker has not confirmed; returns how many
        went out."""
        sent = 0
        for experiment_id, spoke_id in self._store.pending_orders():
            record = self._store.experiment(experiment_id)
            if record is not None and self.send_order(
                record.manifest, record.manifest_hash, spoke_id, resend=True
            ):
                sent += 1
        for experiment_id, spoke_id in self._store.pending_cancels():
            if self.send_cancel(experiment_id, spoke_id, resend=True):
                sent += 1
        return sent

    def signed(self, message: ExperimentOrder | ExperimentCancel) -> tuple[bytes, dict[str, str]]:
        """The body and headers ``message`` is sent with (signed, unless there is no key)."""
        if self._signer is None:
            return encode(message), {}
        document: dict[str, Any] = message.model_dump(mode="json")
        return self._signer.sign(document)

    def _send(
        self,
        message: ExperimentOrder | ExperimentCancel,
        what: str,
        experiment_id: str,
        spoke_id: str,
        resend: bool,
    ) -> bool:
        body, headers = self.signed(message)
        try:
            self._broker.send(orders_queue(spoke_id), body, headers)
        except TransportError as e:
            log.warning(
                "%s of %s to %s not sent (will retry): %s", what, experiment_id, spoke_id, e
            )
            return False
        key_id = None if self._signer is None else self._signer.key_id
        digest = hashlib.sha256(body).hexdigest()
        self._audit.sent(what, experiment_id, spoke_id, message.id, digest, key_id, resend)
        return True
