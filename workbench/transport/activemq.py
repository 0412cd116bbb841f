"""``ManagedBroker``: ActiveMQ Classic from the OS installation, run with a generated config.

Everything lives in one directory ``DIR``::

    DIR/conf/activemq.xml      generated at every start (the STOMP port is kept across starts)
    DIR/conf/log4j.properties  log4j 1.x (Debian's package); log4j2.properties for upstream 5.17+
    DIR/data/kahadb            KahaDB persistence: persistent messages survive restarts and crashes
    DIR/log/activemq.log       the broker's log (rotated at 1 MiB, 5 kept); jvm.out: JVM stdout
    DIR/activemq.pid           the broker's process id

The broker listens on one STOMP connector bound to 127.0.0.1 (no OpenWire, no JMX, no web
console). With ``tls=TlsSettings(...)`` that connector is ``stomp+ssl`` with client
certificates required, and only the allowlisted Hub and Spokes get in, each with its own
rights (``workbench.transport.activemq_security``, which lists the extra files in
``DIR/conf``). A NACKed message goes to the shared dead-letter queue ``ActiveMQ.DLQ`` at once,
unless ``nack_retries`` asks the broker's redelivery plugin to retry it first. Queue depths
come from the statistics broker plugin over STOMP (docs/broker.md tells why XStream must be
on the broker's classpath for that).

>>> broker = ManagedBroker(Path("/tmp/wb-broker"))      # doctest: +SKIP
>>> broker.start().stomp_url                             # doctest: +SKIP
'stomp://127.0.0.1:40513'
>>> broker.stop()                                        # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.transport.activemq_config import (
    DEBIAN_HOME,
    BrokerError,
    configured_tls,
    find_installation,
    jvm_command,
    log4j2_properties,
    log4j_properties,
    read_version,
    xstream_jars,
)
from workbench.transport.activemq_config import HOST as HOST
from workbench.transport.activemq_config import activemq_xml as activemq_xml
from workbench.transport.activemq_config import configured_port as configured_port
from workbench.transport.activemq_process import free_port, is_broker, launch, port_free, terminate
from workbench.transport.activemq_security import BrokerUser, TlsSettings, write_security_files
from workbench.transport.activemq_stats import QueueStats, connect_probe, queue_stats
from workbench.transport.stomp_connection import ClientTls

__all__ = [
    "DEBIAN_HOME",
    "BrokerError",
    "BrokerStatus",
    "BrokerUser",
    "ClientTls",
    "ManagedBroker",
    "QueueStats",
    "TlsSettings",
]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerStatus:
    """What ``ManagedBroker.status`` found."""

    running: bool
    directory: Path
    config: Path
    log: Path
    pid: int | None = None
    stomp_port: int | None = None
    version: str | None = None
    queues: tuple[QueueStats, ...] | None = None  # None when they could not be read
    problems: tuple[str, ...] = field(default_factory=tuple)
    tls: bool = False  # STOMP over mutual TLS only

    @property
    def stomp_url(self) -> str | None:
        """``stomp://`` or ``stomp+ssl://127.0.0.1:PORT``, or None when no port is configured."""
        scheme = "stomp+ssl" if self.tls else "stomp"
        return None if self.stomp_port is None else f"{scheme}://{HOST}:{self.stomp_port}"


class ManagedBroker:
    """One ActiveMQ Classic broker whose configuration, data, log and pid live in ``directory``.

    Args:
        directory: where everything of this broker lives (created on start).
        home: the ActiveMQ installation (``bin/activemq.jar``, ``lib/``).
        java: the ``java`` executable (a path, or a name looked up on ``PATH``).
        stomp_port: the STOMP port on 127.0.0.1; None keeps the port of the previous start
            in ``directory`` when it is free, or picks a free one.
        heap_mb: the JVM's maximum heap.
        nack_retries: how often the broker redelivers a NACKed message (after
            ``nack_delay_s``, doubling) before it goes to the dead-letter queue; 0 sends it
            there at once, which is what ``Delivery.reject`` promises.
        tls: lock the broker down: STOMP only over mutual TLS, only the allowlisted Hub and
            Spokes, per-queue rights. ``start`` and ``status`` connect with ``tls.client``
            (the Hub's identity). None: plain STOMP on loopback, anyone may connect.

    Raises (from ``start``): ``BrokerError`` when ActiveMQ or Java is missing, the port is
    taken, a broker already runs in ``directory``, the broker does not answer in time, or
    (with ``tls``) it refuses ``tls.client``; ``ConfigError`` when a TLS file is missing.

    >>> tls = TlsSettings(                                      # doctest: +SKIP
    ...     keystore=Path("broker/broker.p12"), truststore=Path("broker/broker.truststore.p12"),
    ...     password_file=Path("broker/broker.pass"),
    ...     hub=BrokerUser("hub", "CN=hub, O=ELIC Consortium"),
    ...     spokes=[BrokerUser("spoke-a", "CN=spoke-a, O=ELIC Consortium")],
    ...     client=ClientTls(Path("hub/hub.crt"), Path("hub/hub.key"), Path("hub/ca.crt")))
    >>> ManagedBroker(Path("/tmp/wb-broker"), tls=tls).start().stomp_url   # doctest: +SKIP
    'stomp+ssl://127.0.0.1:40514'
    """

    def __init__(
        self,
        directory: Path,
        *,
        home: Path = DEBIAN_HOME,
        java: str | Path = "java",
        stomp_port: int | None = None,
        heap_mb: int = 384,
        nack_retries: int = 0,
        nack_delay_s: float = 5.0,
        tls: TlsSettings | None = None,
    ) -> None:
        if stomp_port is not None and not 0 < stomp_port < 65536:
            raise ValueError(f"not a TCP port: {stomp_port}")
        if nack_retries < 0 or (nack_retries > 0 and nack_delay_s <= 1.0):
            # ActiveMQ refuses to start with a redelivery delay of 1000 ms or less.
            raise ValueError("nack_retries must be >= 0, and nack_delay_s above 1 s")
        self.directory = Path(directory).absolute()
        self.home = Path(home)
        self.java = java
        self.stomp_port = stomp_port
        self.heap_mb = heap_mb
        self.nack_retries = nack_retries
        self.nack_delay_s = nack_delay_s
        self.tls = tls

    @classmethod
    def from_env(
        cls, directory: Path, environ: Mapping[str, str] | None = None, **options: Any
    ) -> ManagedBroker:
        """A broker using ``ACTIVEMQ_HOME`` (default /usr/share/activemq) and ``JAVA_HOME``."""
        env = os.environ if environ is None else environ
        home = Path(env.get("ACTIVEMQ_HOME") or DEBIAN_HOME)
        java: str | Path = (
            Path(env["JAVA_HOME"]) / "bin" / "java" if env.get("JAVA_HOME") else "java"
        )
        return cls(directory, home=home, java=java, **options)

    # -- where things are -------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        """The generated ``activemq.xml``."""
        return self.directory / "conf" / "activemq.xml"

    @property
    def log_path(self) -> Path:
        """The broker's log file."""
        return self.directory / "log" / "activemq.log"

    @property
    def pid_path(self) -> Path:
        """The pid file, present while the broker runs."""
        return self.directory / "activemq.pid"

    @property
    def stomp_url(self) -> str:
        """``stomp://`` (``stomp+ssl://`` with TLS) ``127.0.0.1:PORT`` of the configured port.

        Raises ``BrokerError`` when no broker has been configured in the directory yet.
        """
        port = self.stomp_port or configured_port(self.config_path)
        if port is None:
            raise BrokerError(f"no broker has been configured in {self.directory} yet")
        tls = self.tls is not None or self._configured_tls()
        return f"{'stomp+ssl' if tls else 'stomp'}://{HOST}:{port}"

    def _configured_tls(self) -> bool:
        return configured_tls(self.config_path)

    # -- lifecycle --------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> BrokerStatus:
        """Start the broker and return once its STOMP port answers a CONNECT.

        Raises:
            BrokerError: ActiveMQ or Java missing, port taken, already running, or no answer
                within ``timeout`` seconds (the message ends with the tail of the log).
        """
        jar, java = find_installation(self.home, self.java)
        if self.tls is not None:
            self.tls.check_files()
            self.tls.client.context()  # a key that does not load fails here, not mid-start
        if (pid := self.pid()) is not None:
            raise BrokerError(
                f"a broker already runs in {self.directory} (pid {pid}, {self.stomp_url}); "
                "stop it first"
            )
        for sub in ("conf", "data", "log", "tmp"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        port = self._choose_port()
        self.stomp_port = port
        login_config = self._write_config(port)
        pid = self._spawn(java, jar, login_config)
        client = None if self.tls is None else self.tls.client
        deadline = time.monotonic() + timeout
        while True:
            if not is_broker(pid, self.config_path):
                self.pid_path.unlink(missing_ok=True)
                raise BrokerError(self._failure("the broker process exited during start", port))
            try:
                server = connect_probe(port, timeout=1.0, tls=client)
            except OSError:
                server = None
            except BrokerError as e:
                # It answered and refused us (a TLS or login failure): waiting will not help.
                terminate(pid, self.config_path, grace=10.0)
                self.pid_path.unlink(missing_ok=True)
                raise BrokerError(
                    self._failure(f"the broker refused the status identity: {e}", port)
                ) from e
            if server is not None:
                _LOG.info(
                    "ActiveMQ started in %s: %s (pid %d)", self.directory, self.stomp_url, pid
                )
                return self.status()
            if time.monotonic() > deadline:
                terminate(pid, self.config_path, grace=0.0)
                self.pid_path.unlink(missing_ok=True)
                raise BrokerError(
                    self._failure(
                        f"the broker did not answer on port {port} in {timeout:g} s", port
                    )
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the broker cleanly (SIGTERM), killing it after ``timeout`` s; False if none ran."""
        pid = self.pid()
        if pid is None:
            self.pid_path.unlink(missing_ok=True)  # stale
            return False
        terminate(pid, self.config_path, grace=timeout)
        self.pid_path.unlink(missing_ok=True)
        return True

    def kill(self) -> bool:
        """Kill the broker at once (SIGKILL), as a crash would; False if none ran."""
        pid = self.pid()
        if pid is None:
            return False
        terminate(pid, self.config_path, grace=0.0)
        self.pid_path.unlink(missing_ok=True)
        return True

    def pid(self) -> int | None:
        """The running broker's process id, or None (a stale pid file is ignored)."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if is_broker(pid, self.config_path) else None

    def status(self, timeout: float = 5.0) -> BrokerStatus:
        """Whether it runs, its port, version, config path and each queue's depth.

        The version comes from the running broker's CONNECTED frame (from the installed jar
        when it is not running); queue depths from the statistics plugin. Anything that
        could not be read is None, with the reason in ``problems``.
        """
        port = configured_port(self.config_path)
        tls = self._configured_tls()
        client = None if self.tls is None else self.tls.client
        pid = self.pid()
        version, queues, problems = None, None, []
        if pid is None:
            version = self.installed_version()
        elif port is None:
            problems.append(f"{self.config_path} names no STOMP port")
        elif tls and client is None:
            problems.append(
                "the broker accepts only client certificates: queue depths and the version "
                "need the Hub's identity (ManagedBroker(..., tls=TlsSettings(..., client=...)))"
            )
        else:
            try:
                server = connect_probe(port, timeout=timeout, tls=client)
                if server is None:
                    problems.append(f"the broker runs (pid {pid}) but does not answer a CONNECT")
                else:
                    version = server.removeprefix("ActiveMQ/")
                    queues = self._queues(port, timeout, client)
            except OSError as e:
                problems.append(f"the broker runs (pid {pid}) but STOMP port {port} fails: {e}")
            except BrokerError as e:
                problems.append(str(e))
        return BrokerStatus(
            running=pid is not None, directory=self.directory, config=self.config_path,
            log=self.log_path, pid=pid, stomp_port=port, version=version, queues=queues,
            problems=tuple(problems), tls=tls,
        )  # fmt: skip

    def _queues(
        self, port: int, timeout: float, client: ClientTls | None
    ) -> tuple[QueueStats, ...]:
        if not xstream_jars(self.home):
            raise BrokerError(
                "queue depths need XStream on the broker's classpath: "
                "install libxstream-java and restart the broker"
            )
        return queue_stats(port, timeout, tls=client)

    def installed_version(self) -> str | None:
        """The installation's ActiveMQ version (from the broker jar's manifest), if readable."""
        return read_version(self.home)

    # -- internals ----------------------------------------------------------------------

    def _choose_port(self) -> int:
        previous = configured_port(self.config_path)
        wanted = self.stomp_port or previous
        if wanted is not None:
            # The sockets of a broker killed a moment ago take some milliseconds to close.
            if port_free(wanted, grace=3.0 if wanted == previous else 0.0):
                return wanted
            if self.stomp_port is not None:
                raise BrokerError(
                    f"port {wanted} on {HOST} is already in use; choose another "
                    "--stomp-port, or leave it out to use a free one"
                )
        return free_port()

    def _write_config(self, port: int) -> Path | None:
        """Write the configuration; the JAAS login.config's path with TLS, else None."""
        conf = self.directory / "conf"
        delay_ms = int(self.nack_delay_s * 1000)
        login_config = None
        if self.tls is not None:
            login_config = write_security_files(conf, self.tls)
        else:
            for name in ("login.config", "users.properties", "groups.properties", "tls.properties"):
                (conf / name).unlink(missing_ok=True)  # left by an earlier locked-down start
        xml = activemq_xml(self.directory, port, self.nack_retries, delay_ms, tls=self.tls)
        self.config_path.write_text(xml)
        (conf / "log4j.properties").write_text(log4j_properties(self.log_path))
        (conf / "log4j2.properties").write_text(log4j2_properties(self.log_path))
        return login_config

    def _spawn(self, java: str, jar: Path, login_config: Path | None) -> int:
        command = jvm_command(
            java, jar, home=self.home, directory=self.directory, config=self.config_path,
            heap_mb=self.heap_mb, login_config=login_config,
        )  # fmt: skip
        pid = launch(command, self.directory / "log" / "jvm.out", java)
        self.pid_path.write_text(f"{pid}\n")
        return pid

    def _failure(self, what: str, port: int) -> str:
        lines = []
        for path in (self.log_path, self.directory / "log" / "jvm.out"):
            with contextlib.suppress(OSError):
                lines += path.read_text(errors="replace").splitlines()[-15:]
        text = "\n".join(lines)
        if "Address already in use" in text:
            what += f" (port {port} was taken by another process meanwhile)"
        tail = "\n  ".join(line[:300] for line in lines[-20:]) or "(the log is empty)"
        return f"{what}; last lines of {self.log_path.parent}:\n  {tail}"
