from __future__ import annotations

import io
from pathlib import Path

import pytest
import sqlalchemy
from hub_world import DIGESTS, LAV, NODULE, make_world, result, spec

from workbench.errors import ConflictError, StoreError
from workbench.hub_kernel.results import write_csv
from workbench.hub_kernel.store import ResultsStore


def test_a_new_database_gets_every_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'hub.sqlite'}"

    ResultsStore.open(url).close()

    names = set(sqlalchemy.inspect(sqlalchemy.create_engine(url)).get_table_names())
    assert names == {
        "spokes", "algorithms", "experiments", "experiment_spokes", "case_statuses",
        "results", "rejections",
    }  # fmt: skip


def test_an_unreachable_database_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")

    with pytest.raises(StoreError):
        ResultsStore.open(f"sqlite:///{tmp_path / 'file' / 'hub.sqlite'}")


def test_results_frame_flattens_output_and_reference_into_columns(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    status = world.launch()
    world.ingest(
        result(status, "p-1", {"lav950_percent": 3.5, "lung": {"volume_ml": 5200}},
               {"malignant": 1, "lav950_percent_t0": 4.0}),
        result(status, "p-2", {"lav950_percent": 12.0, "lung": {"volume_ml": 4100}},
               {"malignant": 0, "lav950_percent_t0": 11.0}, spoke="site-02"),
        result(status, "p-1", {"malignancy_score": 0.25}, {"malignant": 1}, algorithm=NODULE,
               attempt=2),
    )  # fmt: skip

    frame = world.store.results_frame(status.experiment_id)

    assert list(frame.columns) == [
        "experiment_id", "spoke_id", "participant_id", "algorithm", "attempt", "output_sha256",
        "image_digest", "received_at", "output.lav950_percent", "output.lung.volume_ml",
        "output.malignancy_score", "reference.lav950_percent_t0", "reference.malignant",
    ]  # fmt: skip
    assert list(frame["participant_id"]) == ["p-1", "p-2", "p-1"]
    assert list(frame["spoke_id"]) == ["site-01", "site-02", "site-01"]
    assert list(frame["attempt"]) == [1, 1, 2]
    assert list(frame["image_digest"]) == [DIGESTS[LAV], DIGESTS[LAV], DIGESTS[NODULE]]
    assert frame["output.lav950_percent"].tolist()[:2] == [3.5, 12.0]
    assert frame["output.lung.volume_ml"].tolist()[:2] == [5200, 4100]
    assert frame["output.malignancy_score"].tolist()[2] == 0.25
    assert frame["reference.malignant"].tolist() == [1, 0, 1]
    assert frame["output.lav950_percent"].isna().tolist() == [False, False, True]
    assert str(frame["received_at"].dt.tz) == "UTC"
    assert (frame["experiment_id"] == status.experiment_id).all()


def test_results_frame_of_an_experiment_without_results_has_the_base_columns(
    tmp_path: Path,
) -> None:
    world = make_world(tmp_path)
    status = world.launch()

    frame = world.store.results_frame(status.experiment_id)

    assert len(frame) == 0
    assert "participant_id" in frame.columns and "received_at" in frame.columns


def test_results_are_streamed_in_arrival_order_a_page_at_a_time(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    status = world.launch()
    world.ingest(*(result(status, f"p{i}", {"i": i}) for i in range(5)))

    first = list(world.store.iter_results(status.experiment_id, after=0, limit=2))
    rest = list(world.store.iter_results(status.experiment_id, after=first[-1][0]))

    assert [r.output["i"] for _, r in first] == [0, 1]
    assert [r.output["i"] for _, r in rest] == [2, 3, 4]


def test_csv_has_a_column_per_output_field_and_json_for_lists(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    status = world.launch()
    world.ingest(result(status, "p-1", {"score": 0.5, "timepoints": [{"index": 0}]}, {"y": 1}))
    rows = [r.model_dump() for _, r in world.store.iter_results(status.experiment_id)]
    out = io.StringIO()

    n = write_csv(rows, out)

    header, line = out.getvalue().splitlines()
    assert n == 1
    assert header.endswith("received_at,output.score,output.timepoints,reference.y")
    assert line.endswith(',0.5,"[{""index"":0}]",1.0')
    assert "+00:00" in line.split(",")[7] and "T" in line.split(",")[7]


def test_the_same_name_and_version_with_another_digest_is_a_conflict(tmp_path: Path) -> None:
    world = make_world(tmp_path)

    again, created = world.registry.register(spec(LAV))
    with pytest.raises(ConflictError) as raised:
        world.registry.register(spec(LAV, digest="sha256:" + "f" * 64))

    assert created is False and again.digest == DIGESTS[LAV]
    assert raised.value.code == "algorithm_conflict"
    assert DIGESTS[LAV] in raised.value.message
    assert len(world.registry.list()) == 2


def test_rejections_are_listed_newest_first(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    status = world.launch()

    world.apply(result(status, "p", {}, spoke="site-90"))
    world.apply(result(status, "p", {}, experiment_id="exp-gone"))

    reasons = [r.reason for r in world.store.rejections()]
    assert reasons == ["unknown experiment", "unknown spoke"]
    assert [r.reason for r in world.store.rejections(limit=1)] == ["unknown experiment"]
