"""The benchmarks' data: one synthetic cohort, generated once into a cache folder."""

from __future__ import annotations

import json
from pathlib import Path

from workbench.synth.cohort import generate_cohort

CACHE = Path(__file__).resolve().parents[1] / ".work" / "bench"


def cohort(sites: int = 1, participants: int = 8, full: bool = False) -> Path:
    """A cohort folder with these settings, generated on first use and reused after."""
    out = CACHE / f"cohort-{sites}x{participants}{'-full' if full else ''}"
    marker = out / "cohort.json"
    if not marker.exists() or json.loads(marker.read_text()).get("full") != full:
        generate_cohort(out, sites, participants, full=full, seed=7)
    return out


def participant_folders(root: Path) -> list[Path]:
    """Each participant's DICOM folder (``site-XX/dicom/<PatientID>``)."""
    return sorted(p for p in root.glob("site-*/dicom/*") if p.is_dir())


def dicom_files(root: Path) -> list[str]:
    """Every DICOM file of the cohort."""
    return sorted(str(p) for p in root.glob("site-*/dicom/**/*.dcm"))
