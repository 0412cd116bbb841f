from __future__ import annotations

from pathlib import Path

import pytest

from workbench.cli.main import main
from workbench.core import messages as m
from workbench.core.run_errors import RunErrorCode
from workbench.spoke_service.pending import (
    HELD_STATE,
    CaseKey,
    PendingError,
    PendingStore,
    enqueue_rejected,
    enqueue_released,
    release_held,
)
from workbench.spoke_service.state import CaseRow, SpokeState

SPOKE = "site-01"


def result(participant: str = "p-0001", algorithm: str = "lung-lav950") -> m.CaseResult:
    return m.CaseResult(
        experiment_id="exp-1", spoke_id=SPOKE, participant_id=participant, algorithm=algorithm,
        attempt=1, manifest_hash="0" * 64, image_digest="sha256:" + "1" * 64,
        output={"lav950": 12.5}, output_sha256="2" * 64,
    )  # fmt: skip


def spoke_state(state_dir: Path, *held: m.CaseResult) -> None:
    """A spoke state database whose cases for ``held`` wait for release."""
    state = SpokeState(state_dir / "state.sqlite")
    rows = [CaseRow(r.experiment_id, r.participant_id, r.algorithm, r.attempt, "MRN-1", HELD_STATE)
            for r in held]  # fmt: skip
    state.add_cases(rows, [])
    state.close()


def outbox(state_dir: Path) -> list[m.Message]:
    state = SpokeState(state_dir / "state.sqlite")
    try:
        return [m.parse_message(item.body) for item in state.pending()]
    finally:
        state.close()


def case_states(state_dir: Path) -> dict[str, str]:
    state = SpokeState(state_dir / "state.sqlite")
    try:
        return {c.participant_id: c.state for c in state.cases()}
    finally:
        state.close()


def hold(store: PendingStore, message: m.CaseResult, summary: str = "manual release") -> int:
    return store.hold(CaseKey.of(message), m.encode(message), summary)


def test_a_held_result_is_listed_with_its_case_and_who_held_it(tmp_path: Path) -> None:
    message = result()
    with PendingStore.open(tmp_path, operator="spoke-svc") as store:
        held_id = hold(store, message, "manual release required; 20 bytes")

        [held] = store.list()

    assert held.id == held_id and held.state == "held"
    assert held.case == CaseKey(SPOKE, "exp-1", "p-0001", "lung-lav950", 1)
    assert held.summary == "manual release required; 20 bytes"
    assert held.held_by == "spoke-svc" and held.held_at > 0


def test_holding_the_same_case_twice_keeps_one_entry(tmp_path: Path) -> None:
    original, rerun = result(), result()  # a re-run: same natural key, new message id
    with PendingStore.open(tmp_path) as store:
        first = hold(store, original)
        again = hold(store, rerun)

        assert again == first
        assert len(store.list()) == 1
        assert store.message(first) == m.encode(original)


def test_release_returns_the_bytes_once_and_refuses_a_second_time(tmp_path: Path) -> None:
    message = result()
    with PendingStore.open(tmp_path, operator="alice") as store:
        held_id = hold(store, message)

        body = store.release(held_id)
        with pytest.raises(PendingError, match="already released by alice"):
            store.release(held_id)

        assert body == m.encode(message)
        assert store.list() == []
        assert [h.state for h in store.list(None)] == ["released"]
        assert [(t.state, t.operator) for t in store.history(held_id)] == [
            ("held", "alice"), ("released", "alice"),
        ]  # fmt: skip


def test_reject_records_the_reason_and_blocks_release(tmp_path: Path) -> None:
    with PendingStore.open(tmp_path, operator="bob") as store:
        held_id = hold(store, result())

        store.reject(held_id, "volume looks implausible")
        with pytest.raises(PendingError, match="already rejected"):
            store.release(held_id)
        with pytest.raises(PendingError, match="already rejected"):
            store.reject(held_id)

        held = store.get(held_id)
        assert (held.state, held.decided_by, held.reason) == (
            "rejected", "bob", "volume looks implausible",
        )  # fmt: skip
        assert [t.state for t in store.history(held_id)] == ["held", "rejected"]


def test_a_failed_delivery_leaves_the_result_held(tmp_path: Path) -> None:
    def broken(held: object, body: bytes) -> None:
        raise OSError("disk full")

    with PendingStore.open(tmp_path) as store:
        held_id = hold(store, result())

        with pytest.raises(OSError):
            store.release(held_id, deliver=broken)

        assert store.get(held_id).state == "held"
        assert [t.state for t in store.history(held_id)] == ["held"]
        assert store.release(held_id)  # and it can still be released


def test_an_unknown_id_is_an_error(tmp_path: Path) -> None:
    with PendingStore.open(tmp_path) as store, pytest.raises(PendingError, match="no held"):
        store.release(42)


def test_held_results_survive_reopening_the_store(tmp_path: Path) -> None:
    with PendingStore.open(tmp_path) as store:
        held_id = hold(store, result())

    with PendingStore.open(tmp_path) as store:
        assert [h.id for h in store.list()] == [held_id]


def test_enqueue_released_queues_once_and_finishes_the_case(tmp_path: Path) -> None:
    message = result()
    spoke_state(tmp_path, message)

    first = enqueue_released(tmp_path, m.encode(message), CaseKey.of(message))
    second = enqueue_released(tmp_path, m.encode(message), CaseKey.of(message))

    assert (first, second) == (True, False)
    assert outbox(tmp_path) == [message]
    assert case_states(tmp_path) == {"p-0001": "done"}


def test_enqueue_rejected_tells_the_hub_only_the_code(tmp_path: Path) -> None:
    message = result()
    spoke_state(tmp_path, message)

    enqueue_rejected(tmp_path, CaseKey.of(message))

    [status] = outbox(tmp_path)
    assert isinstance(status, m.CaseStatus) and status.state == "failed"
    assert status.error is not None and status.error.code is RunErrorCode.RELEASE_REJECTED
    assert (status.participant_id, status.algorithm) == ("p-0001", "lung-lav950")
    assert case_states(tmp_path) == {"p-0001": "failed"}


def cancel(state_dir: Path, experiment_id: str = "exp-1") -> None:
    """The spoke records the hub's cancel of the experiment (its order stored first)."""
    state = SpokeState(state_dir / "state.sqlite")
    try:
        state.store_order(experiment_id, "0" * 64, b"{}")
        state.cancel(experiment_id, lambda _: [])
    finally:
        state.close()


def test_a_release_after_the_hub_cancelled_is_refused_and_sends_nothing(tmp_path: Path) -> None:
    message = result()
    spoke_state(tmp_path, message)
    with PendingStore.open(tmp_path) as store:
        held_id = hold(store, message)
    cancel(tmp_path)  # the cancel came between the spoke's two databases: not withdrawn yet

    with pytest.raises(PendingError, match="cancelled experiment exp-1"):
        release_held(tmp_path, held_id)

    assert outbox(tmp_path) == []
    with PendingStore.open(tmp_path) as store:
        assert store.get(held_id).state == "held"  # the reviewer can still reject it
        store.reject(held_id, "cancelled", lambda held, _: enqueue_rejected(tmp_path, held.case))
    assert outbox(tmp_path) == []  # the hub knows the case as cancelled: nothing to tell


def test_withdraw_rejects_the_held_results_of_one_experiment_only(tmp_path: Path) -> None:
    mine, other = result("p-0001"), result("p-0002").model_copy(update={"experiment_id": "exp-2"})
    with PendingStore.open(tmp_path) as store:
        mine_id, other_id = hold(store, mine), hold(store, other)

        assert store.withdraw("exp-1") == 1
        assert store.withdraw("exp-1") == 0

        withdrawn, kept = store.get(mine_id), store.get(other_id)
        assert (withdrawn.state, withdrawn.decided_by) == ("rejected", "hub")
        assert withdrawn.reason == "withdrawn: the hub cancelled the experiment"
        assert [t.state for t in store.history(mine_id)] == ["held", "rejected"]
        assert kept.state == "held"


def test_a_release_while_the_spoke_still_records_the_case_is_refused(tmp_path: Path) -> None:
    message = result()
    spoke_state(tmp_path, message)
    state = SpokeState(tmp_path / "state.sqlite")
    [case] = state.cases()
    state.set_case_state(case, "running", [])  # the worker held it and has not settled yet
    state.close()
    with PendingStore.open(tmp_path) as store:
        held_id = hold(store, message)

    with pytest.raises(PendingError, match="still recording case p-0001/lung-lav950"):
        release_held(tmp_path, held_id)

    assert outbox(tmp_path) == []
    with PendingStore.open(tmp_path) as store:
        assert store.get(held_id).state == "held"


def test_a_cancel_announces_the_cases_held_or_queued_when_it_commits(tmp_path: Path) -> None:
    held, queued, done = result("p-1"), result("p-2"), result("p-3")
    spoke_state(tmp_path, held, queued, done)
    state = SpokeState(tmp_path / "state.sqlite")
    try:
        state.store_order("exp-1", "0" * 64, b"{}")
        cases = {c.participant_id: c for c in state.cases()}
        state.set_case_state(cases["p-2"], "queued", [])
        state.set_case_state(cases["p-3"], "done", [])
        announced: list[tuple[str, str]] = []

        n = state.cancel("exp-1", lambda c: announced.append((c.participant_id, c.state)) or [])

        assert n == 2
        assert sorted(announced) == [("p-1", "cancelled"), ("p-2", "cancelled")]
        assert state.cancelled_experiments() == ["exp-1"]
    finally:
        state.close()
    assert case_states(tmp_path) == {"p-1": "cancelled", "p-2": "cancelled", "p-3": "done"}


def test_withdraw_leaves_a_result_the_spoke_already_queued(tmp_path: Path) -> None:
    sent, waiting = result("p-1"), result("p-2")
    with PendingStore.open(tmp_path) as store:
        sent_id, waiting_id = hold(store, sent), hold(store, waiting)

        # p-1's release committed in the spoke's database, then the process died.
        assert store.withdraw("exp-1", released={("p-1", "lung-lav950", 1)}) == 1

        assert store.get(sent_id).state == "held"  # releasing it again completes the record
        assert store.get(waiting_id).state == "rejected"


def test_a_release_retried_after_a_crash_sends_once(tmp_path: Path) -> None:
    message = result()
    spoke_state(tmp_path, message)
    with PendingStore.open(tmp_path) as store:
        held_id = hold(store, message)
    enqueue_released(tmp_path, m.encode(message))  # queued, then the crash: still held

    release_held(tmp_path, held_id)

    assert outbox(tmp_path) == [message]


def test_enqueue_needs_the_spoke_state_database(tmp_path: Path) -> None:
    with pytest.raises(PendingError, match="cannot open the spoke's state"):
        enqueue_released(tmp_path, b"{}")

    assert not (tmp_path / "state.sqlite").exists()


# the command line --------------------------------------------------------------------------


def spoke_config(tmp_path: Path) -> Path:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    config = tmp_path / "spoke.toml"
    config.write_text(
        f'spoke_id = "{SPOKE}"\nstate_dir = "state"\ndicom_dir = "dicom"\n'
        'broker = "stomp://127.0.0.1:61613"\n'
    )
    return config


def test_cli_lists_releases_and_rejects_held_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = spoke_config(tmp_path)
    state_dir = tmp_path / "state"
    first, second = result("p-0001"), result("p-0002")
    spoke_state(state_dir, first, second)
    with PendingStore.open(state_dir) as store:
        first_id = hold(store, first, "manual release required; 20 bytes: clean")
        second_id = hold(store, second)
    capsys.readouterr()

    assert main(["spoke", "pending", "--config", str(config)]) == 0
    listing = capsys.readouterr().out
    assert main(["spoke", "release", str(first_id), "--config", str(config)]) == 0
    assert main(["spoke", "reject", str(second_id), "--config", str(config),
                 "--reason", "odd"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["spoke", "release", str(first_id), "--config", str(config)]) == 1
    refused = capsys.readouterr().err
    assert main(["spoke", "pending", "--config", str(config)]) == 0
    after = capsys.readouterr()

    lines = listing.splitlines()
    assert lines[0].split()[:5] == ["ID", "EXPERIMENT", "ALGORITHM", "PARTICIPANT", "HELD"]
    assert lines[1].split()[:4] == [str(first_id), "exp-1", "lung-lav950", "p-0001"]
    assert lines[1].endswith("manual release required; 20 bytes: clean")
    assert lines[2].split()[:4] == [str(second_id), "exp-1", "lung-lav950", "p-0002"]
    sent = outbox(state_dir)
    assert sent[0] == first
    assert isinstance(sent[1], m.CaseStatus) and sent[1].participant_id == "p-0002"
    assert sent[1].error is not None and sent[1].error.code is RunErrorCode.RELEASE_REJECTED
    assert len(sent) == 2
    assert "already released" in refused
    assert after.out == "" and "no results held" in after.err
    with PendingStore.open(state_dir) as store:
        assert store.get(second_id).reason == "odd"


def test_cli_release_of_an_unknown_id_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = spoke_config(tmp_path)
    spoke_state(tmp_path / "state")

    assert main(["spoke", "release", "7", "--config", str(config)]) == 1
    assert "no held result with id 7" in capsys.readouterr().err
    assert outbox(tmp_path / "state") == []
