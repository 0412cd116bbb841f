"""lung-lav950: lung volume and the emphysema index LAV950 per time point.

Method: at each time point the CT series with the most instances is loaded in Hounsfield
units; the lungs are segmented by ``elic_io.lung_mask`` (voxels below -400 HU that are not
air around the body, largest one or two components, trachea and main bronchi removed).
LAV950 is the percentage of lung voxels below ``threshold_hu`` (default -950 HU); lung
volume is the voxel count times the voxel volume, in millilitres.

Output (``output.schema.json``)::

    {"lav950_percent": 12.3, "lung_volume_ml": 4810.5,
     "timepoints": [{"index": 0, "lav950_percent": 12.3, "lung_volume_ml": 4810.5}, ...]}

The top-level values are those of the first time point that has a CT series; time points
without one are left out of ``timepoints``.

Runs as ``python3 /opt/elic/algo.py`` with ``elic_io.py`` beside it.
"""

from __future__ import annotations

import sys
from typing import Any, Dict

import elic_io
import numpy as np

DEFAULTS = {"threshold_hu": -950.0}


def lav_percent(hu: np.ndarray, lung: np.ndarray, threshold_hu: float) -> float:
    """Percentage of the ``lung`` voxels of ``hu`` strictly below ``threshold_hu``."""
    n = int(np.count_nonzero(lung))
    if n == 0:
        raise elic_io.AlgoError("no lung region found")
    return 100.0 * int(np.count_nonzero(hu[lung] < threshold_hu)) / n


def measure(volume: elic_io.Volume, threshold_hu: float) -> Dict[str, float]:
    """LAV percentage and lung volume (ml) of one CT volume."""
    lung = elic_io.lung_mask(volume)
    return {
        "lav950_percent": round(lav_percent(volume.hu, lung, threshold_hu), 4),
        "lung_volume_ml": round(int(np.count_nonzero(lung)) * volume.voxel_mm3 / 1000.0, 3),
    }


def analyse(participant: Dict[str, Any], args: Dict[str, Any]) -> Dict[str, Any]:
    """The ``output.json`` document for one participant."""
    threshold = elic_io.check_args(args, DEFAULTS)["threshold_hu"]
    rows = []
    for i, timepoint in enumerate(participant["timepoints"]):
        series = elic_io.ct_series(timepoint)
        if series is None:
            continue
        row = {"index": int(timepoint.get("index", i))}
        row.update(measure(elic_io.load_series(series["dicom_dir"]), threshold))
        rows.append(row)
    if not rows:
        raise elic_io.AlgoError("no time point has a CT series")
    return {
        "lav950_percent": rows[0]["lav950_percent"],
        "lung_volume_ml": rows[0]["lung_volume_ml"],
        "timepoints": rows,
    }


if __name__ == "__main__":
    sys.exit(elic_io.run_main(analyse))
