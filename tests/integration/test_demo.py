"""The main job end to end: ``workbench demo`` with real ActiveMQ, registry, hub and spokes."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.broker, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, algorithm_images: dict[str, str]) -> Path:
    out = tmp_path_factory.mktemp("demo")
    done = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "demo", "--spokes", "2", "--participants", "4",
         "--out", str(out)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_every_case_comes_back_through_the_real_broker(demo: Path) -> None:
    summary = json.loads((demo / "summary.json").read_text())
    assert summary["transport"] == "stomp"
    assert summary["broker"]["kind"] == "activemq"
    assert summary["broker"]["version"].startswith("5.17")
    assert Path(summary["broker"]["config"]).is_file()
    assert summary["spokes"] == ["site-01", "site-02"]
    assert summary["cases_total"] == 2 * 4 * 3  # sites x participants x algorithms
    assert summary["results_received"] == summary["cases_total"]
    assert summary["results_verified"] == summary["cases_total"]  # every signature checked
    for name in ("nodule-volume", "naive-baseline"):
        low, high = summary["metrics"][name]["auc_ci"]
        assert 0 <= low <= summary["metrics"][name]["auc"] <= high <= 1


def test_only_small_outputs_left_the_spokes(demo: Path) -> None:
    summary = json.loads((demo / "summary.json").read_text())
    dicom = sum(p.stat().st_size for p in (demo / "cohort").rglob("*.dcm"))
    assert summary["bytes_dicom_at_spokes"] == dicom
    assert 0 < summary["bytes_sent_to_hub"] < dicom / 100


def test_no_identifier_reached_the_hub(demo: Path) -> None:
    hub_db = demo / "federation" / "hub" / "hub.sqlite"
    with sqlite3.connect(hub_db) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        text = "\n".join(
            repr(row) for table in tables for row in db.execute(f"SELECT * FROM {table}")
        )
    ids = []
    for site in sorted((demo / "cohort").glob("site-*")):
        with open(site / "reference.csv", newline="") as f:
            ids += [row["patient_id"] for row in csv.DictReader(f)]
    assert len(ids) == 8
    for patient_id in ids:  # as a whole token: a float may contain the digits by chance
        assert not re.search(rf"(?<![0-9.]){re.escape(patient_id)}(?![0-9])", text)
    assert ".dcm" not in text


def test_the_report_is_written(demo: Path) -> None:
    html = (demo / "report.html").read_text()
    summary = json.loads((demo / "summary.json").read_text())
    assert summary["experiment_id"] in html
    assert html.count("<img") >= 3


def test_every_connection_is_mutual_tls_and_every_audit_log_verifies(demo: Path) -> None:
    from workbench.trust.audit import verify

    summary = json.loads((demo / "summary.json").read_text())
    config = Path(summary["broker"]["config"]).read_text()
    assert "stomp+ssl://127.0.0.1:" in config and "needClientAuth=true" in config
    assert "stomp://" not in config.replace("stomp+ssl://", "")  # no plain connector
    assert set(summary["audit_logs"]) == {"hub", "site-01", "site-02"}
    for path in summary["audit_logs"].values():
        assert verify(Path(path)).ok
    spoke_log = Path(summary["audit_logs"]["site-01"]).read_text()
    assert spoke_log.count('"event":"result.released"') == 4 * 3
