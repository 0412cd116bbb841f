"""The nodule model: the hidden label shifts size, growth and shape, with overlap."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.synth.nodule import MIN_DIAMETER_MM, Nodule, sample_nodule

SAMPLES = 400


def _auc(scores: list[float], labels: list[bool]) -> float:
    s = np.asarray(scores)
    y = np.asarray(labels)
    pos, neg = s[y][:, None], s[~y][None, :]
    return float(np.mean(pos > neg) + 0.5 * np.mean(pos == neg))


@pytest.fixture(scope="module")
def nodules() -> list[Nodule]:
    rng = np.random.default_rng(99)
    return [
        sample_nodule(rng, malignant=i % 3 == 0, interval_days=int(rng.integers(300, 501)))
        for i in range(SAMPLES)
    ]


def test_malignant_nodules_are_larger_on_average(nodules: list[Nodule]) -> None:
    malignant = [n.diameter_mm for n in nodules if n.malignant]
    benign = [n.diameter_mm for n in nodules if not n.malignant]

    assert np.mean(malignant) > np.mean(benign) + 1.0
    assert min(malignant + benign) >= MIN_DIAMETER_MM
    # Sizes overlap: size alone must not give the label away.
    assert max(benign) > np.median(malignant)


def test_malignant_nodules_grow_and_benign_ones_mostly_do_not(nodules: list[Nodule]) -> None:
    malignant = np.array([n.growth for n in nodules if n.malignant])
    benign = np.array([n.growth for n in nodules if not n.malignant])

    assert np.median(malignant) > 1.4
    assert np.mean(np.abs(np.log(benign)) < 0.2) > 0.7
    assert np.mean(benign > 1.25) > 0.03  # a few benign nodules grow (overlap)


def test_the_label_is_learnable_but_not_perfectly(nodules: list[Nodule]) -> None:
    labels = [n.malignant for n in nodules]

    by_growth = _auc([n.growth for n in nodules], labels)
    by_size = _auc([n.diameter_mm for n in nodules], labels)

    assert 0.85 < by_growth < 0.99
    assert 0.55 < by_size < 0.85


def test_malignant_shapes_are_less_round(nodules: list[Nodule]) -> None:
    def irregularity(n: Nodule) -> float:
        return n.peak * max(n.axes) / min(n.axes)

    malignant = [irregularity(n) for n in nodules if n.malignant]
    benign = [irregularity(n) for n in nodules if not n.malignant]

    assert np.median(malignant) > np.median(benign) + 0.2


def test_volume_matches_the_equivalent_sphere_on_a_fine_grid(nodules: list[Nodule]) -> None:
    for nodule in nodules[:6]:
        step = 0.5
        reach = nodule.reach(1)
        axis = np.arange(-reach, reach + step, step)

        for timepoint in (0, 1):
            covered = nodule.fraction(axis, axis, axis, (step, step, step), timepoint)
            volume = float(covered.sum()) * step**3

            expected = np.pi / 6 * nodule.diameter_mm**3 * (nodule.growth if timepoint else 1.0)
            assert volume == pytest.approx(expected, rel=0.05)


def test_the_reach_bounds_the_shape(nodules: list[Nodule]) -> None:
    for nodule in nodules[:20]:
        reach = nodule.reach(1)
        directions = np.random.default_rng(0).standard_normal((2000, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        beyond = directions * reach * 1.001

        assert not nodule.inside(beyond[:, 0], beyond[:, 1], beyond[:, 2], timepoint=1).any()
