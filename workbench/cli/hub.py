"""``workbench hub``: run the hub (results store, inbox ingestion, dispatch, HTTP API)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.cli.common import Sub, group, say

if TYPE_CHECKING:
    from workbench.hub_kernel.config import HubConfig


def register(sub: Sub) -> None:
    """Add this area's commands to the ``workbench`` parser."""
    hub = group(sub, "hub", "the hub: experiments, dispatch, results store, HTTP API")
    p = hub.add_parser(
        "serve",
        help="run the hub until interrupted (SIGINT/SIGTERM)",
        description="Consume the broker's hub inbox into the results store, send experiment "
        "orders, and serve the HTTP JSON API (OpenAPI at /openapi.json). Settings come from "
        "--config (TOML or JSON) and are overridden by the options given.",
    )
    p.add_argument("--config", type=Path, help="hub settings file (.toml or .json)")
    p.add_argument("--db", help="SQLAlchemy URL of the results store (sqlite:///hub.sqlite)")
    p.add_argument(
        "--broker", action="append", metavar="URL",
        help="broker URL, e.g. stomp://127.0.0.1:61613 (repeatable, for failover)",
    )  # fmt: skip
    p.add_argument("--host", help="API address (127.0.0.1)")
    p.add_argument("--port", type=int, help="API port (8750; 0 picks a free one)")
    p.add_argument("--studies", type=Path, metavar="DIR", help="study definitions folder")
    p.add_argument(
        "--spoke", action="append", metavar="ID",
        help="allow-list a spoke (repeatable); others become known by their heartbeat",
    )  # fmt: skip
    p.add_argument(
        "--signing-key", type=Path, metavar="FILE",
        help="the hub's Ed25519 private.pem (workbench keys new): signs every order",
    )  # fmt: skip
    p.add_argument(
        "--spoke-keys", type=Path, metavar="DIR",
        help="folder of the spokes' public keys, <spoke-id>.pem each: every inbox message "
        "must be signed by the spoke it names (those spokes are allow-listed)",
    )  # fmt: skip
    p.add_argument(
        "--audit-log", type=Path, metavar="FILE",
        help="the hub's hash-chained audit log (default: beside a SQLite file database)",
    )  # fmt: skip
    p.add_argument(
        "--insecure-unsigned", action="store_true", default=None,
        help="run without --signing-key/--spoke-keys: orders unsigned, spoke messages "
        "unverified (tests and local experiments only)",
    )  # fmt: skip
    p.add_argument(
        "--signature-worker", action=argparse.BooleanOptionalAction, default=None,
        help="check the spokes' signatures in a child process on another core (default: "
        "on a machine of 3 cores or more)",
    )  # fmt: skip
    p.set_defaults(handler=_serve)


def settings(ns: argparse.Namespace) -> HubConfig:
    """The ``HubConfig`` of a ``hub serve`` command line (file first, options on top)."""
    from workbench.hub_kernel.config import HubConfig

    base = HubConfig.from_file(ns.config) if ns.config else HubConfig()
    overrides = {
        "db": ns.db,
        "broker": tuple(ns.broker) if ns.broker else None,
        "host": ns.host,
        "port": ns.port,
        "studies": str(ns.studies.resolve()) if ns.studies else None,
        "allowed_spokes": (*base.allowed_spokes, *ns.spoke) if ns.spoke else None,
        "signing_key": _absolute(ns.signing_key),
        "spoke_keys": _absolute(ns.spoke_keys),
        "audit_log": _absolute(ns.audit_log),
        "insecure_unsigned": ns.insecure_unsigned,
        "signature_worker": ns.signature_worker,
    }
    values = {**base.as_dict(), **{k: v for k, v in overrides.items() if v is not None}}
    return HubConfig.from_dict(values, base=Path("/"))


def _absolute(path: Path | None) -> str | None:
    return None if path is None else str(path.expanduser().resolve())


def _serve(ns: argparse.Namespace) -> int:
    import signal
    import threading

    from workbench.hub_kernel.service import Hub, freeze_startup_heap

    config = settings(ns)
    hub = Hub.from_config(config)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        freeze_startup_heap()
        hub.start()
        say(f"hub serving at {hub.url} (store {config.db}); stop with Ctrl-C")
        if hub.trust is None or hub.signer is None:
            say("WARNING: insecure_unsigned: orders are not signed or spoke messages not verified")
        say(f"audit log {hub.audit.path} (head {hub.audit.head()})")
        stop.wait()
        say("hub stopping")
    finally:
        hub.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
