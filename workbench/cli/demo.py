"""``workbench demo``: the demo study."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.cli.common import Sub, positive_int, say


def register(sub: Sub) -> None:
    """Add this area's commands to the ``workbench`` parser."""
    p = sub.add_parser(
        "demo",
        help="run the demo study (see README)",
        description="Run the demo: build the images, generate a synthetic multi-site cohort "
        "and run the reference algorithms on it at every site.",
    )
    p.add_argument("--spokes", type=positive_int, default=3, help="number of sites (3)")
    p.add_argument(
        "--participants", type=positive_int, default=12, help="participants per site (12)"
    )
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder")
    p.set_defaults(handler=_demo)


def _demo(ns: argparse.Namespace) -> int:
    from workbench.demo import run_demo

    return run_demo(ns.out, ns.spokes, ns.participants, say=say)
