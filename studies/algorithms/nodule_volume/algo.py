"""nodule-volume: the largest lung nodule's volume per time point and a malignancy score.

Method, per time point (the CT series with the most instances):

1. Lungs by ``elic_io.lung_mask``.
2. Nodule candidates are the *holes* of the lung mask: connected pieces of non-lung (tissue
   at -400 HU or above) touching no face of the volume, hence enclosed by lung. The largest
   of at least ``min_volume_mm3`` (default 30 mm³) is the nodule.
3. Volume by partial volume: each voxel of the nodule and of the lung touching it counts
   by its share of nodule, ``(HU - lung) / (solid - lung)`` clipped to [0, 1], with ``lung``
   and ``solid`` the median HU around and inside the nodule; shares within two noise SDs
   of zero count as zero, so the rim's noise adds no bias. Counting voxels above a
   threshold instead would make small nodules, whose edge voxels are mostly less than half
   filled, come out too small at coarse resolution.
4. Shape, from the share-weighted second moments (see ``shape`` for the voxel extent):
   ``elongation`` is the ratio of the longest to the shortest axis of the moment-equivalent
   ellipsoid (1 for a sphere); ``compactness`` is the volume over that ellipsoid's volume
   (1 for any solid ellipsoid, lower for lobulated or spiculated outlines), divided by what
   a sphere of the same volume sampled on the same grid reads (coarse voxels make anything
   look boxy), and ``irregularity = clip(1 - compactness, 0, 1)``. These are the
   ``Elongation`` and sphericity-like features of the usual radiomics shape set.

Across time points: ``growth_per_year`` is the change of ln(volume) per year between the
first and last time point (new nodule: +4, vanished nodule: -1, one time point or no dates:
0 in the formula, null in the output), and the volume doubling time is
``365 ln 2 / growth_per_year`` days.

The malignancy score is a fixed logistic formula whose coefficients were set a priori from
clinical rules of thumb (bigger, growing with a doubling time under ~400 days, elongated or
irregular nodules are more often malignant); nothing is trained at run time::

    logit = -2.0 + 3.0 * ln(diameter_mm / 10) + 1.5 * growth_per_year
            + 2.5 * (elongation - 1) + 4.0 * irregularity
    malignancy_score = 1 / (1 + exp(-logit))

``diameter_mm`` is the baseline equivalent-sphere diameter; elongation and irregularity are
averaged over the time points with a nodule. A round, stable 10 mm nodule scores 0.12, a
20 mm one 0.52, and a doubling time of 200 days adds about 1.9 to the logit. With no
nodule at any time point the score is 0 and every feature is null.

Output (``output.schema.json``)::

    {"nodule_found": true, "nodule_volume_mm3": 523.6, "malignancy_score": 0.31,
     "timepoints": [{"index": 0, "nodule_volume_mm3": 523.6, "diameter_mm": 10.0}, ...],
     "features": {"diameter_mm": 10.0, "growth_per_year": 0.4,
                  "volume_doubling_time_days": 632.5, "elongation": 1.1,
                  "compactness": 0.95, "irregularity": 0.05, "logit": -0.9}}

Runs as ``python3 /opt/elic/algo.py`` with ``elic_io.py`` beside it.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Dict, List, Optional, Tuple

import elic_io
import numpy as np

DEFAULTS = {"min_volume_mm3": 30.0}

# The fixed logistic model (see the module docstring).
INTERCEPT = -2.0
W_LOG_DIAMETER = 3.0
W_GROWTH = 1.5
W_ELONGATION = 2.5
W_IRREGULARITY = 4.0
REFERENCE_DIAMETER_MM = 10.0
GROWTH_NEW = 4.0
GROWTH_GONE = -1.0
# Assumed HU of solid nodule tissue and of lung, when a nodule is too small to measure them.
SOLID_HU = 40.0
PARENCHYMA_HU = -850.0
# Shares below this many noise SDs (of the lung around the nodule) are taken as zero.
NOISE_FLOOR = 2.0
# A voxel with at least this share of nodule counts as full (a whole box) in the moments.
FULL_SHARE = 0.9

FEATURES = (
    "diameter_mm",
    "growth_per_year",
    "volume_doubling_time_days",
    "elongation",
    "compactness",
    "irregularity",
    "logit",
)


def nodule_mask(volume: elic_io.Volume, lung: np.ndarray, min_volume_mm3: float) -> np.ndarray:
    """The largest hole of ``lung`` of at least ``min_volume_mm3``; empty if there is none."""
    labels, sizes = elic_io.label(~lung)
    sizes = sizes.copy()
    sizes[elic_io.border_labels(labels, axes=(0, 1, 2))] = 0
    sizes[0] = 0
    best = int(np.argmax(sizes))
    if sizes[best] == 0 or sizes[best] * volume.voxel_mm3 < min_volume_mm3:
        return np.zeros(lung.shape, dtype=bool)
    return labels == best


def shape(indices: np.ndarray, weights: np.ndarray, spacing: Any) -> Tuple[float, float]:
    """``(compactness, elongation)`` of voxels ``indices`` (``(3, N)``) weighted by share.

    Moments are taken in mm about the share-weighted centre. A voxel's own extent adds
    ``spacing² / 12`` per axis: a (nearly) full voxel is a full box and adds it; a partial
    voxel's content sits on its inner side, and the net effect of those is to take it off
    (Sheppard's correction for grouped data). So a binary voxelised shape is treated as
    its union of boxes and a partial-volume one as the smooth shape it samples. Each
    axis' variance is kept at least ``(smallest spacing / 4)²``. A voxelised sphere scores
    about (1, 1) when resolved by many voxels, and a compactness of 0.7-0.9 when only 2-3
    voxels across.
    """
    steps = np.asarray(spacing, dtype=np.float64)
    points = np.asarray(indices, dtype=np.float64) * steps[:, np.newaxis]
    w = np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    centred = points - (points @ w / total)[:, np.newaxis]
    extent = float(np.sum(np.where(w >= FULL_SHARE, w, -w))) / total
    cov = (centred * w) @ centred.T / total + extent * np.diag(steps**2 / 12.0)
    axes = np.maximum(np.linalg.eigvalsh(cov), (steps.min() / 4.0) ** 2)
    ellipsoid = 4.0 / 3.0 * math.pi * math.sqrt(125.0 * float(np.prod(axes)))
    return float(total * np.prod(steps) / ellipsoid), float(np.sqrt(axes[-1] / axes[0]))


def measure(volume: elic_io.Volume, min_volume_mm3: float) -> Dict[str, Any]:
    """Nodule volume (mm³), equivalent diameter (mm) and shape at one time point."""
    lung = elic_io.lung_mask(volume)
    if not lung.any():
        raise elic_io.AlgoError("no lung region found")
    nodule = nodule_mask(volume, lung, min_volume_mm3)
    if not nodule.any():
        return {"nodule_volume_mm3": 0.0, "diameter_mm": 0.0}
    indices, shares = nodule_shares(volume, lung, nodule)
    volume_mm3 = float(shares.sum()) * volume.voxel_mm3
    compact, elongation = shape(indices, shares, volume.spacing)
    partial = float(np.sum(shares[shares < FULL_SHARE])) / float(shares.sum())
    compact /= sphere_compactness(volume_mm3, volume.spacing, binary=partial < 0.25)
    return {
        "nodule_volume_mm3": volume_mm3,
        "diameter_mm": (6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0),
        "compactness": compact,
        "elongation": elongation,
    }


def sphere_compactness(volume_mm3: float, spacing: Any, binary: bool) -> float:
    """What ``shape`` reads as the compactness of a sphere of ``volume_mm3`` on this grid.

    Coarse voxels make even a sphere look less compact (a lone voxel is a cube). Dividing
    by this reference leaves 1 for a round nodule at any resolution. The sphere is sampled
    by volume share (3 sub-samples per axis), or, if ``binary``, by voxels at least half
    inside it, at three sub-voxel positions whose results are averaged.
    """
    steps = np.asarray(spacing, dtype=np.float64)
    radius = (3.0 * volume_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0)
    sub = (np.arange(3) + 0.5) / 3.0 - 0.5
    results = []
    for shift in (0.0, 0.25, 0.5):
        axes = []
        for s in steps:
            n = math.ceil(radius / s) + 1
            centres = (np.arange(-n, n + 1) + shift) * s
            axes.append((centres[:, np.newaxis] + sub * s).ravel())
        z, y, x = np.meshgrid(*axes, indexing="ij")
        inside = (z**2 + y**2 + x**2 <= radius**2).astype(np.float64)
        shape_ = tuple(a.size // 3 for a in axes)
        shares = inside.reshape(shape_[0], 3, shape_[1], 3, shape_[2], 3).mean(axis=(1, 3, 5))
        if binary:
            shares = (shares >= 0.5).astype(np.float64)
        keep = shares > 0
        if keep.any():
            results.append(shape(np.nonzero(keep), shares[keep], steps)[0])
    return float(np.mean(results)) if results else 1.0


def nodule_shares(
    volume: elic_io.Volume, lung: np.ndarray, nodule: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Indices ``(3, N)`` of the nodule and the lung voxels touching it, and their shares.

    A voxel's share of nodule is ``(HU - lung) / (solid - lung)``, clipped to [0, 1], where
    ``lung`` is the median HU of a lung shell two to three voxels out and ``solid`` the
    median HU of the nodule's inner voxels (``SOLID_HU`` when it has fewer than five).
    Shares below ``NOISE_FLOOR`` noise SDs (robust SD of the shell) are set to zero.
    Summing shares rather than counting voxels above a threshold keeps small nodules, whose
    edge voxels are mostly less than half filled, from coming out too small.
    """
    box = tuple(slice(max(0, int(idx.min()) - 3), int(idx.max()) + 4) for idx in np.nonzero(nodule))
    hu, inside, lungs = volume.hu[box], nodule[box], lung[box]
    near = _box_dilate(inside, 1)
    shell = _box_dilate(near, 2) & ~near & lungs
    background, noise = PARENCHYMA_HU, 0.0
    if np.count_nonzero(shell) >= 10:
        background = float(np.median(hu[shell]))
        noise = 1.4826 * float(np.median(np.abs(hu[shell] - background)))
    core = inside.copy()
    for axis in range(3):
        core &= np.roll(inside, 1, axis) & np.roll(inside, -1, axis)
    solid = float(np.median(hu[core])) if np.count_nonzero(core) >= 5 else SOLID_HU
    solid = max(solid, background + 200.0)
    region = near & (lungs | inside)
    shares = np.clip((hu[region] - background) / (solid - background), 0.0, 1.0)
    # Lung voxels' noise would otherwise add up to a positive bias over the rim.
    shares[shares < NOISE_FLOOR * noise / (solid - background)] = 0.0
    indices = np.stack(np.nonzero(region)) + np.array([[b.start] for b in box])
    return indices, shares.astype(np.float64)


def _box_dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Dilate by ``steps`` voxels with a 3x3x3 box (one axis at a time)."""
    out = mask.copy()
    for _ in range(steps):
        for axis in range(out.ndim):
            grown = out.copy()
            lead = [slice(None)] * out.ndim
            trail = [slice(None)] * out.ndim
            lead[axis], trail[axis] = slice(1, None), slice(None, -1)
            grown[tuple(lead)] |= out[tuple(trail)]
            grown[tuple(trail)] |= out[tuple(lead)]
            out = grown
    return out


def growth_per_year(first: Dict[str, Any], last: Dict[str, Any]) -> Optional[float]:
    """Change of ln(nodule volume) per year between two time points; None if unknown."""
    days = (last.get("day_offset") or 0) - (first.get("day_offset") or 0)
    if first is last or days <= 0:
        return None
    v0, v1 = first["nodule_volume_mm3"], last["nodule_volume_mm3"]
    if v0 > 0 and v1 > 0:
        return math.log(v1 / v0) * 365.0 / days
    if v1 > 0:
        return GROWTH_NEW
    return GROWTH_GONE if v0 > 0 else None


def score(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Features and malignancy score from the per-time-point measurements."""
    found = [r for r in rows if r["nodule_volume_mm3"] > 0]
    if not found:
        return {"malignancy_score": 0.0, "features": dict.fromkeys(FEATURES)}
    growth = growth_per_year(rows[0], rows[-1])
    both = rows[0]["nodule_volume_mm3"] > 0 and rows[-1]["nodule_volume_mm3"] > 0
    doubling = 365.0 * math.log(2.0) / growth if both and growth else None
    g = 0.0 if growth is None else min(GROWTH_NEW, max(GROWTH_GONE, growth))
    compact = float(np.mean([r["compactness"] for r in found]))
    elongation = float(np.mean([r["elongation"] for r in found]))
    irregularity = min(1.0, max(0.0, 1.0 - compact))
    diameter = found[0]["diameter_mm"]
    logit = (
        INTERCEPT
        + W_LOG_DIAMETER * math.log(diameter / REFERENCE_DIAMETER_MM)
        + W_GROWTH * g
        + W_ELONGATION * (elongation - 1.0)
        + W_IRREGULARITY * irregularity
    )
    return {
        "malignancy_score": round(1.0 / (1.0 + math.exp(-logit)), 6),
        "features": {
            "diameter_mm": round(diameter, 3),
            "growth_per_year": None if growth is None else round(growth, 4),
            "volume_doubling_time_days": None if doubling is None else round(doubling, 1),
            "elongation": round(elongation, 4),
            "compactness": round(compact, 4),
            "irregularity": round(irregularity, 4),
            "logit": round(logit, 4),
        },
    }


def analyse(participant: Dict[str, Any], args: Dict[str, Any]) -> Dict[str, Any]:
    """The ``output.json`` document for one participant."""
    min_volume = elic_io.check_args(args, DEFAULTS)["min_volume_mm3"]
    rows = []
    for i, timepoint in enumerate(participant["timepoints"]):
        series = elic_io.ct_series(timepoint)
        if series is None:
            continue
        row = {"index": int(timepoint.get("index", i)), "day_offset": timepoint.get("day_offset")}
        row.update(measure(elic_io.load_series(series["dicom_dir"]), min_volume))
        rows.append(row)
    if not rows:
        raise elic_io.AlgoError("no time point has a CT series")
    result = score(rows)
    return {
        "nodule_found": any(r["nodule_volume_mm3"] > 0 for r in rows),
        "nodule_volume_mm3": round(rows[0]["nodule_volume_mm3"], 3),
        "malignancy_score": result["malignancy_score"],
        "timepoints": [
            {
                "index": r["index"],
                "nodule_volume_mm3": round(r["nodule_volume_mm3"], 3),
                "diameter_mm": round(r["diameter_mm"], 3),
            }
            for r in rows
        ],
        "features": result["features"],
    }


if __name__ == "__main__":
    sys.exit(elic_io.run_main(analyse))
