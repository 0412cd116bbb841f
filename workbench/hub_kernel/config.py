"""``HubConfig``: a hub's settings, read from a TOML or JSON file.

``workbench hub serve`` reads them (``Hub.from_config``); every key is optional::

    db = "sqlite:///var/lib/elic/hub.sqlite"     # any SQLAlchemy URL
    broker = ["stomp://127.0.0.1:61613"]         # one URL, or several for failover
    host = "127.0.0.1"
    port = 8750
    studies = "studies"                          # relative to the config file
    allowed_spokes = ["site-01", "site-02"]
    enrol_on_heartbeat = true                    # a spoke's first heartbeat makes it known
    signing_key = "keys/hub/private.pem"         # the hub's Ed25519 key: signs every order
    spoke_keys = "keys/spokes"                   # a folder of <spoke-id>.pem public keys
    audit_log = "hub.audit.jsonl"                # default: beside a SQLite file database
    signature_worker = true                      # default: true on a machine of 3+ cores

Trust: every inbox message must be signed by the key of the spoke it names, and every order
and cancel is signed with ``signing_key``. A hub without ``signing_key`` and ``spoke_keys``
refuses to start unless ``insecure_unsigned = true``, which is for tests and local
experiments only (spokes refuse unsigned orders). The spokes named in ``spoke_keys`` are
allow-listed like ``allowed_spokes``. With ``signature_worker``, the Ed25519 checks run in
a child process on another core (``workbench.trust.checks``): a third of ingestion's CPU.

Unknown keys are an error, so that a typo does not pass as a default.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from workbench.errors import ConfigError
from workbench.hub_kernel.store import DEFAULT_URL
from workbench.transport.stomp_connection import ClientTls

DEFAULT_PORT = 8750


_OPTIONAL_PATHS = ("signing_key", "spoke_keys", "audit_log")


def default_studies_dir() -> Path:
    """``studies/`` of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "studies"


_TLS_KEYS = ("certificate", "key", "ca_certificate")


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
    prefetch: int = 1000
    batch_size: int = 200
    max_delay_s: float = 0.02
    redispatch_s: float = 30.0
    signing_key: Path | None = None
    spoke_keys: Path | None = None
    audit_log: Path | None = None
    insecure_unsigned: bool = False
    signature_worker: bool | None = None  # None: a worker if the machine has 3+ cores
    # Mutual TLS to the broker: {"certificate": ..., "key": ..., "ca_certificate": ...}.
    broker_tls: dict[str, str] | None = None

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
        for key in ("studies", *_OPTIONAL_PATHS):
            if values.get(key) is not None:
                values[key] = base / str(values[key])
        try:
            config = cls(**values)
        except TypeError as e:
            raise ConfigError(f"invalid hub settings: {e}") from e
        if not 0 <= config.port <= 65535 or config.prefetch < 1 or config.batch_size < 1:
            raise ConfigError("port must be 0-65535, prefetch and batch_size at least 1")
        for flag in ("insecure_unsigned", "signature_worker"):
            if not isinstance(getattr(config, flag), bool | None):
                raise ConfigError(f"{flag} must be true or false")
        if config.broker_tls is not None and set(config.broker_tls) != set(_TLS_KEYS):
            raise ConfigError(f"broker_tls needs exactly {', '.join(_TLS_KEYS)}")
        return config

    def client_tls(self) -> ClientTls | None:
        """The hub's TLS identity for the broker, if configured."""
        if self.broker_tls is None:
            return None
        return ClientTls(*(Path(self.broker_tls[k]) for k in _TLS_KEYS))

    def audit_path(self) -> Path:
        """``audit_log``, or by default ``<db>.audit.jsonl`` beside a SQLite file database.

        Raises:
            ConfigError: no ``audit_log`` and the database is not a SQLite file.
        """
        if self.audit_log is not None:
            return self.audit_log
        try:
            url = make_url(self.db)
        except ArgumentError as e:
            raise ConfigError(f"not a database URL: {self.db!r}") from e
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            return Path(str(url.database)).expanduser().with_suffix(".audit.jsonl")
        raise ConfigError("set audit_log: the hub's audit log goes beside a SQLite file only")

    def check_trust(self) -> None:
        """Refuse a hub that would neither sign orders nor verify spokes, unless told to.

        Raises:
            ConfigError: ``signing_key`` or ``spoke_keys`` missing without
                ``insecure_unsigned = true``.
        """
        missing = [k for k in ("signing_key", "spoke_keys") if getattr(self, k) is None]
        if missing and not self.insecure_unsigned:
            raise ConfigError(
                f"the hub has no {' and no '.join(missing)}: it must sign its orders and "
                "verify every spoke message. Give them (workbench keys new), or set "
                "insecure_unsigned = true (tests and local experiments only)"
            )

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values (for logs)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
