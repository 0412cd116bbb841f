from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workbench.core.statistics import auc, bland_altman, delong_ci


def test_auc_of_perfect_inverted_and_tied_scores() -> None:
    assert auc([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0
    assert auc([0, 1, 2, 3], [1, 1, 0, 0]) == 0.0
    assert auc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.5


def test_auc_counts_concordant_pairs_by_hand() -> None:
    # positives 0.8, 0.4; negatives 0.5, 0.1: pairs (0.8>0.5, 0.8>0.1, 0.4<0.5, 0.4>0.1) = 3/4
    assert auc([0.8, 0.4, 0.5, 0.1], [1, 1, 0, 0]) == 0.75


def test_delong_interval_contains_the_estimate_and_narrows_with_more_cases() -> None:
    rng = np.random.default_rng(1)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        return y + rng.normal(0, 1.0, n), y

    small = delong_ci(*sample(40))
    large = delong_ci(*sample(4000))
    assert small[1] <= small[0] <= small[2]
    assert (large[2] - large[1]) < (small[2] - small[1]) / 5
    # true AUC of N(1,1) vs N(0,1) is Phi(1/sqrt(2)) = 0.7602
    assert large[1] < 0.7602 < large[2]


def test_auc_needs_both_classes() -> None:
    with pytest.raises(ValueError):
        auc([0.1, 0.2], [1, 1])


@given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.integers(0, 1)), min_size=2, max_size=40))
def test_auc_is_complementary_under_negated_scores(pairs: list[tuple[float, int]]) -> None:
    scores, labels = zip(*pairs, strict=True)
    if len(set(labels)) < 2:
        return
    assert auc(scores, labels) + auc([-s for s in scores], labels) == pytest.approx(1.0)


def test_bland_altman_bias_and_limits() -> None:
    result = bland_altman([11, 12, 13, 14], [10, 10, 10, 10])
    assert result["bias"] == 2.5
    sd = np.std([1, 2, 3, 4], ddof=1)
    assert result["loa_high"] == pytest.approx(2.5 + 1.959964 * sd, rel=1e-6)
