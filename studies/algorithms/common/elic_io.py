"""Shared plumbing of the reference algorithms: the ``elic-algo/1`` contract and CT basics.

This file is copied beside each algorithm's ``algo.py`` in ``/opt/elic/`` when the image is
built. It runs on the image's own interpreter (Debian bookworm: Python 3.11, numpy 1.24,
pydicom 2.3, no scipy) and on the developer's host (numpy 2, pydicom 3), so it uses only
the APIs the two have in common.

What it holds:

- the contract: :func:`read_algo_arg`, :func:`read_participant`, :func:`ct_series`,
  :func:`write_output` and :func:`run_main`, which ties them together and turns every
  failure into a one-line message on stderr and a non-zero exit code;
- CT basics: :func:`load_series` (a DICOM folder as a Hounsfield-unit volume),
  :func:`label` (6-connected components in pure numpy) and :func:`lung_mask`.

Example (an algorithm's whole entry point)::

    def analyse(participant, args):
        volume = load_series(ct_series(participant["timepoints"][0])["dicom_dir"])
        return {"slices": int(volume.hu.shape[0])}

    if __name__ == "__main__":
        sys.exit(run_main(analyse))
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import pydicom

CONTRACT = "elic-algo/1"

# Voxels darker than this are air or lung parenchyma; brighter ones are tissue.
AIR_HU = -400.0

# Slices of at most this many voxels' worth of data are labelled at once (bounds temporaries).
_CHUNK_VOXELS = 1 << 23


class AlgoError(Exception):
    """The case cannot be analysed: bad ``ALGO_ARG``, unreadable input, no lung found."""


@dataclass(frozen=True)
class Volume:
    """A CT series as a Hounsfield-unit volume.

    ``hu`` is float32 indexed ``[slice, row, column]`` with slices in ascending order along
    the slice normal; ``spacing`` is ``(slice, row, column)`` spacing in mm;
    ``superior_last`` tells whether the last slice is the one nearest the head.
    """

    hu: np.ndarray
    spacing: Tuple[float, float, float]
    superior_last: bool = True

    @property
    def voxel_mm3(self) -> float:
        """The volume of one voxel in mm³."""
        return float(self.spacing[0] * self.spacing[1] * self.spacing[2])


# --- the contract -------------------------------------------------------------------------


def read_algo_arg(environ: Mapping[str, str]) -> Dict[str, Any]:
    """Parse and check the ``ALGO_ARG`` document found in ``environ``.

    Returns a dict with ``participant`` and ``output`` paths and the ``args`` object
    (``{}`` when absent). Raises :class:`AlgoError` if it is missing or malformed.
    """
    raw = environ.get("ALGO_ARG")
    if not raw:
        raise AlgoError("ALGO_ARG is not set")
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise AlgoError(f"ALGO_ARG is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise AlgoError("ALGO_ARG is not a JSON object")
    if doc.get("contract") != CONTRACT:
        raise AlgoError(f"ALGO_ARG contract is {doc.get('contract')!r}, expected {CONTRACT!r}")
    for key in ("participant", "output"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise AlgoError(f"ALGO_ARG has no {key!r} path")
    args = doc.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise AlgoError("ALGO_ARG 'args' is not a JSON object")
    return {"participant": doc["participant"], "output": doc["output"], "args": args}


def read_participant(path: str) -> Dict[str, Any]:
    """Read ``participant.json``; it must be an object with a list of ``timepoints``."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise AlgoError(f"cannot read participant JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("timepoints"), list):
        raise AlgoError("participant JSON has no 'timepoints' list")
    return doc


def ct_series(timepoint: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The CT series with the most instances among a time point's studies, or ``None``."""
    best: Optional[Dict[str, Any]] = None
    for study in timepoint.get("studies") or []:
        for series in study.get("series") or []:
            if series.get("modality") != "CT" or not series.get("dicom_dir"):
                continue
            if best is None or _count(series) > _count(best):
                best = series
    return best


def _count(series: Mapping[str, Any]) -> int:
    n = series.get("instance_count")
    return n if isinstance(n, int) else 0


def check_args(args: Mapping[str, Any], defaults: Mapping[str, float]) -> Dict[str, float]:
    """Merge numeric ``args`` over ``defaults``; unknown keys and non-numbers are errors."""
    unknown = sorted(set(args) - set(defaults))
    if unknown:
        raise AlgoError(f"unknown argument(s): {', '.join(unknown)}")
    out = dict(defaults)
    for key, value in args.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise AlgoError(f"argument {key!r} must be a number")
        if not np.isfinite(value):
            raise AlgoError(f"argument {key!r} must be finite")
        out[key] = float(value)
    return out


def write_output(path: str, document: Mapping[str, Any]) -> None:
    """Write ``document`` as ``output.json``, serialised in full before the file is opened.

    Serialising first means a document that is not JSON (NaN, numpy types) fails before
    anything lands in the output folder, which must end up holding this one file only.
    """
    try:
        data = json.dumps(document, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise AlgoError(f"output is not valid JSON: {e}") from e
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(data)
    except OSError as e:
        if os.path.isfile(path):
            os.remove(path)  # a half-written file must not pass for a result
        raise AlgoError(f"cannot write output: {e}") from e


def run_main(
    analyse: Callable[[Dict[str, Any], Dict[str, Any]], Dict[str, Any]],
    environ: Optional[Mapping[str, str]] = None,
) -> int:
    """Run ``analyse(participant, args)`` under the contract; return the exit code.

    On success the returned document is written to the output path and 0 is returned. Any
    failure prints one line to stderr, writes nothing and returns 1.
    """
    try:
        arg = read_algo_arg(os.environ if environ is None else environ)
        participant = read_participant(arg["participant"])
        document = analyse(participant, arg["args"])
        write_output(arg["output"], document)
    except Exception as e:  # the one place every failure becomes an exit code
        reason = str(e) if isinstance(e, AlgoError) else f"{type(e).__name__}: {e}"
        print("error: " + " ".join(reason.split())[:500], file=sys.stderr)
        return 1
    return 0


# --- DICOM --------------------------------------------------------------------------------


def load_series(folder: str) -> Volume:
    """Load one DICOM series folder as a :class:`Volume` in Hounsfield units.

    Slices are ordered by their position along the slice normal (``ImagePositionPatient``
    projected on the cross product of ``ImageOrientationPatient``'s two directions) and
    converted with ``HU = pixel * RescaleSlope + RescaleIntercept``.
    """
    try:
        names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    except OSError as e:
        raise AlgoError(f"cannot list series folder: {e}") from e
    headers: List[Tuple[float, str]] = []
    normal = np.array([0.0, 0.0, 1.0])
    row_spacing = col_spacing = 1.0
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        ds = _read(path, stop_before_pixels=True)
        if "ImagePositionPatient" not in ds:
            continue  # not a slice (a DICOMDIR, a structured report, ...)
        try:
            iop = [float(v) for v in ds.ImageOrientationPatient]
            normal = np.cross(iop[:3], iop[3:])
            position = float(np.dot([float(v) for v in ds.ImagePositionPatient], normal))
            row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        except (AttributeError, TypeError, ValueError) as e:
            raise AlgoError(f"DICOM file {name} lacks usable geometry: {e}") from e
        headers.append((position, path))
    if not headers:
        raise AlgoError("series folder holds no DICOM image")
    headers.sort()
    positions = np.array([p for p, _ in headers])
    gaps = np.diff(positions)
    if gaps.size and np.min(gaps) <= 1e-4:
        raise AlgoError("series has two slices at the same position")
    first = _read(headers[0][1], stop_before_pixels=True)
    if gaps.size:
        slice_spacing = float(np.median(gaps))
    else:
        slice_spacing = float(getattr(first, "SliceThickness", None) or 1.0)
    shape = (len(headers), int(first.Rows), int(first.Columns))
    hu = np.empty(shape, dtype=np.float32)
    for i, (_, path) in enumerate(headers):
        ds = _read(path, stop_before_pixels=False)
        try:
            pixels = ds.pixel_array
        except Exception as e:  # pydicom raises many types for bad or unsupported pixel data
            raise AlgoError(f"cannot decode pixels of {os.path.basename(path)}: {e}") from e
        if pixels.shape != shape[1:]:
            raise AlgoError(f"slice {os.path.basename(path)} is {pixels.shape}, not {shape[1:]}")
        slope = float(getattr(ds, "RescaleSlope", None) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", None) or 0.0)
        hu[i] = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    spacing = (slice_spacing, row_spacing, col_spacing)
    return Volume(hu=hu, spacing=spacing, superior_last=bool(normal[2] >= 0))


def _read(path: str, stop_before_pixels: bool) -> Any:
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except Exception as e:  # InvalidDicomError, EOFError, OSError, ...
        raise AlgoError(f"unreadable DICOM file {os.path.basename(path)}: {e}") from e


# --- connected components -----------------------------------------------------------------


def label(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Label the 6-connected components of a 3-D (or 2-D) boolean mask.

    Returns ``(labels, sizes)``: ``labels`` is int32 of the mask's shape, 0 off the mask
    and ``1..n`` on it; ``sizes[k]`` is the voxel count of component ``k`` (``sizes[0]`` is
    0). Works on runs along the last axis: runs that touch across rows or slices are joined
    by a vectorised union-find (hooking and pointer jumping), which thus handles runs, not
    voxels: about a second for a 512x512x300 chest CT, milliseconds for a small one.

    >>> labels, sizes = label(np.array([[1, 1, 0, 1], [0, 1, 0, 1]], dtype=bool))
    >>> sizes.tolist()
    [0, 3, 2]
    """
    mask = np.asarray(mask, dtype=bool)
    flat2d = mask.ndim == 2
    if flat2d:
        mask = mask[np.newaxis]
    if mask.ndim != 3:
        raise ValueError("label() takes a 2-D or 3-D mask")
    # Run ids: 1.. in raster order, 0 off the mask. A run starts where the mask turns on
    # and ends where it turns off (or at the end of its row).
    edge = mask.copy()
    edge[..., 1:] &= ~mask[..., :-1]
    runs = np.cumsum(edge.ravel(), dtype=np.int32).reshape(mask.shape)
    run_len = np.zeros(int(runs[(-1,) * 3]) + 1 if runs.size else 1, dtype=np.int64)
    first = np.flatnonzero(edge)
    edge[...] = mask
    edge[..., :-1] &= ~mask[..., 1:]
    run_len[1:] = np.flatnonzero(edge) - first + 1
    del edge, first
    runs *= mask
    n = run_len.size - 1
    pairs_a: List[np.ndarray] = []
    pairs_b: List[np.ndarray] = []
    step = max(1, _CHUNK_VOXELS // max(1, mask.shape[1] * mask.shape[2]))
    for z0 in range(0, mask.shape[0], step):
        z1 = min(mask.shape[0], z0 + step)
        _touching(runs[z0:z1, 1:], runs[z0:z1, :-1], pairs_a, pairs_b)
        _touching(runs[max(z0, 1) : z1], runs[max(z0, 1) - 1 : z1 - 1], pairs_a, pairs_b)
    root = _union_find(n, pairs_a, pairs_b)
    # Renumber roots 1..k in order of first appearance; map every run onto its component.
    is_root = root == np.arange(n + 1)
    is_root[0] = False
    new_id = np.cumsum(is_root, dtype=np.int32)
    lut = new_id[root]
    lut[0] = 0
    sizes = np.bincount(lut, weights=run_len, minlength=int(new_id[-1]) + 1).astype(np.int64)
    for z in range(runs.shape[0]):
        runs[z] = lut[runs[z]]
    return (runs[0] if flat2d else runs), sizes


def _touching(a: np.ndarray, b: np.ndarray, out_a: List[np.ndarray], out_b: List[np.ndarray]):
    """Collect the distinct (run, run) pairs of voxels facing each other in ``a`` and ``b``."""
    both = (a > 0) & (b > 0)
    ra, rb = a[both], b[both]
    if ra.size == 0:
        return
    # Facing voxels of the same two runs sit next to each other in raster order: keep one.
    keep = np.ones(ra.size, dtype=bool)
    keep[1:] = (ra[1:] != ra[:-1]) | (rb[1:] != rb[:-1])
    out_a.append(ra[keep])
    out_b.append(rb[keep])


def _union_find(n: int, pairs_a: List[np.ndarray], pairs_b: List[np.ndarray]) -> np.ndarray:
    """Root of every run (``0..n``) after joining each pair, by hooking and pointer jumping."""
    parent = np.arange(n + 1, dtype=np.int32)
    if not pairs_a:
        return parent
    a = np.concatenate(pairs_a)
    b = np.concatenate(pairs_b)
    while a.size:
        ra, rb = parent[a], parent[b]
        apart = ra != rb
        if not apart.any():
            break
        a, b, ra, rb = a[apart], b[apart], ra[apart], rb[apart]
        # Hook each larger root under a smaller one: parents only ever decrease, so no cycles.
        parent[np.maximum(ra, rb)] = np.minimum(ra, rb)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent


def border_labels(labels: np.ndarray, axes: Tuple[int, ...] = (1, 2)) -> np.ndarray:
    """The labels found on the first and last planes along each of ``axes``."""
    faces = []
    for axis in axes:
        faces.append(np.take(labels, 0, axis=axis).ravel())
        faces.append(np.take(labels, -1, axis=axis).ravel())
    found = np.unique(np.concatenate(faces))
    return found[found > 0]


# --- lungs --------------------------------------------------------------------------------


def lung_mask(volume: Volume, air_hu: float = AIR_HU, remove_airway: bool = True) -> np.ndarray:
    """Segment the lungs: inner air below ``air_hu``, largest one or two components.

    Air connected to the image's sides (rows and columns) is the air around the body and is
    dropped. Of the rest, the largest component is kept, and the second largest too if it
    has at least a fifth of its size (two separate lungs; bowel gas is far smaller). With
    ``remove_airway`` the trachea and main bronchi, traced from the top of the lungs down
    while they stay small and central, are taken out.
    """
    air = volume.hu < air_hu
    labels, sizes = label(air)
    del air
    sizes = sizes.copy()
    sizes[border_labels(labels)] = 0
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    if sizes[order[0]] == 0:
        return np.zeros(labels.shape, dtype=bool)
    mask = labels == order[0]
    if order.size > 1 and sizes[order[1]] >= 0.2 * sizes[order[0]]:
        mask |= labels == order[1]
    del labels
    if remove_airway:
        mask &= ~airway_mask(mask, volume.spacing, volume.superior_last)
    return mask


def airway_mask(
    mask: np.ndarray,
    spacing: Tuple[float, float, float],
    superior_last: bool = True,
    max_area_mm2: float = 700.0,
) -> np.ndarray:
    """The trachea and main bronchi of a lung mask, traced slice by slice from the top.

    In the most superior slice holding any of ``mask``, the trachea is a small component
    (at most ``max_area_mm2``) near the middle of the lungs' left-right extent. It is
    followed downwards through the components it overlaps (both main bronchi after the
    carina) for as long as each stays under twice the trachea's first area; where the
    airway joins a lung the component grows and the trace stops. Returns an empty mask if
    the top slice shows no such component.
    """
    airway = np.zeros(mask.shape, dtype=bool)
    present = np.flatnonzero(mask.any(axis=(1, 2)))
    if present.size == 0:
        return airway
    cols = np.flatnonzero(mask.any(axis=(0, 1)))
    centre, half_width = (cols[0] + cols[-1]) / 2.0, (cols[-1] - cols[0] + 1) / 2.0
    limit = max_area_mm2 / (spacing[1] * spacing[2])
    if superior_last:
        slices = range(int(present[-1]), -1, -1)
    else:
        slices = range(int(present[0]), mask.shape[0])
    current: Optional[np.ndarray] = None
    for z in slices:
        labels, sizes = label(mask[z])
        if current is None:
            ids = np.arange(1, sizes.size)
            centres = np.array([np.mean(np.nonzero(labels == k)[1]) for k in ids])
            ids = ids[(sizes[1:] <= limit) & (np.abs(centres - centre) <= 0.3 * half_width)]
            if ids.size == 0:
                return airway
            limit = min(limit, 2.0 * float(sizes[ids].sum()))
        else:
            ids = np.unique(labels[current])
            ids = ids[(ids > 0) & (sizes[ids] <= limit)]
            if ids.size == 0:
                break
        current = np.isin(labels, ids)
        airway[z] = current
    return airway
