"""Generate a synthetic multi-site chest CT cohort on disk, with its reference standard.

Layout (other parts of the workbench rely on it)::

    OUT/cohort.json
    OUT/site-01/dicom/<PatientID>/<StudyDate>_<AccessionNumber>/<SeriesNumber>_<SeriesDescription>/IM00001.dcm
    OUT/site-01/reference.csv

The folder names carry identifiers and dates, as a real PACS export does (characters other
than letters, digits, ``.``, ``+`` and ``-`` in the series description become ``_``).
``reference.csv`` is site-local and keyed by the real PatientID: the hidden label, the true
nodule volume and the true LAV950 at both time points. See ``docs/synthetic-cohort.md``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import SynthError
from workbench.synth.dicom_writer import SeriesSpec, SeriesWriter, uid
from workbench.synth.identities import PatientIdentity, SiteRegistry
from workbench.synth.nodule import MALIGNANT_FRACTION
from workbench.synth.participant import Participant, sample_participant
from workbench.synth.phantom import Grid, Renderer, Truth
from workbench.synth.scanners import Z_EXTENT_MM, ScannerProfile, site_profile

logger = logging.getLogger(__name__)

GENERATOR = "workbench.synth"
VERSION = 1
MANIFEST = "cohort.json"
# Present while a cohort is being written; cohort.json appears only once it is complete.
PARTIAL_MARKER = ".workbench-synth-partial"
MAX_SITES = 99
REFERENCE_COLUMNS = (
    "patient_id",
    "malignant",
    "nodule_volume_mm3_t0",
    "nodule_volume_mm3_t1",
    "lav950_percent_t0",
    "lav950_percent_t1",
)
TIMEPOINTS = 2

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CohortSummary:
    """What :func:`generate_cohort` wrote."""

    out: Path
    sites: tuple[str, ...]
    participants: int
    series: int
    files: int
    bytes: int
    seed: int
    full: bool


def site_id(index: int) -> str:
    """The id of the site with zero-based ``index``: ``site-01``, ``site-02``, ..."""
    return f"site-{index + 1:02d}"


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def _folder_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "series"


def _check_settings(sites: int, participants: int, seed: int) -> None:
    for name, value in (("sites", sites), ("participants", participants), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SynthError(f"{name} must be an integer, got {value!r}")
    if not 1 <= sites <= MAX_SITES:
        raise SynthError(f"sites must be between 1 and {MAX_SITES}, got {sites}")
    if participants < 1:
        raise SynthError(f"participants must be at least 1 per site, got {participants}")
    if seed < 0:
        raise SynthError(f"seed must not be negative, got {seed}")


def _clear_out(out: Path) -> None:
    """Make ``out`` an empty place for a cohort, removing only an earlier cohort's parts.

    An earlier cohort is one with our ``cohort.json``, or an interrupted one (our
    in-progress marker). Anything else in a non-empty folder is refused.
    """
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    manifest = out / MANIFEST
    partial = out / PARTIAL_MARKER
    if manifest.exists():
        try:
            earlier = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SynthError(f"{manifest} cannot be read as a cohort description") from e
        if not isinstance(earlier, dict) or earlier.get("generator") != GENERATOR:
            raise SynthError(f"{manifest} was not written by {GENERATOR}")
    elif not partial.exists():
        raise SynthError(f"{out} is not empty and holds no earlier synthetic cohort")
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink() and re.fullmatch(r"site-\d+", child.name):
            shutil.rmtree(child)
    manifest.unlink(missing_ok=True)
    partial.unlink(missing_ok=True)


def _site_entry(index: int, profile: ScannerProfile, participants: int, full: bool) -> Any:
    return {
        "site_id": site_id(index),
        "manufacturer": profile.manufacturer,
        "manufacturer_model": profile.model,
        "convolution_kernel": profile.kernel,
        "slice_thickness_mm": profile.thickness(full),
        "participants": participants,
    }


def _labels(rng: np.random.Generator, participants: int) -> list[bool]:
    """Exactly round(35%) malignant per site, at least one when there are two or more."""
    count = round(MALIGNANT_FRACTION * participants)
    if participants >= 2:
        count = max(1, count)
    labels = [i < count for i in range(participants)]
    return [labels[i] for i in rng.permutation(participants)]


class _Tally:
    """Counts what has been written and reports progress."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.series = 0
        self.files = 0
        self.bytes = 0
        self._progress = progress

    def series_done(self) -> None:
        self.series += 1
        if self._progress is not None:
            self._progress(self.series, self.total)


def has_cohort(out: Path, sites: int, participants: int) -> bool:
    """Whether ``out`` holds a finished cohort of ``sites`` sites of ``participants`` each
    (the demo and the drill generate one only when it does not)."""
    marker = out / MANIFEST
    if not marker.exists():
        return False
    meta = json.loads(marker.read_text())
    return len(meta["sites"]) == sites and all(
        s["participants"] == participants for s in meta["sites"]
    )


def generate_cohort(
    out: Path,
    sites: int,
    participants: int,
    *,
    full: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
) -> CohortSummary:
    """Write a synthetic cohort of ``sites`` sites with ``participants`` participants each.

    Every participant has a baseline and a follow-up CT (two studies, 300-500 days apart),
    each one series of CT Image Storage files. The output is the same, byte for byte, for
    the same settings and seed. ``cohort.json`` is written last: a folder that has it holds
    a complete cohort (an interrupted run can simply be started again).

    Args:
        out: the cohort folder; created if missing. It must be empty or hold an earlier
            cohort (which is replaced).
        sites: number of sites, 1-99 (``site-01`` ...).
        participants: participants per site, at least 1.
        full: realistic 512x512 images at about 0.7 mm instead of the small 96x96 default.
        seed: the random seed (a non-negative integer).
        progress: called as ``progress(done, total)`` after each series is written.

    Returns:
        A :class:`CohortSummary` of what was written.

    Raises:
        SynthError: impossible settings, or ``out`` holds something other than a cohort.

    Example::

        >>> import tempfile
        >>> s = generate_cohort(Path(tempfile.mkdtemp()), 1, 1, seed=3)
        >>> s.sites, s.series
        (('site-01',), 2)
    """
    _check_settings(sites, participants, seed)
    out = Path(out)
    _clear_out(out)
    out.mkdir(parents=True, exist_ok=True)
    profiles = [site_profile(i) for i in range(sites)]
    manifest = {
        "generator": GENERATOR,
        "version": VERSION,
        "seed": seed,
        "full": full,
        "sites": [_site_entry(i, prof, participants, full) for i, prof in enumerate(profiles)],
    }
    (out / PARTIAL_MARKER).write_text(f"{GENERATOR} is writing this cohort\n", encoding="utf-8")
    tally = _Tally(sites * participants * TIMEPOINTS, progress)
    for index, profile in enumerate(profiles):
        logger.info("writing %s (%d participants)", site_id(index), participants)
        _write_site(out, index, profile, participants, full, seed, tally)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (out / PARTIAL_MARKER).unlink()
    return CohortSummary(
        out=out,
        sites=tuple(site_id(i) for i in range(sites)),
        participants=sites * participants,
        series=tally.series,
        files=tally.files,
        bytes=tally.bytes,
        seed=seed,
        full=full,
    )


def _write_site(
    out: Path,
    index: int,
    profile: ScannerProfile,
    participants: int,
    full: bool,
    seed: int,
    tally: _Tally,
) -> None:
    site_dir = out / site_id(index)
    registry = SiteRegistry(index, _rng(seed, index, 0, 0))
    labels = _labels(_rng(seed, index, 0, 1), participants)
    rows: list[dict[str, str]] = []
    for number, malignant in enumerate(labels, start=1):
        participant = sample_participant(_rng(seed, index, number, 0), malignant)
        id_rng = _rng(seed, index, number, 1)
        baseline = registry.baseline_date(id_rng)
        patient = registry.new_patient(id_rng, baseline)
        truths = []
        for tp in range(TIMEPOINTS):
            day = baseline + dt.timedelta(days=participant.interval_days * tp)
            truths.append(
                _write_series(
                    site_dir,
                    registry,
                    patient,
                    participant,
                    profile,
                    day,
                    (seed, index, number, tp),
                    full,
                    tally,
                )
            )
        rows.append(
            {
                "patient_id": patient.patient_id,
                "malignant": "1" if malignant else "0",
                "nodule_volume_mm3_t0": f"{truths[0].nodule_volume_mm3:.3f}",
                "nodule_volume_mm3_t1": f"{truths[1].nodule_volume_mm3:.3f}",
                "lav950_percent_t0": f"{truths[0].lav950_percent:.4f}",
                "lav950_percent_t1": f"{truths[1].lav950_percent:.4f}",
            }
        )
    with (site_dir / "reference.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=REFERENCE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _write_series(
    site_dir: Path,
    registry: SiteRegistry,
    patient: PatientIdentity,
    participant: Participant,
    profile: ScannerProfile,
    day: dt.date,
    keys: tuple[int, int, int, int],
    full: bool,
    tally: _Tally,
) -> Truth:
    seed, index, number, tp = keys
    acq_rng = _rng(seed, index, number, 2 + tp)
    study = registry.new_study(acq_rng, day)
    matrix = profile.matrix(full)
    grid = Grid.centred(
        rows=matrix,
        cols=matrix,
        pixel_spacing=profile.pixel_spacing(full),
        thickness=profile.thickness(full),
        z_top=-round(float(acq_rng.uniform(20.0, 80.0)), 1),
        extent_mm=Z_EXTENT_MM,
        ascending=profile.ascending,
    )
    key = f"{seed}/{index}/{number}/{tp}"
    spec = SeriesSpec(
        patient=patient,
        study=study,
        site=registry.site,
        profile=profile,
        grid=grid,
        full=full,
        study_uid=uid(GENERATOR, key, "study"),
        series_uid=uid(GENERATOR, key, "series"),
        frame_uid=uid(GENERATOR, key, "frame"),
        uid_seed=f"{GENERATOR}/{key}",
    )
    folder = (
        site_dir
        / "dicom"
        / patient.patient_id
        / f"{study.date:%Y%m%d}_{study.accession}"
        / f"{profile.series_number}_{_folder_name(spec.series_description)}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    renderer = Renderer(participant, tp, grid, noise_sd=profile.noise_sd, rng=acq_rng)
    writer = SeriesWriter(folder, spec)
    written = 0
    for slab in renderer.slabs():
        for image in slab:
            path = writer.write(written, image)
            tally.files += 1
            tally.bytes += path.stat().st_size
            written += 1
    tally.series_done()
    return renderer.truth()
