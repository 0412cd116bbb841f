"""``workbench keys``: Ed25519 signing keys."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.cli.common import Sub, group


def register(sub: Sub) -> None:
    """Add this area's commands to the ``workbench`` parser."""
    keys = group(sub, "keys", "Ed25519 signing keys for messages, results and images")
    p = keys.add_parser(
        "new",
        help="make a signing key pair in DIR",
        description="Write a new Ed25519 key pair as DIR/private.pem (PKCS#8, unencrypted, "
        "mode 0600: keep it) and DIR/public.pem (give it to whoever verifies), and print "
        "its key id. Existing key files are never overwritten.",
    )
    p.add_argument("directory", metavar="DIR", type=Path, help="the key pair's folder")
    p.set_defaults(handler=_new)

    p = keys.add_parser(
        "id",
        help="print the key id of a public key",
        description="Print the key id (the first 16 hex digits of SHA-256 over the raw "
        "public key) that signatures by this key carry.",
    )
    p.add_argument("public", metavar="PEM", type=Path, help="a public.pem")
    p.set_defaults(handler=_id)


def _new(ns: argparse.Namespace) -> int:
    from workbench.trust.keys import new_key_pair

    pair = new_key_pair(ns.directory)
    print(f"key id {pair.key_id}: private {pair.private} (keep), public {pair.public} (share)")
    return 0


def _id(ns: argparse.Namespace) -> int:
    from workbench.trust.keys import key_id, load_public_key

    print(key_id(load_public_key(ns.public)))
    return 0
