"""Participant JSON and de-identification throughput, in DICOM files per second.

Two figures: building the participant JSON from headers already in the catalog (what a
spoke does per case), and the whole path from files on disk (header read, pseudonyms, day
offsets, allow-list, leak guard). For scale: the dicognito anonymiser, which rewrites whole
files, does about 870 files/s per core on this kind of machine.

    .venv/bin/python -m bench.bench_deid [--participants 12] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from bench.cohort_data import cohort, participant_folders
from workbench.core.participant import build_case
from workbench.core.pseudonym import Pseudonymizer
from workbench.spoke_service.catalog import Catalog
from workbench.spoke_service.run_local import case_from_folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=3)
    ns = parser.parse_args()
    root = cohort(1, ns.participants)
    pseudonymizer = Pseudonymizer(b"bench-secret-0123456789abcdef")
    catalog = Catalog.open(":memory:")
    catalog.index(root)
    per_patient = [catalog.participant_headers(p) for p in catalog.patient_ids()]
    files = sum(len(h) for h in per_patient)

    from_catalog, from_disk = [], []
    for _ in range(ns.repeat):
        started = time.perf_counter()
        for headers in per_patient:
            build_case(headers, pseudonymizer, "site-01")
        from_catalog.append(time.perf_counter() - started)
        started = time.perf_counter()
        for folder in participant_folders(root):
            case_from_folder(folder, pseudonymizer, "site-01")
        from_disk.append(time.perf_counter() - started)
    result = {
        "files": files,
        "participants": len(per_patient),
        "participant_json_from_catalog_files_per_s": round(files / statistics.median(from_catalog)),
        "read_and_deidentify_from_disk_files_per_s": round(files / statistics.median(from_disk)),
    }
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
