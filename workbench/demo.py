"""``workbench demo``: the demo study on one machine.

Today the demo runs every site's part in this process, exactly as each spoke will: a
synthetic cohort per site, the site's own catalog and pseudonym secret, every reference
algorithm in the sandboxed runner on every participant, and only ``output.json`` and error
codes collected centrally, where they are scored against the reference standard. The hub,
the ActiveMQ transport and the papermill report take over the central part as they land
(DESIGN.md section 3); ``summary.json`` keeps its keys so that nothing reading it changes.
"""

from __future__ import annotations

import csv
import json
import secrets
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.core.participant import Case, build_case
from workbench.core.pseudonym import Pseudonymizer
from workbench.core.statistics import bland_altman, delong_ci
from workbench.images.algorithms import build_algorithms
from workbench.images.base import build_base
from workbench.spoke_service.catalog import Catalog
from workbench.spoke_service.engine import DockerEngine
from workbench.spoke_service.runner import CaseRunner
from workbench.synth.cohort import generate_cohort

ALGORITHMS = ("nodule-volume", "naive-baseline", "lung-lav950")
SCORED = ("nodule-volume", "naive-baseline")
_CONCURRENCY = 2


@dataclass(frozen=True)
class SiteCase:
    """One participant case at one site, with the site-local truth kept beside it."""

    site_id: str
    case: Case
    truth: dict[str, str]
    dicom_bytes: int


def run_demo(out: Path, spokes: int, participants: int, say: Callable[[str], None]) -> int:
    """Run the demo study into ``out``; returns the exit status."""
    engine = DockerEngine.from_env()
    build_base(engine.client, progress=say)
    images = {b.name: b.reference for b in build_algorithms(engine.client, names=list(ALGORITHMS))}
    cohort = out / "cohort"
    if not _same_cohort(cohort, spokes, participants):
        say(f"generating a synthetic cohort: {spokes} sites x {participants} participants")
        generate_cohort(cohort, spokes, participants, seed=2026)
    cases = [c for site in sorted(cohort.glob("site-*")) for c in _site_cases(site, out)]
    total = len(cases) * len(ALGORITHMS)
    say(f"running {len(ALGORITHMS)} algorithms on {len(cases)} cases at {spokes} sites")
    results: list[dict[str, Any]] = []
    runners = {c.site_id: _runner(engine, out / "spokes" / c.site_id) for c in cases}
    jobs = [(c, name) for c in cases for name in ALGORITHMS]

    def one(job: tuple[SiteCase, str]) -> dict[str, Any]:
        site_case, name = job
        result = runners[site_case.site_id].run(site_case.case, images[name])
        return {
            "site": site_case.site_id,
            "participant": site_case.case.participant_id,
            "algorithm": name,
            "output": result.output,
            "error": result.error.to_json() if result.error else None,
            "bytes": len(result.output_bytes or b""),
            "truth": site_case.truth,
        }

    with ThreadPoolExecutor(_CONCURRENCY) as pool:
        for n, row in enumerate(pool.map(one, jobs), start=1):
            results.append(row)
            _bar(say, n, total)
    summary = _summarise(results, cases, spokes, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_table(summary, say)
    say(f"wrote {out / 'summary.json'}")
    return 0 if summary["results_received"] == summary["cases_total"] else 1


def _same_cohort(cohort: Path, sites: int, participants: int) -> bool:
    marker = cohort / "cohort.json"
    if not marker.exists():
        return False
    meta = json.loads(marker.read_text())
    return len(meta["sites"]) == sites and all(
        s["participants"] == participants for s in meta["sites"]
    )


def _site_cases(site: Path, out: Path) -> list[SiteCase]:
    """What a spoke does before any order arrives: index its DICOM and key its truth."""
    state = out / "spokes" / site.name
    state.mkdir(parents=True, exist_ok=True)
    key_file = state / "pseudonym.key"
    if not key_file.exists():
        key_file.write_text(secrets.token_hex(32))
        key_file.chmod(0o600)
    pseudonymizer = Pseudonymizer(bytes.fromhex(key_file.read_text()))
    with open(site / "reference.csv", newline="") as f:
        truth = {row["patient_id"]: row for row in csv.DictReader(f)}
    with Catalog.open(state / "catalog.sqlite") as catalog:
        catalog.index(site / "dicom", workers=2)
        cases = []
        for patient_id in catalog.patient_ids():
            headers = catalog.participant_headers(patient_id)
            case = build_case(headers, pseudonymizer, site.name)
            size = sum(h.file_size for h in headers)
            cases.append(SiteCase(site.name, case, truth[patient_id], size))
    return cases


def _runner(engine: DockerEngine, state: Path) -> CaseRunner:
    return CaseRunner(engine, work_dir=state / "work", log_dir=state / "logs")


def _bar(say: Callable[[str], None], done: int, total: int) -> None:
    width = 30
    filled = width * done // total
    if done == total or done % max(1, total // 10) == 0:
        say(f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} runs")


def _summarise(
    results: list[dict[str, Any]], cases: list[SiteCase], spokes: int, out: Path
) -> dict[str, Any]:
    ok = [r for r in results if r["output"] is not None]
    metrics: dict[str, Any] = {}
    for name in SCORED:
        rows = [r for r in ok if r["algorithm"] == name]
        scores = [float(r["output"]["malignancy_score"]) for r in rows]
        labels = [int(r["truth"]["malignant"]) for r in rows]
        value, low, high = delong_ci(scores, labels)
        metrics[name] = {"auc": round(value, 3), "auc_ci": [round(low, 3), round(high, 3)]}
    lav = [r for r in ok if r["algorithm"] == "lung-lav950"]
    metrics["lung-lav950"] = {
        "lav950_agreement": _rounded(bland_altman(
            [r["output"]["lav950_percent"] for r in lav],
            [float(r["truth"]["lav950_percent_t0"]) for r in lav],
        ))
    }  # fmt: skip
    nod = [r for r in ok if r["algorithm"] == "nodule-volume"]
    metrics["nodule-volume"]["volume_agreement_mm3"] = _rounded(bland_altman(
        [r["output"]["nodule_volume_mm3"] for r in nod],
        [float(r["truth"]["nodule_volume_mm3_t0"]) for r in nod],
    ))  # fmt: skip
    errors = Counter(r["error"]["code"] for r in results if r["error"])
    return {
        "experiment_id": f"demo-{uuid.uuid4().hex[:12]}",
        "transport": "in-process",
        "spokes": [f"site-{i:02d}" for i in range(1, spokes + 1)],
        "algorithms": list(ALGORITHMS),
        "cases_total": len(results),
        "results_received": len(ok),
        "errors": dict(errors),
        "bytes_dicom_at_spokes": sum(c.dicom_bytes for c in cases),
        "bytes_sent_to_hub": sum(r["bytes"] for r in results),
        "metrics": metrics,
        "report": None,
    }


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in values.items()}


def _print_table(summary: dict[str, Any], say: Callable[[str], None]) -> None:
    say(f"results: {summary['results_received']}/{summary['cases_total']}"
        f"  errors: {summary['errors'] or 'none'}")  # fmt: skip
    say(f"DICOM kept at the spokes: {summary['bytes_dicom_at_spokes'] / 2**20:.1f} MiB; "
        f"sent centrally: {summary['bytes_sent_to_hub'] / 1024:.1f} KiB")  # fmt: skip
    for name in SCORED:
        m = summary["metrics"][name]
        say(f"  {name:16s} AUC {m['auc']:.3f}  95% CI [{m['auc_ci'][0]:.3f}, {m['auc_ci'][1]:.3f}]")
    lav = summary["metrics"]["lung-lav950"]["lav950_agreement"]
    say(f"  {'lung-lav950':16s} LAV950 bias {lav['bias']:+.2f} pp, "
        f"limits of agreement [{lav['loa_low']:+.2f}, {lav['loa_high']:+.2f}]")  # fmt: skip
