"""The hash-chained audit log: clean chains verify; every kind of tampering is named."""

from __future__ import annotations

import itertools
import json
import tempfile
import threading
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workbench.errors import AuditError, CanonicalJSONError
from workbench.trust.audit import ZERO_HASH, AuditLog, ChainHead, entry_hash, verify
from workbench.trust.canonical import canonical_json


def _clock() -> datetime:
    return datetime(2025, 1, 31, 12, 0, 0, tzinfo=UTC)


def _write_log(path: Path, count: int = 6) -> ChainHead:
    with AuditLog(path, clock=_clock) as log:
        for n in range(1, count + 1):
            log.append("case.result.sent", {"participant": f"p-{n}", "score": n / 10})
        return log.head()


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _save(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def test_appended_entries_form_a_chain_that_verifies_clean(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"

    head = _write_log(path, 5)

    entries = [json.loads(line) for line in _lines(path)]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["prev"] == ZERO_HASH
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(entries))
    assert all(e["hash"] == entry_hash(e) for e in entries)
    assert _lines(path)[2] == canonical_json(entries[2]) + b"\n"
    assert entries[0]["time"] == "2025-01-31T12:00:00.000000+00:00"
    report = verify(path, expected_head=head)
    assert report.ok and report.entries == 5 and report.head == head == (5, entries[-1]["hash"])


def test_an_empty_log_verifies_with_the_zero_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    AuditLog(path).close()

    report = verify(path)

    assert report.ok and report.head == ChainHead(0, ZERO_HASH)


def test_one_byte_changed_in_a_middle_line_names_that_entry(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write_log(path)
    lines = _lines(path)
    lines[2] = lines[2].replace(b'"p-3"', b'"p-8"')
    _save(path, lines)

    report = verify(path)

    assert not report.ok
    assert (report.problem, report.bad_seq, report.bad_line) == ("hash_mismatch", 3, 3)
    assert report.entries == 2


def test_a_removed_line_names_the_missing_entry(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write_log(path)
    lines = _lines(path)
    del lines[2]
    _save(path, lines)

    report = verify(path)

    assert (report.ok, report.problem, report.bad_seq, report.bad_line) == (
        False, "out_of_sequence", 3, 3,
    )  # fmt: skip
    assert "entry 3 is missing" in report.detail


def test_two_swapped_lines_name_the_first_of_them(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write_log(path)
    lines = _lines(path)
    lines[2], lines[3] = lines[3], lines[2]
    _save(path, lines)

    report = verify(path)

    assert (report.ok, report.problem, report.bad_seq) == (False, "out_of_sequence", 3)


def test_an_inserted_copy_of_an_earlier_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write_log(path)
    lines = _lines(path)
    lines.insert(4, lines[1])
    _save(path, lines)

    report = verify(path)

    assert (report.ok, report.problem, report.bad_seq, report.bad_line) == (
        False, "out_of_sequence", 5, 5,
    )  # fmt: skip


def test_an_inserted_forgery_with_a_valid_hash_is_caught_at_the_next_entry(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    _write_log(path)
    lines = _lines(path)
    third = json.loads(lines[2])
    forged = {"seq": 4, "time": third["time"], "event": "result.released", "data": {},
              "prev": third["hash"]}  # fmt: skip
    forged["hash"] = entry_hash(forged)
    lines.insert(3, canonical_json(forged) + b"\n")
    _save(path, lines)

    report = verify(path)

    assert (report.ok, report.problem, report.bad_seq, report.bad_line) == (
        False, "out_of_sequence", 5, 5,
    )  # fmt: skip
    assert report.entries == 4  # the forgery itself links; the entry after it no longer fits


def test_a_truncated_tail_is_caught_only_against_the_expected_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    head = _write_log(path)
    _save(path, _lines(path)[:-2])

    alone = verify(path)
    against_head = verify(path, expected_head=(head.seq, head.hash))

    assert alone.ok and alone.entries == 4
    assert (against_head.ok, against_head.problem, against_head.bad_seq) == (
        False, "truncated", 5,
    )  # fmt: skip
    assert "entries 5 to 6 are cut off" in against_head.detail


def test_a_rewritten_tail_is_caught_only_against_the_expected_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    head = _write_log(path)
    lines, prev = _lines(path), None
    for n in range(3, 6):  # rewrite entry 4 and recompute every link after it
        entry = json.loads(lines[n])
        if n == 3:
            entry["data"]["score"] = 0.99
        entry["prev"] = prev or json.loads(lines[n - 1])["hash"]
        entry["hash"] = entry_hash(entry)
        prev = entry["hash"]
        lines[n] = canonical_json(entry) + b"\n"
    _save(path, lines)

    alone = verify(path)
    against_head = verify(path, expected_head=head)

    assert alone.ok
    assert (against_head.ok, against_head.problem, against_head.bad_seq) == (
        False, "head_mismatch", 6,
    )  # fmt: skip


def test_an_expected_head_older_than_the_end_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.append("a", {})
        reported = log.head()
        log.append("b", {})

    assert verify(path, expected_head=reported).ok


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    head = _write_log(path, 3)

    with AuditLog(path) as log:
        recovered = log.head()
        entry = log.append("spoke.started", {})

    assert recovered == head
    assert (entry["seq"], entry["prev"]) == (4, head.hash)
    assert verify(path).entries == 4


def test_a_second_writer_is_refused_while_the_log_is_open(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path), pytest.raises(AuditError, match="open for writing elsewhere"):
        AuditLog(path)

    AuditLog(path).close()  # released on close


def test_reopening_refuses_to_extend_a_corrupt_last_entry(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write_log(path, 3)
    lines = _lines(path)
    lines[-1] = lines[-1].replace(b'"p-3"', b'"p-9"')
    _save(path, lines)

    with pytest.raises(AuditError, match="last entry is corrupt"):
        AuditLog(path)


def test_a_cut_off_last_line_is_dropped_and_the_drop_recorded(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    head = _write_log(path, 3)
    fragment = b'{"data":{"participant":"p-4"'  # a crash in the middle of an append
    with path.open("ab") as f:
        f.write(fragment)

    with AuditLog(path) as log:
        recovered = log.head()

    last = json.loads(_lines(path)[-1])
    assert (recovered.seq, last["event"], last["prev"]) == (4, "audit.recovered", head.hash)
    assert last["data"]["dropped_bytes"] == len(fragment)
    assert fragment not in path.read_bytes()
    assert verify(path).ok


def test_data_without_a_json_form_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.append("a", {})
        with pytest.raises(CanonicalJSONError):
            log.append("b", {"x": float("nan")})
        with pytest.raises(ValueError, match="audit event"):
            log.append("", {})
        log.append("c", {})

    assert [json.loads(line)["event"] for line in _lines(path)] == ["a", "c"]
    assert verify(path).ok


def test_appending_after_close_is_refused(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.close()

    with pytest.raises(AuditError, match="closed"):
        log.append("late", {})


def test_concurrent_appends_from_threads_keep_the_chain_valid(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    threads, per_thread = 8, 40
    start = threading.Barrier(threads)
    with AuditLog(path) as log:

        def work(worker: int) -> None:
            start.wait()
            for n in range(per_thread):
                log.append("run.finished", {"worker": worker, "n": n})

        pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        head = log.head()

    report = verify(path, expected_head=head)
    assert report.ok and report.entries == threads * per_thread
    seen = {(e["data"]["worker"], e["data"]["n"]) for e in map(json.loads, _lines(path))}
    assert len(seen) == threads * per_thread


def test_verify_of_a_missing_log_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="cannot read"):
        verify(tmp_path / "none.jsonl")


@pytest.mark.parametrize("text", ["5", "x:" + "a" * 64, "3:" + "A" * 64, "0:" + "1" * 64])
def test_chain_head_parse_refuses_malformed_heads(text: str) -> None:
    with pytest.raises(ValueError, match="head"):
        ChainHead.parse(text)


@cache
def _reference_log() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "audit.jsonl"
        with AuditLog(path, clock=_clock) as log:
            log.append("order.received", {"experiment": "e1", "unicode": "Zürich €"})
            log.append("image.verified", {"digest": "sha256:" + "ab" * 32, "big": 1e21})
            log.append("run.finished", {"seconds": 4.25, "ok": True, "none": None})
            log.append("result.sent", {"hash": "cd" * 32})
        return path.read_bytes()


@given(st.data())
def test_any_single_byte_change_is_named_at_its_line(data: st.DataObject) -> None:
    original = _reference_log()
    position = data.draw(st.integers(0, len(original) - 1), label="position")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != original[position]), label="byte")
    changed = original[:position] + bytes([byte]) + original[position + 1 :]
    line = original[:position].count(b"\n") + 1

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "audit.jsonl"
        path.write_bytes(changed)
        report = verify(path)

    assert not report.ok
    assert (report.bad_line, report.bad_seq) == (line, line)
