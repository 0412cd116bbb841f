"""The ActiveMQ installation ``ManagedBroker`` runs, and the files it generates for it.

- the installation: ``DEBIAN_HOME``, ``find_installation`` (the broker jar and ``java``),
  ``read_version``, and ``xstream_jars`` (the statistics plugin needs XStream on the
  broker's classpath; docs/broker.md tells why);
- the generated files: ``activemq_xml`` (loopback STOMP, KahaDB, shared DLQ, statistics,
  limits; with ``TlsSettings``, STOMP over mutual TLS only, with certificate users and
  per-queue rights from ``workbench.transport.activemq_security``), ``configured_port`` and
  ``configured_tls`` (the STOMP port an activemq.xml binds, and whether over TLS), and the
  log4j 1.x and log4j2 properties;
- the JVM's command line (``jvm_command``).

``BrokerError`` is defined here, in the module every ``activemq*`` module imports, so that each
can raise it; its public home is ``workbench.transport.activemq``, which re-exports it.

>>> configured_port(Path("/tmp/wb-broker/conf/activemq.xml"))   # doctest: +SKIP
40513
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING
from xml.etree import ElementTree
from xml.sax.saxutils import quoteattr

from workbench.transport.base import TransportError

if TYPE_CHECKING:
    from workbench.transport.activemq_security import TlsSettings

__all__ = [
    "DEBIAN_HOME",
    "HOST",
    "BrokerError",
    "activemq_xml",
    "configured_port",
    "configured_tls",
    "find_installation",
    "jvm_command",
    "log4j2_properties",
    "log4j_properties",
    "read_version",
    "xstream_jars",
]

DEBIAN_HOME = Path("/usr/share/activemq")
HOST = "127.0.0.1"
# XStream turns the statistics plugin's map messages into STOMP bodies; Debian's activemq
# package does not put it on the broker's classpath, so we add it from libxstream-java.
_XSTREAM_JARS = (Path("/usr/share/java/xstream.jar"),)
_INSTALL_HINT = (
    "install Debian's activemq package (apt-get install activemq) "
    "or set ACTIVEMQ_HOME to an ActiveMQ Classic 5.x installation"
)


class BrokerError(TransportError):
    """The managed broker is not installed, or could not be started, stopped or queried."""


# -- the installation ------------------------------------------------------------------------


def find_installation(home: Path, java: str | Path) -> tuple[Path, str]:
    """The broker jar under ``home`` and the resolved ``java`` executable.

    Raises:
        BrokerError: ActiveMQ or Java is not installed (the message says what to install).
    """
    jar = home / "bin" / "activemq.jar"
    if not jar.is_file():
        raise BrokerError(f"ActiveMQ is not installed: {jar} does not exist; {_INSTALL_HINT}")
    found = shutil.which(str(java))
    if found is None:
        raise BrokerError(
            f"Java is not installed: {java} not found; "
            "install a Java runtime (apt-get install default-jre-headless)"
        )
    return jar, found


def xstream_jars(home: Path) -> list[Path]:
    """XStream jars for the broker's classpath: the installation's own, else the system's."""
    bundled = [
        *home.glob("lib/optional/xstream*.jar"),
        *home.glob("lib/xstream*.jar"),
    ]
    return bundled or [jar for jar in _XSTREAM_JARS if jar.exists()]


def read_version(home: Path) -> str | None:
    """The installation's ActiveMQ version (from the broker jar's manifest), if readable."""
    lib = home / "lib"
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


def jvm_command(
    java: str,
    jar: Path,
    *,
    home: Path,
    directory: Path,
    config: Path,
    heap_mb: int,
    login_config: Path | None = None,
) -> list[str]:
    """The command that runs the broker of ``directory`` with ``config`` and the log4j files.

    ``login_config``: the JAAS configuration of a locked-down broker (no secret: passwords
    stay in files, never on the command line, where ``ps`` would show them).
    """
    conf, data = directory / "conf", directory / "data"
    classpath = os.pathsep.join(str(p) for p in [conf, *xstream_jars(home)])
    jaas = [] if login_config is None else [f"-Djava.security.auth.login.config={login_config}"]
    return [
        java, "-Xms64m", f"-Xmx{heap_mb}m", "-Djava.awt.headless=true",
        f"-Djava.io.tmpdir={directory / 'tmp'}",
        f"-Dlog4j.configuration=file:{conf / 'log4j.properties'}",
        f"-Dlog4j2.configurationFile=file:{conf / 'log4j2.properties'}",
        f"-Dactivemq.home={home}", f"-Dactivemq.base={directory}",
        f"-Dactivemq.conf={conf}", f"-Dactivemq.data={data}",
        f"-Dactivemq.classpath={classpath}", *jaas,
        "-jar", str(jar), "start", f"xbean:file:{config}",
    ]  # fmt: skip


# -- the generated configuration --------------------------------------------------------------

_CORE_NS = "http://activemq.apache.org/schema/core"


def activemq_xml(
    directory: Path,
    stomp_port: int,
    nack_retries: int = 0,
    nack_delay_ms: int = 5000,
    tls: TlsSettings | None = None,
) -> str:
    """The broker's ``activemq.xml``: loopback STOMP, KahaDB, shared DLQ, statistics, limits.

    With ``tls`` the one connector is ``stomp+ssl`` with client certificates required, and
    the broker authenticates each certificate against the allowlist and authorizes per queue
    (``workbench.transport.activemq_security``); there is no plain connector then.
    """
    data = directory / "data"
    options = (
        "transport.tcpNoDelay=true&amp;transport.closeAsync=false"
        "&amp;wireFormat.maxFrameSize=16777216"
    )
    placeholder = destinations = ssl_context = security = ""
    if tls is None:
        connector = f'name="stomp" uri="stomp://{HOST}:{stomp_port}?{options}"'
    else:
        from workbench.transport import activemq_security as sec

        connector = (
            f'name="stomp+ssl" uri="stomp+ssl://{HOST}:{stomp_port}?needClientAuth=true&amp;'
            f'{options}"'
        )
        placeholder = sec.placeholder_xml(directory / "conf")
        destinations = sec.destinations_xml(tls)
        ssl_context = sec.ssl_context_xml(tls)
        security = sec.authorization_xml(tls)
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
         http://activemq.apache.org/schema/core/activemq-core.xsd">{placeholder}
  <broker xmlns="{_CORE_NS}" brokerName="workbench" persistent="true"
          useJmx="false" advisorySupport="true"{scheduler}
          dataDirectory={quoteattr(str(data))}
          tmpDataDirectory={quoteattr(str(data / "tmp"))}>{destinations}
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
      <statisticsBrokerPlugin/>{security}{redelivery}
    </plugins>{ssl_context}
    <systemUsage>
      <systemUsage sendFailIfNoSpaceAfterTimeout="5000">
        <memoryUsage><memoryUsage limit="64 mb"/></memoryUsage>
        <storeUsage><storeUsage limit="2 gb"/></storeUsage>
        <tempUsage><tempUsage limit="256 mb"/></tempUsage>
      </systemUsage>
    </systemUsage>
    <transportConnectors>
      <transportConnector {connector}/>
    </transportConnectors>
  </broker>
</beans>
"""


def configured_port(config: Path) -> int | None:
    """The STOMP port that ``config`` (a generated activemq.xml) binds, or None."""
    found = _connector(config)
    return None if found is None else found[1]


def configured_tls(config: Path) -> bool:
    """Whether ``config`` offers STOMP over TLS (``stomp+ssl``) rather than plain STOMP."""
    found = _connector(config)
    return found is not None and found[0] == "stomp+ssl"


def _connector(config: Path) -> tuple[str, int | None] | None:
    try:
        root = ElementTree.parse(config).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    for connector in root.iter(f"{{{_CORE_NS}}}transportConnector"):
        uri = connector.get("uri", "")
        for scheme in ("stomp", "stomp+ssl"):
            if uri.startswith(f"{scheme}://"):
                port = uri.split("?", 1)[0].rsplit(":", 1)[-1]
                return scheme, int(port) if port.isdigit() else None
    return None


def log4j_properties(log: Path) -> str:
    """``log4j.properties`` (log4j 1.x, Debian's package): ``log``, rotated at 1 MiB, 5 kept."""
    return _LOG4J.format(log=log)


def log4j2_properties(log: Path) -> str:
    """``log4j2.properties`` (log4j2, upstream ActiveMQ 5.17 and later), the same policy."""
    return _LOG4J2.format(log=log)


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
