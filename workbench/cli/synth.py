"""``workbench synth``: generate a synthetic multi-site CT cohort."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.cli.common import Sub, counter, positive_int


def register(sub: Sub) -> None:
    """Add this area's commands to the ``workbench`` parser."""
    p = sub.add_parser(
        "synth",
        help="generate a synthetic multi-site CT cohort",
        description="Write a synthetic multi-site chest CT cohort: per site, DICOM series "
        "for two time points per participant with realistic fake identifiers, and a "
        "site-local reference standard (reference.csv).",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--sites", type=positive_int, default=3, help="number of sites (3)")
    p.add_argument(
        "--participants", type=positive_int, default=12, help="participants per site (12)"
    )
    p.add_argument("--full", action="store_true", help="realistic 512x512 series (large)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.set_defaults(handler=_synth)


def _synth(ns: argparse.Namespace) -> int:
    from workbench.synth.cohort import generate_cohort

    summary = generate_cohort(
        ns.out, ns.sites, ns.participants, full=ns.full, seed=ns.seed,
        progress=counter("series written"),
    )  # fmt: skip
    print(
        f"{summary.participants} participants at {len(summary.sites)} sites: "
        f"{summary.series} series, {summary.files} files, {summary.bytes / 2**20:.1f} MiB "
        f"in {ns.out}"
    )
    return 0
