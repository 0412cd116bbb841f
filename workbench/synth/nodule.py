"""The solid lung nodule: its hidden label, its shape, its growth and its voxelisation.

A nodule is a star-shaped solid: a sphere whose radius in direction ``u`` is modulated by
``g(u) = 1 + sum_j a_j * max(u . v_j, 0) ** k_j`` (broad lobes, and for some malignant
nodules narrow spicules), stretched along one axis and rotated. Its radius is normalised so
that its volume at baseline is that of a sphere of ``diameter_mm``. The follow-up nodule is
the same shape scaled by ``growth ** (1/3)`` about the same centre.

The label shifts every distribution, with overlap (see ``docs/synthetic-cohort.md``):

==============  =================================  ===================================
                benign                             malignant
==============  =================================  ===================================
diameter        lognormal, median 9 mm, 7-16       lognormal, median 11 mm, 7-24
growth          stable: exp(N(0, 0.08)); 18% grow  volume doubling time lognormal(sd 0.85),
                exp(N(0.3, 0.18))                  median 500 d, clipped 180-5000 d
shape           round: 0-2 faint lobes, <= 1.12    1.0-1.35 elongation, 3-6 lobes of
                elongation                         0.12-0.35, spicules in 60%
==============  =================================  ===================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

BoolArray = NDArray[np.bool_]
FloatArray = NDArray[np.float64]

MALIGNANT_FRACTION = 0.35
MIN_DIAMETER_MM = 7.0


@dataclass(frozen=True)
class Nodule:
    """One participant's nodule, in the participant frame (see :mod:`.anatomy`)."""

    malignant: bool
    diameter_mm: float
    growth: float
    hu: float
    center: tuple[float, float, float]
    axes: tuple[float, float, float]
    rotation: tuple[tuple[float, ...], ...]
    lobes: tuple[tuple[float, float, float, float, float], ...]
    base_radius: float
    peak: float

    def scale(self, timepoint: int) -> float:
        """Linear size of the nodule at ``timepoint`` (0 baseline, 1 follow-up)."""
        return 1.0 if timepoint == 0 else float(self.growth ** (1.0 / 3.0))

    def reach(self, timepoint: int) -> float:
        """An upper bound of the distance from the centre to the surface (mm)."""
        return self.scale(timepoint) * self.base_radius * self.peak * max(self.axes) * 1.03

    def inside(
        self,
        x: NDArray[np.float64],
        y: NDArray[np.float64],
        z: NDArray[np.float64],
        timepoint: int,
        center: tuple[float, float, float] | None = None,
    ) -> BoolArray:
        """Whether the points (broadcast together) lie inside the nodule at ``timepoint``."""
        cx, cy, cz = self.center if center is None else center
        d = np.stack(np.broadcast_arrays(x - cx, y - cy, z - cz), axis=-1)
        p = (d @ np.asarray(self.rotation)) / np.asarray(self.axes)
        rho = np.sqrt(np.sum(p * p, axis=-1))
        u = p / np.maximum(rho, 1e-9)[..., None]
        radius = self.scale(timepoint) * self.base_radius * _modulation(u, self.lobes)
        return np.asarray(rho <= radius)

    def fraction(
        self,
        xs: FloatArray,
        ys: FloatArray,
        zs: FloatArray,
        spacing: tuple[float, float, float],
        timepoint: int,
        center: tuple[float, float, float] | None = None,
    ) -> FloatArray:
        """Fraction of each voxel (centres ``zs`` x ``ys`` x ``xs``) covered by the nodule."""
        return coverage(
            lambda x, y, z: self.inside(x, y, z, timepoint, center), xs, ys, zs, spacing
        )


Inside = Callable[[FloatArray, FloatArray, FloatArray], BoolArray]


def coverage(
    inside: Inside,
    xs: FloatArray,
    ys: FloatArray,
    zs: FloatArray,
    spacing: tuple[float, float, float],
) -> FloatArray:
    """Fraction of each voxel (centres ``zs`` x ``ys`` x ``xs``) where ``inside`` holds.

    Each voxel is supersampled on a regular sub-grid of about 1 mm (at most 5 per axis), so
    coarse voxels are filled by volume rather than by their centre alone.
    """
    sub = [max(1, min(5, int(np.ceil(s / 1.0)))) for s in spacing]
    fine = [
        (c[:, None] + ((np.arange(n) + 0.5) / n - 0.5)[None, :] * s).ravel()
        for c, n, s in zip((xs, ys, zs), sub, spacing, strict=True)
    ]
    hit = inside(fine[0][None, None, :], fine[1][None, :, None], fine[2][:, None, None])
    hit = np.broadcast_to(hit, (fine[2].size, fine[1].size, fine[0].size))
    blocks = hit.reshape(zs.size, sub[2], ys.size, sub[1], xs.size, sub[0])
    out: FloatArray = blocks.mean(axis=(1, 3, 5))
    return out


def _modulation(
    u: NDArray[np.float64], lobes: tuple[tuple[float, float, float, float, float], ...]
) -> NDArray[np.float64]:
    g = np.ones(u.shape[:-1])
    for vx, vy, vz, amplitude, sharpness in lobes:
        cos = u[..., 0] * vx + u[..., 1] * vy + u[..., 2] * vz
        g += amplitude * np.maximum(cos, 0.0) ** sharpness
    return g


def _unit(rng: np.random.Generator, n: int) -> NDArray[np.float64]:
    v = rng.standard_normal((n, 3))
    out: NDArray[np.float64] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def sample_nodule(rng: np.random.Generator, malignant: bool, interval_days: int) -> Nodule:
    """Draw a nodule for a participant with the hidden label ``malignant``.

    ``interval_days`` is the time from baseline to follow-up, which sets how much a
    malignant nodule grows. The centre is left at the origin; :mod:`.participant` places it.
    """
    lobes: list[tuple[float, float, float, float, float]] = []
    if malignant:
        diameter = float(np.clip(rng.lognormal(np.log(11.0), 0.3), MIN_DIAMETER_MM, 24.0))
        doubling = float(np.clip(rng.lognormal(np.log(500.0), 0.85), 180.0, 5000.0))
        growth = float(2.0 ** (interval_days / doubling))
        elongation = rng.uniform(1.0, 1.35)
        for v in _unit(rng, int(rng.integers(3, 7))):
            lobes.append((*v, rng.uniform(0.12, 0.35), rng.uniform(2.0, 5.0)))
        if rng.random() < 0.6:
            for v in _unit(rng, int(rng.integers(3, 9))):
                lobes.append((*v, rng.uniform(0.25, 0.45), 40.0))
    else:
        diameter = float(np.clip(rng.lognormal(np.log(9.0), 0.25), MIN_DIAMETER_MM, 16.0))
        if rng.random() < 0.18:
            growth = float(np.exp(rng.normal(0.3, 0.18)))
        else:
            growth = float(np.exp(rng.normal(0.0, 0.08)))
        elongation = rng.uniform(1.0, 1.12)
        for v in _unit(rng, int(rng.integers(0, 3))):
            lobes.append((*v, rng.uniform(0.0, 0.08), 2.0))
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    rotation = q * np.sign(np.diag(r))
    axes = (elongation, elongation**-0.5, elongation**-0.5)
    # Normalise the radius so the volume is that of the equivalent sphere, and find the
    # largest radial factor (the lobe and spicule tips are included in the directions).
    tips = np.asarray([lobe[:3] for lobe in lobes], dtype=np.float64).reshape(-1, 3)
    directions = np.concatenate([_unit(rng, 4000), tips])
    modulation = _modulation(directions, tuple(lobes))
    mean_cube = float(np.mean(modulation[:4000] ** 3))
    return Nodule(
        malignant=malignant,
        diameter_mm=diameter,
        growth=growth,
        hu=rng.uniform(30.0, 60.0),
        center=(0.0, 0.0, 0.0),
        axes=axes,
        rotation=tuple(tuple(float(c) for c in row) for row in rotation),
        lobes=tuple(lobes),
        base_radius=diameter / 2.0 / mean_cube ** (1.0 / 3.0),
        peak=float(modulation.max()),
    )
