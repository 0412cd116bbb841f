"""Render one participant at one time point on a CT voxel grid, and measure its truth.

The volume is produced in slabs of slices (bounded memory in full mode). The truth is
measured on exactly the values that are written: the nodule volume is its voxel count times
the voxel volume, and LAV950 is the share of lung-mask voxels whose final HU is below -950.

Example::

    >>> import numpy as np
    >>> from workbench.synth.participant import sample_participant
    >>> p = sample_participant(np.random.default_rng(0), malignant=True)
    >>> grid = Grid.centred(rows=96, cols=96, pixel_spacing=3.6, thickness=5.0, z_top=-30.0,
    ...                     extent_mm=240.0, ascending=False)
    >>> r = Renderer(p, 0, grid, noise_sd=18.0, rng=np.random.default_rng(1))
    >>> slices = sum(slab.shape[0] for slab in r.slabs())
    >>> slices == len(grid.z) and r.truth().nodule_volume_mm3 > 0
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from workbench.errors import SynthError
from workbench.synth.anatomy import HU_SOFT, render
from workbench.synth.participant import Participant

FloatArray = NDArray[np.float64]
Spacing = tuple[float, float, float]
FractionFn = Callable[[FloatArray, FloatArray, FloatArray, Spacing], FloatArray]

HU_MIN = -1024
HU_MAX = 3071
LAV_THRESHOLD_HU = -950
EMPHYSEMA_HU = (-990.0, -970.0)
TEXTURE_HU = 6.0
VESSEL_MAX_SPACING_MM = 2.5
_SLAB_VOXELS = 2_000_000


def _round(value: float) -> float:
    """Round a coordinate to what is written in the header (4 decimals)."""
    return round(value, 4) + 0.0


@dataclass(frozen=True)
class Grid:
    """The voxel grid of one series, in patient coordinates (LPS, mm)."""

    rows: int
    cols: int
    pixel_spacing: float
    thickness: float
    x0: float
    y0: float
    z: tuple[float, ...]

    @classmethod
    def centred(
        cls,
        *,
        rows: int,
        cols: int,
        pixel_spacing: float,
        thickness: float,
        z_top: float,
        extent_mm: float,
        ascending: bool,
    ) -> Grid:
        """A grid centred on the scanner axis, from ``z_top`` down over ``extent_mm``.

        ``ascending`` orders the slices from feet to head (the file order), as a
        caudo-cranial acquisition would.
        """
        count = max(1, round(extent_mm / thickness))
        z = [_round(z_top - i * thickness) for i in range(count)]
        if ascending:
            z.reverse()
        return cls(
            rows=rows,
            cols=cols,
            pixel_spacing=pixel_spacing,
            thickness=thickness,
            x0=_round(-(cols - 1) / 2 * pixel_spacing),
            y0=_round(-(rows - 1) / 2 * pixel_spacing),
            z=tuple(z),
        )

    @property
    def voxel_mm3(self) -> float:
        """Volume of one voxel."""
        return self.pixel_spacing * self.pixel_spacing * self.thickness

    @property
    def top(self) -> float:
        """The most superior slice position."""
        return max(self.z)


@dataclass(frozen=True)
class Slab:
    """Consecutive slices as written (HU) with the truth masks behind them."""

    hu: NDArray[np.int16]
    lung: NDArray[np.bool_]  # the lung mask of LAV950: parenchyma, no vessel, no nodule
    nodule: NDArray[np.bool_]


@dataclass(frozen=True)
class Truth:
    """What the reference standard records for one series."""

    nodule_voxels: int
    nodule_volume_mm3: float
    lung_voxels: int
    low_attenuation_voxels: int

    @property
    def lav950_percent(self) -> float:
        """Percentage of lung voxels below -950 HU."""
        return 100.0 * self.low_attenuation_voxels / self.lung_voxels if self.lung_voxels else 0.0


class Renderer:
    """Renders a participant at a time point slab by slab and accumulates the truth."""

    def __init__(
        self,
        participant: Participant,
        timepoint: int,
        grid: Grid,
        *,
        noise_sd: float,
        rng: np.random.Generator,
    ) -> None:
        self._p = participant
        self._tp = timepoint
        self._grid = grid
        self._noise_sd = noise_sd
        self._rng = rng
        ox, oy = participant.shift_xy[timepoint]
        self._offset = (ox, oy, grid.top - participant.apex_depth[timepoint])
        self._x: FloatArray = (
            grid.x0 + np.arange(grid.cols, dtype=np.float64) * grid.pixel_spacing - ox
        )
        self._y: FloatArray = (
            grid.y0 + np.arange(grid.rows, dtype=np.float64) * grid.pixel_spacing - oy
        )
        self._z: FloatArray = np.asarray(grid.z, dtype=np.float64) - self._offset[2]
        self._centre = self._snapped_centre()
        self._counts = [0, 0, 0]
        self._done = 0

    def _snapped_centre(self) -> tuple[float, float, float]:
        """The nodule centre moved to the nearest voxel centre, so it is never lost."""
        cx, cy, cz = self._p.nodule.center
        ix = int(np.argmin(np.abs(self._x - cx)))
        iy = int(np.argmin(np.abs(self._y - cy)))
        iz = int(np.argmin(np.abs(self._z - cz)))
        return float(self._x[ix]), float(self._y[iy]), float(self._z[iz])

    def slabs(self) -> Iterator[NDArray[np.int16]]:
        """HU slabs ``(slices, rows, cols)`` as int16, in the grid's (file) order."""
        for slab in self.layers():
            yield slab.hu

    def layers(self) -> Iterator[Slab]:
        """Slabs with their lung and nodule masks, in the grid's (file) order."""
        g = self._grid
        step = max(1, _SLAB_VOXELS // (g.rows * g.cols))
        for start in range(0, len(g.z), step):
            yield self._slab(start, min(len(g.z), start + step))

    def truth(self) -> Truth:
        """The truth of the whole series; only valid once every slab has been rendered."""
        if self._done != len(self._grid.z):
            raise SynthError("the series has not been rendered completely")
        nodule, lung, low = self._counts
        return Truth(
            nodule_voxels=nodule,
            nodule_volume_mm3=nodule * self._grid.voxel_mm3,
            lung_voxels=lung,
            low_attenuation_voxels=low,
        )

    def _slab(self, start: int, stop: int) -> Slab:
        p, g = self._p, self._grid
        x = self._x[None, None, :]
        y = self._y[None, :, None]
        zs = self._z[start:stop]
        hu, lung = render(p.anatomy, x, y, zs[:, None, None])
        iz, iy, ix = np.nonzero(lung)
        lx, ly, lz = self._x[ix], self._y[iy], zs[iz]
        emphysema = p.emphysema_score(lx, ly, lz) > p.emphysema_threshold[self._tp]
        level = p.emphysema_level.sample(lx, ly, lz)
        lo, hi = EMPHYSEMA_HU
        emph_hu = lo + (hi - lo) * np.clip(0.5 + level / 4.0, 0.0, 1.0)
        texture = TEXTURE_HU * p.texture.sample(lx, ly, lz)
        hu[iz, iy, ix] = np.where(emphysema, emph_hu, hu[iz, iy, ix] + texture)
        spacing: Spacing = (g.pixel_spacing, g.pixel_spacing, g.thickness)
        dense = np.zeros(hu.shape, dtype=bool)
        # Vessels are thinner than a coarse voxel: they are drawn on fine grids only, so
        # that on a coarse grid no stray vessel voxel can outsize a small nodule.
        vessels = p.vessels if max(spacing) <= VESSEL_MAX_SPACING_MM else ()
        for vessel in vessels:
            lo_pt = np.minimum(vessel.start, vessel.end) - vessel.radius
            hi_pt = np.maximum(vessel.start, vessel.end) + vessel.radius
            self._stamp(dense, zs, spacing, lo_pt, hi_pt, vessel.fraction)
        dense &= lung
        hu[dense] = HU_SOFT
        nodule = np.zeros(hu.shape, dtype=bool)
        reach = p.nodule.reach(self._tp)
        c = np.asarray(self._centre)
        self._stamp(
            nodule,
            zs,
            spacing,
            c - reach,
            c + reach,
            lambda xs, ys, zz, sp: p.nodule.fraction(xs, ys, zz, sp, self._tp, self._centre),
        )
        if np.any(nodule & ~lung):
            raise SynthError("the nodule left the lung field")
        hu[nodule] = p.nodule.hu
        noise = self._rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(self._noise_sd)
        out = np.clip(np.rint(hu + noise), HU_MIN, HU_MAX).astype(np.int16)
        mask = lung & ~dense & ~nodule
        self._counts[0] += int(np.count_nonzero(nodule))
        self._counts[1] += int(np.count_nonzero(mask))
        self._counts[2] += int(np.count_nonzero(mask & (out < LAV_THRESHOLD_HU)))
        self._done += stop - start
        return Slab(hu=out, lung=mask, nodule=nodule)

    def _stamp(
        self,
        target: NDArray[np.bool_],
        zs: FloatArray,
        spacing: Spacing,
        lo_pt: FloatArray,
        hi_pt: FloatArray,
        fraction: FractionFn,
    ) -> None:
        """Set the voxels of ``target`` that a shape covers by at least half."""
        sel = []
        for axis_values, lo_v, hi_v, pad in zip(
            (self._x, self._y, zs), lo_pt, hi_pt, spacing, strict=True
        ):
            idx = np.nonzero((axis_values >= lo_v - pad) & (axis_values <= hi_v + pad))[0]
            if idx.size == 0:
                return
            sel.append(slice(int(idx.min()), int(idx.max()) + 1))
        sx, sy, sz = sel
        covered = fraction(self._x[sx], self._y[sy], zs[sz], spacing) >= 0.5
        target[sz, sy, sx] |= covered
