"""``workbench experiment``: launch, follow, fetch and cancel experiments through the hub's API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from workbench.cli.common import Sub, group, say
from workbench.errors import ConfigError
from workbench.hub_kernel.client import DEFAULT_HUB_URL, HUB_URL_ENV


def add_hub_option(parser: argparse.ArgumentParser) -> None:
    """``--hub URL``, defaulting to ``$WORKBENCH_HUB_URL`` or the local hub."""
    parser.add_argument(
        "--hub", default=os.environ.get(HUB_URL_ENV) or DEFAULT_HUB_URL, metavar="URL",
        help=f"the hub's API (${HUB_URL_ENV}, else {DEFAULT_HUB_URL})",
    )  # fmt: skip


def register(sub: Sub) -> None:
    """Add this area's commands to the ``workbench`` parser."""
    experiment = group(sub, "experiment", "launch and follow experiments on the hub")
    p = experiment.add_parser(
        "launch",
        help="run algorithms on a study's cohort at some spokes",
        description="Freeze a study, registered algorithms and spokes into an experiment "
        "manifest and send one order per spoke. Prints the experiment id.",
    )
    p.add_argument("--study", required=True, help="study name (studies/<name>/study.json)")
    p.add_argument(
        "--algorithm", action="append", required=True, metavar="NAME[:VERSION]",
        help="a registered algorithm (repeatable); NAME alone takes its latest version",
    )  # fmt: skip
    p.add_argument("--spoke", action="append", required=True, metavar="ID", help="repeatable")
    p.add_argument(
        "--arg", action="append", default=[], metavar="ALGO.KEY=VALUE",
        help="an algorithm argument (repeatable); JSON values keep their type",
    )  # fmt: skip
    p.add_argument("--timeout", type=float, help="per-case wall-clock limit in seconds")
    p.add_argument(
        "--deadline", metavar="WHEN",
        help="the experiment's deadline: an ISO-8601 time with a zone (2026-12-01T18:00:00Z) "
        "or a duration from now on the hub's clock (2h, 30m, 1h30m); results the hub "
        "receives later are refused, and spokes start no case after it",
    )  # fmt: skip
    add_hub_option(p)
    p.set_defaults(handler=_launch)

    for name, text, handler in (
        ("status", "an experiment's state and per-spoke progress", _status),
        ("cancel", "cancel an experiment at every spoke", _cancel),
    ):
        p = experiment.add_parser(name, help=text, description=text)
        p.add_argument("experiment_id", metavar="ID")
        p.add_argument("--json", action="store_true", help="print the status as JSON")
        add_hub_option(p)
        p.set_defaults(handler=handler)

    p = experiment.add_parser(
        "results",
        help="an experiment's results",
        description="Every received result, one row per case: as CSV into --csv FILE "
        "(output.* and reference.* columns), else as JSON lines on stdout.",
    )
    p.add_argument("experiment_id", metavar="ID")
    p.add_argument("--csv", type=Path, metavar="FILE", help="write CSV here")
    add_hub_option(p)
    p.set_defaults(handler=_results)

    p = experiment.add_parser("list", help="every experiment on the hub, newest first")
    add_hub_option(p)
    p.set_defaults(handler=_list)


def parse_args(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``ALGO.KEY=VALUE`` strings as ``{ALGO: {KEY: VALUE}}`` (JSON values keep their type).

    >>> parse_args(["lung-lav950.threshold_hu=-910"])
    {'lung-lav950': {'threshold_hu': -910}}
    """
    from workbench.core.contract import parse_cli_args

    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        target, _, _ = pair.partition("=")
        algorithm, dot, key = target.rpartition(".")
        if not dot or not algorithm or not key:
            raise ConfigError(f"an argument must look like ALGO.KEY=VALUE, got {pair!r}")
        try:
            value = parse_cli_args([f"{key}={pair.partition('=')[2]}"])
        except ValueError as e:
            raise ConfigError(str(e)) from e
        bucket = out.setdefault(algorithm, {})
        if key in bucket:
            raise ConfigError(f"argument {target!r} given twice")
        bucket.update(value)
    return out


def _client(ns: argparse.Namespace) -> Any:
    from workbench.hub_kernel.client import HubClient

    return HubClient(ns.hub)


def _launch(ns: argparse.Namespace) -> int:
    args = parse_args(ns.arg)
    status = _client(ns).launch(
        ns.study, ns.algorithm, ns.spoke, args=args or None, timeout_s=ns.timeout,
        deadline=ns.deadline,
    )  # fmt: skip
    pending = [s["spoke_id"] for s in status["spokes"] if not s["order_sent"]]
    note = f"; orders still to send to {', '.join(pending)}" if pending else ""
    say(f"launched {status['experiment_id']} (manifest {status['manifest_hash'][:12]}){note}")
    print(status["experiment_id"])
    return 0


def _status(ns: argparse.Namespace) -> int:
    _show(_client(ns).experiment(ns.experiment_id), ns.json)
    return 0


def _cancel(ns: argparse.Namespace) -> int:
    _show(_client(ns).cancel(ns.experiment_id), ns.json)
    return 0


def _list(ns: argparse.Namespace) -> int:
    for status in _client(ns).experiments():
        print(
            f"{status['experiment_id']}\t{status['study']}\t{status['state']}\t"
            f"{status['results']} results\t{status['created_at']}"
        )
    return 0


def _results(ns: argparse.Namespace) -> int:
    from workbench.hub_kernel.results import write_csv

    rows = _client(ns).results(ns.experiment_id)
    if ns.csv is None:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return 0
    try:
        with ns.csv.open("w", newline="", encoding="utf-8") as out:
            n = write_csv(rows, out)
    except OSError as e:
        raise ConfigError(f"cannot write {ns.csv}: {e}") from e
    say(f"wrote {n} results to {ns.csv}")
    return 0


def _show(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return
    print(
        f"{status['experiment_id']}  study {status['study']}  state {status['state']}  "
        f"results {status['results']} ({status.get('results_verified', 0)} signature-verified)"
        f"  algorithms {', '.join(status['algorithms'])}"
        + (f"  deadline {status['deadline']}" if status.get("deadline") else "")
    )
    refused = status.get("rejections") or {}
    if refused:
        counts = ", ".join(f"{code}: {n}" for code, n in sorted(refused.items()))
        print(f"refused messages by reason: {counts}")
    columns = ("queued", "running", "done", "failed", "cancelled", "results")
    print("spoke".ljust(20) + "order   expected  " + "".join(c.rjust(10) for c in columns))
    for spoke in status["spokes"]:
        expected = "?" if spoke["expected"] is None else str(spoke["expected"])
        print(
            spoke["spoke_id"].ljust(20)
            + ("sent" if spoke["order_sent"] else "pending").ljust(8)
            + expected.rjust(8) + "  "
            + "".join(str(spoke[c]).rjust(10) for c in columns)
        )  # fmt: skip
        if spoke["errors"]:
            errors = ", ".join(f"{k}: {v}" for k, v in sorted(spoke["errors"].items()))
            print(" " * 20 + f"errors: {errors}")
    sys.stdout.flush()
