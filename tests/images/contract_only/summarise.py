"""Summarises a participant case: time points, series, slices and the first series' mean HU.

Follows the elic-algo/1 contract: the ALGO_ARG environment variable names the participant
JSON and the output file; each series in the participant JSON names its DICOM folder.
"""

import json
import os
import sys

import numpy as np
import pydicom


def mean_hu(folder):
    total, count = 0.0, 0
    for name in sorted(os.listdir(folder)):
        ds = pydicom.dcmread(os.path.join(folder, name))
        slope = float(getattr(ds, "RescaleSlope", 1))
        intercept = float(getattr(ds, "RescaleIntercept", 0))
        hu = ds.pixel_array.astype(np.float64) * slope + intercept
        total += float(hu.sum())
        count += hu.size
    return total / count


def main():
    arg = json.loads(os.environ["ALGO_ARG"])
    with open(arg["participant"]) as f:
        participant = json.load(f)
    series = [
        s
        for timepoint in participant["timepoints"]
        for study in timepoint["studies"]
        for s in study["series"]
    ]
    slices = sum(len(os.listdir(s["dicom_dir"])) for s in series)
    result = {
        "timepoints": len(participant["timepoints"]),
        "series": len(series),
        "slices": slices,
        "first_series_mean_hu": round(mean_hu(series[0]["dicom_dir"]), 3),
    }
    with open(arg["output"], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
