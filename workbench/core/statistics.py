"""Validation statistics: ROC curve, AUC with a DeLong confidence interval, agreement.

Pure numpy. ``auc`` is the Mann-Whitney estimate (ties count one half); ``delong_ci`` uses
DeLong's structural components for the variance, the standard for comparing diagnostic
algorithms on one cohort. ``roc_curve`` gives the empirical curve whose trapezoidal area is
exactly ``auc``.

>>> round(auc([0.9, 0.8, 0.3], [1, 1, 0]), 3)
1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_Z95 = 1.959963984540054


def _split(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=int)
    if s.shape != y.shape:
        raise ValueError("scores and labels differ in length")
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("an AUC needs at least one positive and one negative case")
    return pos, neg


def _psi(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    diff = pos[:, None] - neg[None, :]
    psi: np.ndarray = (diff > 0) + 0.5 * (diff == 0)
    return psi


def roc_curve(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)``: the empirical ROC curve, from (0, 0) to (1, 1).

    One point per distinct score, taken as a threshold from the highest down (a case is
    called positive when its score is at or above it). Tied scores move the curve
    diagonally, so the trapezoidal area under it equals :func:`auc`.

    >>> fpr, tpr = roc_curve([0.9, 0.8, 0.3], [1, 0, 0])
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 1.0], [0.0, 1.0, 1.0, 1.0])
    """
    pos, neg = _split(scores, labels)
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    # cases at or above each threshold: counts of scores >= t, via sorted search
    tp = len(pos) - np.searchsorted(np.sort(pos), thresholds, side="left")
    fp = len(neg) - np.searchsorted(np.sort(neg), thresholds, side="left")
    fpr = np.concatenate([[0.0], fp / len(neg)])
    tpr = np.concatenate([[0.0], tp / len(pos)])
    return fpr, tpr


def auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive)."""
    pos, neg = _split(scores, labels)
    return float(_psi(pos, neg).mean())


def delong_ci(
    scores: Sequence[float], labels: Sequence[int], z: float = _Z95
) -> tuple[float, float, float]:
    """``(auc, low, high)``: the AUC and its DeLong 95% interval, clipped to [0, 1]."""
    pos, neg = _split(scores, labels)
    psi = _psi(pos, neg)
    value = float(psi.mean())
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    var = 0.0
    if len(pos) > 1:
        var += float(np.var(v10, ddof=1)) / len(pos)
    if len(neg) > 1:
        var += float(np.var(v01, ddof=1)) / len(neg)
    half = z * var**0.5
    return value, max(0.0, value - half), min(1.0, value + half)


def bland_altman(measured: Sequence[float], truth: Sequence[float]) -> dict[str, float]:
    """Bias and 95% limits of agreement of ``measured`` against ``truth``."""
    m = np.asarray(measured, dtype=float)
    t = np.asarray(truth, dtype=float)
    if m.shape != t.shape or len(m) < 2:
        raise ValueError("agreement needs two equal-length series of at least two values")
    diff = m - t
    bias, sd = float(diff.mean()), float(diff.std(ddof=1))
    return {"bias": bias, "loa_low": bias - _Z95 * sd, "loa_high": bias + _Z95 * sd, "n": len(m)}
