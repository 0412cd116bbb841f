"""A parametric chest: body, fat, lungs, mediastinum, heart, aorta, trachea, spine and ribs.

Everything is expressed in the participant's own frame, in millimetres: ``x`` towards the
patient's left, ``y`` towards the back (posterior), ``z`` towards the head, with ``z = 0`` at
the lung apices and the lowest point of the lungs at ``z = -lung_height``. The functions take
arrays that broadcast together (typically ``z`` of shape ``(k, 1, 1)``, ``y`` of ``(1, n, 1)``
and ``x`` of ``(1, 1, m)``) and return arrays of the broadcast shape.

Noise-free HU of each structure (see ``docs/synthetic-cohort.md``):

====================  ===========
outside air, trachea  -1000
subcutaneous fat      -100
soft tissue           40 (muscle, mediastinum, heart, aorta, abdomen); liver 55
spinal canal          20
intervertebral disc   90
bone                  rib 650, sternum 500, cancellous vertebra 450, cortex/arch 900/700
lung parenchyma       ``parenchyma_hu`` (-865..-835) + a posterior gradient
====================  ===========
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float32]
BoolArray = NDArray[np.bool_]
Coord = NDArray[np.floating[Any]] | float

HU_AIR = -1000.0
HU_FAT = -100.0
HU_SOFT = 40.0
HU_LIVER = 55.0
HU_CANAL = 20.0
HU_DISC = 90.0
HU_RIB = 650.0
HU_STERNUM = 500.0
HU_CANCELLOUS = 450.0
HU_CORTEX = 900.0
HU_ARCH = 700.0

# Chest wall between the fat layer and the lungs: ribs, intercostal muscle, pleura.
WALL_MM = 15.0
# Soft tissue kept between the lungs and the trachea, spine and aorta: wider than the
# diagonal of the coarsest voxel, so no lung voxel ever touches those structures.
CLEARANCE_MM = 12.0
# The torso is squarer than an ellipse.
TORSO_POWER = 2.4


@dataclass(frozen=True)
class Anatomy:
    """The fixed anatomy of one participant (millimetres, HU)."""

    body_a: float
    body_b: float
    fat: float
    lung_height: float
    gap: float
    dome_right: float
    dome_left: float
    heart: tuple[float, float, float, float, float, float]
    trachea_r: float
    carina_z: float
    spine_y: float
    rib_pitch: float
    rib_phase: float
    rib_slope: float
    rib_height: float
    rib_thickness: float
    disc_phase: float
    parenchyma_hu: float
    gradient_hu: float

    @property
    def core(self) -> tuple[float, float]:
        """Semi-axes of the ellipse the lungs must stay inside."""
        return self.body_a - self.fat - WALL_MM, self.body_b - self.fat - WALL_MM

    def lung_ellipse(self, side: int) -> tuple[float, float, float, float]:
        """Centre and semi-axes ``(cx, cy, ax, ay)`` of one lung (-1 right, +1 left)."""
        core_a, core_b = self.core
        cx = side * (self.gap + core_a) / 2.0
        ax = (core_a - self.gap) / 2.0 + 8.0
        return cx, 0.1 * core_b, ax, core_b + 6.0

    def diaphragm(self, side: int, x: Coord, y: Coord) -> NDArray[np.float64]:
        """Height of one dome of the diaphragm: highest medially, lowest at the recesses.

        The dome peaks against the mediastinum, so the lung base never wraps all the way
        round the dome in an axial slice (the dome is not an island inside the lung).
        """
        core_a, _ = self.core
        _, cy, _, ay = self.lung_ellipse(side)
        dome = self.dome_right if side < 0 else self.dome_left
        r2 = ((x - side * self.gap) / (core_a - self.gap)) ** 2 + ((y - cy) / ay) ** 2
        return np.asarray(-self.lung_height + dome * np.clip(1.0 - r2, 0.0, 1.0))

    @property
    def trachea_y(self) -> float:
        """The trachea's centre, in front of the oesophagus and the vertebral body."""
        return self.spine_y - 30.0 - self.trachea_r


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw a plausible adult chest."""
    body_a = rng.uniform(135.0, 158.0)
    body_b = rng.uniform(100.0, 118.0)
    fat = rng.uniform(6.0, 18.0)
    height = rng.uniform(175.0, 195.0)
    dome_right = rng.uniform(35.0, 55.0)
    core_b = body_b - fat - WALL_MM
    heart = (
        rng.uniform(12.0, 22.0),
        -rng.uniform(0.15, 0.3) * core_b,
        -rng.uniform(0.68, 0.76) * height,
        rng.uniform(52.0, 62.0),
        rng.uniform(42.0, 52.0),
        rng.uniform(45.0, 55.0),
    )
    pitch = rng.uniform(26.0, 32.0)
    return Anatomy(
        body_a=body_a,
        body_b=body_b,
        fat=fat,
        lung_height=height,
        gap=rng.uniform(24.0, 30.0),
        dome_right=dome_right,
        dome_left=dome_right - rng.uniform(5.0, 15.0),
        heart=heart,
        trachea_r=rng.uniform(7.0, 10.0),
        carina_z=-rng.uniform(55.0, 75.0),
        spine_y=body_b - fat - rng.uniform(56.0, 60.0),
        rib_pitch=pitch,
        rib_phase=rng.uniform(0.0, pitch),
        rib_slope=rng.uniform(15.0, 22.0),
        rib_height=rng.uniform(9.0, 12.0),
        rib_thickness=rng.uniform(7.0, 9.0),
        disc_phase=rng.uniform(0.0, 30.0),
        parenchyma_hu=rng.uniform(-865.0, -835.0),
        gradient_hu=rng.uniform(10.0, 30.0),
    )


def _ellipse(x: Coord, y: Coord, cx: float, cy: float, a: float, b: float) -> BoolArray:
    return np.asarray(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0)


def _torso(x: Coord, y: Coord, inset: float, a: float, b: float) -> BoolArray:
    """Inside the body outline shrunk by ``inset`` mm (a squarish super-ellipse)."""
    return np.asarray(
        np.abs(x / (a - inset)) ** TORSO_POWER + np.abs(y / (b - inset)) ** TORSO_POWER <= 1.0
    )


def _near_segment(
    x: Coord, y: Coord, p: tuple[float, float], q: tuple[float, float], r: float
) -> BoolArray:
    """Points within ``r`` of the 2-D segment ``p``-``q``."""
    dx, dy = q[0] - p[0], q[1] - p[1]
    t = np.clip(((x - p[0]) * dx + (y - p[1]) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.asarray((x - p[0] - t * dx) ** 2 + (y - p[1] - t * dy) ** 2 <= r * r)


def _aorta(an: Anatomy, x: Coord, y: Coord, z: Coord, grow: float) -> BoolArray:
    """Ascending aorta, arch and descending aorta, each widened by ``grow`` mm."""
    _, hy, hz, _, _, haz = an.heart
    arch_z = an.carina_z + 15.0
    ascending_c = (-4.0, hy + 8.0)
    descending_c = (22.0, an.spine_y - 22.0)
    ascending = (
        ((x - ascending_c[0]) ** 2 + (y - ascending_c[1]) ** 2 <= (14.0 + grow) ** 2)
        & (z < arch_z)
        & (z > hz + 0.5 * haz)
    )
    descending = ((x - descending_c[0]) ** 2 + (y - descending_c[1]) ** 2 <= (12.0 + grow) ** 2) & (
        z < arch_z
    )
    arch = _near_segment(x, y, ascending_c, descending_c, 13.0 + grow) & (
        np.abs(z - arch_z) <= 8.0 + grow
    )
    return np.asarray(ascending | descending | arch)


def _heart(an: Anatomy, x: Coord, y: Coord, z: Coord, grow: float) -> BoolArray:
    hx, hy, hz, ax, ay, az = an.heart
    return np.asarray(
        ((x - hx) / (ax + grow)) ** 2
        + ((y - hy) / (ay + grow)) ** 2
        + ((z - hz) / (az + grow)) ** 2
        <= 1.0
    )


def lung_field(an: Anatomy, x: Coord, y: Coord, z: Coord) -> BoolArray:
    """Where the lungs are (parenchyma, before nodule and vessels are carved out)."""
    h = an.lung_height
    u = np.clip(-np.asarray(z, dtype=np.float64) / h, 0.0, 1.0)
    # The apex is rounded: the cross-section reaches full size 40% of the way down.
    taper = 1.0 - (1.0 - np.minimum(u / 0.4, 1.0)) ** 2
    in_range = (np.asarray(z) < 0.0) & (np.asarray(z) > -h)
    lungs = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), dtype=bool)
    for side in (-1, 1):
        cx, cy, ax, ay = an.lung_ellipse(side)
        r2 = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2
        lungs |= (r2 <= taper) & (z > an.diaphragm(side, x, y)) & (side * np.asarray(x) > an.gap)
    lungs &= in_range & _torso(x, y, an.fat + WALL_MM, an.body_a, an.body_b)
    lungs &= ~_heart(an, x, y, z, 6.0)
    lungs &= ~_aorta(an, x, y, z, CLEARANCE_MM - 2.0)
    lungs &= ~_ellipse(x, y, 0.0, an.spine_y + 8.0, 42.0, 36.0)
    trachea_zone = (np.asarray(z) > an.carina_z - CLEARANCE_MM) & (
        x**2 + (y - an.trachea_y) ** 2 <= (an.trachea_r + CLEARANCE_MM) ** 2
    )
    lungs &= ~trachea_zone
    return lungs


def _paint(hu: FloatArray, mask: BoolArray, value: float | FloatArray) -> None:
    np.copyto(hu, value, where=np.broadcast_to(mask, hu.shape), casting="unsafe")


def render(an: Anatomy, x: Coord, y: Coord, z: Coord) -> tuple[FloatArray, BoolArray]:
    """Noise-free HU of the static anatomy and the lung field, over a slab of voxels.

    Lung voxels hold the plain parenchyma value (with its gravity gradient); emphysema,
    texture, vessels, the nodule and noise are added by :mod:`workbench.synth.phantom`.
    """
    shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
    hu = np.full(shape, HU_AIR, dtype=np.float32)
    a, b, fat = an.body_a, an.body_b, an.fat
    _paint(hu, _torso(x, y, 0.0, a, b), HU_FAT)
    _paint(hu, _torso(x, y, fat, a, b), HU_SOFT)
    h = an.lung_height
    # The liver fills the abdomen under the right dome of the diaphragm.
    liver = (
        (z < an.diaphragm(-1, x, y) - 3.0) & _torso(x, y, fat + 10.0, a, b) & (np.asarray(x) < 40.0)
    )
    _paint(hu, liver, HU_LIVER)
    _paint(hu, _heart(an, x, y, z, 0.0), HU_SOFT)
    _paint(hu, _aorta(an, x, y, z, 0.0), HU_SOFT)
    _paint_ribs(an, hu, x, y, z)
    sternum = (
        _ellipse(x, y, 0.0, -(b - fat - 8.0), 13.0, 5.0)
        & (np.asarray(z) > -0.8 * h)
        & (np.asarray(z) < 5.0)
    )
    _paint(hu, sternum, HU_STERNUM)
    _paint_spine(an, hu, x, y, z)
    lungs = lung_field(an, x, y, z)
    parenchyma = (an.parenchyma_hu + an.gradient_hu * np.asarray(y) / b).astype(np.float32)
    _paint(hu, lungs, np.broadcast_to(parenchyma, shape))
    trachea = (np.asarray(z) > an.carina_z) & (x**2 + (y - an.trachea_y) ** 2 <= an.trachea_r**2)
    _paint(hu, trachea, HU_AIR)
    return hu, lungs


def _paint_ribs(an: Anatomy, hu: FloatArray, x: Coord, y: Coord, z: Coord) -> None:
    a, b, fat, t = an.body_a, an.body_b, an.fat, an.rib_thickness
    ring = _torso(x, y, fat + 1.0, a, b) & ~_torso(x, y, fat + 1.0 + t, a, b)
    # Angle from the back: 0 at the spine, pi at the sternum. Ribs slope down to the front.
    phi = np.abs(np.arctan2(x, y))
    band = np.mod(z + an.rib_slope * phi - an.rib_phase, an.rib_pitch) < an.rib_height
    arc = (phi > 0.14 * np.pi) & (phi < 0.8 * np.pi)
    zone = (np.asarray(z) < 20.0) & (np.asarray(z) > -an.lung_height - 30.0)
    _paint(hu, ring & arc & band & zone, HU_RIB)


def _paint_spine(an: Anatomy, hu: FloatArray, x: Coord, y: Coord, z: Coord) -> None:
    sy = an.spine_y
    disc = np.asarray(np.mod(np.asarray(z) - an.disc_phase, 30.0) < 6.0)
    r2 = x**2 + (y - sy) ** 2
    body = r2 <= 16.0**2
    _paint(hu, body & ~disc, HU_CORTEX)
    _paint(hu, (r2 <= 12.0**2) & ~disc, HU_CANCELLOUS)
    _paint(hu, body & disc, HU_DISC)
    c2 = x**2 + (y - sy - 26.0) ** 2
    arch = (c2 <= 13.0**2) & (np.asarray(y) > sy + 16.0)
    spinous = (
        (np.abs(np.asarray(x)) < 4.0) & (np.asarray(y) > sy + 36.0) & (np.asarray(y) < sy + 50.0)
    )
    transverse = (
        (np.abs(np.asarray(y) - sy - 24.0) < 4.0)
        & (np.abs(np.asarray(x)) > 10.0)
        & (np.abs(np.asarray(x)) < 30.0)
        & ~disc
    )
    _paint(hu, arch | spinous | transverse, HU_ARCH)
    _paint(hu, np.asarray(c2 <= 8.0**2), HU_CANAL)
