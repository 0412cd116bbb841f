"""The spoke's disk fills up while a case runs: it halts, sends nothing half-done, loses nothing.

The spoke's state folder (state database, audit log, catalog) is a real 16 MiB tmpfs; the
fake algorithm writes its output and then fills that filesystem to the last byte, as another
process on the machine might. Mounting needs root: elsewhere the test skips (and fails in CI,
``services.need``).
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dicom_factory import Identity, write_ct_series
from fakes import FakeEngine
from services import need

from workbench.core import messages as m
from workbench.spoke_service.config import SpokeConfig
from workbench.spoke_service.policy import SpokePolicy
from workbench.spoke_service.service import Spoke
from workbench.spoke_service.state import SpokeState
from workbench.transport.memory import InMemoryBroker
from workbench.trust.image_signature import sign_image
from workbench.trust.keys import generate_key, key_id, new_key_pair
from workbench.trust.wire import WireSigner

HUB_KEY, PUBLISHER = generate_key(), generate_key()
IMAGE_ID = "sha256:" + "ab" * 32


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs at ``tmp_path/state``, unmounted afterwards."""
    target = tmp_path / "state"
    target.mkdir()
    if os.geteuid() != 0:
        need("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(target)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        need(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=False)
        if os.path.ismount(target):
            subprocess.run(["umount", "-l", str(target)], check=True)


def fill(folder: Path) -> Path:
    """Write a file into ``folder`` until its filesystem refuses another byte."""
    ballast = folder / "ballast"
    with ballast.open("wb", buffering=0) as f:
        chunk = b"\0" * 65536
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        try:
            while True:
                f.write(b"\0")
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return ballast


def site(root: Path, state_dir: Path) -> SpokeConfig:
    for n in range(2):
        person = Identity(patient_id=f"MRN-30{n}", patient_name=f"Roe^P{n}")
        write_ct_series(root / "dicom" / person.patient_id / "t0", person, slices=2)
        later = Identity(**{**person.__dict__, "study_date": "20200415", "accession": "ACC-2"})
        write_ct_series(root / "dicom" / person.patient_id / "t1", later, slices=2)
    trusted = root / "trusted"
    new_key_pair(root / "keys" / "hub", HUB_KEY)
    new_key_pair(root / "keys" / "publisher", PUBLISHER)
    trusted.mkdir()
    for name in ("hub", "publisher"):
        (trusted / f"{name}.pem").write_bytes((root / "keys" / name / "public.pem").read_bytes())
    spoke_key = new_key_pair(root / "keys" / "spoke", generate_key()).private
    return SpokeConfig(
        spoke_id="site-01", state_dir=state_dir, dicom_dir=root / "dicom", broker=("memory://",),
        heartbeat_s=3600, trusted_keys=(trusted,), signing_key=spoke_key, concurrency=1,
        policy=SpokePolicy(signers=frozenset({key_id(HUB_KEY), key_id(PUBLISHER)})),
    )  # fmt: skip


def order() -> bytes:
    algorithm = m.AlgorithmRef(
        name="score", version="1", image="elic/score:1", digest=IMAGE_ID,
        signature=sign_image("elic/score:1", IMAGE_ID, PUBLISHER),
    )  # fmt: skip
    manifest = m.Manifest(
        experiment_id="exp-1", study="lung-screening", algorithms=(algorithm,),
        spokes=("site-01",), cohort={"min_timepoints": 2}, created_at="2026-11-28T00:00:00Z",
    )  # fmt: skip
    return m.encode(
        m.ExperimentOrder(
            spoke_id="site-01", manifest=manifest, manifest_hash=m.manifest_hash(manifest)
        )
    )


def send(server: InMemoryBroker, body: bytes) -> None:
    hub = server.connect()
    hub.send(m.orders_queue("site-01"), body, WireSigner(HUB_KEY).headers(body))
    hub.close()


def collect(server: InMemoryBroker, until: int, timeout: float = 20) -> list[m.Message]:
    seen: list[m.Message] = []
    deadline = time.monotonic() + timeout
    final = {"done", "failed", "cancelled"}
    while sum(isinstance(x, m.CaseStatus) and x.state in final for x in seen) < until:
        assert time.monotonic() < deadline, f"gave up; saw {[x.type for x in seen]}"
        seen += [m.parse_message(b) for b in server.drain(m.HUB_INBOX)]
        time.sleep(0.02)
    return seen


def test_a_disk_that_fills_while_a_case_runs_halts_the_spoke_and_nothing_is_half_sent(
    tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = site(tmp_path, small_disk)
    ballast: list[Path] = []

    def answer_then_fill_the_disk(out: Path) -> None:
        (out / "output.json").write_text('{"score": 0.5}')
        if not ballast:
            ballast.append(fill(small_disk))

    server = InMemoryBroker()
    spoke = Spoke(config, server.connect(), FakeEngine(answer_then_fill_the_disk))
    spoke.start()
    send(server, order())
    try:
        assert spoke.failed.wait(30), "the spoke did not halt on a full disk"
        time.sleep(0.5)  # anything wrongly sent reaches the inbox by now
        sent = [m.parse_message(b) for b in server.drain(m.HUB_INBOX)]
    finally:
        spoke.stop()
    failure = str(spoke.failure)
    assert "state cannot be written" in failure and str(small_disk) in failure
    assert any(r.levelname == "ERROR" and "halted" in r.getMessage() for r in caplog.records)
    assert not [x for x in sent if isinstance(x, m.CaseResult)]
    assert not [x for x in sent if isinstance(x, m.CaseStatus) and x.state in {"done", "failed"}]
    with_disk_full = SpokeState(config.state_path)
    states = sorted(c.state for c in with_disk_full.cases())
    with_disk_full.close()
    assert states == ["queued", "running"]  # the running case's outcome was never committed

    # Space freed, the spoke restarted: every case runs (the interrupted one again), and
    # each result is sent once, under attempt 1.
    ballast[0].unlink()
    server = InMemoryBroker()
    again = Spoke(
        config,
        server.connect(),
        FakeEngine(lambda out: (out / "output.json").write_text('{"score": 0.5}')),
    )
    again.start()
    try:
        messages = collect(server, until=2)
    finally:
        again.stop()
    results = [x for x in messages if isinstance(x, m.CaseResult)]
    assert len(results) == 2 and {r.attempt for r in results} == {1}
    assert len({r.participant_id for r in results}) == 2
