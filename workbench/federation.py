"""``LocalFederation``: a whole consortium on one machine, with the production parts.

A managed ActiveMQ broker, a private registry, the hub as its own process and one process
per spoke, each spoke with its own DICOM folder, state and pseudonym secret: the demo runs
one study through it, and fault drills kill and restart its parts. Every process writes its
log to a file under ``root``; ``stop()`` (or leaving the ``with`` block) ends them all.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.core.contract import LABEL_ARGS_SCHEMA, LABEL_OUTPUT_SCHEMA
from workbench.errors import WorkbenchError
from workbench.images.distribution import ManagedRegistry, forget_references, free_port, push
from workbench.transport.activemq import ManagedBroker
from workbench.transport.activemq_security import BrokerUser, TlsSettings
from workbench.transport.stomp_connection import ClientTls
from workbench.trust.image_signature import sign_image
from workbench.trust.keys import (
    PRIVATE_FILE,
    PUBLIC_FILE,
    key_id,
    load_private_key,
    load_public_key,
    new_key_pair,
)
from workbench.trust.pki import identity, init_ca, issue, java_dn, load_certificate

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Site:
    """One spoke's site: its id, DICOM folder and optional reference standard."""

    spoke_id: str
    dicom_dir: Path
    reference_csv: Path | None = None


class FederationError(WorkbenchError):
    """A part of the local federation did not start or stop."""


class LocalFederation:
    """Broker, registry, hub and spokes as separate processes under ``root``."""

    def __init__(self, root: Path, sites: list[Site], studies: Path | None = None) -> None:
        self.root = Path(root).absolute()
        self.sites = sites
        self.studies = studies
        self.keys = self.root / "keys"
        self.pki = self.root / "pki"
        self._make_pki()
        self.broker = ManagedBroker.from_env(self.root / "broker", tls=self._broker_tls())
        self.registry = ManagedRegistry(self.root / "registry")
        self.hub_port = free_port()
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._docker: Any = None  # the Docker client ``register`` pushed with

    @property
    def hub_url(self) -> str:
        """The hub API's base URL."""
        return f"http://127.0.0.1:{self.hub_port}"

    def client(self) -> Any:
        """A ``HubClient`` for the hub."""
        from workbench.hub_kernel.client import HubClient

        return HubClient(self.hub_url)

    def start(self) -> LocalFederation:
        """Start the broker, the registry, the hub and every spoke; wait until each answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._make_keys()
        self.broker.start()
        self.registry.start()
        self.start_hub()
        for site in self.sites:
            self.start_spoke(site.spoke_id)
        return self

    def stop(self) -> None:
        """Stop spokes first (they flush their outboxes), then the hub, registry and broker."""
        for name in [n for n in self._processes if n != "hub"]:
            self.stop_process(name)
        self.stop_process("hub")
        try:
            if self._docker is not None:  # images were pushed: drop their registry names
                forget_references(self._docker, self.registry.address)
        except Exception as e:  # tidying only: the registry and broker must still stop
            log.warning("could not remove the registry's image names: %s", e)
        finally:
            try:
                self.registry.stop()
            finally:
                self.broker.stop()

    def __enter__(self) -> LocalFederation:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # processes ----------------------------------------------------------------------------

    def start_hub(self) -> None:
        """Start (or restart) the hub process and wait for its API."""
        folder = self.root / "hub"
        folder.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "db": f"sqlite:///{folder / 'hub.sqlite'}",
            "broker": [self.broker.stomp_url],
            "port": self.hub_port,
            "allowed_spokes": [s.spoke_id for s in self.sites],
            "signing_key": str(self.keys / "hub" / PRIVATE_FILE),
            "spoke_keys": str(self.keys / "spokes-public"),
            "audit_log": str(self.audit_log("hub")),
            "broker_tls": self._client_tls("hub"),
        }
        if self.studies is not None:
            config["studies"] = str(self.studies)
        (folder / "hub.json").write_text(json.dumps(config, indent=2))
        self._spawn("hub", ["hub", "serve", "--config", str(folder / "hub.json")], folder)
        self._wait_for(lambda: self.client().health(), "hub")

    def start_spoke(self, spoke_id: str) -> None:
        """Start (or restart) one spoke process."""
        site = next(s for s in self.sites if s.spoke_id == spoke_id)
        folder = self.spoke_dir(spoke_id)
        folder.mkdir(parents=True, exist_ok=True)
        lines = [
            f'spoke_id = "{spoke_id}"',
            f'state_dir = "{folder / "state"}"',
            f'dicom_dir = "{site.dicom_dir.absolute()}"',
            f'broker = ["{self.broker.stomp_url}"]',
            "heartbeat_s = 5",
            "concurrency = 1",
            f'signing_key = "{self.keys / "spokes" / spoke_id / PRIVATE_FILE}"',
            f'trusted_keys = ["{self.keys / "trusted-by-spokes"}"]',
        ]
        if site.reference_csv is not None:
            lines.append(f'reference_csv = "{site.reference_csv.absolute()}"')
        signers = ", ".join(f'"{k}"' for k in self._spoke_signers())
        tls = self._client_tls(spoke_id)
        lines += ["", "[tls]", *(f'{k} = "{v}"' for k, v in tls.items())]
        lines += ["", "[policy]", f"signers = [{signers}]"]
        (folder / "spoke.toml").write_text("\n".join(lines) + "\n")
        self._spawn(spoke_id, ["spoke", "serve", "--config", str(folder / "spoke.toml")], folder)

    def audit_log(self, name: str) -> Path:
        """The audit log of the hub (``hub``) or of one spoke."""
        if name == "hub":
            return self.root / "hub" / "audit.log"
        return self.spoke_dir(name) / "state" / "audit.log"

    def _make_pki(self) -> None:
        """A consortium CA and certificates for the broker, the hub and each spoke (once)."""
        if not (self.pki / "ca").exists():
            init_ca(self.pki / "ca")
        for name, role in [("broker", "broker"), ("hub", "hub"),
                           *((s.spoke_id, "spoke") for s in self.sites)]:  # fmt: skip
            if not (self.pki / "issued" / f"{name}.crt").exists():
                issue(self.pki / "ca", name, role, self.pki / "issued")

    def _broker_tls(self) -> TlsSettings:
        """The broker locked down: TLS with client certificates, the hub and these spokes."""
        issued = self.pki / "issued"
        broker, hub = identity(issued, "broker"), identity(issued, "hub")

        def user(name: str) -> BrokerUser:
            return BrokerUser(name, java_dn(load_certificate(identity(issued, name).certificate)))

        return TlsSettings(
            keystore=broker.keystore, truststore=broker.truststore,
            password_file=broker.password_file, hub=user("hub"),
            spokes=[user(s.spoke_id) for s in self.sites],
            client=ClientTls(hub.certificate, hub.key, hub.ca_certificate),
        )  # fmt: skip

    def _client_tls(self, name: str) -> dict[str, str]:
        found = identity(self.pki / "issued", name)
        return {
            "certificate": str(found.certificate),
            "key": str(found.key),
            "ca_certificate": str(found.ca_certificate),
        }

    def _make_keys(self) -> None:
        """Signing keys for the hub, the algorithm publisher and each spoke, and who trusts whom.

        Spokes trust the hub (orders) and the publisher (images); the hub trusts each spoke's
        key under the spoke's id. Made once; a rerun reuses them.
        """
        for party in ["hub", "publisher", *(f"spokes/{s.spoke_id}" for s in self.sites)]:
            if not (self.keys / party / PRIVATE_FILE).exists():
                new_key_pair(self.keys / party)
        trusted = self.keys / "trusted-by-spokes"
        trusted.mkdir(exist_ok=True)
        shutil.copyfile(self.keys / "hub" / PUBLIC_FILE, trusted / "hub.pem")
        shutil.copyfile(self.keys / "publisher" / PUBLIC_FILE, trusted / "publisher.pem")
        spokes = self.keys / "spokes-public"
        spokes.mkdir(exist_ok=True)
        for site in self.sites:
            source = self.keys / "spokes" / site.spoke_id / PUBLIC_FILE
            shutil.copyfile(source, spokes / f"{site.spoke_id}.pem")

    def _spoke_signers(self) -> list[str]:
        return [
            key_id(load_public_key(self.keys / party / PUBLIC_FILE))
            for party in ("hub", "publisher")
        ]

    def spoke_dir(self, spoke_id: str) -> Path:
        """Where one spoke keeps its config, state and log."""
        return self.root / "spokes" / spoke_id

    def stop_process(self, name: str, kill: bool = False) -> None:
        """Stop one process: SIGTERM and wait (or SIGKILL at once with ``kill``)."""
        process = self._processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def running(self, name: str) -> bool:
        """Whether the process ``name`` (``hub`` or a spoke id) runs."""
        process = self._processes.get(name)
        return process is not None and process.poll() is None

    def _spawn(self, name: str, args: list[str], folder: Path) -> None:
        self.stop_process(name)
        log_file = open(folder / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
        self._processes[name] = subprocess.Popen(
            [sys.executable, "-m", "workbench.cli", *args],
            stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        log_file.close()

    def _wait_for(self, probe: Any, name: str) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if not self.running(name):
                raise FederationError(f"the {name} process exited; see {self._log(name)}")
            try:
                probe()
                return
            except WorkbenchError:
                if time.monotonic() > deadline:
                    where = self._log(name)
                    raise FederationError(
                        f"the {name} did not answer in {_START_TIMEOUT_S:g} s; see {where}"
                    ) from None
                time.sleep(0.1)

    def _log(self, name: str) -> Path:
        folder = self.root / "hub" if name == "hub" else self.spoke_dir(name)
        return folder / f"{name}.log"

    # algorithms ---------------------------------------------------------------------------

    def register(self, docker_client: Any, images: list[str]) -> list[dict[str, Any]]:
        """Push each image to the registry, sign it as the publisher, register it by digest."""
        registered = []
        self._docker = docker_client
        for image in images:
            local = docker_client.images.get(image)
            labels = local.labels or {}
            reference = push(docker_client, image, self.registry.address)
            publisher = load_private_key(self.keys / "publisher" / PRIVATE_FILE)
            spec = {
                "name": labels["org.elic.algorithm.name"],
                "version": labels["org.elic.algorithm.version"],
                "image": reference,
                "digest": local.id,
                "output_schema": json.loads(labels[LABEL_OUTPUT_SCHEMA]),
                "signature": sign_image(reference, local.id, publisher),
            }
            if LABEL_ARGS_SCHEMA in labels:
                spec["args_schema"] = json.loads(labels[LABEL_ARGS_SCHEMA])
            registered.append(self.client().register_algorithm(spec))
        return registered
