"""The reference algorithms' shared module: the contract, connected components, lungs."""

from __future__ import annotations

import importlib
import json
import sys
from collections import deque
from pathlib import Path

import numpy as np
import pytest

COMMON = Path(__file__).resolve().parents[2] / "studies" / "algorithms" / "common"
if str(COMMON) not in sys.path:
    sys.path.insert(0, str(COMMON))
elic_io = importlib.import_module("elic_io")


def flood_fill_count(mask: np.ndarray) -> list[int]:
    """Component sizes by breadth-first search: the slow, obviously right oracle."""
    seen = np.zeros(mask.shape, dtype=bool)
    sizes = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, size = deque([start]), 0
        while queue:
            point = queue.popleft()
            size += 1
            for axis in range(3):
                for step in (-1, 1):
                    nb = list(point)
                    nb[axis] += step
                    nb = tuple(nb)
                    if 0 <= nb[axis] < mask.shape[axis] and mask[nb] and not seen[nb]:
                        seen[nb] = True
                        queue.append(nb)
        sizes.append(size)
    return sorted(sizes)


def test_label_matches_flood_fill_on_random_masks():
    rng = np.random.default_rng(7)
    for _ in range(20):
        mask = rng.random(tuple(rng.integers(1, 10, 3))) < rng.uniform(0.2, 0.7)

        labels, sizes = elic_io.label(mask)

        assert sorted(sizes[1:].tolist()) == flood_fill_count(mask)
        assert np.array_equal(labels > 0, mask)
        assert all(np.count_nonzero(labels == k) == sizes[k] for k in range(1, sizes.size))


def test_label_joins_a_spiral_and_ignores_diagonal_contact():
    mask = np.zeros((3, 9, 9), dtype=bool)
    mask[1, 1, 1:8] = mask[1, 1:8, 7] = mask[1, 7, 1:8] = mask[1, 3:8, 1] = True  # open ring
    mask[1, 3, 1:6] = mask[1, 3:6, 5] = True  # spiralling inwards
    mask[0, 0, 0] = True  # touches the ring's corner only diagonally

    labels, sizes = elic_io.label(mask)

    assert sizes.size == 3
    assert labels[1, 1, 1] == labels[1, 5, 5] != labels[0, 0, 0]


def test_label_of_a_2d_mask_keeps_its_shape():
    labels, sizes = elic_io.label(np.array([[1, 0, 1], [1, 0, 1]], dtype=bool))

    assert labels.shape == (2, 3)
    assert sizes.tolist() == [0, 2, 2]


def test_read_algo_arg_accepts_the_contract_document():
    doc = {"contract": "elic-algo/1", "participant": "/p.json", "output": "/o.json"}

    arg = elic_io.read_algo_arg({"ALGO_ARG": json.dumps(doc)})

    assert arg == {"participant": "/p.json", "output": "/o.json", "args": {}}


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "{not json",
        "[1, 2]",
        '{"contract": "other/1", "participant": "/p", "output": "/o"}',
        '{"contract": "elic-algo/1", "participant": "/p"}',
        '{"contract": "elic-algo/1", "participant": "/p", "output": "/o", "args": [1]}',
    ],
)
def test_read_algo_arg_rejects_malformed_documents(raw):
    environ = {} if raw is None else {"ALGO_ARG": raw}

    with pytest.raises(elic_io.AlgoError):
        elic_io.read_algo_arg(environ)


def test_check_args_merges_numbers_and_rejects_the_rest():
    assert elic_io.check_args({"t": -900}, {"t": -950.0}) == {"t": -900.0}
    with pytest.raises(elic_io.AlgoError):
        elic_io.check_args({"x": 1}, {"t": -950.0})
    with pytest.raises(elic_io.AlgoError):
        elic_io.check_args({"t": "low"}, {"t": -950.0})
    with pytest.raises(elic_io.AlgoError):
        elic_io.check_args({"t": True}, {"t": -950.0})


def test_ct_series_picks_the_ct_series_with_most_instances():
    timepoint = {
        "studies": [
            {"series": [{"modality": "CT", "instance_count": 40, "dicom_dir": "/a"}]},
            {
                "series": [
                    {"modality": "MR", "instance_count": 300, "dicom_dir": "/b"},
                    {"modality": "CT", "instance_count": 120, "dicom_dir": "/c"},
                    {"modality": "CT", "instance_count": None, "dicom_dir": "/d"},
                ]
            },
        ]
    }

    assert elic_io.ct_series(timepoint)["dicom_dir"] == "/c"
    assert elic_io.ct_series({"studies": [{"series": [{"modality": "PT"}]}]}) is None


def test_write_output_refuses_nan_and_leaves_no_file(tmp_path):
    out = tmp_path / "output.json"

    with pytest.raises(elic_io.AlgoError):
        elic_io.write_output(str(out), {"score": float("nan")})

    assert not out.exists()


def test_lung_mask_drops_outside_air_bowel_gas_and_trachea():
    hu = np.full((30, 48, 48), -1000.0, dtype=np.float32)
    z, y, x = np.ogrid[:30, :48, :48]
    body = ((y - 24) / 20.0) ** 2 + ((x - 24) / 22.0) ** 2 < 1
    hu[np.broadcast_to(body, hu.shape)] = 40.0
    left = ((z - 14) / 11.0) ** 2 + ((y - 24) / 12.0) ** 2 + ((x - 14) / 7.0) ** 2 < 1
    right = ((z - 14) / 11.0) ** 2 + ((y - 24) / 12.0) ** 2 + ((x - 34) / 7.0) ** 2 < 1
    hu[left | right] = -850.0
    trachea = ((y - 24) ** 2 + (x - 24) ** 2 <= 2) & (z >= 20)
    hu[np.broadcast_to(trachea, hu.shape)] = -1000.0
    hu[20, 23:26, 14:34] = -1000.0  # main bronchi into both lungs at the carina
    hu[2:4, 40:42, 23:26] = -1000.0  # bowel gas, away from the lungs
    volume = elic_io.Volume(hu=hu, spacing=(2.0, 4.0, 4.0))

    lung = elic_io.lung_mask(volume)

    assert np.array_equal(lung[:20], (left | right)[:20])
    assert not lung[21:, 24, 24].any()
    assert lung[left].all() and lung[right].all()
