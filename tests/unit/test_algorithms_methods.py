"""The three reference algorithms on a hand-built chest phantom of known truth.

The phantom is a body of soft tissue in air holding two ellipsoidal lungs (parenchyma at
-850 HU with noise, a known random share of emphysema voxels at -980 HU) and a spherical
solid nodule whose edge voxels carry their partial volume. The algorithms' numbers are
compared with what the phantom was built to contain, first through their functions, then by
running each ``algo.py`` the way its container does.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ALGORITHMS = Path(__file__).resolve().parents[2] / "studies" / "algorithms"
if str(ALGORITHMS / "common") not in sys.path:
    sys.path.insert(0, str(ALGORITHMS / "common"))
elic_io = importlib.import_module("elic_io")


def load_algorithm(folder: str):
    spec = importlib.util.spec_from_file_location(f"algo_{folder}", ALGORITHMS / folder / "algo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lav950 = load_algorithm("lung_lav950")
nodule_volume = load_algorithm("nodule_volume")
naive_baseline = load_algorithm("naive_baseline")


def make_phantom(shape, spacing, emphysema=0.12, nodule_mm=8.0, seed=0):
    """A chest phantom and its truth: lung mask, LAV950 (%) and nodule volume (mm³)."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    z, y, x = np.ogrid[:nz, :ny, :nx]
    hu = np.full(shape, -1000.0)
    body = np.broadcast_to(
        ((y - ny / 2) / (0.42 * ny)) ** 2 + ((x - nx / 2) / (0.46 * nx)) ** 2 < 1, shape
    )
    hu[body] = rng.normal(40.0, 10.0, int(body.sum()))
    lungs = np.zeros(shape, dtype=bool)
    for cx in (0.3 * nx, 0.7 * nx):
        lungs |= ((z - nz / 2) / (0.4 * nz)) ** 2 + ((y - ny / 2) / (0.28 * ny)) ** 2 + (
            (x - cx) / (0.16 * nx)
        ) ** 2 < 1
    hu[lungs] = rng.normal(-850.0, 20.0, int(lungs.sum()))
    emphysema_voxels = lungs & (rng.random(shape) < emphysema)
    hu[emphysema_voxels] = -980.0
    # The nodule: the share of each voxel inside the sphere, from 4x4x4 sub-samples.
    share = np.zeros(shape)
    centre = np.array([nz / 2, ny / 2, 0.3 * nx])
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    for index in np.ndindex(shape):
        offset = (np.array(index) - centre) * spacing
        if np.linalg.norm(offset) > nodule_mm + 2 * max(spacing):
            continue
        dz, dy, dx = np.meshgrid(*(offset[i] + sub * spacing[i] for i in range(3)), indexing="ij")
        share[index] = np.mean(dz**2 + dy**2 + dx**2 <= nodule_mm**2)
    hu = share * 45.0 + (1 - share) * hu
    clean = lungs & (share == 0)
    return hu.astype(np.float32), {
        "lungs": lungs,
        "lav950": 100.0 * np.count_nonzero(emphysema_voxels & clean) / np.count_nonzero(clean),
        "nodule_mm3": 4.0 / 3.0 * math.pi * nodule_mm**3,
    }


SMALL = ((36, 56, 56), (2.5, 4.0, 4.0))


@pytest.fixture(scope="module")
def small_phantom():
    hu, truth = make_phantom(*SMALL)
    return elic_io.Volume(hu=hu, spacing=SMALL[1]), truth


def write_ct_slice(path: Path, pixels: np.ndarray, z: float, spacing=(4.0, 4.0)) -> None:
    """One axial CT slice, stored unsigned with intercept -1024 (so HU = stored - 1024)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.PixelSpacing = list(spacing)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    stored = np.clip(np.rint(pixels) + 1024, 0, 4095)
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_series(folder: Path, hu: np.ndarray, spacing) -> None:
    folder.mkdir(parents=True)
    for i in range(hu.shape[0]):
        # Numbered from the top down, against the slice order.
        write_ct_slice(folder / f"{hu.shape[0] - i:06d}.dcm", hu[i], i * spacing[0], spacing[1:])


def test_load_series_sorts_by_position_and_applies_rescale(tmp_path):
    for i, z in enumerate([-10.0, -12.5, -5.0, -7.5]):
        write_ct_slice(tmp_path / f"{i:06d}.dcm", np.full((4, 5), z * 10), z, (0.7, 0.8))

    volume = elic_io.load_series(str(tmp_path))

    assert volume.hu.shape == (4, 4, 5)
    assert volume.hu[:, 0, 0].tolist() == [-125.0, -100.0, -75.0, -50.0]
    assert volume.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert volume.superior_last


def test_load_series_fails_on_a_file_that_is_not_dicom(tmp_path):
    write_ct_slice(tmp_path / "000001.dcm", np.zeros((4, 4)), 0.0)
    (tmp_path / "000002.dcm").write_bytes(b"not a dicom file at all")

    with pytest.raises(elic_io.AlgoError, match="000002"):
        elic_io.load_series(str(tmp_path))


def test_lav950_is_the_emphysema_share_of_the_lungs(small_phantom):
    volume, truth = small_phantom

    result = lav950.measure(volume, -950.0)

    assert result["lav950_percent"] == pytest.approx(truth["lav950"], abs=0.3)
    lung_ml = np.count_nonzero(truth["lungs"]) * volume.voxel_mm3 / 1000
    assert result["lung_volume_ml"] == pytest.approx(lung_ml, rel=0.03)


def test_lav950_threshold_below_the_emphysema_finds_none(small_phantom):
    volume, _ = small_phantom

    result = lav950.measure(volume, -990.0)

    assert result["lav950_percent"] < 0.05


@pytest.mark.parametrize("radius_mm", [5.0, 9.0])
def test_nodule_volume_of_a_sphere(radius_mm):
    hu, truth = make_phantom(*SMALL, nodule_mm=radius_mm, seed=1)
    volume = elic_io.Volume(hu=hu, spacing=SMALL[1])

    result = nodule_volume.measure(volume, 30.0)

    assert result["nodule_volume_mm3"] == pytest.approx(truth["nodule_mm3"], rel=0.15)
    assert result["diameter_mm"] == pytest.approx(2 * radius_mm, rel=0.06)


def test_no_nodule_is_found_in_lungs_without_one():
    hu, _ = make_phantom(*SMALL, nodule_mm=0.0, seed=2)
    volume = elic_io.Volume(hu=hu, spacing=SMALL[1])

    result = nodule_volume.measure(volume, 30.0)

    assert result["nodule_volume_mm3"] == 0.0


def shape_of(mask, shares=None, spacing=(1.0, 1.0, 1.0)):
    weights = np.ones(np.count_nonzero(mask)) if shares is None else shares[mask]
    return nodule_volume.shape(np.nonzero(mask), weights, spacing)


def test_shape_of_a_sphere_an_ellipsoid_and_a_lobulated_blob():
    z, y, x = np.ogrid[-14:15, -14:15, -14:15]
    sphere = z**2 + y**2 + x**2 <= 8**2
    ellipsoid = (z / 12) ** 2 + (y / 6) ** 2 + (x / 6) ** 2 <= 1
    lobulated = (z**2 + y**2 + x**2 <= 5**2) | (y**2 + x**2 <= 2**2) | (z**2 + x**2 <= 2**2)
    lobulated &= np.abs(z) + np.abs(y) + np.abs(x) <= 12

    sphere_shape = shape_of(sphere)
    ellipsoid_shape = shape_of(ellipsoid)
    lobulated_compactness, _ = shape_of(lobulated)

    assert sphere_shape == pytest.approx((1.0, 1.0), abs=0.05)
    assert ellipsoid_shape == pytest.approx((1.0, 2.0), abs=0.06)
    assert lobulated_compactness < 0.8


def test_elongation_survives_coarse_partial_volume_sampling():
    # A 12 x 8 x 8 mm ellipsoid sampled on 4 x 3.5 x 3.5 mm voxels, by volume share.
    sub = (np.arange(8) + 0.5) / 8 - 0.5
    spacing = (4.0, 3.5, 3.5)
    centres = [(np.arange(-4, 5) + 0.3) * s for s in spacing]
    shares = np.zeros((9, 9, 9))
    for index in np.ndindex(shares.shape):
        zz, yy, xx = np.meshgrid(
            *(centres[i][index[i]] + sub * spacing[i] for i in range(3)), indexing="ij"
        )
        shares[index] = np.mean((zz / 6) ** 2 + (yy / 4) ** 2 + (xx / 4) ** 2 <= 1)

    compact, elongation = shape_of(shares > 0, shares, spacing)

    assert elongation == pytest.approx(1.5, abs=0.15)
    assert 0.7 < compact < 1.05


def row(index, day, volume_mm3, compactness=0.95, elongation=1.1):
    diameter = (6 * volume_mm3 / math.pi) ** (1 / 3) if volume_mm3 else 0.0
    measured = {"compactness": compactness, "elongation": elongation} if volume_mm3 else {}
    return {
        "index": index,
        "day_offset": day,
        "nodule_volume_mm3": volume_mm3,
        "diameter_mm": diameter,
        **measured,
    }


def test_malignancy_score_rises_with_size_growth_and_irregularity():
    small = nodule_volume.score([row(0, 0, 500.0), row(1, 365, 500.0)])
    large = nodule_volume.score([row(0, 0, 4000.0), row(1, 365, 4000.0)])
    growing = nodule_volume.score([row(0, 0, 500.0), row(1, 365, 2000.0)])
    irregular = nodule_volume.score([row(0, 0, 500.0, 0.6), row(1, 365, 500.0, 0.6)])
    elongated = nodule_volume.score([row(0, 0, 500.0, 0.95, 1.6), row(1, 365, 500.0, 0.95, 1.6)])

    assert 0 < small["malignancy_score"] < large["malignancy_score"] < 1
    assert growing["malignancy_score"] > small["malignancy_score"]
    assert irregular["malignancy_score"] > small["malignancy_score"]
    assert elongated["malignancy_score"] > small["malignancy_score"]
    # Two doublings in a year: a doubling time of half a year.
    assert growing["features"]["volume_doubling_time_days"] == pytest.approx(182.5, abs=0.1)


def test_malignancy_score_without_a_nodule_is_zero_with_null_features():
    result = nodule_volume.score([row(0, 0, 0.0), row(1, 200, 0.0)])

    assert result["malignancy_score"] == 0.0
    assert set(result["features"]) == set(nodule_volume.FEATURES)
    assert all(v is None for v in result["features"].values())


def test_naive_score_is_the_tissue_share_of_the_lung_box(small_phantom):
    volume, truth = small_phantom
    box = tuple(slice(i.min(), i.max() + 1) for i in np.nonzero(truth["lungs"]))
    expected = np.mean(volume.hu[box] >= -400)

    score = naive_baseline.dense_fraction(volume, elic_io.lung_mask(volume))

    assert score == pytest.approx(expected, abs=0.02)


# --- the algorithms as their containers run them -------------------------------------------

RUN_GRID = ((40, 64, 64), (2.0, 2.0, 2.0))
RADII_MM = (5.0, 6.5)  # baseline and follow-up: the nodule grows
FOLLOW_UP_DAYS = 180


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A two-time-point case on disk: participant.json and one DICOM series per time point."""
    root = tmp_path_factory.mktemp("case")
    timepoints, truths = [], []
    for index, (radius, day) in enumerate(zip(RADII_MM, (0, FOLLOW_UP_DAYS), strict=True)):
        hu, truth = make_phantom(*RUN_GRID, nodule_mm=radius, seed=10 + index)
        write_series(root / "dicom" / f"se-{index}", hu, RUN_GRID[1])
        truths.append(truth)
        series = {"series_key": f"se-{index}", "modality": "CT", "instance_count": hu.shape[0]}
        series["dicom_dir"] = str(root / "dicom" / f"se-{index}")
        study = {"study_key": f"st-{index}", "day_offset": day, "series": [series]}
        timepoints.append({"index": index, "day_offset": day, "studies": [study]})
    participant = {"contract": "elic-algo/1", "participant_id": "p-1", "site_id": "site-01"}
    participant["timepoints"] = timepoints
    (root / "participant.json").write_text(json.dumps(participant))
    return root, truths


def run_algorithm(folder: str, tmp: Path, participant: Path, args=None, algo_arg=None):
    """Run ``algo.py`` as its image does: beside a copy of elic_io.py, paths from ALGO_ARG."""
    opt = tmp / "opt"
    opt.mkdir()
    shutil.copy(ALGORITHMS / folder / "algo.py", opt)
    shutil.copy(ALGORITHMS / "common" / "elic_io.py", opt)
    out = tmp / "output"
    out.mkdir()
    if algo_arg is None:
        algo_arg = json.dumps(
            {
                "contract": "elic-algo/1",
                "participant": str(participant),
                "output": str(out / "output.json"),
                "args": args or {},
            }
        )
    env = {"PATH": os.environ.get("PATH", ""), "ALGO_ARG": algo_arg}
    proc = subprocess.run(
        [sys.executable, str(opt / "algo.py")], env=env, capture_output=True, text=True, timeout=60
    )
    return proc, out


def read_checked_output(folder: str, out: Path):
    assert sorted(p.name for p in out.iterdir()) == ["output.json"]
    document = json.loads((out / "output.json").read_text())
    schema = json.loads((ALGORITHMS / folder / "output.schema.json").read_text())
    jsonschema.validate(document, schema)
    return document


def test_lung_lav950_container_run(case, tmp_path):
    root, truths = case

    proc, out = run_algorithm("lung_lav950", tmp_path, root / "participant.json")

    assert proc.returncode == 0, proc.stderr
    document = read_checked_output("lung_lav950", out)
    assert [t["index"] for t in document["timepoints"]] == [0, 1]
    assert document["lav950_percent"] == pytest.approx(truths[0]["lav950"], abs=0.3)
    assert document["timepoints"][1]["lav950_percent"] == pytest.approx(
        truths[1]["lav950"], abs=0.3
    )


def test_nodule_volume_container_run(case, tmp_path):
    root, truths = case

    proc, out = run_algorithm("nodule_volume", tmp_path, root / "participant.json")

    assert proc.returncode == 0, proc.stderr
    document = read_checked_output("nodule_volume", out)
    assert document["nodule_found"] is True
    volumes = [t["nodule_volume_mm3"] for t in document["timepoints"]]
    assert volumes == pytest.approx([t["nodule_mm3"] for t in truths], rel=0.1)
    ratio = truths[1]["nodule_mm3"] / truths[0]["nodule_mm3"]
    doubling = FOLLOW_UP_DAYS * math.log(2) / math.log(ratio)
    assert document["features"]["volume_doubling_time_days"] == pytest.approx(doubling, rel=0.3)
    assert 0 < document["malignancy_score"] < 1


def test_naive_baseline_container_run(case, tmp_path):
    root, _ = case

    proc, out = run_algorithm("naive_baseline", tmp_path, root / "participant.json")

    assert proc.returncode == 0, proc.stderr
    assert 0 < read_checked_output("naive_baseline", out)["malignancy_score"] < 1


@pytest.mark.parametrize(
    "algo_arg", ["", "{broken", '{"contract": "elic-algo/0", "participant": "/p", "output": "/o"}']
)
def test_a_bad_algo_arg_fails_without_output(case, tmp_path, algo_arg):
    root, _ = case

    proc, out = run_algorithm("lung_lav950", tmp_path, root / "participant.json", algo_arg=algo_arg)

    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and "ALGO_ARG" in proc.stderr
    assert list(out.iterdir()) == []


def test_an_unknown_argument_fails_without_output(case, tmp_path):
    root, _ = case

    proc, out = run_algorithm("nodule_volume", tmp_path, root / "participant.json", {"bogus": 1})

    assert proc.returncode != 0 and "bogus" in proc.stderr
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("folder", ["lung_lav950", "nodule_volume", "naive_baseline"])
def test_a_missing_series_folder_fails_without_output(case, tmp_path, folder):
    root, _ = case
    participant = json.loads((root / "participant.json").read_text())
    participant["timepoints"][0]["studies"][0]["series"][0]["dicom_dir"] = str(tmp_path / "gone")
    (tmp_path / "participant.json").write_text(json.dumps(participant))

    proc, out = run_algorithm(folder, tmp_path, tmp_path / "participant.json")

    assert proc.returncode != 0
    assert proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1
    assert list(out.iterdir()) == []
