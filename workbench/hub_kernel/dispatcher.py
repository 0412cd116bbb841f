"""The dispatcher: experiment orders and cancels onto each spoke's orders queue.

Orders are sent persistently (the ``Broker`` returns once the broker confirmed). An order
keeps the message id it was stored with, and spokes deduplicate on its natural key
(experiment, spoke), so sending it again after a failure or a hub restart is harmless;
``redispatch`` does exactly that for every order or cancel not yet confirmed.
"""

from __future__ import annotations

import logging

from workbench.core.messages import (
    ExperimentCancel,
    ExperimentOrder,
    Manifest,
    encode,
    orders_queue,
)
from workbench.hub_kernel.store import ResultsStore
from workbench.transport.base import Broker, TransportError

log = logging.getLogger(__name__)


class Dispatcher:
    """Sends orders and cancels, and records in the store which ones the broker confirmed."""

    def __init__(self, broker: Broker, store: ResultsStore) -> None:
        self._broker = broker
        self._store = store

    def send_order(self, manifest: Manifest, digest: str, spoke_id: str) -> bool:
        """Send one spoke its order; ``False`` (logged) if the broker did not confirm it."""
        order = ExperimentOrder(
            id=self._store.order_message_id(manifest.experiment_id, spoke_id),
            spoke_id=spoke_id,
            manifest=manifest,
            manifest_hash=digest,
        )
        try:
            self._broker.send(orders_queue(spoke_id), encode(order))
        except TransportError as e:
            log.warning(
                "order of %s to %s not sent (will retry): %s", manifest.experiment_id, spoke_id, e
            )
            return False
        self._store.mark_sent(manifest.experiment_id, spoke_id, "order")
        log.info("sent order of %s to %s", manifest.experiment_id, spoke_id)
        return True

    def send_cancel(self, experiment_id: str, spoke_id: str) -> bool:
        """Tell one spoke to cancel; ``False`` (logged) if the broker did not confirm it."""
        cancel = ExperimentCancel(spoke_id=spoke_id, experiment_id=experiment_id)
        try:
            self._broker.send(orders_queue(spoke_id), encode(cancel))
        except TransportError as e:
            log.warning("cancel of %s to %s not sent (will retry): %s", experiment_id, spoke_id, e)
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
                record.manifest, record.manifest_hash, spoke_id
            ):
                sent += 1
        for experiment_id, spoke_id in self._store.pending_cancels():
            if self.send_cancel(experiment_id, spoke_id):
                sent += 1
        return sent
