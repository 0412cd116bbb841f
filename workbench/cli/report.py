"""``workbench report``: an experiment's validation report, as one HTML file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from workbench.cli.common import Sub, say
from workbench.errors import ConfigError


def register(sub: Sub) -> None:
    """Add this area's commands to the ``workbench`` parser."""
    p = sub.add_parser(
        "report",
        help="render an experiment's validation report (HTML)",
        description="Render the validation report of EXPERIMENT: ROC curves and AUC with "
        "DeLong 95% intervals, Bland-Altman agreement, pooled and per site, as the study's "
        "metrics ask. Results and study come from the hub, or from files with --results "
        "and --study. The executed notebook is kept beside the HTML (same name, .ipynb).",
    )
    p.add_argument("experiment_id", metavar="EXPERIMENT", help="the experiment's id")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="HTML file to write")
    p.add_argument(
        "--hub",
        metavar="URL",
        help="the hub's HTTP API (default: $WORKBENCH_HUB_URL, else http://127.0.0.1:8750)",
    )
    p.add_argument(
        "--results",
        type=Path,
        metavar="FILE",
        help="read the result rows from this JSON file (a list, as the hub API returns it) "
        "instead of asking the hub",
    )
    p.add_argument(
        "--study",
        type=Path,
        metavar="FILE",
        help="the study.json (default: the experiment's study, from the hub)",
    )
    p.add_argument("--title", help="the report's title (default: from the study)")
    p.set_defaults(handler=_report)


def _report(ns: argparse.Namespace) -> int:
    from workbench.reports import render_report

    rows = _rows_from_file(ns.results, ns.experiment_id) if ns.results else None
    study = _read_json(ns.study, dict, "a JSON object") if ns.study else None
    if rows is None or study is None:
        rows, study = _from_hub(ns.hub, ns.experiment_id, rows, study)
    info = render_report(rows, study, ns.out, ns.experiment_id, ns.title)
    say(f"report: {info.html} ({info.results} results, {info.seconds:.1f} s)")
    say(f"executed notebook: {info.notebook}")
    return 0


def _from_hub(
    url: str | None,
    experiment_id: str,
    rows: list[dict[str, Any]] | None,
    study: dict[str, Any] | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Ask the hub for what the files did not give; an unknown experiment is an error."""
    from workbench.hub_kernel.client import HubClient

    client = HubClient(url) if url else HubClient.from_env()
    experiment = client.experiment(experiment_id)  # NotFoundError for an unknown experiment
    if study is None:
        study = client.study(str(experiment["study"]))
    if rows is None:
        rows = client.results(experiment_id)
    return rows, study


def _rows_from_file(path: Path, experiment_id: str) -> list[dict[str, Any]]:
    """The rows of ``experiment_id`` in a JSON file of result rows (rows without an id count)."""
    rows = _read_json(path, list, "a JSON list of result rows")
    if not all(isinstance(row, dict) for row in rows):
        raise ConfigError(f"{path}: every result row must be a JSON object")
    mine = [row for row in rows if row.get("experiment_id", experiment_id) == experiment_id]
    if rows and not mine:
        others = sorted({str(row["experiment_id"]) for row in rows})
        raise ConfigError(
            f"{path} holds no results of {experiment_id}, only of {', '.join(others[:5])}"
        )
    return mine


def _read_json(path: Path, kind: type[Any], what: str) -> Any:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it: {e}") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(value, kind):
        raise ConfigError(f"{path}: expected {what}")
    return value
