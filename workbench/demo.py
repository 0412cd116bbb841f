"""``workbench demo``: one federated study on one machine, with the production parts.

It builds the images (cached), generates a synthetic cohort of ``spokes`` sites (cached by
its settings), starts a ``LocalFederation`` (ActiveMQ, a private registry, the hub and one
process per spoke), pushes and registers the reference algorithms by digest, launches the
lung-screening study with a live progress bar, waits for every case, writes the validation
report and ``summary.json``, and shuts everything down. Only ``output.json`` documents,
status events and heartbeats cross from the spokes to the hub; ``summary.json`` counts
every byte they sent against the DICOM bytes that stayed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.core.statistics import delong_ci
from workbench.errors import WorkbenchError
from workbench.federation import LocalFederation, Site
from workbench.images.algorithms import build_algorithms
from workbench.images.base import build_base
from workbench.spoke_service.engine import DockerEngine
from workbench.synth.cohort import generate_cohort, has_cohort
from workbench.trust.audit import verify as verify_audit

STUDY = "lung-screening"
ALGORITHMS = ("nodule-volume", "naive-baseline", "lung-lav950")
SCORED = ("nodule-volume", "naive-baseline")
_WAIT_S = 1800.0

Say = Callable[[str], None]


class DemoError(WorkbenchError):
    """The demo study did not complete."""


def run_demo(out: Path, spokes: int, participants: int, say: Say) -> int:
    """Run the demo study into ``out``; returns the exit status."""
    started = time.monotonic()
    out = out.absolute()
    engine = DockerEngine.from_env()
    build_base(engine.client, progress=say)
    built = build_algorithms(engine.client, names=list(ALGORITHMS), progress=say)
    cohort = out / "cohort"
    if not has_cohort(cohort, spokes, participants):
        say(f"generating a synthetic cohort: {spokes} sites x {participants} participants")
        generate_cohort(cohort, spokes, participants, seed=2026)
    sites = [Site(p.name, p / "dicom", p / "reference.csv") for p in sorted(cohort.glob("site-*"))]
    say(f"starting the federation: ActiveMQ, registry, hub and {len(sites)} spoke processes")
    with LocalFederation(out / "federation", sites) as federation:
        say(f"hub at {federation.hub_url}; broker {federation.broker.stomp_url}")
        federation.register(engine.client, [b.reference for b in built])
        client = federation.client()
        status = client.launch(STUDY, list(ALGORITHMS), [s.spoke_id for s in sites])
        experiment_id = status["experiment_id"]
        say(f"launched {experiment_id}: {', '.join(ALGORITHMS)} at {len(sites)} spokes")
        status = _wait(client, experiment_id, say)
        rows = client.results(experiment_id)
        study = client.study(STUDY)
        broker_status = federation.broker.status()
    report = _report(rows, study, out / "report.html", experiment_id, say)
    summary = _summary(
        experiment_id, status, rows, federation, broker_status, report, time.monotonic() - started
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, say)
    say(f"wrote {out / 'summary.json'} and {report}")
    complete = summary["results_received"] == summary["cases_total"]
    return 0 if complete and all(summary["audit_logs_intact"].values()) else 1


def _wait(client: Any, experiment_id: str, say: Say) -> dict[str, Any]:
    """Poll the hub until every spoke finished; show a progress bar while it runs."""
    deadline = time.monotonic() + _WAIT_S
    shown = ""
    while True:
        status = client.experiment(experiment_id)
        spokes = status["spokes"]
        expected = sum(s["expected"] or 0 for s in spokes)
        settled = sum(s["done"] + s["failed"] + s["cancelled"] for s in spokes)
        known = all(s["accepted"] for s in spokes)
        line = _bar(settled, expected if known else 0, status["results"])
        if line != shown:
            say(line)
            shown = line
        if status["state"] != "running":
            return dict(status)
        if time.monotonic() > deadline:
            raise DemoError(f"{experiment_id} did not complete in {_WAIT_S:g} s: {line}")
        time.sleep(0.5)


def _bar(settled: int, expected: int, results: int) -> str:
    width = 30
    if not expected:
        return "[" + "." * width + "] waiting for the spokes to accept the order"
    filled = width * settled // expected
    return f"[{'#' * filled}{'.' * (width - filled)}] {settled}/{expected} cases, {results} results"


def _report(
    rows: list[dict[str, Any]], study: dict[str, Any], out: Path, eid: str, say: Say
) -> Path:
    from workbench.reports.runner import render_report

    say("rendering the validation report (papermill)")
    info = render_report(rows, study, out, eid, title="ELIC demo: lung screening validation")
    return Path(info.html)


def _spoke_bytes(federation: LocalFederation) -> tuple[int, int]:
    """Bytes every spoke sent (outbox), and DICOM bytes in their catalogs."""
    sent = dicom = 0
    for site in federation.sites:
        state = federation.spoke_dir(site.spoke_id) / "state"
        with sqlite3.connect(state / "state.sqlite") as db:
            sent += db.execute(
                "SELECT coalesce(sum(length(body)), 0) FROM outbox WHERE sent_at IS NOT NULL"
            ).fetchone()[0]
        with sqlite3.connect(state / "catalog.sqlite") as db:
            dicom += db.execute("SELECT coalesce(sum(file_size), 0) FROM instances").fetchone()[0]
    return sent, dicom


def _summary(
    experiment_id: str,
    status: dict[str, Any],
    rows: list[dict[str, Any]],
    federation: LocalFederation,
    broker_status: Any,
    report: Path,
    seconds: float,
) -> dict[str, Any]:
    sent, dicom = _spoke_bytes(federation)
    metrics: dict[str, Any] = {}
    for name in SCORED:
        scored = [r for r in rows if r["algorithm"] == name and "malignant" in r["reference"]]
        scores = [float(r["output"]["malignancy_score"]) for r in scored]
        labels = [int(r["reference"]["malignant"]) for r in scored]
        value, low, high = delong_ci(scores, labels)
        metrics[name] = {"auc": round(value, 3), "auc_ci": [round(low, 3), round(high, 3)]}
    spokes = status["spokes"]
    logs = {"hub": federation.audit_log("hub")}
    logs |= {site.spoke_id: federation.audit_log(site.spoke_id) for site in federation.sites}
    audits = {name: verify_audit(path) for name, path in logs.items()}
    return {
        "experiment_id": experiment_id,
        "state": status["state"],
        "transport": "stomp",
        "broker": {
            "kind": "activemq",
            "version": broker_status.version,
            "config": str(federation.broker.config_path),
        },
        "spokes": [s["spoke_id"] for s in spokes],
        "algorithms": list(ALGORITHMS),
        "cases_total": sum(s["expected"] or 0 for s in spokes),
        "results_received": len(rows),
        "results_verified": status.get("results_verified", 0),
        "failed": sum(s["failed"] for s in spokes),
        "bytes_dicom_at_spokes": dicom,
        "bytes_sent_to_hub": sent,
        "metrics": metrics,
        "report": str(report),
        "audit_logs": {name: str(path) for name, path in logs.items()},
        "audit_logs_intact": {name: report.ok for name, report in audits.items()},
        "seconds": round(seconds, 1),
    }


def _print_summary(summary: dict[str, Any], say: Say) -> None:
    say(f"{summary['results_received']}/{summary['cases_total']} results "
        f"({summary['results_verified']} with verified signatures), "
        f"{summary['failed']} failed, in {summary['seconds']:.0f} s")  # fmt: skip
    intact = summary["audit_logs_intact"]
    say(f"audit logs verified intact: {sum(intact.values())}/{len(intact)}")
    say(f"DICOM kept at the spokes: {summary['bytes_dicom_at_spokes'] / 2**20:.1f} MiB; "
        f"sent to the hub: {summary['bytes_sent_to_hub'] / 1024:.1f} KiB")  # fmt: skip
    for name in SCORED:
        m = summary["metrics"][name]
        say(f"  {name:16s} AUC {m['auc']:.3f}  95% CI [{m['auc_ci'][0]:.3f}, {m['auc_ci'][1]:.3f}]")
