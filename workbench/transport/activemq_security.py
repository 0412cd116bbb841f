"""The managed broker locked down: STOMP over mutual TLS, certificate users, per-queue rights.

``TlsSettings`` says which keystore and truststore the broker uses and who may connect: the
Hub and each allowed Spoke, each as a ``BrokerUser`` (a name and the certificate subject as
Java prints it). From it ``ManagedBroker`` generates, beside ``activemq.xml``::

    conf/login.config       JAAS: TextFileCertificateLoginModule over the two files below
    conf/users.properties   user = certificate DN, one line per allowed party
    conf/groups.properties  hubs = <hub>; spokes = <every spoke>; spoke.<id> = <id>
    conf/tls.properties     the stores' password (mode 0600), read by activemq.xml through a
                            property placeholder, so activemq.xml itself holds no secret

and these pieces of ``activemq.xml``: the ``sslContext``, the JAAS certificate authentication
plugin, and an authorization map in which

- only the Hub writes ``elic.spoke.<id>.orders`` and only spoke ``<id>`` reads it;
- every allowed Spoke writes ``elic.hub.inbox`` and only the Hub reads it;
- only the Hub reads the dead-letter queue, uses temporary queues, reads advisory topics
  and uses the statistics plugin (``workbench broker status`` connects as the Hub); a Spoke
  may only create advisory topics, which ActiveMQ does in its name when it subscribes;
- everything else is refused (ActiveMQ refuses a destination no entry names).

The queues are created when the broker starts (``<destinations>``), so no client needs the
right to create one. The files are read once, at broker start: a change to the allowlist
takes a restart.

>>> hub = BrokerUser("hub", "CN=hub, O=ELIC Consortium")
>>> groups_properties(hub, [BrokerUser("spoke-a", "CN=spoke-a, O=ELIC Consortium")])
'hubs=hub\\nspokes=spoke-a\\nspoke.spoke-a=spoke-a\\n'
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from workbench.core.messages import HUB_INBOX, orders_queue
from workbench.core.private_file import PrivateFileError, read_private_text
from workbench.errors import ConfigError
from workbench.transport.stomp_connection import ClientTls

__all__ = [
    "JAAS_REALM",
    "BrokerUser",
    "TlsSettings",
    "authorization_xml",
    "destinations_xml",
    "groups_properties",
    "login_config",
    "read_password",
    "ssl_context_xml",
    "users_properties",
    "write_security_files",
]

JAAS_REALM = "workbench-certificates"
DLQ = "ActiveMQ.DLQ"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class BrokerUser:
    """One party the broker lets in: its name (the CN; a spoke's id) and certificate DN.

    ``dn`` is the subject as Java prints it (``workbench.trust.pki.java_dn``), e.g.
    ``CN=spoke-a, O=ELIC Consortium``; ActiveMQ compares it as a string.
    """

    name: str
    dn: str

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"not a valid broker user name (a spoke id): {self.name!r}")
        if not self.dn.strip() or any(c in self.dn for c in "\r\n\\") or self.dn != self.dn.strip():
            raise ConfigError(f"not a certificate DN as Java prints it: {self.dn!r}")


@dataclass(frozen=True)
class TlsSettings:
    """How the managed broker runs locked down (``ManagedBroker(..., tls=TlsSettings(...))``).

    Args:
        keystore: the broker's PKCS#12 keystore (its key and certificate, with subjectAltNames
            127.0.0.1 and localhost).
        truststore: a PKCS#12 Java truststore with the consortium CA: only certificates it
            signed get through the TLS handshake.
        password_file: the password of both stores, one line, mode 0600.
        hub: the Hub's user.
        spokes: the allowed Spokes' users (the allowlist); each gets its own orders queue.
        client: the identity ``ManagedBroker`` connects with to see that the broker is up
            and to read queue depths: the Hub's (the only party allowed to ask).

    Raises:
        ConfigError: two users share a name or a DN.
    """

    keystore: Path
    truststore: Path
    password_file: Path
    hub: BrokerUser
    spokes: Sequence[BrokerUser]
    client: ClientTls

    def __post_init__(self) -> None:
        object.__setattr__(self, "spokes", tuple(self.spokes))
        users = self.users
        for attribute in ("name", "dn"):
            values = [getattr(u, attribute) for u in users]
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise ConfigError(f"two broker users share the {attribute} {twice[0]!r}")

    @property
    def users(self) -> tuple[BrokerUser, ...]:
        """The Hub and every Spoke."""
        return (self.hub, *self.spokes)

    def check_files(self) -> None:
        """Raise ``ConfigError`` naming the first store or identity file that is missing."""
        for what, path in (
            ("keystore", self.keystore),
            ("truststore", self.truststore),
            ("password file", self.password_file),
        ):
            if not Path(path).is_file():
                raise ConfigError(f"the broker's {what} {path} does not exist")
        self.client.check_files()


def read_password(path: Path) -> str:
    """The stores' password from ``path`` (one line).

    Raises:
        ConfigError: the file is unreadable, empty, or readable by group or others.
    """
    try:
        return read_private_text(path)
    except PrivateFileError as e:
        raise ConfigError(str(e)) from e


# -- the files beside activemq.xml ------------------------------------------------------------


def write_security_files(conf: Path, tls: TlsSettings) -> Path:
    """Write login.config, users/groups.properties and tls.properties into ``conf``.

    Returns the path of ``login.config`` (the JVM's ``java.security.auth.login.config``).

    Raises:
        ConfigError: the password file cannot be read.
    """
    password = read_password(tls.password_file)
    (conf / "users.properties").write_text(users_properties(tls.users))
    (conf / "groups.properties").write_text(groups_properties(tls.hub, tls.spokes))
    login = conf / "login.config"
    login.write_text(login_config())
    escaped = _property_value(password)
    _write_secret(
        conf / "tls.properties",
        "# Generated by `workbench broker start`: the keystore and truststore password.\n"
        f"workbench.tls.keyStorePassword={escaped}\n"
        f"workbench.tls.trustStorePassword={escaped}\n",
    )
    return login


def login_config() -> str:
    """The JAAS realm: users.properties and groups.properties, relative to login.config."""
    return f"""\
// Generated by `workbench broker start`: certificate DN -> user -> groups.
{JAAS_REALM} {{
    org.apache.activemq.jaas.TextFileCertificateLoginModule required
        org.apache.activemq.jaas.textfiledn.user="users.properties"
        org.apache.activemq.jaas.textfiledn.group="groups.properties";
}};
"""


def users_properties(users: Sequence[BrokerUser]) -> str:
    """``name=DN`` per user, the DN exactly as Java prints the certificate's subject."""
    lines = ["# Generated by `workbench broker start`: user = certificate subject (Java's form)"]
    lines += [f"{u.name}={_property_value(u.dn)}" for u in users]
    return "\n".join(lines) + "\n"


def groups_properties(hub: BrokerUser, spokes: Sequence[BrokerUser]) -> str:
    """``hubs``, ``spokes`` and one ``spoke.<id>`` group per spoke (the authorization map's)."""
    lines = [f"hubs={hub.name}", f"spokes={','.join(s.name for s in spokes)}"]
    lines += [f"spoke.{s.name}={s.name}" for s in spokes]
    return "\n".join(lines) + "\n"


# -- the pieces of activemq.xml ----------------------------------------------------------------


def placeholder_xml(conf: Path) -> str:
    """A Spring bean that resolves ``${workbench.tls.*}`` from conf/tls.properties."""
    location = quoteattr(f"file:{conf / 'tls.properties'}")
    return f"""
  <bean class="org.springframework.beans.factory.config.PropertyPlaceholderConfigurer">
    <property name="location" value={location}/>
  </bean>"""


def ssl_context_xml(tls: TlsSettings) -> str:
    """The broker's ``sslContext``: PKCS#12 keystore and truststore, passwords by placeholder."""
    keystore = quoteattr(f"file:{Path(tls.keystore).absolute()}")
    truststore = quoteattr(f"file:{Path(tls.truststore).absolute()}")
    return f"""
    <sslContext>
      <sslContext keyStore={keystore} keyStoreType="PKCS12"
          keyStorePassword="${{workbench.tls.keyStorePassword}}"
          trustStore={truststore} trustStoreType="PKCS12"
          trustStorePassword="${{workbench.tls.trustStorePassword}}"/>
    </sslContext>"""


def destinations_xml(tls: TlsSettings) -> str:
    """The queues made at start: the Hub inbox, each Spoke's orders, the dead-letter queue."""
    names = [_physical(HUB_INBOX), *(_physical(orders_queue(s.name)) for s in tls.spokes), DLQ]
    queues = "\n".join(f'      <queue physicalName="{n}"/>' for n in names)
    return f"""
    <destinations>
{queues}
    </destinations>"""


def authorization_xml(tls: TlsSettings) -> str:
    """The JAAS certificate plugin and the authorization map (groups of groups_properties)."""
    orders = [_physical(orders_queue(s.name)) for s in tls.spokes]
    entries = [
        _entry("queue", _physical(HUB_INBOX), read="hubs", write="hubs,spokes", admin="hubs"),
        *(
            _entry("queue", queue, read=f"spoke.{s.name}", write="hubs", admin="hubs")
            for queue, s in zip(orders, tls.spokes, strict=True)
        ),
        _entry("queue", DLQ, read="hubs", write="hubs", admin="hubs"),
        _entry("queue", "ActiveMQ.Statistics.>", read="hubs", write="hubs", admin="hubs"),
        # Subscribing makes the broker create an advisory topic for the new consumer, with the
        # subscriber's rights: every party may create one, only the Hub may read them.
        _entry("topic", "ActiveMQ.Advisory.>", read="hubs", write="hubs", admin="hubs,spokes"),
    ]
    lines = "\n".join(f"            {e}" for e in entries)
    return f"""
      <jaasCertificateAuthenticationPlugin configuration="{JAAS_REALM}"/>
      <authorizationPlugin>
        <map>
          <authorizationMap>
            <authorizationEntries>
{lines}
            </authorizationEntries>
            <tempDestinationAuthorizationEntry>
              <tempDestinationAuthorizationEntry read="hubs" write="hubs" admin="hubs"/>
            </tempDestinationAuthorizationEntry>
          </authorizationMap>
        </map>
      </authorizationPlugin>"""


def _entry(kind: str, name: str, *, read: str, write: str, admin: str) -> str:
    return (
        f'<authorizationEntry {kind}="{_xml_name(name)}" read="{read}" write="{write}" '
        f'admin="{admin}"/>'
    )


def _physical(destination: str) -> str:
    return destination.removeprefix("/queue/")


def _xml_name(name: str) -> str:
    return name.replace(">", "&gt;")


def _property_value(text: str) -> str:
    # java.util.Properties: a backslash escapes, leading blanks are dropped.
    escaped = text.replace("\\", "\\\\")
    return "\\" + escaped if escaped[:1] in (" ", "\t") else escaped


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # an older file may have had another mode
        f.write(text)
