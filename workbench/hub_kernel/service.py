"""``Hub``: the store, the broker, inbox ingestion, dispatch and the HTTP API, wired together.

Tests build a ``Hub`` from parts (an ``InMemoryBroker`` connection, a SQLite file);
``workbench hub serve`` builds one with ``Hub.from_config`` from a TOML or JSON file
(``config.HubConfig`` has the settings).

>>> hub = Hub(ResultsStore.open("sqlite:///hub.sqlite"), broker, StudyCatalog(root),
...           signer=WireSigner(load_private_key("hub/private.pem")),
...           trust=TrustStore.from_paths(["spoke-keys"]), audit=AuditLog("hub.audit.jsonl"))
... # doctest: +SKIP
>>> with hub:                                                        # doctest: +SKIP
...     HubClient(hub.url).health()["status"]
'ok'
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from workbench.core.messages import HUB_INBOX, orders_queue
from workbench.errors import ConfigError
from workbench.hub_kernel.api import ApiServer, HubApp
from workbench.hub_kernel.audit_trail import AuditTrail
from workbench.hub_kernel.config import HubConfig
from workbench.hub_kernel.dispatcher import Dispatcher
from workbench.hub_kernel.experiments import Experiments
from workbench.hub_kernel.ingest import Ingestor
from workbench.hub_kernel.registry import Registry
from workbench.hub_kernel.store import ResultsStore
from workbench.hub_kernel.studies import StudyCatalog
from workbench.transport.base import Broker, Subscription
from workbench.transport.stomp_connection import ClientTls
from workbench.trust.audit import AuditLog
from workbench.trust.checks import Checks, InlineChecks, WorkerChecks
from workbench.trust.keys import TrustStore, load_private_key
from workbench.trust.wire import WireSigner

log = logging.getLogger(__name__)


class Hub:
    """The hub process's parts; ``start()`` serves, ``stop()`` settles and shuts down.

    Args:
        store, broker, studies: the results store, a broker connection, the study folder.
        host, port: where the API listens (port 0 picks a free one).
        allowed_spokes: spokes known before their first heartbeat (the spokes named in
            ``trust`` are allow-listed too).
        prefetch, batch_size, max_delay_s, redispatch_s: ingestion and resend tuning.
        signer: the hub's key, signing every order and cancel.
        trust: the spokes' public keys, each named after its spoke: every inbox message must
            verify as signed by the spoke it names.
        audit: the hub's audit log (one writer: this hub).
        insecure_unsigned: allow ``signer`` or ``trust`` to be ``None`` (tests only).
        signature_worker: check signatures in a child process (``WorkerChecks``); ``None``:
            if the machine has three cores or more (on two, shared with a broker, it moved
            CPU off the ingesting thread but did not raise the rate: ``docs/trust.md``).
        owns_broker, owns_store, owns_audit: close these on ``stop()``.

    Raises:
        ConfigError: ``signer`` or ``trust`` missing without ``insecure_unsigned``.
    """

    def __init__(
        self,
        store: ResultsStore,
        broker: Broker,
        studies: StudyCatalog,
        host: str = "127.0.0.1",
        port: int = 0,
        allowed_spokes: Sequence[str] = (),
        prefetch: int = 1000,
        batch_size: int = 200,
        max_delay_s: float = 0.02,
        redispatch_s: float = 30.0,
        owns_broker: bool = False,
        owns_store: bool = False,
        *,
        signer: WireSigner | None = None,
        trust: TrustStore | None = None,
        audit: AuditLog | None = None,
        insecure_unsigned: bool = False,
        owns_audit: bool = False,
        signature_worker: bool | None = None,
    ) -> None:
        if (signer is None or trust is None) and not insecure_unsigned:
            raise ConfigError(
                "a hub signs its orders and verifies every spoke message: give it a signer "
                "and the spokes' trust store, or insecure_unsigned=True (tests only)"
            )
        self.store = store
        self.broker = broker
        self.studies = studies
        self.signer = signer
        self.trust = trust
        self.audit = AuditTrail(audit)
        self.registry = Registry(store)
        self.dispatcher = Dispatcher(broker, store, signer, self.audit)
        self.experiments = Experiments(
            store, self.registry, studies, self.dispatcher, audit=self.audit
        )
        if signature_worker is None:
            signature_worker = _cores() > 2
        self.checks: Checks = (
            WorkerChecks() if trust is not None and signature_worker else InlineChecks()
        )
        self.ingestor = Ingestor(
            store, batch_size=batch_size, max_delay_s=max_delay_s, trust=trust,
            audit=self.audit, checks=self.checks,
        )  # fmt: skip
        self.app = HubApp(store, self.registry, studies, self.experiments, self._health)
        self._host, self._port = host, port
        self._allowed = tuple(allowed_spokes)
        self._prefetch = prefetch
        self._redispatch_s = redispatch_s
        self._owns_broker = owns_broker
        self._owns_store = owns_store
        self._owns_audit = owns_audit
        self._server: ApiServer | None = None
        self._subscription: Subscription | None = None
        self._stop = threading.Event()
        self._redispatcher: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: HubConfig | Path, broker: Broker | None = None) -> Hub:
        """A hub from settings, connecting to the broker unless one is given.

        Raises:
            ConfigError: invalid settings, or no broker URL and no broker.
        """
        if isinstance(config, Path):
            config = HubConfig.from_file(config)
        config.check_trust()
        signer = WireSigner(load_private_key(config.signing_key)) if config.signing_key else None
        trust = TrustStore.from_paths([config.spoke_keys]) if config.spoke_keys else None
        audit_path = config.audit_path()
        if broker is None and not config.broker:
            raise ConfigError("give the hub a broker URL")
        audit = AuditLog(audit_path)
        try:
            store = ResultsStore.open(config.db, enrol_on_heartbeat=config.enrol_on_heartbeat)
        except BaseException:
            audit.close()
            raise
        owned_broker = broker is None
        try:
            if broker is None:
                broker = connect_broker(config.broker, config.client_tls())
        except BaseException:
            store.close()
            audit.close()
            raise
        return cls(
            store, broker, StudyCatalog(config.studies), config.host, config.port,
            config.allowed_spokes, config.prefetch, config.batch_size, config.max_delay_s,
            config.redispatch_s, owns_broker=owned_broker, owns_store=True, signer=signer,
            trust=trust, audit=audit, insecure_unsigned=config.insecure_unsigned,
            owns_audit=True, signature_worker=config.signature_worker,
        )  # fmt: skip

    @property
    def url(self) -> str:
        """The API's base URL (once started)."""
        if self._server is None:
            raise RuntimeError("the hub is not started")
        return self._server.url

    def start(self) -> Hub:
        """Allow-list the configured spokes, resend pending orders, consume the inbox, serve."""
        self.store.allow_spokes(self.allowed_spokes())
        self.audit.record("hub.started", self._trust_facts())
        self._server = ApiServer(self.app, self._host, self._port)
        try:
            self.ingestor.start()
            # handle() only notes the time and queues: it may run on the receiving thread.
            self._subscription = self.broker.subscribe(
                HUB_INBOX, self.ingestor.handle, prefetch=self._prefetch, direct=True
            )
        except BaseException:
            try:  # the flusher thread, the signature checker process, the listening socket
                self.ingestor.stop()
            finally:
                self.checks.close()
                self._server.stop()
                self._server = None
            raise
        self._stop.clear()
        self._redispatcher = threading.Thread(
            target=self._redispatch_loop, name="hub-redispatch", daemon=True
        )
        self._redispatcher.start()
        self._server.start()
        log.info("hub serving at %s", self._server.url)
        return self

    def stop(self) -> None:
        """Stop serving, commit and acknowledge what was received, then disconnect."""
        if self._server is not None:
            self._server.stop()
        self._stop.set()
        if self._redispatcher is not None:
            self._redispatcher.join(timeout=10)
            self._redispatcher = None
        self.ingestor.stop()
        self.checks.close()
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        if self._owns_broker:
            self.broker.close()
        if self._owns_store:
            self.store.close()
        self.audit.record("hub.stopped", {})
        if self._owns_audit and self.audit.log is not None:
            self.audit.log.close()
        log.info("hub stopped")

    def allowed_spokes(self) -> tuple[str, ...]:
        """The configured spokes and the spokes whose keys the hub trusts."""
        keyed = []
        for name in self._spoke_keys():
            try:
                orders_queue(name)
            except ValueError:
                log.warning("a trusted spoke key is named %r, which is not a spoke id", name)
                continue
            keyed.append(name)
        return tuple(dict.fromkeys((*self._allowed, *keyed)))

    def _spoke_keys(self) -> dict[str, list[str]]:
        """The trusted key ids by spoke (several while a spoke's key is rotated)."""
        keys: dict[str, list[str]] = {}
        if self.trust is not None:
            for kid in self.trust:
                keys.setdefault(self.trust.name_of(kid) or kid, []).append(kid)
        return keys

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _redispatch_loop(self) -> None:
        while True:
            try:
                self.dispatcher.redispatch()
            except Exception:  # a store outage: try again next round
                log.exception("redispatch failed")
            if self._stop.wait(self._redispatch_s):
                return

    def _trust_facts(self) -> dict[str, Any]:
        return {
            "signing_required": self.trust is not None,
            "hub_key_id": None if self.signer is None else self.signer.key_id,
            "spoke_keys": self._spoke_keys(),
        }

    def _checks_where(self) -> str:
        """Where inbox signatures are checked: ``worker`` (its own process), ``hub``, or
        ``none`` (an ``insecure_unsigned`` hub)."""
        if self.trust is None:
            return "none"
        worker = isinstance(self.checks, WorkerChecks) and self.checks.pid is not None
        return "worker" if worker else "hub"

    def _health(self) -> dict[str, Any]:
        stats = self.ingestor.stats
        head = self.audit.head()
        path = self.audit.path
        return {
            "ingest": {
                "pending": self.ingestor.pending(), "accepted": stats.accepted,
                "rejected": stats.rejected, "replayed": stats.replayed, "batches": stats.batches,
                "failures": stats.failures, "signature_checks": self._checks_where(),
            },
            "trust": self._trust_facts(),
            "audit": {
                "path": None if path is None else str(path),
                "head": None if head is None else str(head),
                "failures": self.audit.failures,
            },
        }  # fmt: skip


def _cores() -> int:
    """The cores this process may run on: its affinity mask (a container's cpuset, not the
    host's count; a CPU quota such as ``docker run --cpus`` is not seen)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def freeze_startup_heap() -> None:
    """Take every object alive now out of the cyclic garbage collector's walks (``gc.freeze``).

    A hub process keeps what it holds once started (modules, SQLAlchemy's and pydantic's
    schemas, the connections: some 100,000 objects) until it exits, yet each full
    collection walks them all again: about one per 5,000 ingested messages, 35-50 ms each.
    Frozen, they are skipped: the ingestion benchmark's hub spends 5-8 µs less CPU per
    message. ``workbench hub serve`` calls this once its hub is built, before it starts
    (so no message is in flight); garbage is collected first, so none of it is kept.
    ``Hub.start`` does not call it: a process that starts many hubs (the test suite) would
    then keep the cyclic garbage of each one forever.
    """
    gc.collect()
    gc.freeze()


def connect_broker(urls: Sequence[str], tls: ClientTls | None = None) -> Broker:
    """A connected ``Broker`` for the configured URLs (``workbench.transport.factory``).

    Raises:
        ConfigError: a URL of an unknown scheme.
        TransportError: no broker answered.
    """
    from workbench.transport.factory import connect

    return connect(list(urls), tls=tls)
