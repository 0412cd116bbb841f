"""naive-baseline: a deliberately naive malignancy score that a real method has to beat.

Method: at the baseline time point (the first with a CT series; its series with the most
instances) the lungs are segmented by ``elic_io.lung_mask`` and the score is the fraction
of voxels at or above -400 HU (tissue) inside the lungs' bounding box. That box holds the
heart, the mediastinum and the chest wall between and around the lungs, so the score says
more about body habitus than about any nodule: it looks at neither shape nor growth and
should be only weakly informative. The fraction already lies in [0, 1].

Output (``output.schema.json``)::

    {"malignancy_score": 0.41}

Runs as ``python3 /opt/elic/algo.py`` with ``elic_io.py`` beside it.
"""

from __future__ import annotations

import sys
from typing import Any, Dict

import elic_io
import numpy as np


def dense_fraction(volume: elic_io.Volume, lung: np.ndarray) -> float:
    """Fraction of voxels at or above -400 HU inside the bounding box of ``lung``."""
    if not lung.any():
        raise elic_io.AlgoError("no lung region found")
    box = tuple(
        slice(int(idx[0]), int(idx[-1]) + 1)
        for idx in (np.flatnonzero(lung.any(axis=other)) for other in ((1, 2), (0, 2), (0, 1)))
    )
    return float(np.mean(volume.hu[box] >= elic_io.AIR_HU))


def analyse(participant: Dict[str, Any], args: Dict[str, Any]) -> Dict[str, Any]:
    """The ``output.json`` document for one participant."""
    elic_io.check_args(args, {})
    for timepoint in participant["timepoints"]:
        series = elic_io.ct_series(timepoint)
        if series is not None:
            volume = elic_io.load_series(series["dicom_dir"])
            score = dense_fraction(volume, elic_io.lung_mask(volume))
            return {"malignancy_score": round(score, 6)}
    raise elic_io.AlgoError("no time point has a CT series")


if __name__ == "__main__":
    sys.exit(elic_io.run_main(analyse))
