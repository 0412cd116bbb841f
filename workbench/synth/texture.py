"""Smooth random fields in millimetre space, sampled at any voxel grid.

The emphysema clusters and the slow drift of parenchyma density come from these fields. A
field is drawn once per participant on a coarse physical grid, so the same participant has
the same clusters whatever the resolution it is rendered at (small or full mode).

Example::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> f = SmoothField.random(rng, lo=(-50, -50, -50), hi=(50, 50, 50), step=5, sigma_mm=8)
    >>> f.sample(np.zeros(3), np.zeros(3), np.array([-10.0, 0.0, 10.0])).shape
    (3,)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float32]


@dataclass(frozen=True)
class SmoothField:
    """A zero-mean, unit-variance Gaussian random field on a regular grid (z, y, x order)."""

    values: FloatArray
    origin: tuple[float, float, float]  # x, y, z of values[0, 0, 0] in mm
    step: float

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        *,
        lo: tuple[float, float, float],
        hi: tuple[float, float, float],
        step: float,
        sigma_mm: float,
    ) -> SmoothField:
        """Draw white noise on the box ``lo``..``hi`` (x, y, z in mm) and smooth it.

        The smoothing is a Gaussian of ``sigma_mm`` applied in the Fourier domain (the field
        wraps around at the box edges, which is harmless: only the box interior is used).
        """
        shape = tuple(int(np.ceil((h - lo_) / step)) + 1 for lo_, h in zip(lo, hi, strict=True))
        nx, ny, nz = shape
        white = rng.standard_normal((nz, ny, nx))
        spectrum = np.fft.rfftn(white)
        sigma = sigma_mm / step
        fz = np.fft.fftfreq(nz)[:, None, None]
        fy = np.fft.fftfreq(ny)[None, :, None]
        fx = np.fft.rfftfreq(nx)[None, None, :]
        spectrum *= np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx**2 + fy**2 + fz**2))
        smooth = np.fft.irfftn(spectrum, s=(nz, ny, nx), axes=(0, 1, 2))
        smooth -= smooth.mean()
        std = float(smooth.std())
        if std > 0:
            smooth /= std
        return cls(values=smooth.astype(np.float32), origin=lo, step=float(step))

    def sample(self, x: ArrayLike, y: ArrayLike, z: ArrayLike) -> FloatArray:
        """Trilinear value at the points ``x``, ``y``, ``z`` (mm; broadcast together).

        Points outside the grid take the value of the nearest edge.
        """
        xs, ys, zs = np.broadcast_arrays(
            np.asarray(x, dtype=np.float64),
            np.asarray(y, dtype=np.float64),
            np.asarray(z, dtype=np.float64),
        )
        nz, ny, nx = self.values.shape
        fx = np.clip((xs - self.origin[0]) / self.step, 0.0, nx - 1.000001)
        fy = np.clip((ys - self.origin[1]) / self.step, 0.0, ny - 1.000001)
        fz = np.clip((zs - self.origin[2]) / self.step, 0.0, nz - 1.000001)
        ix = fx.astype(np.intp)
        iy = fy.astype(np.intp)
        iz = fz.astype(np.intp)
        tx = (fx - ix).astype(np.float32)
        ty = (fy - iy).astype(np.float32)
        tz = (fz - iz).astype(np.float32)
        v = self.values
        c00 = v[iz, iy, ix] * (1 - tx) + v[iz, iy, ix + 1] * tx
        c01 = v[iz, iy + 1, ix] * (1 - tx) + v[iz, iy + 1, ix + 1] * tx
        c10 = v[iz + 1, iy, ix] * (1 - tx) + v[iz + 1, iy, ix + 1] * tx
        c11 = v[iz + 1, iy + 1, ix] * (1 - tx) + v[iz + 1, iy + 1, ix + 1] * tx
        c0 = c00 * (1 - ty) + c01 * ty
        c1 = c10 * (1 - ty) + c11 * ty
        out: FloatArray = (c0 * (1 - tz) + c1 * tz).astype(np.float32)
        return out
