"""Validation metrics from the hub's result rows, as tidy pandas tables for the report.

A *row* is one result as the hub API returns it: ``experiment_id``, ``spoke_id``,
``participant_id``, ``algorithm``, ``attempt``, the algorithm's ``output`` (its
``output.json``) and the site's de-identified ``reference`` standard. A study's ``metrics``
list says what to compute; each metric applies to every algorithm whose output has the
metric's ``output`` key:

- ``roc``: the output is a score, the reference a 0/1 label; ROC curves and AUC with a
  DeLong 95% interval, pooled over all sites and per site.
- ``agreement``: output and reference are the same measurement; Bland-Altman bias and 95%
  limits of agreement, and the mean absolute error, pooled and per site.

A row whose output or reference value is missing or unusable is *skipped* and counted with
its reason, never silently dropped. The statistics are
:mod:`workbench.core.statistics`'; this module only selects, groups and tabulates.

>>> rows = [
...     {"spoke_id": "site-01", "participant_id": f"p{i}", "algorithm": "a", "attempt": 1,
...      "output": {"score": s}, "reference": {"label": y}}
...     for i, (s, y) in enumerate([(0.9, 1), (0.2, 0), (0.7, 0), (0.8, 1)])
... ]
>>> data = metric_data(rows, Metric("roc", "score", "label"))
>>> auc_table(data)[["algorithm", "site", "n", "auc"]].to_dict("records")[0]
{'algorithm': 'a', 'site': 'pooled', 'n': 4, 'auc': 1.0}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from workbench.core.statistics import bland_altman, delong_ci, roc_curve
from workbench.errors import ReportError

__all__ = [
    "KINDS",
    "POOLED",
    "Metric",
    "MetricData",
    "agreement_points",
    "agreement_table",
    "auc_table",
    "latest_attempts",
    "metric_data",
    "overview",
    "roc_points",
    "study_metrics",
    "summary",
]

POOLED = "pooled"
"""The ``site`` value of rows computed over all sites together."""

KINDS = ("roc", "agreement")

_VALUES = ["algorithm", "site", "participant", "output", "reference"]
_SKIPPED = ["algorithm", "site", "participant", "reason"]


@dataclass(frozen=True)
class Metric:
    """One entry of a study's ``metrics`` list."""

    kind: str
    output: str
    reference: str

    @property
    def title(self) -> str:
        """A heading: ``"ROC: malignancy_score vs malignant"``."""
        name = "ROC" if self.kind == "roc" else "Agreement"
        return f"{name}: {self.output} vs {self.reference}"


@dataclass(frozen=True)
class MetricData:
    """The values one metric is computed from, and the rows it had to skip.

    ``values`` has one row per usable result: ``algorithm``, ``site``, ``participant``,
    ``output`` and ``reference`` (floats; 0/1 for a ``roc`` reference). ``skipped`` has
    ``algorithm``, ``site``, ``participant`` and ``reason``.
    """

    metric: Metric
    values: pd.DataFrame
    skipped: pd.DataFrame

    @property
    def algorithms(self) -> list[str]:
        """The algorithms with at least one usable value, sorted."""
        return sorted(self.values["algorithm"].unique())

    def skipped_counts(self) -> pd.DataFrame:
        """Skipped rows counted by ``algorithm`` and ``reason`` (column ``results``)."""
        if self.skipped.empty:
            return pd.DataFrame(columns=["algorithm", "reason", "results"])
        counts = self.skipped.groupby(["algorithm", "reason"], sort=True).size()
        return counts.rename("results").reset_index()


def study_metrics(study: Mapping[str, Any]) -> list[Metric]:
    """The study's ``metrics`` list as :class:`Metric` objects.

    Raises:
        ReportError: an entry lacks a field or has a kind other than ``roc``/``agreement``.
    """
    found = []
    for i, entry in enumerate(study.get("metrics") or []):
        try:
            metric = Metric(str(entry["kind"]), str(entry["output"]), str(entry["reference"]))
        except (KeyError, TypeError) as e:
            raise ReportError(f"study metric {i} needs kind, output and reference") from e
        if metric.kind not in KINDS:
            raise ReportError(f"study metric {i} has unknown kind {metric.kind!r}")
        found.append(metric)
    return found


def latest_attempts(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One row per (site, participant, algorithm): the one with the highest ``attempt``.

    A spoke may rerun a case after a failure; the report scores the last attempt only, so a
    rerun never counts a participant twice.
    """
    best: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    for row in rows:
        key = (str(row["spoke_id"]), str(row["participant_id"]), str(row["algorithm"]))
        kept = best.get(key)
        if kept is None or int(row.get("attempt", 1)) > int(kept.get("attempt", 1)):
            best[key] = row
    return list(best.values())


def summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Counts for the report's header: spokes, participants, algorithms, results.

    ``results`` counts the rows kept by :func:`latest_attempts`; ``superseded`` the earlier
    attempts left out; ``failed`` the kept rows without an ``output`` object.
    """
    kept = latest_attempts(rows)
    return {
        "spokes": len({str(r["spoke_id"]) for r in kept}),
        "participants": len({(str(r["spoke_id"]), str(r["participant_id"])) for r in kept}),
        "algorithms": len({str(r["algorithm"]) for r in kept}),
        "results": len(kept),
        "superseded": len(rows) - len(kept),
        "failed": sum(1 for r in kept if not isinstance(r.get("output"), Mapping)),
    }


def overview(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Results per algorithm (rows) and site (columns), with an ``all sites`` total column.

    Counts the rows kept by :func:`latest_attempts`, failed runs included. Index: algorithm.
    """
    kept = latest_attempts(rows)
    frame = pd.DataFrame(
        [(str(r["algorithm"]), str(r["spoke_id"])) for r in kept], columns=["algorithm", "site"]
    )
    table = pd.crosstab(frame["algorithm"], frame["site"])
    table = table.reindex(sorted(table.columns), axis=1)
    table["all sites"] = table.sum(axis=1)
    table.columns.name = None
    return table


def metric_data(rows: Sequence[Mapping[str, Any]], metric: Metric) -> MetricData:
    """Pair each applicable result's output value with its reference value.

    A row applies when its ``output`` has ``metric.output``. It is skipped, with a reason,
    when that value is not a finite number, or when the reference value is missing, not a
    number, or (for ``roc``) not a 0/1 label. Rows of other algorithms are ignored.
    """
    values: list[tuple[str, str, str, float, float]] = []
    skipped: list[tuple[str, str, str, str]] = []
    for row in latest_attempts(rows):
        output = row.get("output")
        if not isinstance(output, Mapping) or metric.output not in output:
            continue
        who = (str(row["algorithm"]), str(row["spoke_id"]), str(row["participant_id"]))
        reference = row.get("reference")
        raw = reference.get(metric.reference) if isinstance(reference, Mapping) else None
        value = _number(output[metric.output])
        truth = _label(raw) if metric.kind == "roc" else _number(raw)
        if value is None:
            skipped.append((*who, f"output {metric.output} is not a number"))
        elif raw is None or raw == "":
            skipped.append((*who, f"reference {metric.reference} missing"))
        elif truth is None:
            kind = "a 0/1 label" if metric.kind == "roc" else "a number"
            skipped.append((*who, f"reference {metric.reference} is not {kind}"))
        else:
            values.append((*who, value, truth))
    return MetricData(
        metric,
        pd.DataFrame(values, columns=_VALUES).astype({"output": float, "reference": float}),
        pd.DataFrame(skipped, columns=_SKIPPED),
    )


def roc_points(data: MetricData) -> pd.DataFrame:
    """ROC curve points per algorithm, pooled and per site: ``algorithm, site, fpr, tpr``.

    A group without both a positive and a negative case has no curve and no points.
    """
    parts = []
    for algorithm, site, group in _groups(data.values):
        labels = group["reference"].astype(int).to_numpy()
        if labels.min() == labels.max():
            continue
        fpr, tpr = roc_curve(group["output"].to_numpy(), labels)
        parts.append(pd.DataFrame({"algorithm": algorithm, "site": site, "fpr": fpr, "tpr": tpr}))
    if not parts:
        return pd.DataFrame(columns=["algorithm", "site", "fpr", "tpr"])
    return pd.concat(parts, ignore_index=True)


def auc_table(data: MetricData) -> pd.DataFrame:
    """AUC and DeLong 95% interval per algorithm, pooled then per site.

    Columns: ``algorithm, site, n, positives, negatives, auc, ci_low, ci_high``; the three
    statistics are NaN for a group without both a positive and a negative case.
    """
    records = []
    for algorithm, site, group in _groups(data.values):
        labels = group["reference"].astype(int).to_numpy()
        positives = int(labels.sum())
        negatives = len(labels) - positives
        stats = (math.nan, math.nan, math.nan)
        if positives and negatives:
            stats = delong_ci(group["output"].to_numpy(), labels)
        records.append((algorithm, site, len(labels), positives, negatives, *stats))
    columns = ["algorithm", "site", "n", "positives", "negatives", "auc", "ci_low", "ci_high"]
    return pd.DataFrame(records, columns=columns)


def agreement_points(data: MetricData) -> pd.DataFrame:
    """``values`` plus the Bland-Altman coordinates ``mean`` and ``difference`` (output - ref)."""
    points = data.values.copy()
    points["mean"] = (points["output"] + points["reference"]) / 2
    points["difference"] = points["output"] - points["reference"]
    return points


def agreement_table(data: MetricData) -> pd.DataFrame:
    """Bland-Altman bias and 95% limits of agreement, and the mean absolute error.

    One row per algorithm pooled, then per site. Columns: ``algorithm, site, n, bias,
    loa_low, loa_high, mae``; bias and limits are NaN for a group of fewer than two values.
    """
    records = []
    for algorithm, site, group in _groups(data.values):
        measured, truth = group["output"].to_numpy(), group["reference"].to_numpy()
        stats = {"bias": math.nan, "loa_low": math.nan, "loa_high": math.nan}
        if len(group) >= 2:
            stats = bland_altman(measured, truth)
        mae = float(np.mean(np.abs(measured - truth)))
        records.append(
            (algorithm, site, len(group), stats["bias"], stats["loa_low"], stats["loa_high"], mae)
        )
    columns = ["algorithm", "site", "n", "bias", "loa_low", "loa_high", "mae"]
    return pd.DataFrame(records, columns=columns)


def _groups(values: pd.DataFrame) -> Iterable[tuple[str, str, pd.DataFrame]]:
    """Per algorithm (sorted): all sites pooled, then each site (sorted)."""
    for algorithm in sorted(values["algorithm"].unique()):
        rows = values[values["algorithm"] == algorithm]
        yield algorithm, POOLED, rows
        for site in sorted(rows["site"].unique()):
            yield algorithm, site, rows[rows["site"] == site]


def _number(raw: Any) -> float | None:
    """A finite float from a JSON number or a numeric string; ``None`` otherwise."""
    if isinstance(raw, bool) or raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _label(raw: Any) -> float | None:
    """1.0 or 0.0 from a boolean, a 0/1 number or a "0"/"1" string; ``None`` otherwise."""
    if isinstance(raw, bool):
        return float(raw)
    value = _number(raw)
    return value if value in (0.0, 1.0) else None
