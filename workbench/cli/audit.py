"""``workbench audit``: check hash-chained audit logs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workbench.cli.common import Sub, group


def register(sub: Sub) -> None:
    """Add this area's commands to the ``workbench`` parser."""
    audit = group(sub, "audit", "tamper-evident audit logs")
    p = audit.add_parser(
        "verify",
        help="check an audit log's hash chain",
        description="Check every entry of LOG: its sequence number, its link to the previous "
        "entry and its own hash. Exits 1 naming the first bad entry on any edit, insertion, "
        "deletion or reordering. Entries cut off the end are found only against a chain head "
        "received from the log's owner earlier (--head, as in a signed result).",
    )
    p.add_argument("log", metavar="LOG", type=Path, help="the audit log (JSON lines)")
    p.add_argument(
        "--head", type=_head, metavar="SEQ:HASH",
        help="a chain head the log must contain (detects a truncated tail)",
    )  # fmt: skip
    p.set_defaults(handler=_verify)


def _head(text: str) -> object:
    from workbench.trust.audit import ChainHead

    try:
        return ChainHead.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _verify(ns: argparse.Namespace) -> int:
    from workbench.trust.audit import verify

    report = verify(ns.log, expected_head=ns.head)
    if not report.ok:
        print(f"audit verify: {report}", file=sys.stderr)
        return 1
    print(report)
    return 0
