"""ROC points and the report's tables, against values worked out by hand on tiny inputs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workbench.core.statistics import auc, roc_curve
from workbench.errors import ReportError
from workbench.reports.metrics import (
    POOLED,
    Metric,
    agreement_points,
    agreement_table,
    auc_table,
    latest_attempts,
    metric_data,
    overview,
    roc_points,
    study_metrics,
    summary,
)

Z95 = 1.959963984540054
ROC = Metric("roc", "score", "malignant")
AGREEMENT = Metric("agreement", "volume", "volume_t0")


def row(site: str, pid: str, algorithm: str, output: Any, reference: Any, attempt: int = 1) -> Any:
    return {
        "experiment_id": "exp-1",
        "spoke_id": site,
        "participant_id": pid,
        "algorithm": algorithm,
        "attempt": attempt,
        "output": output,
        "reference": reference,
    }


def scored(site: str, pid: str, score: float, label: Any, algorithm: str = "good") -> Any:
    return row(site, pid, algorithm, {"score": score}, {"malignant": label})


# Site A: positives 0.9, 0.4; negatives 0.5, 0.1. Site B: positive 0.7; negatives 0.2, 0.8.
TWO_SITES = [
    scored("site-a", "a1", 0.9, 1),
    scored("site-a", "a2", 0.4, 1),
    scored("site-a", "a3", 0.5, 0),
    scored("site-a", "a4", 0.1, 0),
    scored("site-b", "b1", 0.7, 1),
    scored("site-b", "b2", 0.2, 0),
    scored("site-b", "b3", 0.8, 0),
]


# --- roc_curve (core/statistics) ---------------------------------------------------------


def test_roc_curve_steps_through_each_threshold_by_hand() -> None:
    # thresholds 0.9 (1 TP), 0.5 (+1 FP), 0.4 (+1 TP), 0.1 (+1 FP)
    fpr, tpr = roc_curve([0.9, 0.4, 0.5, 0.1], [1, 1, 0, 0])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]


def test_roc_curve_moves_diagonally_over_tied_scores() -> None:
    # one positive and one negative tied at 0.8: both are called positive at once
    fpr, tpr = roc_curve([0.8, 0.8, 0.3], [1, 0, 0])
    assert fpr.tolist() == [0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 1.0, 1.0]
    assert float(np.trapezoid(tpr, fpr)) == pytest.approx(0.75)  # = Mann-Whitney, tie = 1/2


def test_roc_curve_needs_both_classes() -> None:
    with pytest.raises(ValueError):
        roc_curve([0.1, 0.2], [0, 0])


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 1)), min_size=2, max_size=40))
def test_area_under_roc_curve_equals_auc(pairs: list[tuple[int, int]]) -> None:
    scores, labels = zip(*pairs, strict=True)
    if len(set(labels)) < 2:
        return
    fpr, tpr = roc_curve(scores, labels)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert float(np.trapezoid(tpr, fpr)) == pytest.approx(auc(scores, labels))


# --- selecting values ---------------------------------------------------------------------


def test_metric_data_pairs_outputs_with_references_and_skips_with_reasons() -> None:
    rows = [
        scored("s1", "p1", 0.7, 1),
        scored("s1", "p2", 0.2, "0"),  # a label from a CSV cell
        scored("s1", "p3", 0.4, True),
        row("s1", "p4", "good", {"score": 0.5}, {}),
        row("s1", "p5", "good", {"score": "high"}, {"malignant": 1}),
        scored("s1", "p6", 0.3, 2),
        row("s1", "p7", "good", {"score": 0.3}, None),
        row("s1", "p8", "volume-only", {"volume": 3.0}, {"malignant": 1}),  # not applicable
        row("s1", "p9", "good", None, {"malignant": 1}),  # a failed run
    ]
    data = metric_data(rows, ROC)
    assert data.values[["participant", "output", "reference"]].values.tolist() == [
        ["p1", 0.7, 1.0],
        ["p2", 0.2, 0.0],
        ["p3", 0.4, 1.0],
    ]
    assert dict(zip(data.skipped["participant"], data.skipped["reason"], strict=True)) == {
        "p4": "reference malignant missing",
        "p5": "output score is not a number",
        "p6": "reference malignant is not a 0/1 label",
        "p7": "reference malignant missing",
    }
    counts = data.skipped_counts()
    assert counts.set_index("reason")["results"].to_dict() == {
        "output score is not a number": 1,
        "reference malignant is not a 0/1 label": 1,
        "reference malignant missing": 2,
    }


def test_agreement_accepts_numeric_strings_and_refuses_nan() -> None:
    rows = [
        row("s1", "p1", "vol", {"volume": 10.5}, {"volume_t0": "10.0"}),
        row("s1", "p2", "vol", {"volume": float("nan")}, {"volume_t0": 3.0}),
        row("s1", "p3", "vol", {"volume": 4.0}, {"volume_t0": "n/a"}),
    ]
    data = metric_data(rows, AGREEMENT)
    assert data.values["reference"].tolist() == [10.0]
    assert sorted(data.skipped["reason"]) == [
        "output volume is not a number",
        "reference volume_t0 is not a number",
    ]


def test_only_the_last_attempt_of_a_case_counts() -> None:
    rows = [
        scored("s1", "p1", 0.1, 1) | {"attempt": 1},
        scored("s1", "p1", 0.9, 1) | {"attempt": 3},
        scored("s1", "p1", 0.5, 1) | {"attempt": 2},
        scored("s2", "p1", 0.4, 0),  # same pseudonym at another site: another participant
    ]
    kept = latest_attempts(rows)
    assert sorted((r["spoke_id"], r["attempt"]) for r in kept) == [("s1", 3), ("s2", 1)]
    assert metric_data(rows, ROC).values["output"].tolist() == [0.9, 0.4]


def test_summary_and_overview_count_cases_sites_and_algorithms() -> None:
    rows = [
        *TWO_SITES,
        scored("site-a", "a1", 0.5, 1, algorithm="coin"),
        scored("site-a", "a1", 0.6, 1, algorithm="coin") | {"attempt": 2},
        row("site-b", "b1", "coin", None, {"malignant": 1}),
    ]
    assert summary(rows) == {
        "spokes": 2,
        "participants": 7,
        "algorithms": 2,
        "results": 9,
        "superseded": 1,
        "failed": 1,
    }
    table = overview(rows)
    assert list(table.columns) == ["site-a", "site-b", "all sites"]
    assert table.loc["good"].tolist() == [4, 3, 7]
    assert table.loc["coin"].tolist() == [1, 1, 2]


def test_study_metrics_reads_the_list_and_refuses_unknown_kinds() -> None:
    study = {"metrics": [{"kind": "roc", "output": "s", "reference": "m"}]}
    assert study_metrics(study) == [Metric("roc", "s", "m")]
    assert study_metrics({}) == []
    with pytest.raises(ReportError, match="unknown kind 'kappa'"):
        study_metrics({"metrics": [{"kind": "kappa", "output": "s", "reference": "m"}]})
    with pytest.raises(ReportError, match="needs kind, output and reference"):
        study_metrics({"metrics": [{"kind": "roc", "output": "s"}]})


# --- ROC tables ---------------------------------------------------------------------------


def test_auc_table_pooled_and_per_site_by_hand() -> None:
    table = auc_table(metric_data(TWO_SITES, ROC)).set_index("site")
    assert list(table.index) == [POOLED, "site-a", "site-b"]
    assert table[["n", "positives", "negatives"]].values.tolist() == [
        [7, 3, 4],
        [4, 2, 2],
        [3, 1, 2],
    ]
    # pooled: 0.9 beats all 4 negatives, 0.4 beats 0.1 and 0.2, 0.7 beats 0.5, 0.1, 0.2 -> 9/12
    # site-a: 3 of 4 pairs; site-b: 0.7 beats 0.2, not 0.8 -> 1/2
    assert table["auc"].tolist() == [0.75, 0.75, 0.5]
    # site-a by hand: psi rows [1, 1], [0, 1]; var(v10=[1, .5])/2 + var(v01=[.5, 1])/2 = 1/8
    half = Z95 * math.sqrt(0.125)
    assert table.loc["site-a", "ci_low"] == pytest.approx(0.75 - half)
    assert table.loc["site-a", "ci_high"] == 1.0  # 0.75 + 0.693, clipped


def test_auc_table_leaves_a_one_class_site_without_statistics() -> None:
    rows = [*TWO_SITES, scored("site-c", "c1", 0.3, 0), scored("site-c", "c2", 0.6, 0)]
    table = auc_table(metric_data(rows, ROC)).set_index("site")
    assert table.loc["site-c", ["n", "positives", "negatives"]].tolist() == [2, 0, 2]
    assert math.isnan(table.loc["site-c", "auc"]) and math.isnan(table.loc["site-c", "ci_low"])
    assert table.loc[POOLED, "n"] == 9


def test_roc_points_per_algorithm_and_site() -> None:
    rows = [
        *TWO_SITES,
        scored("site-a", "a1", 0.2, 1, "coin"),
        scored("site-a", "a3", 0.6, 0, "coin"),
    ]
    points = roc_points(metric_data(rows, ROC))
    site_a = points[(points["algorithm"] == "good") & (points["site"] == "site-a")]
    assert site_a["fpr"].tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert site_a["tpr"].tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    coin = points[points["algorithm"] == "coin"]
    assert coin["fpr"].tolist() == [0.0, 1.0, 1.0] * 2  # pooled and site-a are the same two
    assert coin["tpr"].tolist() == [0.0, 0.0, 1.0] * 2
    assert sorted(set(zip(points["algorithm"], points["site"], strict=True))) == [
        ("coin", POOLED), ("coin", "site-a"),
        ("good", POOLED), ("good", "site-a"), ("good", "site-b"),
    ]  # fmt: skip


def test_roc_points_of_no_usable_group_is_an_empty_table() -> None:
    points = roc_points(metric_data([scored("s1", "p1", 0.4, 1)], ROC))
    assert points.empty and list(points.columns) == ["algorithm", "site", "fpr", "tpr"]


# --- agreement tables ---------------------------------------------------------------------


def volumes() -> list[Any]:
    # differences 1, 2 at site-a and 3, 4 at site-b; one lone value at site-c
    pairs = [("site-a", 11, 10), ("site-a", 22, 20), ("site-b", 33, 30), ("site-b", 44, 40)]
    rows = [
        row(site, f"p{i}", "vol", {"volume": out}, {"volume_t0": ref})
        for i, (site, out, ref) in enumerate(pairs)
    ]
    return [*rows, row("site-c", "p9", "vol", {"volume": 5.0}, {"volume_t0": 7.0})]


def test_agreement_table_bias_limits_and_mae_by_hand() -> None:
    rows = volumes()[:4]
    table = agreement_table(metric_data(rows, AGREEMENT)).set_index("site")
    sd = math.sqrt(((1 - 2.5) ** 2 + (2 - 2.5) ** 2 + (3 - 2.5) ** 2 + (4 - 2.5) ** 2) / 3)
    assert table.loc[POOLED, ["n", "bias", "mae"]].tolist() == [4, 2.5, 2.5]
    assert table.loc[POOLED, "loa_low"] == pytest.approx(2.5 - Z95 * sd)
    assert table.loc[POOLED, "loa_high"] == pytest.approx(2.5 + Z95 * sd)
    # site-a: differences 1 and 2: bias 1.5, SD sqrt(0.5)
    assert table.loc["site-a", "bias"] == 1.5
    assert table.loc["site-a", "loa_high"] == pytest.approx(1.5 + Z95 * math.sqrt(0.5))
    assert table.loc["site-b", ["bias", "mae"]].tolist() == [3.5, 3.5]


def test_agreement_of_a_single_value_has_an_error_but_no_limits() -> None:
    table = agreement_table(metric_data(volumes(), AGREEMENT)).set_index("site")
    assert table.loc["site-c", ["n", "mae"]].tolist() == [1, 2.0]
    assert math.isnan(table.loc["site-c", "bias"]) and math.isnan(table.loc["site-c", "loa_low"])
    assert table.loc[POOLED, "n"] == 5


def test_agreement_points_are_means_and_differences() -> None:
    points = agreement_points(metric_data(volumes()[:2], AGREEMENT))
    assert points["mean"].tolist() == [10.5, 21.0]
    assert points["difference"].tolist() == [1.0, 2.0]
