"""Catalog indexing speed against a raw ``pydicom.dcmread(stop_before_pixels=True)`` loop.

Both read the same files in the same run, after one warm-up pass so that both find them in
the page cache. Prints one JSON object; ``ratio_*`` is catalog files/s over raw files/s.

    .venv/bin/python -m bench.bench_catalog [--participants 12] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydicom

from bench.cohort_data import cohort, dicom_files
from workbench.spoke_service.catalog import Catalog


def raw_loop(paths: list[str]) -> float:
    started = time.perf_counter()
    for path in paths:
        pydicom.dcmread(path, stop_before_pixels=True)
    return time.perf_counter() - started


def catalog_index(root: Path, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog.open(Path(tmp) / "catalog.sqlite")
        started = time.perf_counter()
        catalog.index(root, workers=workers)
        elapsed = time.perf_counter() - started
        catalog.close()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=3)
    ns = parser.parse_args()
    root = cohort(1, ns.participants)
    paths = dicom_files(root)
    raw_loop(paths)  # warm the page cache
    raw, one, many = [], [], []
    workers = os.cpu_count() or 1
    for _ in range(ns.repeat):
        raw.append(raw_loop(paths))
        one.append(catalog_index(root, 1))
        many.append(catalog_index(root, workers))
    n = len(paths)
    result = {
        "files": n,
        "raw_dcmread_files_per_s": round(n / statistics.median(raw)),
        "catalog_1_worker_files_per_s": round(n / statistics.median(one)),
        f"catalog_{workers}_workers_files_per_s": round(n / statistics.median(many)),
        "ratio_1_worker": round(statistics.median(raw) / statistics.median(one), 2),
        f"ratio_{workers}_workers": round(statistics.median(raw) / statistics.median(many), 2),
    }
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
