"""The rendered chest: HU per tissue class, masks, and truth that the pixels reproduce."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray

from workbench.synth import generate_cohort
from workbench.synth.anatomy import render, sample_anatomy
from workbench.synth.participant import Participant, sample_participant
from workbench.synth.phantom import Grid, Renderer, Truth

NOISE_SD = 20.0
BoolVolume = NDArray[np.bool_]


def _grid(thickness: float = 4.0, ascending: bool = False) -> Grid:
    return Grid.centred(
        rows=96,
        cols=96,
        pixel_spacing=3.6,
        thickness=thickness,
        z_top=-40.0,
        extent_mm=240.0,
        ascending=ascending,
    )


def _render(
    participant: Participant, timepoint: int, grid: Grid
) -> tuple[NDArray[np.int16], BoolVolume, BoolVolume, Truth]:
    renderer = Renderer(
        participant, timepoint, grid, noise_sd=NOISE_SD, rng=np.random.default_rng(4)
    )
    slabs = list(renderer.layers())
    return (
        np.concatenate([s.hu for s in slabs]),
        np.concatenate([s.lung for s in slabs]),
        np.concatenate([s.nodule for s in slabs]),
        renderer.truth(),
    )


def _dilate(mask: BoolVolume) -> BoolVolume:
    """Grow a mask by one voxel in all 26 directions."""
    out = mask.copy()
    for axis in range(3):
        grown = out.copy()
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(1, None), slice(None, -1)
        grown[tuple(lo)] |= out[tuple(hi)]
        grown[tuple(hi)] |= out[tuple(lo)]
        out = grown
    return out


def _from_border(allowed: BoolVolume) -> BoolVolume:
    """The voxels of ``allowed`` connected (26-neighbourhood) to the volume's border."""
    reach = np.zeros_like(allowed)
    for axis in range(3):
        for flip in (False, True):
            a = np.flip(allowed, axis) if flip else allowed
            run = np.logical_and.accumulate(a, axis=axis)
            reach |= np.flip(run, axis) if flip else run
    count = int(reach.sum())
    while True:
        reach = _dilate(reach) & allowed
        if int(reach.sum()) == count:
            return reach
        count = int(reach.sum())


@pytest.fixture(scope="module")
def participant() -> Participant:
    return sample_participant(np.random.default_rng(2024), malignant=True)


def test_noise_free_anatomy_uses_only_the_documented_values() -> None:
    anatomy = sample_anatomy(np.random.default_rng(8))
    c = (np.arange(128) - 63.5) * 2.8
    z = np.arange(10.0, -230.0, -6.0)

    hu, lung = render(anatomy, c[None, None, :], c[None, :, None], z[:, None, None])

    outside_lung = set(np.unique(hu[~lung]).tolist())
    assert outside_lung <= {-1000, -100, 40, 55, 20, 90, 650, 500, 450, 900, 700}
    assert {-1000, -100, 40, 650, 450, 900} <= outside_lung
    assert hu[lung].min() > -900 and hu[lung].max() < -800
    bone = hu[hu > 200]
    assert bone.min() >= 400 and bone.max() <= 1000
    assert hu[:, :, 0].max() == -1000 and hu[:, 0, :].max() == -1000


def test_tissue_classes_have_plausible_hu_after_noise(participant: Participant) -> None:
    clean = replace(participant, emphysema_threshold=(np.inf, np.inf))

    hu, lung, nodule, _ = _render(clean, 0, _grid())

    border = np.concatenate([hu[:, :, :3].ravel(), hu[:, :, -3:].ravel()])
    assert abs(border.mean() - (-1000)) < 3
    assert -880 < hu[lung].mean() < -820
    assert np.mean(hu[lung] < -950) < 0.01
    assert 30 - 10 < hu[nodule].mean() < 60 + 10
    assert hu[nodule].min() > -400


def test_emphysema_sits_between_minus_990_and_minus_970(participant: Participant) -> None:
    all_emphysema = replace(participant, emphysema_threshold=(-np.inf, -np.inf))

    hu, lung, _, truth = _render(all_emphysema, 0, _grid())

    assert -990 - 3 < hu[lung].mean() < -970 + 3
    assert truth.lav950_percent > 80


def test_truth_is_what_the_masks_and_pixels_say(participant: Participant) -> None:
    grid = _grid()
    hu, lung, nodule, truth = _render(participant, 1, grid)

    assert truth.nodule_voxels == int(nodule.sum()) > 0
    assert truth.nodule_volume_mm3 == pytest.approx(nodule.sum() * 3.6 * 3.6 * 4.0)
    assert truth.lung_voxels == int(lung.sum())
    assert truth.lav950_percent == pytest.approx(100 * np.mean(hu[lung] < -950))


def test_lungs_are_enclosed_and_away_from_the_end_slices(participant: Participant) -> None:
    hu, lung, nodule, _ = _render(participant, 0, _grid(thickness=5.0))

    outside = _from_border(hu < -400)

    assert not lung[0].any() and not lung[-1].any()
    assert not (outside & lung).any()
    # Below -400 HU and not connected to the border is exactly the lung mask.
    assert np.array_equal((hu < -400) & ~outside, lung)
    # The nodule is a hole in the lungs: every neighbour of it is lung or nodule.
    assert not (_dilate(nodule) & ~(lung | nodule)).any()


def test_a_growing_nodule_is_larger_at_follow_up() -> None:
    grid = _grid(thickness=3.0)
    growing = next(
        p
        for seed in range(100)
        if (p := sample_participant(np.random.default_rng(seed), malignant=True)).nodule.growth
        > 2.0
    )

    *_, t0 = _render(growing, 0, grid)
    *_, t1 = _render(growing, 1, grid)

    assert t1.nodule_volume_mm3 > 1.4 * t0.nodule_volume_mm3


def test_slab_order_follows_the_grid(participant: Participant) -> None:
    down = _render(participant, 0, _grid(ascending=False))[0]
    up = _render(participant, 0, _grid(ascending=True))[0]

    # Same anatomy, opposite file order (the noise differs, so compare the structure).
    assert np.array_equal(down < -400, up[::-1] < -400)


def test_reference_matches_the_written_pixels(tmp_path: Path) -> None:
    summary = generate_cohort(tmp_path, 3, 1, seed=3)

    checked = 0
    for site in summary.sites:
        with (tmp_path / site / "reference.csv").open(encoding="utf-8") as f:
            reference = {row["patient_id"]: row for row in csv.DictReader(f)}
        studies = sorted((tmp_path / site / "dicom").glob("*/*"), key=lambda p: p.name)
        for timepoint, study in enumerate(studies):
            datasets = [pydicom.dcmread(p) for p in study.glob("*/*.dcm")]
            datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
            hu = np.stack([ds.pixel_array.astype(np.int32) - 1024 for ds in datasets])
            voxel = float(datasets[0].PixelSpacing[0]) ** 2 * float(datasets[0].SliceThickness)
            row = reference[datasets[0].PatientID]

            lung = (hu < -400) & ~_from_border(hu < -400)
            holes = ~lung & ~_from_border(~lung)

            lav = 100 * np.mean(hu[lung] < -950)
            assert lav == pytest.approx(float(row[f"lav950_percent_t{timepoint}"]), abs=1e-4)
            volume = holes.sum() * voxel
            assert volume == pytest.approx(float(row[f"nodule_volume_mm3_t{timepoint}"]), abs=1e-3)
            checked += 1
    assert checked == 6
