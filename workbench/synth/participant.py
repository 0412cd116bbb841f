"""One synthetic participant: anatomy, nodule, vessels, emphysema, and how they change.

Everything here lives in the participant frame of :mod:`.anatomy` and does not depend on
the voxel grid, so a participant rendered in small and in full mode has the same anatomy.
Per time point only the nodule size, the emphysema extent, the position on the table and
the noise differ.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from workbench.errors import SynthError
from workbench.synth.anatomy import Anatomy, lung_field, sample_anatomy
from workbench.synth.nodule import MIN_DIAMETER_MM, Nodule, coverage, sample_nodule
from workbench.synth.texture import SmoothField

FloatArray = NDArray[np.float64]

# The box (x, y, z in the participant frame) the random fields cover.
_FIELD_LO = (-170.0, -150.0, -215.0)
_FIELD_HI = (170.0, 150.0, 5.0)
# Parenchyma kept between the nodule (at follow-up) and anything that is not lung.
NODULE_CLEARANCE_MM = 12.0
_VESSELS = 70


@dataclass(frozen=True)
class Vessel:
    """A short, thin vessel segment in the lung (a capsule)."""

    start: tuple[float, float, float]
    end: tuple[float, float, float]
    radius: float

    def fraction(
        self, xs: FloatArray, ys: FloatArray, zs: FloatArray, spacing: tuple[float, float, float]
    ) -> FloatArray:
        """Fraction of each voxel (centres ``zs`` x ``ys`` x ``xs``) inside the capsule."""
        a = np.asarray(self.start)
        ab = np.asarray(self.end) - a
        r2 = self.radius**2

        def inside(x: FloatArray, y: FloatArray, z: FloatArray) -> NDArray[np.bool_]:
            px, py, pz = x - a[0], y - a[1], z - a[2]
            t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / (ab @ ab), 0.0, 1.0)
            return np.asarray(
                (px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (pz - t * ab[2]) ** 2 <= r2
            )

        return coverage(inside, xs, ys, zs, spacing)


@dataclass(frozen=True)
class Participant:
    """Everything needed to render one participant at either time point."""

    anatomy: Anatomy
    nodule: Nodule
    vessels: tuple[Vessel, ...]
    emphysema: SmoothField
    emphysema_level: SmoothField
    texture: SmoothField
    upper_weight: float
    emphysema_threshold: tuple[float, float]
    interval_days: int
    apex_depth: tuple[float, float]
    shift_xy: tuple[tuple[float, float], tuple[float, float]]

    def emphysema_score(self, x: FloatArray, y: FloatArray, z: FloatArray) -> FloatArray:
        """The field thresholded for emphysema, weighted towards the upper zones."""
        upper = self.upper_weight * (1.0 + z / self.anatomy.lung_height)
        return np.asarray(self.emphysema.sample(x, y, z) + upper, dtype=np.float64)


def _emphysema_targets(rng: np.random.Generator) -> tuple[float, float]:
    """Fraction of lung that is emphysema at baseline and follow-up."""
    r = rng.random()
    if r < 0.4:
        t0 = rng.uniform(0.0, 0.005)
    elif r < 0.75:
        t0 = rng.uniform(0.01, 0.08)
    else:
        t0 = rng.uniform(0.08, 0.3)
    t1 = min(0.45, t0 * rng.uniform(1.0, 1.25) + rng.uniform(0.0, 0.004))
    return t0, t1


def _lung_points(an: Anatomy, step: float) -> FloatArray:
    """Coordinates (n, 3) of a regular grid of points inside the lung field."""
    axes = [np.arange(lo, hi + step, step) for lo, hi in zip(_FIELD_LO, _FIELD_HI, strict=True)]
    x, y, z = axes
    inside = lung_field(an, x[None, None, :], y[None, :, None], z[:, None, None])
    iz, iy, ix = np.nonzero(inside)
    return np.column_stack([x[ix], y[iy], z[iz]])


def _ball_offsets(radius: float) -> FloatArray:
    """Directions on a sphere at ``radius`` and ``radius / 2`` (for a dilation test)."""
    g = np.array([-1.0, 0.0, 1.0])
    d = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    d = d[np.any(d != 0, axis=1)]
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return np.concatenate([np.zeros((1, 3)), d * radius, d * radius / 2.0])


def _fits(an: Anatomy, nodule: Nodule, offsets: FloatArray) -> bool:
    """Whether the follow-up nodule, dilated by the clearance, lies inside the lung field."""
    reach = nodule.reach(1)
    step = 2.0
    g = np.arange(-reach, reach + step, step)
    cx, cy, cz = nodule.center
    inside = nodule.inside(
        cx + g[None, None, :], cy + g[None, :, None], cz + g[:, None, None], timepoint=1
    )
    iz, iy, ix = np.nonzero(inside)
    points = np.column_stack([cx + g[ix], cy + g[iy], cz + g[iz]])
    if points.size == 0:
        points = np.asarray([nodule.center])
    probe = (points[:, None, :] + offsets[None, :, :]).reshape(-1, 3)
    return bool(np.all(lung_field(an, probe[:, 0], probe[:, 1], probe[:, 2])))


def _place_nodule(
    rng: np.random.Generator, an: Anatomy, nodule: Nodule, lung: FloatArray
) -> Nodule:
    h = an.lung_height
    candidates = lung[(lung[:, 2] < -0.15 * h) & (lung[:, 2] > -0.85 * h)]
    offsets = _ball_offsets(NODULE_CLEARANCE_MM)
    for attempt in range(400):
        if attempt and attempt % 40 == 0:
            # A large nodule that fits nowhere is shrunk a little (about 1% of malignant
            # nodules), never below the smallest diameter.
            factor = max(0.92, MIN_DIAMETER_MM / nodule.diameter_mm)
            nodule = replace(
                nodule,
                base_radius=nodule.base_radius * factor,
                diameter_mm=nodule.diameter_mm * factor,
            )
        pick = candidates[rng.integers(len(candidates))] + rng.uniform(-2.0, 2.0, 3)
        placed = replace(nodule, center=(float(pick[0]), float(pick[1]), float(pick[2])))
        if _fits(an, placed, offsets):
            return placed
    raise SynthError("could not place the nodule inside the lungs")


def _place_vessels(
    rng: np.random.Generator, an: Anatomy, nodule: Nodule, lung: FloatArray
) -> tuple[Vessel, ...]:
    h = an.lung_height
    vessels: list[Vessel] = []
    centres: list[FloatArray] = []
    picks = lung[rng.permutation(len(lung))[: _VESSELS * 6]]
    keep_away = nodule.reach(1) + 10.0
    for centre in picks:
        if len(vessels) == _VESSELS:
            break
        length = rng.uniform(4.0, 9.0)
        if np.linalg.norm(centre - np.asarray(nodule.center)) < keep_away + length:
            continue
        if centres and np.min(np.linalg.norm(np.asarray(centres) - centre, axis=1)) < 16.0:
            continue
        side = 1.0 if centre[0] > 0 else -1.0
        hilum = np.array([side * (an.gap + 5.0), 0.0, -0.45 * h])
        direction = centre - hilum + rng.normal(0.0, 8.0, 3)
        direction /= np.linalg.norm(direction)
        start, end = centre - direction * length / 2, centre + direction * length / 2
        ends = np.stack([start, end])
        if not np.all(lung_field(an, ends[:, 0], ends[:, 1], ends[:, 2])):
            continue
        centres.append(centre)
        vessels.append(
            Vessel(
                start=(float(start[0]), float(start[1]), float(start[2])),
                end=(float(end[0]), float(end[1]), float(end[2])),
                radius=float(rng.uniform(0.7, 1.2)),
            )
        )
    return tuple(vessels)


def sample_participant(rng: np.random.Generator, malignant: bool) -> Participant:
    """Draw one participant with the hidden label ``malignant``.

    Raises:
        SynthError: the nodule could not be placed (never seen in practice).
    """
    an = sample_anatomy(rng)
    interval = int(rng.integers(300, 501))
    lung = _lung_points(an, 4.0)
    nodule = _place_nodule(rng, an, sample_nodule(rng, malignant, interval), lung)
    vessels = _place_vessels(rng, an, nodule, lung)
    emphysema = SmoothField.random(rng, lo=_FIELD_LO, hi=_FIELD_HI, step=4.0, sigma_mm=4.5)
    level = SmoothField.random(rng, lo=_FIELD_LO, hi=_FIELD_HI, step=8.0, sigma_mm=10.0)
    texture = SmoothField.random(rng, lo=_FIELD_LO, hi=_FIELD_HI, step=8.0, sigma_mm=8.0)
    upper = float(rng.uniform(0.0, 1.2))
    targets = _emphysema_targets(rng)
    probe = Participant(
        anatomy=an, nodule=nodule, vessels=vessels, emphysema=emphysema,
        emphysema_level=level, texture=texture, upper_weight=upper,
        emphysema_threshold=(np.inf, np.inf), interval_days=interval,
        apex_depth=(0.0, 0.0), shift_xy=((0.0, 0.0), (0.0, 0.0)),
    )  # fmt: skip
    score = probe.emphysema_score(lung[:, 0], lung[:, 1], lung[:, 2])
    thresholds = tuple(
        float(np.quantile(score, 1.0 - t)) if t > 0 else float("inf") for t in targets
    )
    return replace(
        probe,
        emphysema_threshold=(thresholds[0], thresholds[1]),
        apex_depth=(float(rng.uniform(18.0, 26.0)), float(rng.uniform(18.0, 26.0))),
        shift_xy=(
            (float(rng.uniform(-5.0, 5.0)), float(rng.uniform(-5.0, 5.0))),
            (float(rng.uniform(-5.0, 5.0)), float(rng.uniform(-5.0, 5.0))),
        ),
    )
