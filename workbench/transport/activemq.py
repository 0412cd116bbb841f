"""``ManagedBroker``: ActiveMQ Classic from the OS installation, run with a generated config.

Everything lives in one directory ``DIR``::

    DIR/conf/activemq.xml      generated at every start (the STOMP port is kept across starts)
    DIR/conf/log4j.properties  log4j 1.x (Debian's package); log4j2.properties for upstream 5.17+
    DIR/data/kahadb            KahaDB persistence: persistent messages survive restarts and crashes
    DIR/log/activemq.log       the broker's log (rotated at 1 MiB, 5 kept); jvm.out: JVM stdout
    DIR/activemq.pid           the broker's process id

The broker listens on one STOMP connector bound to 127.0.0.1 (no OpenWire, no JMX, no web
console). A NACKed message goes to the shared dead-letter queue ``ActiveMQ.DLQ`` at once,
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
import shutil
import signal
import socket
import subprocess
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import quoteattr

from workbench.transport.base import TransportError

__all__ = ["DEBIAN_HOME", "BrokerError", "BrokerStatus", "ManagedBroker", "QueueStats"]

_LOG = logging.getLogger(__name__)

DEBIAN_HOME = Path("/usr/share/activemq")
HOST = "127.0.0.1"
# XStream turns the statistics plugin's map messages into STOMP bodies; Debian's activemq
# package does not put it on the broker's classpath, so we add it from libxstream-java.
_XSTREAM_JARS = (Path("/usr/share/java/xstream.jar"),)
_STATS_QUERY = "/queue/ActiveMQ.Statistics.Destination.>"
_STATS_END = "ActiveMQ.Statistics.Destination.List.End.With.Null"
_INSTALL_HINT = (
    "install Debian's activemq package (apt-get install activemq) "
    "or set ACTIVEMQ_HOME to an ActiveMQ Classic 5.x installation"
)


class BrokerError(TransportError):
    """The managed broker is not installed, or could not be started, stopped or queried."""


@dataclass(frozen=True)
class QueueStats:
    """One queue as the broker counts it."""

    name: str  # "/queue/elic.hub.inbox"
    depth: int  # stored and not yet acknowledged (includes in-flight)
    in_flight: int  # delivered to a consumer, not yet acknowledged
    consumers: int
    enqueued: int  # since the broker started
    dequeued: int  # acknowledged since the broker started


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

    @property
    def stomp_url(self) -> str | None:
        """``stomp://127.0.0.1:PORT``, or None when no port is configured."""
        return None if self.stomp_port is None else f"stomp://{HOST}:{self.stomp_port}"


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

    Raises (from ``start``): ``BrokerError`` when ActiveMQ or Java is missing, the port is
    taken, a broker already runs in ``directory``, or the broker does not answer in time.
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
        """``stomp://127.0.0.1:PORT`` of the configured port (``BrokerError`` if none yet)."""
        port = self.stomp_port or configured_port(self.config_path)
        if port is None:
            raise BrokerError(f"no broker has been configured in {self.directory} yet")
        return f"stomp://{HOST}:{port}"

    # -- lifecycle --------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> BrokerStatus:
        """Start the broker and return once its STOMP port answers a CONNECT.

        Raises:
            BrokerError: ActiveMQ or Java missing, port taken, already running, or no answer
                within ``timeout`` seconds (the message ends with the tail of the log).
        """
        jar, java = self._installation()
        if (pid := self.pid()) is not None:
            raise BrokerError(
                f"a broker already runs in {self.directory} (pid {pid}, {self.stomp_url}); "
                "stop it first"
            )
        for sub in ("conf", "data", "log", "tmp"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        port = self._choose_port()
        self.stomp_port = port
        self._write_config(port)
        pid = self._spawn(java, jar)
        deadline = time.monotonic() + timeout
        while True:
            if not _is_broker(pid, self.config_path):
                self.pid_path.unlink(missing_ok=True)
                raise BrokerError(self._failure("the broker process exited during start", port))
            try:
                server = _connect_probe(port, timeout=1.0)
            except OSError:
                server = None
            if server is not None:
                _LOG.info(
                    "ActiveMQ started in %s: stomp://%s:%d (pid %d)",
                    self.directory,
                    HOST,
                    port,
                    pid,
                )
                return self.status()
            if time.monotonic() > deadline:
                _kill(pid, self.config_path, grace=0.0)
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
        _kill(pid, self.config_path, grace=timeout)
        self.pid_path.unlink(missing_ok=True)
        return True

    def kill(self) -> bool:
        """Kill the broker at once (SIGKILL), as a crash would; False if none ran."""
        pid = self.pid()
        if pid is None:
            return False
        _kill(pid, self.config_path, grace=0.0)
        self.pid_path.unlink(missing_ok=True)
        return True

    def pid(self) -> int | None:
        """The running broker's process id, or None (a stale pid file is ignored)."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_broker(pid, self.config_path) else None

    def status(self, timeout: float = 5.0) -> BrokerStatus:
        """Whether it runs, its port, version, config path and each queue's depth.

        The version comes from the running broker's CONNECTED frame (from the installed jar
        when it is not running); queue depths from the statistics plugin. Anything that
        could not be read is None, with the reason in ``problems``.
        """
        port = configured_port(self.config_path)
        pid = self.pid()
        version, queues, problems = None, None, []
        if pid is None:
            version = self.installed_version()
        elif port is None:
            problems.append(f"{self.config_path} names no STOMP port")
        else:
            try:
                server = _connect_probe(port, timeout=timeout)
                if server is None:
                    problems.append(f"the broker runs (pid {pid}) but does not answer a CONNECT")
                else:
                    version = server.removeprefix("ActiveMQ/")
                    queues = self._queues(port, timeout)
            except OSError as e:
                problems.append(f"the broker runs (pid {pid}) but STOMP port {port} fails: {e}")
            except BrokerError as e:
                problems.append(str(e))
        return BrokerStatus(
            running=pid is not None, directory=self.directory, config=self.config_path,
            log=self.log_path, pid=pid, stomp_port=port, version=version, queues=queues,
            problems=tuple(problems),
        )  # fmt: skip

    def _queues(self, port: int, timeout: float) -> tuple[QueueStats, ...]:
        if not self._xstream_jars():
            raise BrokerError(
                "queue depths need XStream on the broker's classpath: "
                "install libxstream-java and restart the broker"
            )
        return _queue_stats(port, timeout)

    def installed_version(self) -> str | None:
        """The installation's ActiveMQ version (from the broker jar's manifest), if readable."""
        lib = self.home / "lib"
        for jar in [lib / "activemq-broker.jar", *sorted(lib.glob("activemq-broker-*.jar"))]:
            try:
                with zipfile.ZipFile(jar) as z:
                    manifest = z.read("META-INF/MANIFEST.MF").decode(errors="replace")
            except (OSError, KeyError, zipfile.BadZipFile):
                continue
            for line in manifest.splitlines():
                if line.startswith(("Implementation-Version:", "Bundle-Version:")):
                    return line.split(":", 1)[1].strip()
        return None

    # -- internals ----------------------------------------------------------------------

    def _installation(self) -> tuple[Path, str]:
        jar = self.home / "bin" / "activemq.jar"
        if not jar.is_file():
            raise BrokerError(f"ActiveMQ is not installed: {jar} does not exist; {_INSTALL_HINT}")
        java = shutil.which(str(self.java))
        if java is None:
            raise BrokerError(
                f"Java is not installed: {self.java} not found; "
                "install a Java runtime (apt-get install default-jre-headless)"
            )
        return jar, java

    def _xstream_jars(self) -> list[Path]:
        bundled = [
            *self.home.glob("lib/optional/xstream*.jar"),
            *self.home.glob("lib/xstream*.jar"),
        ]
        return bundled or [jar for jar in _XSTREAM_JARS if jar.exists()]

    def _choose_port(self) -> int:
        previous = configured_port(self.config_path)
        wanted = self.stomp_port or previous
        if wanted is not None:
            # The sockets of a broker killed a moment ago take some milliseconds to close.
            if _port_free(wanted, grace=3.0 if wanted == previous else 0.0):
                return wanted
            if self.stomp_port is not None:
                raise BrokerError(
                    f"port {wanted} on {HOST} is already in use; choose another "
                    "--stomp-port, or leave it out to use a free one"
                )
        return _free_port()

    def _write_config(self, port: int) -> None:
        conf = self.directory / "conf"
        delay_ms = int(self.nack_delay_s * 1000)
        self.config_path.write_text(activemq_xml(self.directory, port, self.nack_retries, delay_ms))
        (conf / "log4j.properties").write_text(_LOG4J.format(log=self.log_path))
        (conf / "log4j2.properties").write_text(_LOG4J2.format(log=self.log_path))

    def _spawn(self, java: str, jar: Path) -> int:
        conf, data = self.directory / "conf", self.directory / "data"
        classpath = os.pathsep.join(str(p) for p in [conf, *self._xstream_jars()])
        command = [
            java, "-Xms64m", f"-Xmx{self.heap_mb}m", "-Djava.awt.headless=true",
            f"-Djava.io.tmpdir={self.directory / 'tmp'}",
            f"-Dlog4j.configuration=file:{conf / 'log4j.properties'}",
            f"-Dlog4j2.configurationFile=file:{conf / 'log4j2.properties'}",
            f"-Dactivemq.home={self.home}", f"-Dactivemq.base={self.directory}",
            f"-Dactivemq.conf={conf}", f"-Dactivemq.data={data}",
            f"-Dactivemq.classpath={classpath}",
            "-jar", str(jar), "start", f"xbean:file:{self.config_path}",
        ]  # fmt: skip
        # The shell backgrounds the JVM and exits, so the broker outlives this process (and
        # the CLI) without ever being our zombie; it prints the JVM's pid.
        script = 'out="$1"; shift; "$@" </dev/null >>"$out" 2>&1 & echo $!'
        jvm_out = self.directory / "log" / "jvm.out"
        try:
            done = subprocess.run(
                ["/bin/sh", "-c", script, "sh", str(jvm_out), *command],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
                start_new_session=True, check=True,
            )  # fmt: skip
            pid = int(done.stdout.strip())
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            raise BrokerError(f"cannot launch {java}: {e}") from e
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


# -- processes and ports ------------------------------------------------------------------


def _is_broker(pid: int, config: Path) -> bool:
    """Whether ``pid`` is a running JVM started with ``config``: never trust a pid file."""
    if not _running(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no procfs: trust the signal probe
    except OSError:
        return False
    return str(config) in cmdline


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _kill(pid: int, config: Path, grace: float) -> None:
    """SIGTERM (if ``grace``), wait up to ``grace`` s, then SIGKILL; return once it exited."""
    if not _is_broker(pid, config):
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if sig == signal.SIGTERM and grace <= 0:
            continue
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _running(pid):
                return
            time.sleep(0.05)
        if sig == signal.SIGTERM:
            _LOG.warning("broker pid %d did not stop in %g s: killing it", pid, grace)
    raise BrokerError(f"broker pid {pid} is still running after SIGKILL")


def _port_free(port: int, grace: float = 0.0) -> bool:
    """Whether ``port`` on loopback can be bound now, or becomes so within ``grace`` s."""
    deadline = time.monotonic() + grace
    while True:
        with socket.socket() as s:
            # The JVM binds with SO_REUSEADDR too: connections in TIME_WAIT do not count.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


# -- a minimal synchronous STOMP exchange (no threads) for probes and statistics ------------


class _Session:
    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, command: str, headers: dict[str, str]) -> None:
        lines = [command, *(f"{k}:{v}" for k, v in headers.items()), "", ""]
        self.sock.sendall("\n".join(lines).encode() + b"\0")

    def read(self) -> tuple[str, dict[str, str], bytes]:
        while True:
            self.buf = self.buf.lstrip(b"\r\n")  # heart-beats
            head_end = self.buf.find(b"\n\n")
            if head_end >= 0:
                head = self.buf[:head_end].decode(errors="replace").split("\n")
                headers = dict(line.split(":", 1) for line in head[1:] if ":" in line)
                start = head_end + 2
                if "content-length" in headers:
                    end = start + int(headers["content-length"])
                else:
                    end = self.buf.find(b"\0", start)
                if 0 <= end < len(self.buf):
                    body, self.buf = self.buf[start:end], self.buf[end + 1 :]
                    return head[0].strip(), headers, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            self.buf += chunk

    def connect(self) -> str:
        self.send("CONNECT", {"accept-version": "1.2", "host": HOST})
        command, headers, body = self.read()
        if command != "CONNECTED":
            raise ConnectionError(f"{command}: {headers.get('message', body[:200].decode())}")
        return headers.get("server", "")


def _connect_probe(port: int, timeout: float) -> str | None:
    """The ``server`` header of a CONNECTED answer on ``port``, or None when not answering."""
    session = _Session(port, timeout)
    try:
        server = session.connect()
        session.send("DISCONNECT", {})
        return server
    except (ConnectionError, TimeoutError):
        return None
    finally:
        session.close()


def _queue_stats(port: int, timeout: float) -> tuple[QueueStats, ...]:
    """Ask the statistics plugin about every queue; its replies end with an empty map."""
    session = _Session(port, timeout)
    try:
        session.connect()
        reply_to = "/temp-queue/workbench-stats"
        session.send(
            "SUBSCRIBE",
            {
                "id": "stats",
                "destination": reply_to,
                "ack": "auto",
                "transformation": "jms-map-xml",
            },
        )
        session.send(
            "SEND", {"destination": _STATS_QUERY, "reply-to": reply_to, _STATS_END: "true"}
        )
        found = []
        while True:
            command, headers, body = session.read()
            if command == "ERROR":
                raise BrokerError(f"the statistics query failed: {headers.get('message', '')}")
            if command != "MESSAGE":
                continue
            entries = _parse_map(body)
            if not entries:
                break
            name = entries.get("destinationName", "")
            found.append(
                QueueStats(
                    name="/queue/" + name.removeprefix("queue://"),
                    depth=int(entries.get("size", 0)),
                    in_flight=int(entries.get("inflightCount", 0)),
                    consumers=int(entries.get("consumerCount", 0)),
                    enqueued=int(entries.get("enqueueCount", 0)),
                    dequeued=int(entries.get("dequeueCount", 0)),
                )
            )
        session.send("DISCONNECT", {})
        return tuple(sorted(found, key=lambda q: q.name))
    except TimeoutError as e:
        raise BrokerError(
            f"the statistics plugin did not answer within {timeout:g} s (is XStream on the "
            "broker's classpath? see docs/broker.md)"
        ) from e
    finally:
        session.close()


def _parse_map(body: bytes) -> dict[str, str]:
    """A ``jms-map-xml`` body: ``<map><entry><string>key</string><long>1</long></entry>``."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as e:
        raise BrokerError(f"unreadable statistics reply: {body[:120]!r}") from e
    entries = {}
    for entry in root.iter("entry"):
        children = list(entry)
        if len(children) == 2 and children[0].text is not None:
            entries[children[0].text] = children[1].text or ""
    return entries


# -- the generated configuration --------------------------------------------------------------

_CORE_NS = "http://activemq.apache.org/schema/core"


def activemq_xml(
    directory: Path, stomp_port: int, nack_retries: int = 0, nack_delay_ms: int = 5000
) -> str:
    """The broker's ``activemq.xml``: loopback STOMP, KahaDB, shared DLQ, statistics, limits."""
    data = directory / "data"
    scheduler = ""
    redelivery = ""
    if nack_retries > 0:
        # The redelivery plugin intercepts the trip to the DLQ that a NACK starts and
        # reschedules the message instead, through the broker's job scheduler store.
        scheduler = (
            f' schedulerSupport="true" schedulerDirectory={quoteattr(str(data / "scheduler"))}'
        )
        redelivery = f"""
      <redeliveryPlugin fallbackToDeadLetter="true" sendToDlqIfMaxRetriesExceeded="true">
        <redeliveryPolicyMap><redeliveryPolicyMap><defaultEntry>
          <redeliveryPolicy maximumRedeliveries="{nack_retries}"
              initialRedeliveryDelay="{nack_delay_ms}" redeliveryDelay="{nack_delay_ms}"
              useExponentialBackOff="true" backOffMultiplier="2"/>
        </defaultEntry></redeliveryPolicyMap></redeliveryPolicyMap>
      </redeliveryPlugin>"""
    else:
        scheduler = ' schedulerSupport="false"'
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by `workbench broker start` at every start: edits here are lost.
     Why each setting is what it is: docs/broker.md. -->
<beans xmlns="http://www.springframework.org/schema/beans"
       xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
       xsi:schemaLocation="http://www.springframework.org/schema/beans
         http://www.springframework.org/schema/beans/spring-beans.xsd
         http://activemq.apache.org/schema/core
         http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="{_CORE_NS}" brokerName="workbench" persistent="true"
          useJmx="false" advisorySupport="true"{scheduler}
          dataDirectory={quoteattr(str(data))}
          tmpDataDirectory={quoteattr(str(data / "tmp"))}>
    <destinationPolicy><policyMap><policyEntries>
      <policyEntry queue="&gt;" producerFlowControl="true">
        <deadLetterStrategy>
          <sharedDeadLetterStrategy processExpired="true" processNonPersistent="false"/>
        </deadLetterStrategy>
      </policyEntry>
    </policyEntries></policyMap></destinationPolicy>
    <persistenceAdapter>
      <kahaDB directory={quoteattr(str(data / "kahadb"))} journalMaxFileLength="32mb"/>
    </persistenceAdapter>
    <plugins>
      <statisticsBrokerPlugin/>{redelivery}
    </plugins>
    <systemUsage>
      <systemUsage sendFailIfNoSpaceAfterTimeout="5000">
        <memoryUsage><memoryUsage limit="64 mb"/></memoryUsage>
        <storeUsage><storeUsage limit="2 gb"/></storeUsage>
        <tempUsage><tempUsage limit="256 mb"/></tempUsage>
      </systemUsage>
    </systemUsage>
    <transportConnectors>
      <transportConnector name="stomp"
          uri="stomp://{HOST}:{stomp_port}?transport.tcpNoDelay=true&amp;transport.closeAsync=false&amp;wireFormat.maxFrameSize=16777216"/>
    </transportConnectors>
  </broker>
</beans>
"""


def configured_port(config: Path) -> int | None:
    """The STOMP port that ``config`` (a generated activemq.xml) binds, or None."""
    try:
        root = ElementTree.parse(config).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    for connector in root.iter(f"{{{_CORE_NS}}}transportConnector"):
        uri = connector.get("uri", "")
        if uri.startswith("stomp://"):
            port = uri.split("?", 1)[0].rsplit(":", 1)[-1]
            return int(port) if port.isdigit() else None
    return None


_LOG4J = """\
# Generated by `workbench broker start` (log4j 1.x, Debian's activemq package).
log4j.rootLogger=INFO, logfile
log4j.logger.org.springframework=WARN
log4j.logger.org.apache.xbean=WARN
log4j.logger.org.apache.activemq.spring=WARN
log4j.appender.logfile=org.apache.log4j.RollingFileAppender
log4j.appender.logfile.file={log}
log4j.appender.logfile.maxFileSize=1024KB
log4j.appender.logfile.maxBackupIndex=5
log4j.appender.logfile.append=true
log4j.appender.logfile.layout=org.apache.log4j.PatternLayout
log4j.appender.logfile.layout.ConversionPattern=%d | %-5p | %m | %c | %t%n
"""

_LOG4J2 = """\
# Generated by `workbench broker start` (log4j2, upstream ActiveMQ 5.17 and later).
rootLogger.level=INFO
rootLogger.appenderRef.logfile.ref=logfile
logger.spring.name=org.springframework
logger.spring.level=WARN
logger.xbean.name=org.apache.xbean
logger.xbean.level=WARN
appender.logfile.type=RollingFile
appender.logfile.name=logfile
appender.logfile.fileName={log}
appender.logfile.filePattern={log}.%i
appender.logfile.layout.type=PatternLayout
appender.logfile.layout.pattern=%d | %-5p | %m | %c | %t%n%throwable
appender.logfile.policies.type=Policies
appender.logfile.policies.size.type=SizeBasedTriggeringPolicy
appender.logfile.policies.size.size=1MB
appender.logfile.strategy.type=DefaultRolloverStrategy
appender.logfile.strategy.max=5
"""
