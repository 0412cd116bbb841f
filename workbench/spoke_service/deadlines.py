"""When a spoke may no longer start an experiment's cases: the hub's clock, bounded below.

The spoke cannot read the hub's clock, and its own may be far off. The manifest's
``created_at`` is hub time; the order has been held here at least as long as the spoke's
own clock has advanced since storing it (an offset cancels out in the difference). Their
sum is a lower bound of the hub's time now, so a spoke never skips a case whose result the
hub would still accept; the hub refuses late results by its own clock
(``docs/deadlines-and-cancellation.md``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from workbench.core import messages as m
from workbench.core.deadline import DeadlineError, parse_utc
from workbench.spoke_service.state import SpokeState

log = logging.getLogger(__name__)


class DeadlineReckoner:
    """Says whether an experiment's deadline has certainly passed, by the hub's clock.

    Args:
        state: the spoke's state (the stored orders and when each was stored).
        clock: the spoke's wall clock, only ever used as a difference.
    """

    def __init__(self, state: SpokeState, clock: Callable[[], datetime]) -> None:
        self._state = state
        self._clock = clock
        self._lock = threading.Lock()
        self._deadlines: dict[str, tuple[datetime, datetime] | None] = {}

    def passed(self, experiment_id: str) -> bool:
        """Whether the hub's clock has certainly passed the experiment's deadline."""
        with self._lock:
            known = experiment_id in self._deadlines
            found = self._deadlines.get(experiment_id)
        if not known:
            found = self._deadline_of(experiment_id)
            with self._lock:
                self._deadlines[experiment_id] = found
        if found is None:
            return False
        deadline, created = found
        received = self._state.order_received_at(experiment_id)
        held = 0.0 if received is None else max(0.0, self._clock().timestamp() - received)
        return created + timedelta(seconds=held) >= deadline

    def _deadline_of(self, experiment_id: str) -> tuple[datetime, datetime] | None:
        """The order's deadline and creation time (hub time), or ``None`` without one."""
        body = self._state.order_body(experiment_id)
        order = m.parse_message(body) if body else None
        if not isinstance(order, m.ExperimentOrder) or order.manifest.deadline is None:
            return None
        try:
            return parse_utc(order.manifest.deadline), parse_utc(order.manifest.created_at)
        except DeadlineError:
            log.warning("experiment %s: unreadable created_at; its deadline is left to the hub",
                        experiment_id)  # fmt: skip
            return None
