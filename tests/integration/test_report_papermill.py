"""The validation report through the real papermill, a real Jupyter kernel and nbconvert.

One synthetic experiment (3 sites x 12 participants; a good malignancy scorer, a coin-flip
scorer, LAV950 with small noise around the reference) is rendered once per module and the
tests read what came out: the HTML a researcher opens and the executed notebook kept beside
it. The fast checks (no results, a missing file) prove they fail before any kernel starts.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import nbformat
import numpy as np
import pytest

from workbench.cli.main import main
from workbench.core.statistics import auc
from workbench.errors import ReportError
from workbench.reports import render_report
from workbench.reports.runner import TEMPLATE, ReportInfo, kernel_python

REPO = Path(__file__).resolve().parents[2]
STUDY_FILE = REPO / "studies" / "lung-screening" / "study.json"
EXPERIMENT = "exp-7c1e9a2b"
SITES = ("site-01", "site-02", "site-03")
PER_SITE = 12
GOOD, COIN, LAV = "nodule-volume", "naive-baseline", "lung-lav950"
# A study metric no algorithm outputs: its section must say so instead of plotting nothing.
ABSENT = {"kind": "roc", "output": "emphysema_score", "reference": "malignant"}
# pooled ROC + per-site ROC + Bland-Altman of LAV950 + Bland-Altman of nodule volume
FIGURES = 4


def synthetic_rows(seed: int = 20261128) -> list[dict[str, Any]]:
    """Result rows as the hub API returns them; one LAV950 row lacks its reference value."""
    rng = np.random.default_rng(seed)
    rows = []
    for site in SITES:
        for i in range(PER_SITE):
            malignant = int(i % 3 == 0)
            reference = {
                "malignant": malignant,
                "nodule_volume_mm3_t0": float(rng.uniform(80, 2500)),
                "nodule_volume_mm3_t1": float(rng.uniform(80, 2500)),
                "lav950_percent_t0": float(rng.uniform(0.5, 25)),
                "lav950_percent_t1": float(rng.uniform(0.5, 25)),
            }
            common = {
                "experiment_id": EXPERIMENT,
                "spoke_id": site,
                "participant_id": f"p-{site[-2:]}{i:02d}{rng.integers(16**6):06x}",
                "attempt": 1,
                "reference": reference,
                "received_at": "2026-11-28T07:00:00Z",
            }
            volume = reference["nodule_volume_mm3_t0"] * rng.normal(1.03, 0.08)
            score = float(np.clip(0.25 + 0.45 * malignant + rng.normal(0, 0.15), 0, 1))
            rows.append(common | {"algorithm": GOOD, "output": {
                "malignancy_score": score, "nodule_volume_mm3": volume, "nodule_found": True,
            }})  # fmt: skip
            rows.append(common | {"algorithm": COIN, "output": {
                "malignancy_score": float(rng.uniform()),
            }})  # fmt: skip
            rows.append(common | {"algorithm": LAV, "output": {
                "lav950_percent": reference["lav950_percent_t0"] + rng.normal(0.2, 0.4),
                "lung_volume_ml": float(rng.uniform(3500, 7000)),
            }})  # fmt: skip
    lav = next(r for r in rows if r["algorithm"] == LAV)
    lav["reference"] = {k: v for k, v in lav["reference"].items() if k != "lav950_percent_t0"}
    return rows


def study() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(STUDY_FILE.read_text())
    loaded["metrics"] = [*loaded["metrics"], ABSENT]
    return loaded


class Tables(HTMLParser):
    """Every ``<table>`` of a page as a list of rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.tables:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table_with_header(html: str, first_cells: list[str]) -> list[dict[str, str]]:
    parser = Tables()
    parser.feed(html)
    for table in parser.tables:
        if table and table[0][: len(first_cells)] == first_cells:
            return [dict(zip(table[0], cells, strict=True)) for cells in table[1:]]
    raise AssertionError(f"no table starting with {first_cells}")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReportInfo, str]:
    out = tmp_path_factory.mktemp("report") / "validation.html"
    info = render_report(synthetic_rows(), study(), out, EXPERIMENT)
    return info, out.read_text(encoding="utf-8")


@pytest.mark.slow
def test_report_is_one_html_file_with_the_experiment_and_every_figure(
    rendered: tuple[ReportInfo, str],
) -> None:
    info, html = rendered
    assert info.html.is_file() and info.notebook == info.html.with_suffix(".ipynb")
    assert EXPERIMENT in html
    assert "3 spokes" in html and "36 participants" in html and "108 results" in html
    images = re.findall(r"<img\b[^>]*>", html)
    assert len(images) == FIGURES
    assert all('src="data:image/png;base64,' in img for img in images)
    assert all(re.search(r'alt="(ROC|Bland-Altman) [^"]+"', img) for img in images)
    assert "import matplotlib" not in html  # the code cells' input is left out
    assert info.seconds < 15


@pytest.mark.slow
def test_pooled_auc_in_the_report_is_the_statistics_auc(rendered: tuple[ReportInfo, str]) -> None:
    _, html = rendered
    rows = [r for r in synthetic_rows() if r["algorithm"] == GOOD]
    expected = auc(
        [r["output"]["malignancy_score"] for r in rows],
        [r["reference"]["malignant"] for r in rows],
    )
    table = table_with_header(html, ["algorithm", "site", "n", "positives", "negatives", "AUC"])
    shown = {(r["algorithm"], r["site"]): r for r in table}
    assert shown[(GOOD, "pooled")]["AUC"] == f"{expected:.3f}"
    assert shown[(GOOD, "pooled")]["positives"] == "12"
    assert shown[(GOOD, "pooled")]["negatives"] == "24"
    assert expected > 0.85  # the good scorer really is good: the comparison is not vacuous
    assert {site for algorithm, site in shown if algorithm == COIN} == {"pooled", *SITES}


@pytest.mark.slow
def test_a_row_without_its_reference_is_skipped_counted_and_shown(
    rendered: tuple[ReportInfo, str],
) -> None:
    _, html = rendered
    assert "1 result skipped" in html
    skipped = table_with_header(html, ["algorithm", "reason", "results"])
    assert skipped == [
        {"algorithm": LAV, "reason": "reference lav950_percent_t0 missing", "results": "1"}
    ]
    agreement = table_with_header(html, ["algorithm", "site", "n", "bias"])
    assert {r["site"]: r["n"] for r in agreement}["pooled"] == "35"


@pytest.mark.slow
def test_a_metric_without_data_says_so(rendered: tuple[ReportInfo, str]) -> None:
    _, html = rendered
    assert "ROC: emphysema_score vs malignant" in html
    assert "no algorithm in this experiment outputs <code>emphysema_score</code>" in html


@pytest.mark.slow
def test_executed_notebook_has_no_errors_and_ran_in_this_environment(
    rendered: tuple[ReportInfo, str],
) -> None:
    info, _ = rendered
    notebook = nbformat.read(info.notebook, as_version=4)
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert [o for o in outputs if o["output_type"] == "error"] == []
    assert [o for o in outputs if o["output_type"] == "stream" and o["name"] == "stderr"] == []
    footer = outputs[-1]["data"]["text/markdown"]
    assert f"environment `{sys.prefix}`" in footer
    assert info.kernel_python == kernel_python("python3")


def test_template_declares_its_parameters() -> None:
    notebook = nbformat.read(TEMPLATE, as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    names = re.findall(r"^(\w+) = ", tagged[0].source, re.M)
    assert names == ["experiment_id", "results_path", "study_path", "title"]


def test_no_results_is_a_report_error_before_papermill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import papermill

    started: list[Any] = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: started.append(a))
    with pytest.raises(ReportError, match="no results yet") as raised:
        render_report([], study(), tmp_path / "r.html", EXPERIMENT)
    assert raised.value.cell_index is None
    assert started == []
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_kernel_is_a_report_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no Jupyter kernel named 'no-such-kernel'"):
        render_report(synthetic_rows()[:3], study(), tmp_path / "r.html", EXPERIMENT,
                      kernel_name="no-such-kernel")  # fmt: skip


@pytest.mark.slow
def test_a_failing_cell_is_a_report_error_with_its_index(tmp_path: Path) -> None:
    template = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# A template that breaks"),
        nbformat.v4.new_code_cell(
            'experiment_id = ""\nresults_path = ""\nstudy_path = ""\ntitle = None',
            metadata={"tags": ["parameters"]},
        ),
        nbformat.v4.new_code_cell("counts = {'a': 1}"),
        nbformat.v4.new_code_cell("counts['b']"),
    ])  # fmt: skip
    template.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(template, tmp_path / "broken.ipynb")
    with pytest.raises(ReportError, match=r"cell 4 failed: KeyError") as raised:
        render_report(synthetic_rows()[:3], study(), tmp_path / "out" / "r.html", EXPERIMENT,
                      template=tmp_path / "broken.ipynb")  # fmt: skip
    # counted in the notebook papermill ran: its injected-parameters cell comes after the
    # tagged one, so the fourth cell of the template is cell 4
    assert raised.value.cell_index == 4
    kept = nbformat.read(tmp_path / "out" / "r.ipynb", as_version=4)
    failed = [c for c in kept.cells if any(o.output_type == "error" for o in c.get("outputs", []))]
    assert [c.source for c in failed] == ["counts['b']"]
    assert not (tmp_path / "out" / "r.html").exists()


@pytest.mark.slow
def test_cli_renders_from_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "rows.json"
    results.write_text(json.dumps(synthetic_rows()))
    out = tmp_path / "r.html"
    argv = ["report", EXPERIMENT, "--results", str(results), "--study", str(STUDY_FILE)]
    assert main([*argv, "--out", str(out)]) == 0
    assert EXPERIMENT in out.read_text(encoding="utf-8")
    assert (tmp_path / "r.ipynb").is_file()
    assert "report: " in capsys.readouterr().err


def test_cli_missing_results_file_exits_1_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing.json"
    argv = ["report", EXPERIMENT, "--results", str(missing), "--study", str(STUDY_FILE)]
    assert main([*argv, "--out", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err
    assert err == f"workbench: {missing}: no such file\n"
    assert not (tmp_path / "r.html").exists()


def test_cli_refuses_rows_of_another_experiment_and_an_empty_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "rows.json"
    results.write_text(json.dumps(synthetic_rows()[:6]))
    files = [
        "--results",
        str(results),
        "--study",
        str(STUDY_FILE),
        "--out",
        str(tmp_path / "r.html"),
    ]
    assert main(["report", "exp-other", *files]) == 1
    assert f"holds no results of exp-other, only of {EXPERIMENT}" in capsys.readouterr().err
    results.write_text("[]")
    assert main(["report", EXPERIMENT, *files]) == 1
    assert capsys.readouterr().err == (
        f"workbench: experiment {EXPERIMENT} has no results yet: nothing to report\n"
    )


class FakeHub(BaseHTTPRequestHandler):
    """The three routes ``workbench report`` reads, answering as the hub's API does."""

    rows: ClassVar[list[dict[str, Any]]] = []
    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.asked.append(self.path)
        path = self.path.split("?")[0]
        if path == f"/experiments/{EXPERIMENT}":
            self.reply(200, {"experiment_id": EXPERIMENT, "study": "lung-screening"})
        elif path == "/studies/lung-screening":
            self.reply(200, json.loads(STUDY_FILE.read_text()))
        elif path == f"/experiments/{EXPERIMENT}/results":
            self.reply(200, {"experiment_id": EXPERIMENT, "rows": self.rows, "next": None})
        else:
            error = {"code": "unknown_experiment", "message": f"{path} does not exist"}
            self.reply(404, {"error": error})

    def reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_hub() -> Iterator[str]:
    FakeHub.rows, FakeHub.asked = synthetic_rows()[:9], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_cli_asks_the_hub_for_results_and_study(
    fake_hub: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workbench.reports

    given: list[tuple[Any, ...]] = []

    def record(*args: Any) -> ReportInfo:
        given.append(args)
        return ReportInfo(args[2], args[2].with_suffix(".ipynb"), len(args[0]), "python", 0.1)

    monkeypatch.setattr(workbench.reports, "render_report", record)
    out = tmp_path / "r.html"
    assert main(["report", EXPERIMENT, "--hub", fake_hub, "--out", str(out)]) == 0
    [(rows, study, path, experiment_id, _)] = given
    assert rows == FakeHub.rows and study["metrics"][0]["kind"] == "roc"
    assert (path, experiment_id) == (out, EXPERIMENT)
    assert [p.split("?")[0] for p in FakeHub.asked] == [
        f"/experiments/{EXPERIMENT}",
        "/studies/lung-screening",
        f"/experiments/{EXPERIMENT}/results",
    ]


def test_cli_unknown_experiment_at_the_hub_exits_1(
    fake_hub: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["report", "exp-nope", "--hub", fake_hub, "--out", str(tmp_path / "r.html")]
    assert main(argv) == 1
    assert capsys.readouterr().err == "workbench: /experiments/exp-nope does not exist\n"
    assert not (tmp_path / "r.html").exists()
