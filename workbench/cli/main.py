"""The ``workbench`` command: parses arguments and forwards to the library, nothing more.

Each area's commands live in their own module with a ``register(sub)`` function.
Exit status: 0 on success, 1 when the work failed (with a one-line reason on stderr),
2 for a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from workbench import __version__
from workbench.cli import (
    algorithm,
    audit,
    broker,
    demo,
    drill,
    experiment,
    hub,
    images,
    keys,
    pki,
    report,
    spoke,
    synth,
)
from workbench.errors import WorkbenchError

AREAS = (
    images,
    synth,
    spoke,
    algorithm,
    demo,
    drill,
    report,
    hub,
    experiment,
    broker,
    keys,
    audit,
    pki,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``workbench`` command line; returns the exit status."""
    parser = _parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if ns.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(ns, "handler"):
        parser.print_help()
        return 2
    try:
        return int(ns.handler(ns))
    except WorkbenchError as e:
        print(f"workbench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("workbench: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench",
        description="Federated imaging research workbench: algorithms travel to the data, "
        "only output.json comes back.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(metavar="COMMAND")
    for area in AREAS:
        area.register(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
