"""``workbench pki``: the consortium CA and the certificates of the broker, the hub and spokes."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.cli.common import Sub, group, positive_int


def register(sub: Sub) -> None:
    """Add this area's commands to the ``workbench`` parser."""
    pki = group(sub, "pki", "the consortium's certificate authority and TLS certificates")
    p = pki.add_parser(
        "init",
        help="make a consortium CA in DIR",
        description="Make a new CA: DIR/ca.key (private key, mode 0600: keep it offline) and "
        "DIR/ca.crt (self-signed certificate, handed to every party). Refuses to replace a "
        "CA that exists in DIR.",
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="the CA's folder (created)")
    p.add_argument("--name", default="ELIC Consortium CA", help="the CA's common name")
    p.add_argument(
        "--organization", default="ELIC Consortium",
        help="the consortium's name: the O of every certificate the CA issues",
    )  # fmt: skip
    p.add_argument("--days", type=positive_int, default=3650, help="validity (3650)")
    p.set_defaults(handler=_init)

    p = pki.add_parser(
        "issue",
        help="issue a certificate for the broker, the hub or a spoke",
        description="Make a key and a certificate signed by the CA in --ca for NAME (its CN, "
        "its user at the broker; a spoke's NAME is its spoke id) and write into --out: "
        "NAME.key (mode 0600), NAME.crt, ca.crt, the PKCS#12 keystore NAME.p12 and Java "
        "truststore NAME.truststore.p12 that ActiveMQ reads, and their generated password "
        "in NAME.pass (mode 0600; never printed). broker: a TLS server certificate for "
        "127.0.0.1 and localhost; hub, spoke: TLS client certificates. Prints the subject "
        "as the broker's allowlist must spell it.",
    )
    p.add_argument("name", metavar="NAME", help="lower-case letters, digits and -")
    p.add_argument("--role", required=True, choices=["broker", "hub", "spoke"])
    p.add_argument("--ca", type=Path, required=True, metavar="DIR", help="the CA's folder")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write")
    p.add_argument("--days", type=positive_int, default=825, help="validity (825)")
    p.set_defaults(handler=_issue)


def _init(ns: argparse.Namespace) -> int:
    from workbench.trust.pki import init_ca

    ca = init_ca(ns.dir, name=ns.name, organization=ns.organization, days=ns.days)
    print(f"CA {ns.name!r} made")
    print(f"key         {ca.key}  (keep it offline)")
    print(f"certificate {ca.certificate}")
    return 0


def _issue(ns: argparse.Namespace) -> int:
    from workbench.trust.pki import issue, java_dn

    found = issue(ns.ca, ns.name, ns.role, ns.out, days=ns.days)
    print(f"{ns.role} certificate for {ns.name!r} issued")
    print(f"subject     {java_dn(found.certificate)}")
    print(f"certificate {found.certificate}")
    print(f"key         {found.key}")
    print(f"keystore    {found.keystore}")
    print(f"truststore  {found.truststore}")
    print(f"password    {found.password_file}  (mode 0600)")
    return 0
