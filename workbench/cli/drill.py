"""``workbench drill``: run a study through each fault scenario and count every case."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.cli.common import Sub, positive_int, say

SCENARIO_NAMES = (
    "broker-restart", "hub-down", "spoke-crash", "spoke-offline", "duplicate-delivery",
    "poison-message",
)  # fmt: skip


def register(sub: Sub) -> None:
    """Add this area's commands to the ``workbench`` parser."""
    p = sub.add_parser(
        "drill",
        help="run a study through broker, hub and spoke faults; count lost and doubled cases",
        description="Start a local federation (ActiveMQ, registry, hub, three spoke processes "
        "running real containers), run one experiment per fault scenario and count, from the "
        "hub's and the spokes' databases, the cases dispatched and the results ingested, lost "
        "and duplicated. Prints a table, writes DIR/drill.json, and exits 1 if any scenario "
        f"failed. Scenarios: {', '.join(SCENARIO_NAMES)}.",
    )
    p.add_argument("--out", type=Path, default=Path("drill-out"), help="output folder")
    p.add_argument(
        "--scenario", action="append", choices=SCENARIO_NAMES, metavar="NAME",
        help="run only this scenario (repeatable; default: all)",
    )  # fmt: skip
    p.add_argument("--participants", type=positive_int, default=4, help="participants per site (4)")
    p.set_defaults(handler=_drill)


def _drill(ns: argparse.Namespace) -> int:
    from workbench.drill import run_drill
    from workbench.drill_report import table

    results = run_drill(ns.out, ns.scenario, ns.participants, say=say)
    print(table(results))
    say(f"wrote {(ns.out / 'drill.json').absolute()}")
    return 0 if results and all(r.passed for r in results) else 1
