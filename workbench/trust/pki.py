"""The consortium PKI: one CA that issues the broker's, the Hub's and every Spoke's certificate.

A CA lives in one folder, as written by ``workbench pki init DIR``::

    DIR/ca.key    the CA's private key (PKCS#8 PEM, unencrypted, mode 0600): keep it offline
    DIR/ca.crt    the CA's self-signed certificate (PEM): every party trusts it

``issue`` (``workbench pki issue NAME --role ROLE --ca DIR --out OUT``) writes one identity::

    OUT/NAME.key              private key (PKCS#8 PEM, mode 0600)
    OUT/NAME.crt              certificate signed by the CA (PEM)
    OUT/ca.crt                the CA certificate, to verify the other side
    OUT/NAME.p12              PKCS#12 keystore: key, certificate and CA (mode 0600)
    OUT/NAME.truststore.p12   PKCS#12 Java truststore holding the CA certificate
    OUT/NAME.pass             the password of both stores (one line, mode 0600)

The password is generated, written only to ``NAME.pass`` and never logged or put on a command
line. Keys are ECDSA P-256. The broker's certificate is for TLS servers (``serverAuth``, with
subjectAltNames ``127.0.0.1`` and ``localhost``); the Hub's and the Spokes' are for TLS clients
(``clientAuth``). Every subject is ``CN=<name>, O=<the CA's organization>``; the broker maps a
client certificate to a user by its subject as Java prints it (``java_dn``).

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> ca = init_ca(root / "ca")
>>> spoke = issue(root / "ca", "spoke-a", "spoke", root / "spoke-a")
>>> java_dn(spoke.certificate)
'CN=spoke-a, O=ELIC Consortium'
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from workbench.core.private_file import PrivateFileError, read_private_text
from workbench.errors import TrustError

__all__ = [
    "DEFAULT_CA_NAME",
    "DEFAULT_ORGANIZATION",
    "ROLES",
    "CertificateAuthority",
    "Identity",
    "PkiError",
    "Role",
    "common_name",
    "identity",
    "init_ca",
    "issue",
    "java_dn",
    "load_certificate",
    "read_password",
]

_LOG = logging.getLogger(__name__)

Role = Literal["broker", "hub", "spoke"]
ROLES: tuple[str, ...] = get_args(Role)
DEFAULT_CA_NAME = "ELIC Consortium CA"
DEFAULT_ORGANIZATION = "ELIC Consortium"
CA_KEY, CA_CERT = "ca.key", "ca.crt"

# A party's name becomes its certificate's CN, its broker user and, for a spoke, part of its
# queue name (DESIGN.md section 5): the spoke-id alphabet keeps all three unambiguous.
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Names printed into a DN: no character that Java or RFC 4514 would escape or quote.
_DN_TEXT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,62}[A-Za-z0-9.]$|^[A-Za-z0-9]$")
_JAVA_KEYWORDS = {
    NameOID.COMMON_NAME: "CN",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COUNTRY_NAME: "C",
    NameOID.LOCALITY_NAME: "L",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
}
_SKEW = datetime.timedelta(minutes=5)  # backdate notBefore: clocks of the parties differ


class PkiError(TrustError):
    """A CA or an identity cannot be made: it exists already, the CA is missing, bad input."""


@dataclass(frozen=True)
class CertificateAuthority:
    """Where a CA's files are."""

    directory: Path

    @property
    def key(self) -> Path:
        """The CA's private key."""
        return self.directory / CA_KEY

    @property
    def certificate(self) -> Path:
        """The CA's self-signed certificate."""
        return self.directory / CA_CERT


@dataclass(frozen=True)
class Identity:
    """The files of one issued identity (``identity(out_dir, name)`` finds them again)."""

    name: str
    directory: Path

    @property
    def key(self) -> Path:
        """The private key (PEM, mode 0600)."""
        return self.directory / f"{self.name}.key"

    @property
    def certificate(self) -> Path:
        """The certificate (PEM)."""
        return self.directory / f"{self.name}.crt"

    @property
    def ca_certificate(self) -> Path:
        """The CA certificate (PEM), to verify the other side of a connection."""
        return self.directory / CA_CERT

    @property
    def keystore(self) -> Path:
        """PKCS#12 keystore: key, certificate and CA certificate."""
        return self.directory / f"{self.name}.p12"

    @property
    def truststore(self) -> Path:
        """PKCS#12 Java truststore: the CA certificate as a trusted entry."""
        return self.directory / f"{self.name}.truststore.p12"

    @property
    def password_file(self) -> Path:
        """The password of both stores (mode 0600)."""
        return self.directory / f"{self.name}.pass"


def identity(directory: Path, name: str) -> Identity:
    """The identity ``name`` issued into ``directory``.

    Raises:
        PkiError: its certificate or key is not there.
    """
    found = Identity(name, Path(directory))
    for path in (found.certificate, found.key, found.ca_certificate):
        if not path.is_file():
            raise PkiError(f"no identity {name!r} in {directory}: {path.name} is missing")
    return found


def init_ca(
    directory: Path,
    name: str = DEFAULT_CA_NAME,
    organization: str = DEFAULT_ORGANIZATION,
    days: int = 3650,
) -> CertificateAuthority:
    """Make a CA: a new key and a self-signed certificate ``CN=name, O=organization``.

    Args:
        directory: where ``ca.key`` and ``ca.crt`` go (created if missing).
        name: the CA's common name.
        organization: the consortium; every certificate the CA issues carries it as ``O``.
        days: how long the CA certificate is valid.

    Raises:
        PkiError: a CA exists in ``directory`` already, or a name has characters a DN would
            have to escape.

    >>> init_ca(Path("/tmp/elic-ca"))                       # doctest: +SKIP
    CertificateAuthority(directory=PosixPath('/tmp/elic-ca'))
    """
    ca = CertificateAuthority(Path(directory))
    for path in (ca.key, ca.certificate):
        if path.exists():
            raise PkiError(f"a CA exists in {ca.directory} already ({path.name}); not replacing it")
    _check_dn_text(name, "CA name")
    _check_dn_text(organization, "organization")
    if days < 1:
        raise PkiError(f"days must be at least 1, got {days}")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(name, organization)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    ca.directory.mkdir(parents=True, exist_ok=True)
    _write_private(ca.key, _key_pem(key))
    _write_public(ca.certificate, cert.public_bytes(serialization.Encoding.PEM))
    _LOG.info("made CA %r in %s", name, ca.directory)
    return ca


def issue(ca_dir: Path, name: str, role: str, out_dir: Path, days: int = 825) -> Identity:
    """Issue a key and certificate for the broker, the Hub or a Spoke, signed by the CA.

    Args:
        ca_dir: the CA's folder (``init_ca``).
        name: the party's name: its certificate's CN and its broker user; for a spoke, its
            spoke id. Lower-case letters, digits and ``-``.
        role: ``broker`` (TLS server: serverAuth, subjectAltNames 127.0.0.1 and localhost),
            ``hub`` or ``spoke`` (TLS clients: clientAuth).
        out_dir: where the identity's files go (created if missing; several identities may
            share it).
        days: how long the certificate is valid.

    Returns:
        The identity's file paths.

    Raises:
        PkiError: no CA in ``ca_dir``, an unknown role, a bad name, or an identity of that
            name exists in ``out_dir`` already.

    >>> spoke = issue(Path("/tmp/ca"), "spoke-a", "spoke", Path("/tmp/spoke-a"))  # doctest: +SKIP
    >>> spoke.keystore.name                                                       # doctest: +SKIP
    'spoke-a.p12'
    """
    if role not in ROLES:
        raise PkiError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    if not _NAME.match(name):
        raise PkiError(
            f"not a valid name: {name!r} (lower-case letters, digits and '-', at most 63)"
        )
    if days < 1:
        raise PkiError(f"days must be at least 1, got {days}")
    ca_key, ca_cert = _load_ca(Path(ca_dir))
    found = Identity(name, Path(out_dir))
    for path in (found.key, found.certificate, found.keystore, found.password_file):
        if path.exists():
            raise PkiError(
                f"an identity {name!r} exists in {found.directory} already ({path.name}); "
                "remove its files to issue a new one"
            )
    organization = _attribute(ca_cert.subject, NameOID.ORGANIZATION_NAME)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(key, ca_key, ca_cert, _name(name, organization), role, days)

    found.directory.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    _write_private(found.password_file, (password + "\n").encode())
    _write_private(found.key, _key_pem(key))
    _write_public(found.certificate, cert.public_bytes(serialization.Encoding.PEM))
    _write_public(found.ca_certificate, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(found.keystore, _keystore(name, key, cert, ca_cert, password))
    _write_public(found.truststore, _truststore(ca_cert, password))
    _LOG.info("issued a %s certificate for %r into %s", role, name, found.directory)
    return found


# -- reading certificates ------------------------------------------------------------------


def load_certificate(path: Path) -> x509.Certificate:
    """A PEM certificate from ``path``.

    Raises:
        PkiError: the file is missing or holds no PEM certificate.
    """
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise PkiError(f"cannot read a PEM certificate from {path}: {e}") from e


def java_dn(certificate: x509.Certificate | Path) -> str:
    """The certificate's subject as Java prints it, which is what ActiveMQ matches.

    ActiveMQ's ``TextFileCertificateLoginModule`` looks a client up by
    ``X509Certificate.getSubjectDN().getName()``: the RDNs from the last to the first (as in
    RFC 4514), joined by ``", "`` (comma and space, unlike RFC 4514). For the certificates
    ``issue`` makes (subject sequence ``O=..., CN=...``) that is
    ``CN=spoke-a, O=ELIC Consortium``.

    Raises:
        PkiError: an attribute Java would print as an OID, or a value it would quote or
            escape (such names are refused here rather than guessed).
    """
    cert = (
        certificate if isinstance(certificate, x509.Certificate) else load_certificate(certificate)
    )
    parts = []
    for rdn in reversed(cert.subject.rdns):
        values = []
        for attribute in rdn:
            keyword = _JAVA_KEYWORDS.get(attribute.oid)
            value = attribute.value
            if keyword is None or not isinstance(value, str) or not _DN_TEXT.match(value):
                raise PkiError(
                    f"cannot write {attribute.rfc4514_string()!r} as Java prints it: only "
                    f"{', '.join(_JAVA_KEYWORDS.values())} with plain values are supported"
                )
            values.append(f"{keyword}={value}")
        parts.append(" + ".join(values))
    return ", ".join(parts)


def common_name(certificate: x509.Certificate | Path) -> str:
    """The certificate subject's CN (a party's name).

    Raises:
        PkiError: the subject has no CN.
    """
    cert = (
        certificate if isinstance(certificate, x509.Certificate) else load_certificate(certificate)
    )
    return _attribute(cert.subject, NameOID.COMMON_NAME)


def read_password(path: Path) -> str:
    """The store password kept in ``path`` (``Identity.password_file``).

    Raises:
        PkiError: the file is missing, empty, or readable by others than its owner.
    """
    try:
        return read_private_text(path)
    except PrivateFileError as e:
        raise PkiError(str(e)) from e


# -- internals ------------------------------------------------------------------------------


def _leaf(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    subject: x509.Name,
    role: str,
    days: int,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if role == "broker":
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        ).add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256())


def _load_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca = CertificateAuthority(directory)
    if not ca.key.is_file() or not ca.certificate.is_file():
        raise PkiError(f"no CA in {directory}: run `workbench pki init {directory}` first")
    try:
        key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(ca.certificate.read_bytes())
    except (OSError, ValueError, TypeError) as e:
        raise PkiError(f"cannot read the CA in {directory}: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise PkiError(f"{ca.key} is not the key of {ca.certificate}")
    return key, cert


def _name(common: str, organization: str) -> x509.Name:
    # Most general first, as X.509 names are written; Java prints it back to front.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    found = name.get_attributes_for_oid(oid)
    if not found or not isinstance(found[0].value, str):
        raise PkiError(f"the name {name.rfc4514_string()!r} has no {oid.dotted_string}")
    return found[0].value


def _check_dn_text(text: str, what: str) -> None:
    if not _DN_TEXT.match(text):
        raise PkiError(
            f"{what} {text!r} may hold only letters, digits, spaces and . _ - (at most 64)"
        )


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _store_encryption(password: str) -> serialization.KeySerializationEncryption:
    # PBES2 with AES-256 and an HMAC-SHA256 MAC: what Java 17 reads (and openssl 3 writes).
    return (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(10_000)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password.encode())
    )


def _keystore(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    password: str,
) -> bytes:
    return pkcs12.serialize_key_and_certificates(
        name.encode(), key, cert, [ca_cert], _store_encryption(password)
    )


def _truststore(ca_cert: x509.Certificate, password: str) -> bytes:
    # A plain PKCS#12 of certificates is not a Java truststore: Java trusts only certificate
    # bags marked with Oracle's trusted-key-usage attribute, which this function writes.
    entry = pkcs12.PKCS12Certificate(ca_cert, b"consortium-ca")
    return pkcs12.serialize_java_truststore([entry], _store_encryption(password))


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret with mode 0600 from the start (never readable by others, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_public(path: Path, data: bytes) -> None:
    path.write_bytes(data)
