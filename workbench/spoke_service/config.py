"""A spoke's settings, read from one TOML file (``workbench spoke serve --config FILE``).

::

    spoke_id = "site-01"
    state_dir = "/var/lib/elic/site-01"        # catalog, state, secret, work, logs
    dicom_dir = "/data/dicom"                 # indexed at start
    broker = ["stomp://127.0.0.1:61613"]      # tried in order, for failover
    reference_csv = "/data/reference.csv"     # optional site-local reference standard
    trusted_keys = ["keys/hub.pem", "keys/publishers"]   # the hub's key must be hub.pem
    signing_key = "keys/site-01/private.pem"  # default: made in state_dir/keys on first start
    concurrency = 1                           # cases run at once
    heartbeat_s = 30

    [tls]                                     # mutual TLS to the broker (stomp+ssl:// URLs)
    certificate = "pki/site-01.crt"           # workbench pki issue site-01 --role spoke
    key = "pki/site-01.key"
    ca_certificate = "pki/ca.crt"

    [policy]                                  # the institution's rules: see policy.py
    max_timeout_s = 3600                      # ceilings no order can exceed
    max_memory = "4g"
    manual_release = false                    # true: every result waits for a person

Relative paths are relative to the file's folder.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError
from workbench.spoke_service.policy import SpokePolicy
from workbench.transport.base import Broker
from workbench.transport.stomp_connection import ClientTls

_SPOKE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class SpokeConfig:
    """Everything a spoke process needs to know about its site."""

    spoke_id: str
    state_dir: Path
    dicom_dir: Path
    broker: tuple[str, ...]
    reference_csv: Path | None = None
    concurrency: int = 1
    heartbeat_s: float = 30.0
    policy: SpokePolicy = field(default_factory=SpokePolicy)
    trusted_keys: tuple[Path, ...] = ()
    signing_key: Path | None = None
    tls: ClientTls | None = None

    def __post_init__(self) -> None:
        if not _SPOKE_ID.match(self.spoke_id):
            raise ConfigError(f"spoke_id {self.spoke_id!r}: use lower-case letters, digits, '-'")
        if not self.broker:
            raise ConfigError("give at least one broker URL")
        if self.concurrency < 1 or self.heartbeat_s <= 0:
            raise ConfigError("concurrency and heartbeat_s must be positive")

    @classmethod
    def from_file(cls, path: Path) -> SpokeConfig:
        """Read a TOML config file."""
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read the spoke config {path}: {e}") from e
        return cls.from_dict(data, base=path.parent)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path = Path(".")) -> SpokeConfig:
        """Build from parsed settings; unknown keys are an error (typos must not pass)."""
        known = {"spoke_id", "state_dir", "dicom_dir", "broker", "reference_csv", "concurrency",
                 "heartbeat_s", "policy", "trusted_keys", "signing_key", "tls"}  # fmt: skip
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown spoke settings: {', '.join(sorted(unknown))}")
        missing = {"spoke_id", "state_dir", "dicom_dir", "broker"} - set(data)
        if missing:
            raise ConfigError(f"missing spoke settings: {', '.join(sorted(missing))}")
        broker = data["broker"]
        try:
            return cls(
                spoke_id=str(data["spoke_id"]),
                state_dir=base / str(data["state_dir"]),
                dicom_dir=base / str(data["dicom_dir"]),
                broker=(broker,) if isinstance(broker, str) else tuple(map(str, broker)),
                reference_csv=base / data["reference_csv"] if data.get("reference_csv") else None,
                concurrency=int(data.get("concurrency", 1)),
                heartbeat_s=float(data.get("heartbeat_s", 30.0)),
                policy=SpokePolicy.from_dict(data.get("policy")),
                trusted_keys=tuple(base / str(p) for p in data.get("trusted_keys", ())),
                signing_key=base / data["signing_key"] if data.get("signing_key") else None,
                tls=_tls(data.get("tls"), base),
            )
        except (TypeError, ValueError) as e:
            raise ConfigError(f"invalid spoke setting: {e}") from e

    def connect(self) -> Broker:
        """Connect to this spoke's broker(s), over mutual TLS when ``[tls]`` is set."""
        from workbench.transport.factory import connect

        return connect(self.broker, tls=self.tls)

    @property
    def catalog_path(self) -> Path:
        """The DICOM catalog."""
        return self.state_dir / "catalog.sqlite"

    @property
    def state_path(self) -> Path:
        """Orders, cases and the outbox."""
        return self.state_dir / "state.sqlite"

    @property
    def audit_path(self) -> Path:
        """The spoke's hash-chained audit log."""
        return self.state_dir / "audit.log"

    @property
    def key_path(self) -> Path:
        """The spoke's Ed25519 signing key (made in ``state_dir/keys`` when not configured)."""
        return self.signing_key or self.state_dir / "keys" / "private.pem"

    @property
    def secret_path(self) -> Path:
        """The pseudonym secret (made on first start, mode 0600)."""
        return self.state_dir / "pseudonym.key"


def _tls(table: Any, base: Path) -> ClientTls | None:
    if table is None:
        return None
    if not isinstance(table, dict) or set(table) != {"certificate", "key", "ca_certificate"}:
        raise ConfigError("[tls] needs exactly certificate, key and ca_certificate")
    return ClientTls(
        base / str(table["certificate"]), base / str(table["key"]),
        base / str(table["ca_certificate"]),
    )  # fmt: skip
