"""Integration fixtures: the two test algorithm images and small synthetic CT cases.

``sandbox_images`` builds ``tests/images/misbehave`` (one image, many misbehaviours chosen by
``args.mode``) and ``tests/images/contract_only`` (written from DESIGN.md section 4 alone),
plus ``misbehave-root``: the misbehave image with its default user set back to root, built
from a two-line in-memory Dockerfile. Probing and tampering from that variant shows that the
*sandbox* imposes the non-root user, not the image's own ``USER`` line.

``write_ct_case`` writes one participant's chest CT series (through ``dicom_factory``):
8 slices of 32x32 pixels at 10 mm, with a body, two lungs (partly below -950 HU) and a small
solid nodule inside the right lung, so the reference algorithms find everything they look
for, and with realistic identifying headers (name, ID, dates, institution, accession number,
UIDs).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from dicom_factory import Identity, write_ct_series
from services import need

TESTS = Path(__file__).resolve().parents[1]
IMAGES = TESTS / "images"
MISBEHAVE = "elic-test/misbehave:1"
MISBEHAVE_ROOT = "elic-test/misbehave-root:1"
CONTRACT_ONLY = "elic-test/contract-only:1"

# What the misbehave image declares as its output schema (an image label, as at a spoke).
MISBEHAVE_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["mode"],
    "properties": {
        "mode": {"type": "string"},
        "dicom_files": {"type": "integer", "minimum": 0},
    },
}

SLICES = 8
SIZE = 32
SPACING_MM = 10.0
# Header elements that identify the patient or the encounter; none may reach participant.json.
IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "StudyDate",
    "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime", "InstitutionName",
    "InstitutionAddress", "ReferringPhysicianName", "AccessionNumber", "StudyID",
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
)  # fmt: skip


@dataclass(frozen=True)
class AlgoImages:
    """References of the test algorithm images."""

    misbehave: str
    misbehave_root: str
    contract_only: str


@pytest.fixture(scope="session")
def sandbox_images(docker_engine: Any) -> AlgoImages:
    """Build the test algorithm images once per session (Docker's cache makes it quick)."""
    from docker.errors import BuildError

    from workbench.images.base import find_base

    client = docker_engine.client
    if find_base(client) is None:
        need("the base image is missing: run `workbench images build-base` (scripts/setup does)")
    schema = json.dumps(MISBEHAVE_SCHEMA, separators=(",", ":"))
    common = {"pull": False, "rm": True, "forcerm": True, "network_mode": "none"}
    try:
        client.images.build(
            path=str(IMAGES / "misbehave"),
            tag=MISBEHAVE,
            labels={"org.elic.output-schema": schema},
            **common,
        )
        client.images.build(
            fileobj=io.BytesIO(f"FROM {MISBEHAVE}\nUSER 0:0\n".encode()),
            tag=MISBEHAVE_ROOT,
            **common,
        )
        client.images.build(path=str(IMAGES / "contract_only"), tag=CONTRACT_ONLY, **common)
    except BuildError as e:
        pytest.fail(f"cannot build a test image: {e.msg}")
    return AlgoImages(MISBEHAVE, MISBEHAVE_ROOT, CONTRACT_ONLY)


# The default participant, with every identifying header filled in.
PARTICIPANT = Identity(
    patient_name="Moreau^Claire^Anne",
    patient_id="SYN-48213-7",
    birth_date="19580412",
    study_date="20230314",
    study_time="101512",
    institution="Clinique Saint-Aubin Lyon",
    institution_address="12 Rue des Tanneurs",
    referring_physician="Lefebvre^Julien",
    accession="ACC7734201",
    study_id="ST90421",
    sex="F",
)


@dataclass(frozen=True)
class CtCase:
    """A case folder as written, and its expected contents."""

    folder: Path
    files: tuple[Path, ...]
    hu: np.ndarray  # the volume the files encode, [slice, row, column], in HU

    def snapshot(self) -> dict[str, tuple[str, int, int]]:
        """Every file below the folder: sha256, mode and mtime (ns), to compare before/after."""
        found = {}
        for path in sorted(self.folder.rglob("*")):
            if path.is_file():
                st = path.stat()
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[str(path.relative_to(self.folder))] = (digest, st.st_mode, st.st_mtime_ns)
        return found

    def identifying_values(self) -> set[str]:
        """Every identifying header value of every file (read back), and each word of names."""
        values: set[str] = set()
        for path in self.files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            for keyword in IDENTIFYING_KEYWORDS:
                if keyword not in ds or str(ds[keyword].value).strip() == "":
                    continue
                element = ds[keyword]
                text = str(element.value).strip()
                values.add(text)
                if element.VR == "DA":
                    values.add(f"{text[:4]}-{text[4:6]}-{text[6:]}")  # the ISO spelling too
                if element.VR == "PN" or keyword.startswith("Institution"):
                    words = text.replace("^", " ").replace("-", " ").split()
                    values |= {word for word in words if len(word) >= 4}
        return values


def phantom(slices: int = SLICES, size: int = SIZE) -> np.ndarray:
    """A tiny chest in HU: air, a body, two lungs with a low-attenuation patch, a nodule."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    centre = (size - 1) / 2.0
    body = ((rows - centre) / (size * 0.40)) ** 2 + ((cols - centre) / (size * 0.44)) ** 2 <= 1
    left = ((rows - centre) / (size * 0.22)) ** 2 + ((cols - size * 0.29) / (size * 0.13)) ** 2 <= 1
    right = ((rows - centre) / (size * 0.22)) ** 2 + (
        (cols - size * 0.71) / (size * 0.13)
    ) ** 2 <= 1
    plane = np.full((size, size), -1000.0)
    plane[body] = 40.0
    plane[left | right] = -860.0
    plane[left & (rows < centre)] = -980.0  # emphysema-like patch: LAV950 is above zero
    volume = np.repeat(plane[np.newaxis], slices, axis=0)
    r, c = int(centre), int(size * 0.71)
    volume[slices // 2 - 1 : slices // 2 + 1, r : r + 2, c : c + 2] = 30.0  # solid nodule
    return volume


def write_ct_case(folder: Path, who: Identity | None = None, slices: int = SLICES) -> CtCase:
    """Write one participant's phantom CT series into ``folder`` (created), one file per slice."""
    hu = phantom(slices)
    files = write_ct_series(
        folder,
        who or PARTICIPANT,
        series_number=2,
        hu=hu,
        pixel_spacing_mm=SPACING_MM,
        slice_step_mm=SPACING_MM,
        origin_mm=(-160.0, -160.0, -70.0),
    )
    return CtCase(folder, tuple(files), hu)


@pytest.fixture
def ct_case(tmp_path: Path) -> CtCase:
    """One participant's CT series in ``tmp_path/case``."""
    return write_ct_case(tmp_path / "case")


@pytest.fixture
def make_ct_case() -> Callable[..., CtCase]:
    """Writes a case into a given folder; keywords override ``PARTICIPANT``'s fields."""

    def make(folder: Path, **identity: str) -> CtCase:
        return write_ct_case(folder, replace(PARTICIPANT, **identity))

    return make


@pytest.fixture(scope="session")
def docker_cli() -> str:
    """Path of the ``docker`` command (skips or fails when it is not installed)."""
    found = shutil.which("docker")
    if found is None:
        need("the docker command is not installed")
    return str(found)


@pytest.fixture
def no_leftover_containers(docker_engine: Any) -> Callable[[str], list[str]]:
    """A check: the containers (any state) of an image, managed by the workbench or not."""

    def containers_of(image_id: str) -> list[str]:
        found = docker_engine.client.containers.list(all=True, filters={"ancestor": image_id})
        managed = docker_engine.client.containers.list(
            all=True, filters={"label": "org.elic.managed"}
        )
        mine = {c.id for c in found} | {c.id for c in managed if c.image.id == image_id}
        return sorted(mine)

    return containers_of
