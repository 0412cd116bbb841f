"""The consortium PKI (``workbench.trust.pki``) and ``workbench pki``: fields, files, refusals.

That Java and ActiveMQ accept these keystores, truststores and DNs is shown against the real
broker in ``tests/integration/test_broker_tls.py``; here each certificate field, file and
error is checked on its own.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from workbench.cli.main import main
from workbench.trust import pki


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pki.Identity]:
    """A CA in ``root/ca`` and a broker, a hub and a spoke issued into ``root/ids``."""
    root = tmp_path_factory.mktemp("pki")
    pki.init_ca(root / "ca")
    roles = {"broker": "broker", "hub": "hub", "spoke-a": "spoke"}
    return {name: pki.issue(root / "ca", name, role, root / "ids") for name, role in roles.items()}


def cert(identity: pki.Identity) -> x509.Certificate:
    return x509.load_pem_x509_certificate(identity.certificate.read_bytes())


def ca_cert(identity: pki.Identity) -> x509.Certificate:
    return x509.load_pem_x509_certificate(identity.ca_certificate.read_bytes())


def extended_key_usage(certificate: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


# -- the CA ----------------------------------------------------------------------------------------


def test_the_ca_is_a_self_signed_ca_certificate_with_the_consortium_as_organization(
    tmp_path: Path,
) -> None:
    ca = pki.init_ca(tmp_path / "ca", name="Test CA", organization="Test Consortium")

    certificate = x509.load_pem_x509_certificate(ca.certificate.read_bytes())
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert certificate.subject.rfc4514_string() == "CN=Test CA,O=Test Consortium"
    assert certificate.issuer == certificate.subject
    certificate.verify_directly_issued_by(certificate)
    assert constraints.critical and constraints.value.ca
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert ca.key.stat().st_mode & 0o777 == 0o600


def test_a_second_ca_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    ca = pki.init_ca(tmp_path / "ca")
    before = ca.key.read_bytes()

    with pytest.raises(pki.PkiError, match=r"a CA exists in .* already"):
        pki.init_ca(tmp_path / "ca")

    assert ca.key.read_bytes() == before


# -- issued certificates ---------------------------------------------------------------------------


def test_the_broker_certificate_is_a_server_certificate_for_loopback_signed_by_the_ca(
    issued: dict[str, pki.Identity],
) -> None:
    broker = cert(issued["broker"])

    names = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    broker.verify_directly_issued_by(ca_cert(issued["broker"]))
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert extended_key_usage(broker) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert broker.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "broker"


@pytest.mark.parametrize("name", ["hub", "spoke-a"])
def test_hub_and_spoke_certificates_are_client_certificates_named_after_the_party(
    issued: dict[str, pki.Identity], name: str
) -> None:
    certificate = cert(issued[name])

    certificate.verify_directly_issued_by(ca_cert(issued[name]))
    assert extended_key_usage(certificate) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert certificate.subject.rfc4514_string() == f"CN={name},O=ELIC Consortium"
    with pytest.raises(x509.ExtensionNotFound):
        certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)


@pytest.mark.parametrize("name", ["broker", "hub", "spoke-a"])
def test_every_leaf_is_no_ca_and_may_only_sign_handshakes(
    issued: dict[str, pki.Identity], name: str
) -> None:
    certificate = cert(issued[name])

    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert constraints.critical and not constraints.value.ca
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_cert_sign and not usage.value.crl_sign
    assert certificate.not_valid_after_utc <= ca_cert(issued[name]).not_valid_after_utc


def test_the_keystore_opens_with_the_stored_password_and_holds_key_certificate_and_ca(
    issued: dict[str, pki.Identity],
) -> None:
    spoke = issued["spoke-a"]
    password = pki.read_password(spoke.password_file).encode()

    store = pkcs12.load_pkcs12(spoke.keystore.read_bytes(), password)

    assert store.cert is not None and store.cert.certificate == cert(spoke)
    assert store.key is not None
    assert store.key.public_key() == cert(spoke).public_key()
    assert [c.certificate for c in store.additional_certs] == [ca_cert(spoke)]
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(spoke.keystore.read_bytes(), b"not-the-password")


def test_the_truststore_opens_with_the_stored_password_and_holds_only_the_ca(
    issued: dict[str, pki.Identity],
) -> None:
    broker = issued["broker"]
    password = pki.read_password(broker.password_file).encode()

    store = pkcs12.load_pkcs12(broker.truststore.read_bytes(), password)

    assert store.key is None and store.cert is None
    assert [c.certificate for c in store.additional_certs] == [ca_cert(broker)]


def test_the_pem_key_matches_the_certificate(issued: dict[str, pki.Identity]) -> None:
    hub = issued["hub"]

    key = serialization.load_pem_private_key(hub.key.read_bytes(), password=None)

    assert key.public_key() == cert(hub).public_key()


@pytest.mark.parametrize("name", ["broker", "hub", "spoke-a"])
def test_secrets_are_private_files_and_certificates_are_not(
    issued: dict[str, pki.Identity], name: str
) -> None:
    found = issued[name]

    for secret in (found.key, found.keystore, found.password_file):
        assert secret.stat().st_mode & 0o777 == 0o600, secret
    assert found.certificate.stat().st_mode & 0o044  # readable by others: it is public


def test_the_password_is_generated_per_identity_and_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki.init_ca(tmp_path / "ca")
    with caplog.at_level(logging.DEBUG):
        first = pki.issue(tmp_path / "ca", "spoke-a", "spoke", tmp_path / "out")
        second = pki.issue(tmp_path / "ca", "spoke-b", "spoke", tmp_path / "out")

    passwords = [pki.read_password(i.password_file) for i in (first, second)]
    assert passwords[0] != passwords[1] and min(len(p) for p in passwords) >= 24
    assert "issued a spoke certificate" in caplog.text
    assert not any(p in caplog.text for p in passwords)


def test_a_password_file_readable_by_others_is_refused(issued: dict[str, pki.Identity]) -> None:
    path = issued["hub"].password_file
    path.chmod(0o644)
    try:
        with pytest.raises(pki.PkiError, match="readable by others"):
            pki.read_password(path)
    finally:
        path.chmod(0o600)
    assert pki.read_password(path)


# -- refusals --------------------------------------------------------------------------------------


def test_issuing_without_a_ca_is_refused(tmp_path: Path) -> None:
    with pytest.raises(pki.PkiError, match=r"no CA in .*: run `workbench pki init"):
        pki.issue(tmp_path / "nothing", "hub", "hub", tmp_path / "out")

    assert not (tmp_path / "out").exists()


def test_an_unknown_role_is_refused(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "ca")

    with pytest.raises(
        pki.PkiError, match="unknown role 'admin': choose one of broker, hub, spoke"
    ):
        pki.issue(tmp_path / "ca", "root", "admin", tmp_path / "out")


@pytest.mark.parametrize("name", ["Spoke-A", "spoke a", "-spoke", "spoke,a", ""])
def test_a_name_that_is_not_a_spoke_id_is_refused(tmp_path: Path, name: str) -> None:
    pki.init_ca(tmp_path / "ca")

    with pytest.raises(pki.PkiError, match="not a valid name"):
        pki.issue(tmp_path / "ca", name, "spoke", tmp_path / "out")


def test_issuing_the_same_name_twice_into_one_folder_is_refused(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "ca")
    first = pki.issue(tmp_path / "ca", "hub", "hub", tmp_path / "out")
    before = first.key.read_bytes()

    with pytest.raises(pki.PkiError, match=r"exists in .* already"):
        pki.issue(tmp_path / "ca", "hub", "hub", tmp_path / "out")

    assert first.key.read_bytes() == before


# -- the DN as Java prints it ----------------------------------------------------------------------


def test_java_dn_is_the_subject_last_rdn_first_joined_by_comma_and_space(
    issued: dict[str, pki.Identity],
) -> None:
    # What ActiveMQ printed for these certificates: "No user for client certificate: CN=..."
    assert pki.java_dn(issued["spoke-a"].certificate) == "CN=spoke-a, O=ELIC Consortium"


def test_java_dn_follows_the_subjects_own_order() -> None:
    # DESIGN.md section 9: a certificate made as CN=spoke-a, O=Consortium (CN first in the
    # sequence) printed as "O=Consortium, CN=spoke-a".
    certificate = _self_signed(
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "spoke-a"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Consortium"),
            ]
        )
    )

    assert pki.java_dn(certificate) == "O=Consortium, CN=spoke-a"


def test_java_dn_refuses_values_java_would_escape() -> None:
    certificate = _self_signed(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a, b")]))

    with pytest.raises(pki.PkiError, match="as Java prints it"):
        pki.java_dn(certificate)


def _self_signed(name: x509.Name) -> x509.Certificate:
    import datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


# -- the command line ------------------------------------------------------------------------------


def test_cli_makes_a_ca_and_issues_certificates_without_printing_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pki", "init", str(tmp_path / "ca")]) == 0
    code = main(
        ["pki", "issue", "spoke-a", "--role", "spoke", "--ca", str(tmp_path / "ca"),
         "--out", str(tmp_path / "spoke-a")]
    )  # fmt: skip

    out = capsys.readouterr().out
    password = pki.read_password(tmp_path / "spoke-a" / "spoke-a.pass")
    assert code == 0
    assert "subject     CN=spoke-a, O=ELIC Consortium" in out
    assert (tmp_path / "spoke-a" / "spoke-a.p12").is_file()
    assert password not in out


def test_cli_reports_an_existing_ca_and_a_missing_ca_as_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pki", "init", str(tmp_path / "ca")]) == 0

    again = main(["pki", "init", str(tmp_path / "ca")])
    missing = main(
        ["pki", "issue", "hub", "--role", "hub", "--ca", str(tmp_path / "no-ca"),
         "--out", str(tmp_path / "hub")]
    )  # fmt: skip

    err = capsys.readouterr().err
    assert (again, missing) == (1, 1)
    assert "a CA exists in" in err and "no CA in" in err


def test_cli_refuses_an_unknown_role_as_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["pki", "issue", "x", "--role", "admin", "--ca", str(tmp_path), "--out", str(tmp_path)]
        )

    assert exit_info.value.code == 2
    assert "invalid choice: 'admin'" in capsys.readouterr().err
