"""Signature checks in a child process (``WorkerChecks``) against the same checks made here."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator

import pytest

from workbench.trust import checks as checks_module
from workbench.trust.check_worker import answer
from workbench.trust.checks import Check, InlineChecks, WorkerChecks, _encode
from workbench.trust.keys import generate_key
from workbench.trust.wire import WireSigner, signature_of

SPOKE, STRANGER = generate_key(), generate_key()
PUBLIC = SPOKE.public_key().public_bytes_raw()


def _check(n: int, by: object = SPOKE, tamper: bool = False) -> Check:
    body, headers = WireSigner(by).sign({"type": "case.result", "n": n})  # type: ignore[arg-type]
    if tamper:
        body = body.replace(b'"n":', b'"n": ')
    return signature_of(headers).raw(), PUBLIC, body


# What each check must give, known from how it was made: signed by the key it is checked
# against and unaltered, or not.
BATCH: list[tuple[Check, bool]] = [
    (_check(1), True),
    (_check(2, tamper=True), False),
    (_check(3, by=STRANGER), False),
    (_check(4), True),
]


@pytest.fixture
def worker() -> Iterator[WorkerChecks]:
    checks = WorkerChecks(timeout_s=10)
    checks.start()
    yield checks
    checks.close()


def test_the_worker_gives_each_check_its_verdict(worker: WorkerChecks) -> None:
    verdicts = worker.submit([c for c, _ in BATCH]).result()
    assert verdicts == [expected for _, expected in BATCH]
    assert worker.pid is not None and worker.pid != os.getpid()


def test_batches_in_flight_are_answered_in_the_order_given(worker: WorkerChecks) -> None:
    first = worker.submit([BATCH[0][0], BATCH[1][0]])
    second = worker.submit([BATCH[2][0]])
    third = worker.submit([BATCH[3][0], BATCH[3][0], BATCH[1][0]])
    assert third.result() == [True, True, False]  # asked first: the earlier answers are kept
    assert first.result() == [True, False]
    assert second.result() == [False]


def test_a_worker_killed_mid_batch_is_replaced_and_its_batch_checked_here(
    worker: WorkerChecks,
) -> None:
    first_pid = worker.pid
    assert first_pid is not None
    pending = worker.submit([c for c, _ in BATCH] * 50)
    os.kill(first_pid, signal.SIGKILL)
    assert pending.result() == [expected for _, expected in BATCH] * 50
    assert worker.submit([BATCH[0][0]]).result() == [True]
    assert worker.pid not in (None, first_pid), "a new worker took over"


def test_a_worker_that_never_answers_is_given_up_on_and_the_hub_checks_itself() -> None:
    # A "worker" that reads nothing and answers nothing.
    silent = WorkerChecks(
        timeout_s=0.2, command=[sys.executable, "-c", "import time; time.sleep(60)"]
    )
    silent.start()
    try:
        for _ in range(checks_module._MAX_RESTARTS + 1):
            assert silent.submit([c for c, _ in BATCH]).result() == [e for _, e in BATCH]
        assert silent.pid is None, "after the last restart no worker is started again"
        assert silent.submit([BATCH[0][0]]).result() == [True]
    finally:
        silent.close()


def test_a_worker_that_cannot_start_leaves_the_checks_to_the_hub() -> None:
    missing = WorkerChecks(command=["/nonexistent/elic-check-worker"])
    missing.start()
    assert missing.submit([c for c, _ in BATCH]).result() == [e for _, e in BATCH]
    missing.close()


def test_inline_checks_agree() -> None:
    assert InlineChecks().submit([c for c, _ in BATCH]).result() == [e for _, e in BATCH]


def test_a_check_of_the_wrong_shape_is_refused_before_it_is_sent() -> None:
    raw, public, data = BATCH[0][0]
    with pytest.raises(ValueError, match="64-byte signature"):
        _encode([(raw[:-1], public, data)])
    with pytest.raises(ValueError, match="32-byte key"):
        _encode([(raw, public + b"x", data)])


def test_the_worker_refuses_a_batch_whose_length_does_not_add_up() -> None:
    payload = _encode([BATCH[0][0]])[4:]
    assert answer(payload) == (1).to_bytes(4, "big") + b"Y"
    with pytest.raises(ValueError, match="not the length it says"):
        answer(payload + b"trailing")


def test_a_worker_that_takes_no_input_cannot_block_the_hub() -> None:
    # Four megabytes to a child that never reads: more than its pipe holds.
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    stuck = WorkerChecks(timeout_s=0.3, command=sleeper)
    stuck.start()
    big = [(raw, public, data + b" " * 20_000) for (raw, public, data), _ in BATCH] * 50
    try:
        assert stuck.submit(big).result() == [False] * len(big)  # padded: none matches
        assert stuck.submit([BATCH[0][0]]).result() == [True]
    finally:
        stuck.close()


_FAKE = """
import os, sys
fd = int(sys.argv[-1])
while True:
    head = sys.stdin.buffer.read(4)
    if len(head) < 4:
        break
    sys.stdin.buffer.read(int.from_bytes(head, "big"))
    os.write(fd, {reply!r})
"""


@pytest.mark.parametrize(
    "reply",
    [
        (3).to_bytes(4, "big") + b"YYY",  # an answer for another batch size
        (4).to_bytes(4, "big") + b"\x01\x01\x01\x01",  # not Y or N
    ],
)
def test_an_answer_of_the_wrong_shape_is_never_taken_for_verdicts(reply: bytes) -> None:
    liar = WorkerChecks(timeout_s=5, command=[sys.executable, "-c", _FAKE.format(reply=reply)])
    liar.start()
    try:
        assert liar.submit([c for c, _ in BATCH]).result() == [e for _, e in BATCH]
    finally:
        liar.close()


def test_a_stray_print_on_the_workers_output_changes_nothing() -> None:
    noisy = (
        "import runpy, sys; sys.stdout.buffer.write(b'\\x01\\x01YY'); sys.stdout.flush(); "
        "sys.argv = ['check_worker', *sys.argv[1:]]; "
        "runpy.run_module('workbench.trust.check_worker', run_name='__main__')"
    )
    checks = WorkerChecks(timeout_s=10, command=[sys.executable, "-c", noisy])
    checks.start()
    try:
        assert checks.submit([c for c, _ in BATCH]).result() == [e for _, e in BATCH]
        assert checks._restarts == 0, "the worker's answers came on their own pipe"
    finally:
        checks.close()
