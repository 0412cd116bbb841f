"""The runner's staging, verdicts and clean-up, with a hand-written fake engine."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from dicom_factory import write_ct_series
from fakes import FakeEngine

from workbench.core.contract import LABEL_OUTPUT_SCHEMA
from workbench.core.pseudonym import Pseudonymizer
from workbench.core.run_errors import RunErrorCode
from workbench.errors import EngineError
from workbench.spoke_service.run_local import case_from_folder
from workbench.spoke_service.runner import CaseRunner
from workbench.spoke_service.sandbox import Limits
from workbench.spoke_service.staging import DicomCache


def write(text: str | bytes, name: str = "output.json") -> Callable[[Path], None]:
    def act(out: Path) -> None:
        (out / name).write_bytes(text.encode() if isinstance(text, str) else text)

    return act


def nothing(out: Path) -> None:
    pass


@pytest.fixture
def case(tmp_path: Path):
    write_ct_series(tmp_path / "dicom", slices=3)
    built, _ = case_from_folder(tmp_path / "dicom", Pseudonymizer(b"s" * 32))
    return built


def run(tmp_path: Path, case, engine: FakeEngine, image: str = "algo", **limits: object):
    runner = CaseRunner(engine, tmp_path / "work", tmp_path / "logs")
    return runner.run(case, image, {"k": 1}, Limits(**limits))  # type: ignore[arg-type]


def test_success_returns_the_validated_output_and_cleans_up(tmp_path: Path, case) -> None:
    engine = FakeEngine(write('{"score": 0.7}'))
    result = run(tmp_path, case, engine)
    assert result.ok and result.output == {"score": 0.7}
    assert result.output_bytes == b'{"score": 0.7}'
    assert engine.seen_participant == case.document
    key = case.series[0].series_key
    assert engine.seen_dicom == [f"{key}/000001.dcm", f"{key}/000002.dcm", f"{key}/000003.dcm"]
    assert list((tmp_path / "work").iterdir()) == []
    assert result.log_path is not None and result.log_path.read_bytes() == b"algorithm log\n"


def test_spec_runs_the_image_by_id_with_only_algo_arg(tmp_path: Path, case) -> None:
    engine = FakeEngine(write('{"score": 1}'))
    run(tmp_path, case, engine, timeout_s=7.0)
    spec = engine.specs[0]
    assert spec.image.startswith("sha256:")
    assert set(spec.environment) == {"ALGO_ARG"}
    assert json.loads(spec.environment["ALGO_ARG"])["args"] == {"k": 1}
    assert spec.limits.timeout_s == 7.0


def test_staged_dicom_is_linked_not_copied_and_inputs_untouched(tmp_path: Path, case) -> None:
    originals = {p: (os.stat(p).st_ino, Path(p).read_bytes()) for s in case.series for p in s.paths}
    inodes: list[int] = []

    def look(out: Path) -> None:
        dicom = out.parent / "dicom"
        inodes.extend(p.stat().st_ino for p in dicom.rglob("*.dcm"))
        (out / "output.json").write_text('{"score": 0}')

    run(tmp_path, case, FakeEngine(look))
    assert sorted(inodes) == sorted(ino for ino, _ in originals.values())
    assert all(Path(p).read_bytes() == data for p, (_, data) in originals.items())


@pytest.mark.parametrize(
    ("engine", "code"),
    [
        (FakeEngine(nothing), "OUTPUT_MISSING"),
        (FakeEngine(write("{oops")), "OUTPUT_INVALID_JSON"),
        (FakeEngine(write("[1]")), "OUTPUT_NOT_OBJECT"),
        (FakeEngine(write('{"score": "high"}')), "OUTPUT_SCHEMA_VIOLATION"),
        (FakeEngine(write('{"score": 1}', name="result.json")), "OUTPUT_MISSING"),
        (FakeEngine(write('{"score": 1}'), exit_code=3), "NONZERO_EXIT"),
        (FakeEngine(nothing, exit_code=None, timed_out=True), "TIMEOUT"),
        (FakeEngine(nothing, exit_code=137, oom=True), "OUT_OF_MEMORY"),
        (FakeEngine(nothing, exit_code=None, timed_out=True, pids=True), "PIDS_EXHAUSTED"),
        (FakeEngine(write(b"x" * 5000), exit_code=1), "OUTPUT_TOO_LARGE"),
    ],
)
def test_each_failure_gets_its_own_code(
    tmp_path: Path, case, engine: FakeEngine, code: str
) -> None:
    result = run(tmp_path, case, engine, output_bytes=4096)
    assert result.error is not None and result.error.code.value == code
    assert result.output is None and result.output_bytes is None
    assert list((tmp_path / "work").iterdir()) == []


def test_links_and_extra_files_are_unsafe(tmp_path: Path, case) -> None:
    def symlink(out: Path) -> None:
        (out / "output.json").symlink_to("/etc/passwd")

    def extra(out: Path) -> None:
        (out / "output.json").write_text('{"score": 1}')
        (out / "notes.txt").write_text("x")

    for act in (symlink, extra):
        result = run(tmp_path, case, FakeEngine(act))
        assert result.error is not None and result.error.code is RunErrorCode.OUTPUT_UNSAFE


def test_missing_image_raises_before_anything_is_staged(tmp_path: Path, case) -> None:
    engine = FakeEngine(nothing)
    with pytest.raises(EngineError) as missing:
        run(tmp_path, case, engine, image="missing")
    assert missing.value.code is RunErrorCode.IMAGE_NOT_FOUND
    assert engine.specs == []


def test_invalid_declared_schema_is_an_engine_error(tmp_path: Path, case) -> None:
    engine = FakeEngine(nothing, labels={LABEL_OUTPUT_SCHEMA: '{"type": 12}'})
    with pytest.raises(EngineError, match="invalid"):
        run(tmp_path, case, engine)


# -- the shared DICOM tree (DicomCache) ------------------------------------------------------


def cached_runner(tmp_path: Path, engine: FakeEngine) -> CaseRunner:
    cache = DicomCache(tmp_path / "cache")
    return CaseRunner(engine, tmp_path / "work", tmp_path / "logs", dicom_cache=cache)


def test_runs_of_one_case_share_one_linked_tree_that_outlives_them(tmp_path: Path, case) -> None:
    engine = FakeEngine(write('{"score": 0.5}'))
    runner = cached_runner(tmp_path, engine)
    first = runner.run(case, "algo", {}, Limits())
    second = runner.run(case, "algo", {}, Limits())

    assert first.ok and second.ok
    assert engine.specs[0].dicom_dir == engine.specs[1].dicom_dir
    tree = Path(engine.specs[0].dicom_dir)
    assert tree.parent == tmp_path / "cache"
    key = case.series[0].series_key
    assert engine.seen_dicom == [f"{key}/000001.dcm", f"{key}/000002.dcm", f"{key}/000003.dcm"]
    sources = {os.stat(p).st_ino for s in case.series for p in s.paths}
    assert {p.stat().st_ino for p in tree.rglob("*.dcm")} == sources  # links, not copies
    assert list((tmp_path / "work").iterdir()) == []  # each run's own folder is gone
    assert tree.is_dir()  # the shared tree is not


def test_a_file_changed_after_indexing_gets_a_new_tree_never_the_stale_one(
    tmp_path: Path, case
) -> None:
    engine = FakeEngine(write('{"score": 0.5}'))
    runner = cached_runner(tmp_path, engine)
    runner.run(case, "algo", {}, Limits())
    changed = Path(case.series[0].paths[0])
    data = changed.read_bytes()
    changed.unlink()
    changed.write_bytes(data)  # the same path, a new file (a new inode)

    runner.run(case, "algo", {}, Limits())

    old, new = (Path(spec.dicom_dir) for spec in engine.specs)
    assert old != new
    assert (new / case.series[0].series_key / "000001.dcm").stat().st_ino == changed.stat().st_ino


def test_the_tree_name_says_nothing_about_the_patient(tmp_path: Path, case) -> None:
    engine = FakeEngine(write('{"score": 0.5}'))
    cached_runner(tmp_path, engine).run(case, "algo", {}, Limits())
    name = Path(engine.specs[0].dicom_dir).name
    assert len(name) == 40 and all(c in "0123456789abcdef" for c in name)


def test_evict_removes_trees_unused_for_long_enough(tmp_path: Path, case) -> None:
    cache = DicomCache(tmp_path / "cache")
    tree = cache.tree(case)
    assert cache.evict(3600) == 0 and tree.is_dir()
    os.utime(tree, (0, 0))
    assert cache.evict(3600) == 1 and not tree.exists()
    assert cache.tree(case) == tree and tree.is_dir()  # laid out again on demand
