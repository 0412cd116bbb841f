"""``Hub``: the store, the broker, inbox ingestion, dispatch and the HTTP API, wired together.

Tests build a ``Hub`` from parts (an ``InMemoryBroker`` connection, a SQLite file);
``workbench hub serve`` builds one with ``Hub.from_config`` from a TOML or JSON file::

    db = "sqlite:///var/lib/elic/hub.sqlite"     # any SQLAlchemy URL
    broker = ["stomp://127.0.0.1:61613"]         # one URL, or several for failover
    host = "127.0.0.1"
    port = 8750
    studies = "studies"                          # relative to the config file
    allowed_spokes = ["site-01", "site-02"]
    enrol_on_heartbeat = true                    # a spoke's first heartbeat makes it known

>>> with Hub(ResultsStore.open("sqlite:///hub.sqlite"), broker, StudyCatalog(root)) as hub:
...     HubClient(hub.url).health()["status"]                       # doctest: +SKIP
'ok'
"""

from __future__ import annotations

import json
import logging
import threading
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any

from workbench.core.messages import HUB_INBOX
from workbench.errors import ConfigError
from workbench.hub_kernel.api import ApiServer, HubApp
from workbench.hub_kernel.dispatcher import Dispatcher
from workbench.hub_kernel.experiments import Experiments
from workbench.hub_kernel.ingest import Ingestor
from workbench.hub_kernel.registry import Registry
from workbench.hub_kernel.store import DEFAULT_URL, ResultsStore
from workbench.hub_kernel.studies import StudyCatalog
from workbench.transport.base import Broker, Subscription

log = logging.getLogger(__name__)

DEFAULT_PORT = 8750


def default_studies_dir() -> Path:
    """``studies/`` of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "studies"


@dataclass(frozen=True)
class HubConfig:
    """A hub's settings (see the module docstring for the file format)."""

    db: str = DEFAULT_URL
    broker: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    studies: Path = field(default_factory=default_studies_dir)
    allowed_spokes: tuple[str, ...] = ()
    enrol_on_heartbeat: bool = True
    prefetch: int = 500
    batch_size: int = 200
    max_delay_s: float = 0.02
    redispatch_s: float = 30.0

    @classmethod
    def from_file(cls, path: Path) -> HubConfig:
        """Read a ``.toml`` or ``.json`` file; relative paths are relative to its folder."""
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the hub config {path}: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the hub config must be an object/table")
        return cls.from_dict(data, base=path.parent)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path = Path(".")) -> HubConfig:
        """Build from parsed settings; unknown keys are an error (typos must not pass)."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown hub settings: {', '.join(sorted(unknown))}")
        values = dict(data)
        for key in ("broker", "allowed_spokes"):
            if isinstance(values.get(key), str):
                values[key] = (values[key],)
            if key in values:
                values[key] = tuple(str(v) for v in values[key])
        if "studies" in values:
            values["studies"] = base / str(values["studies"])
        try:
            config = cls(**values)
        except TypeError as e:
            raise ConfigError(f"invalid hub settings: {e}") from e
        if not 0 <= config.port <= 65535 or config.prefetch < 1 or config.batch_size < 1:
            raise ConfigError("port must be 0-65535, prefetch and batch_size at least 1")
        return config

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values (for logs)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


class Hub:
    """The hub process's parts; ``start()`` serves, ``stop()`` settles and shuts down."""

    def __init__(
        self,
        store: ResultsStore,
        broker: Broker,
        studies: StudyCatalog,
        host: str = "127.0.0.1",
        port: int = 0,
        allowed_spokes: Sequence[str] = (),
        prefetch: int = 500,
        batch_size: int = 200,
        max_delay_s: float = 0.02,
        redispatch_s: float = 30.0,
        owns_broker: bool = False,
        owns_store: bool = False,
    ) -> None:
        self.store = store
        self.broker = broker
        self.studies = studies
        self.registry = Registry(store)
        self.dispatcher = Dispatcher(broker, store)
        self.experiments = Experiments(store, self.registry, studies, self.dispatcher)
        self.ingestor = Ingestor(store, batch_size=batch_size, max_delay_s=max_delay_s)
        self.app = HubApp(store, self.registry, studies, self.experiments, self._health)
        self._host, self._port = host, port
        self._allowed = tuple(allowed_spokes)
        self._prefetch = prefetch
        self._redispatch_s = redispatch_s
        self._owns_broker = owns_broker
        self._owns_store = owns_store
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
        owned_broker = broker is None
        if broker is None:
            if not config.broker:
                raise ConfigError("give the hub a broker URL")
            broker = connect_broker(config.broker)
        store = ResultsStore.open(config.db, enrol_on_heartbeat=config.enrol_on_heartbeat)
        hub = cls(
            store, broker, StudyCatalog(config.studies), config.host, config.port,
            config.allowed_spokes, config.prefetch, config.batch_size, config.max_delay_s,
            config.redispatch_s, owns_broker=owned_broker, owns_store=True,
        )  # fmt: skip
        return hub

    @property
    def url(self) -> str:
        """The API's base URL (once started)."""
        if self._server is None:
            raise RuntimeError("the hub is not started")
        return self._server.url

    def start(self) -> Hub:
        """Allow-list the configured spokes, resend pending orders, consume the inbox, serve."""
        self.store.allow_spokes(self._allowed)
        self._server = ApiServer(self.app, self._host, self._port)
        self.ingestor.start()
        self._subscription = self.broker.subscribe(
            HUB_INBOX, self.ingestor.handle, prefetch=self._prefetch
        )
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
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        if self._owns_broker:
            self.broker.close()
        if self._owns_store:
            self.store.close()
        log.info("hub stopped")

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

    def _health(self) -> dict[str, Any]:
        stats = self.ingestor.stats
        return {
            "ingest": {
                "pending": self.ingestor.pending(), "accepted": stats.accepted,
                "rejected": stats.rejected, "batches": stats.batches, "failures": stats.failures,
            }
        }  # fmt: skip


def connect_broker(urls: Sequence[str]) -> Broker:
    """A connected ``Broker`` for the configured URLs (``workbench.transport.factory``).

    Raises:
        ConfigError: a URL of an unknown scheme.
        TransportError: no broker answered.
    """
    from workbench.transport.factory import connect

    return connect(list(urls))
