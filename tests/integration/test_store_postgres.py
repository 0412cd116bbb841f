"""The results store on SQLite and on a real PostgreSQL: one suite, both backends.

Every test taking ``world`` or ``url`` runs twice: on a SQLite file and on an empty database
of the session's throw-away PostgreSQL cluster (``tests/pg_fixtures.py``; without PostgreSQL
the ``postgresql`` half skips locally and fails in CI). Messages go in the way the inbox
writes them, through ``Ingestor`` or ``ResultsStore.apply``. Case states are read back with
plain SQL on a separate engine, so a test does not trust the store to report on itself.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import make_url

from workbench.core import messages as m
from workbench.core.run_errors import RunErrorCode
from workbench.errors import ConflictError, StoreError
from workbench.hub_kernel.dispatcher import Dispatcher
from workbench.hub_kernel.effects import Inbound
from workbench.hub_kernel.experiments import Experiments
from workbench.hub_kernel.ingest import Ingestor
from workbench.hub_kernel.models import ExperimentStatus
from workbench.hub_kernel.registry import Registry
from workbench.hub_kernel.store import ResultsStore
from workbench.hub_kernel.studies import StudyCatalog
from workbench.hub_kernel.tables import utcnow
from workbench.transport.memory import InMemoryBroker

UNIT = Path(__file__).resolve().parents[1] / "unit"
if str(UNIT) not in sys.path:
    sys.path.insert(0, str(UNIT))
hw = importlib.import_module("hub_world")  # the hub's parts and message makers

LAV, NODULE, SPOKES, DIGESTS = hw.LAV, hw.NODULE, hw.SPOKES, hw.DIGESTS
result, case_status, Settled = hw.result, hw.case_status, hw.Settled
TABLES = {
    "spokes", "algorithms", "experiments", "experiment_spokes", "case_statuses", "results",
    "rejections",
}  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.sqlite'}"
    return str(request.getfixturevalue("postgres_database"))


@pytest.fixture
def world(url: str) -> Iterator[Any]:
    """``hub_world.World`` over ``url``: both spokes allowed, both algorithms registered."""
    built = make_world(url)
    yield built
    built.store.close()


def make_world(url: str, allowed: tuple[str, ...] = SPOKES) -> Any:
    """``hub_world.make_world``, on any database URL."""
    store = ResultsStore.open(url)
    store.allow_spokes(allowed)
    server = InMemoryBroker()
    broker = server.connect()
    registry = Registry(store)
    registry.register(hw.spec(LAV))
    registry.register(hw.spec(NODULE))
    dispatcher = Dispatcher(broker, store)
    experiments = Experiments(store, registry, StudyCatalog(hw.STUDIES), dispatcher)
    return hw.World(store, server, broker, registry, experiments, dispatcher)


def backend(url: str) -> str:
    return make_url(url).get_backend_name()


def read(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows of one query on a fresh engine (not the store's)."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def case_row(url: str, participant: str, algorithm: str = LAV) -> tuple[Any, ...]:
    """``(attempt, state, error_code)`` of one case, as stored."""
    (row,) = read(
        url,
        "SELECT attempt, state, error_code FROM case_statuses "
        "WHERE participant_id = :p AND algorithm = :a",
        p=participant,
        a=algorithm,
    )
    return row


def apply_each(world: Any, *batches: tuple[m.Message, ...]) -> None:
    """Commit each batch in its own transaction, as successive inbox flushes would."""
    for batch in batches:
        world.ingest(*batch)


# -- schema, spokes, algorithms, experiments --------------------------------------------------


def test_opening_creates_the_schema_once_and_reopening_keeps_the_data(url: str) -> None:
    first = ResultsStore.open(url)
    first.allow_spokes(["site-01"])
    first.close()

    again = ResultsStore.open(url)  # create_all on existing tables: a no-op
    known = again.is_known_spoke("site-01")
    again.close()

    engine = sqlalchemy.create_engine(url)
    inspector = sqlalchemy.inspect(engine)
    names = set(inspector.get_table_names())
    unique = {c["name"] for c in inspector.get_unique_constraints("results")}
    indexes = {i["name"] for i in inspector.get_indexes("case_statuses")}
    engine.dispose()
    assert names == TABLES
    assert known is True
    assert "results_natural_key" in unique
    assert "case_statuses_progress" in indexes


def test_allow_listing_is_idempotent_and_keeps_what_a_heartbeat_recorded(url: str) -> None:
    world = make_world(url, allowed=("site-01",))
    beat = m.SpokeHeartbeat(spoke_id="site-03", sent_at="2026-01-02T03:04:05Z", queued=4)
    world.ingest(beat)  # enrolled on its heartbeat, not allowed

    world.store.allow_spokes(["site-03", "site-01"])
    world.store.allow_spokes(["site-03"])

    spokes = world.store.spokes()
    world.store.close()
    assert [(s.spoke_id, s.allowed) for s in spokes] == [("site-01", True), ("site-03", True)]
    assert (spokes[1].queued, spokes[1].heartbeat_sent_at) == (4, "2026-01-02T03:04:05Z")
    assert spokes[1].last_heartbeat_at is not None
    assert spokes[1].last_heartbeat_at.utcoffset() is not None
    assert spokes[0].last_heartbeat_at is None


def test_an_algorithm_is_unique_by_name_and_version(world: Any, url: str) -> None:
    newer = hw.spec(LAV, version="1.1.0", digest="sha256:" + "c" * 64)

    again, created_again = world.registry.register(hw.spec(LAV))
    added, created_newer = world.registry.register(newer)
    with pytest.raises(ConflictError) as raised:
        world.registry.register(hw.spec(LAV, digest="sha256:" + "f" * 64))

    assert (created_again, created_newer) == (False, True)
    assert again.digest == DIGESTS[LAV] and added.digest == newer.digest
    assert raised.value.code == "algorithm_conflict"
    assert [a.version for a in world.store.algorithms(LAV)] == ["1.0.0", "1.1.0"]
    assert world.store.algorithms(LAV, "1.1.0")[0].registered_at.utcoffset() is not None
    assert read(url, "SELECT count(*) FROM algorithms WHERE name = :n", n=LAV) == [(2,)]


def test_concurrent_registrations_of_one_version_make_one_row(world: Any, url: str) -> None:
    spec = hw.spec(NODULE, version="2.0.0")
    start = threading.Barrier(8)
    created: list[bool] = []
    errors: list[BaseException] = []

    def register() -> None:
        start.wait()
        try:
            created.append(world.store.add_algorithm(spec)[1])
        except BaseException as e:  # collected: an exception in a thread is otherwise lost
            errors.append(e)

    threads = [threading.Thread(target=register) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert sorted(created) == [False] * 7 + [True]
    rows = read(url, "SELECT count(*) FROM algorithms WHERE name = :n AND version = '2.0.0'",
                n=NODULE)  # fmt: skip
    assert rows == [(1,)]


def test_an_experiment_keeps_its_manifest_orders_and_cancel(world: Any) -> None:
    first = world.launch()
    second = world.launch(spokes=("site-02",), args={LAV: {"threshold_hu": -910}})

    (order,) = world.orders("site-02")[1:]
    stored = world.store.experiment(second.experiment_id)
    listed = [e.experiment_id for e in world.store.experiments()]
    cancelled = world.experiments.cancel(first.experiment_id)

    assert stored is not None and stored.manifest == order.manifest
    assert m.manifest_hash(stored.manifest) == stored.manifest_hash == second.manifest_hash
    assert stored.manifest.algorithms[0].args == {"threshold_hu": -910}
    assert stored.created_at.utcoffset() is not None
    assert listed == [second.experiment_id, first.experiment_id]  # newest first
    assert world.store.pending_orders() == []  # every order confirmed by the broker
    assert cancelled.state == "cancelled" and cancelled.cancelled_at is not None
    assert world.store.pending_cancels() == []
    assert world.store.mark_cancelled(first.experiment_id) == []  # once only
    assert [type(x).__name__ for x in world.orders("site-01")] == [
        "ExperimentOrder", "ExperimentCancel",
    ]  # fmt: skip


# -- ingestion ------------------------------------------------------------------------------


def test_duplicates_in_a_batch_and_across_batches_count_once(world: Any) -> None:
    status = world.launch()
    settled = Settled()
    ingestor = Ingestor(world.store)
    r1, r2, r3 = (result(status, f"p-{i}", {"lav950_percent": float(i)}) for i in (1, 2, 3))
    on_two = result(status, "p-1", {"lav950_percent": 9.0}, spoke="site-02")
    resent = result(status, "p-1", {"lav950_percent": 99.0})  # same natural key as r1

    for i, message in enumerate([r1, r1, r2, on_two, r2]):
        ingestor.handle(settled.delivery(message, f"a{i}"))
    ingestor.flush()
    for i, message in enumerate([r1, r3, resent, r2, r3]):
        ingestor.handle(settled.delivery(message, f"b{i}"))
    ingestor.flush()

    got = world.experiments.status(status.experiment_id)
    outputs = [r.output for _, r in world.store.iter_results(status.experiment_id)]
    assert settled.of("reject") == []
    assert len(settled.of("ack")) == 10
    assert world.store.result_count(status.experiment_id) == 4
    assert outputs == [{"lav950_percent": v} for v in (1.0, 2.0, 9.0, 3.0)]  # first copy kept
    assert [(p.done, p.results) for p in got.spokes] == [(3, 3), (1, 1)]
    assert got.results == 4


def test_a_stale_redelivery_never_moves_a_case_backwards(world: Any, url: str) -> None:
    status = world.launch()
    running = case_status(status, "p-1", "running")
    timeout = case_status(status, "p-1", "failed", attempt=2, error="TIMEOUT")

    apply_each(
        world,
        (running,),
        (result(status, "p-1", {"v": 1}),),
        (running, case_status(status, "p-1", "queued")),  # stale: attempt 1 is done
        (timeout,),  # a higher attempt wins, whatever its state
        (result(status, "p-1", {"v": 1}), running),  # stale again: attempt 2 is newer
        # within one batch, the latest state wins regardless of arrival order
        (case_status(status, "p-2", "queued"), result(status, "p-2", {"v": 2}),
         case_status(status, "p-2", "running")),
        (case_status(status, "p-3", "running", attempt=2),
         case_status(status, "p-3", "failed", error="OUT_OF_MEMORY")),
    )  # fmt: skip

    (spoke, _) = world.experiments.status(status.experiment_id).spokes
    assert case_row(url, "p-1") == (2, "failed", "TIMEOUT")
    assert case_row(url, "p-2") == (1, "done", None)
    assert case_row(url, "p-3") == (2, "running", None)
    assert (spoke.done, spoke.failed, spoke.running, spoke.queued) == (1, 1, 1, 0)
    assert spoke.errors == {"TIMEOUT": 1}
    assert spoke.results == 2


def test_progress_counts_states_errors_and_the_cases_each_spoke_planned(world: Any) -> None:
    status = world.launch()
    eid = status.experiment_id
    accepted = m.ExperimentAccepted(spoke_id="site-01", experiment_id=eid, participants=3,
                                    cases=6)  # fmt: skip
    world.ingest(
        accepted,
        *(result(status, f"p-{i}", {"lav950_percent": 1.0}) for i in range(3)),
        case_status(status, "p-0", "failed", algorithm=NODULE, error="TIMEOUT"),
        case_status(status, "p-1", "failed", algorithm=NODULE, error="OUT_OF_MEMORY"),
        case_status(status, "p-2", "running", algorithm=NODULE),
    )
    midway = world.experiments.status(eid)
    world.ingest(
        result(status, "p-2", {"malignancy_score": 0.5}, algorithm=NODULE),
        case_status(status, "q-0", "queued", spoke="site-02"),
        case_status(status, "q-1", "queued", spoke="site-02"),
    )
    reported = world.experiments.status(eid)
    world.ingest(
        case_status(status, "q-0", "cancelled", spoke="site-02"),
        case_status(status, "q-1", "done", spoke="site-02"),
    )
    finished = world.experiments.status(eid)

    one, two = midway.spokes
    assert (one.accepted, one.participants, one.expected) == (True, 3, 6)
    assert (one.done, one.failed, one.running, one.results) == (3, 2, 1, 3)
    assert one.errors == {"TIMEOUT": 1, "OUT_OF_MEMORY": 1}
    assert (two.order_sent, two.accepted, two.expected) == (True, False, None)
    assert midway.state == "running"
    assert [(p.expected, p.queued) for p in reported.spokes] == [(6, 0), (2, 2)]
    assert reported.state == "running"
    assert [(p.done, p.cancelled) for p in finished.spokes] == [(4, 0), (1, 1)]
    assert finished.state == "complete" and finished.results == 4


def test_refused_messages_are_rejected_with_their_reason(world: Any) -> None:
    world.store.allow_spokes(["site-03"])
    status = world.launch()
    settled = Settled()
    ingestor = Ingestor(world.store)
    good = {"lav950_percent": 1.0}
    refused: dict[str, Any] = {
        "unknown spoke": result(status, "p", good, spoke="site-77"),
        "unknown experiment": result(status, "p", good, experiment_id="exp-none"),
        "spoke not in experiment": result(status, "p", good, spoke="site-03"),
        "manifest hash mismatch": result(status, "p", good, manifest_hash="c" * 64),
        "image digest mismatch": result(status, "p", good, image_digest="sha256:" + "d" * 64),
        "algorithm not in experiment": result(status, "p", good, algorithm="lung-lav950x"),
        "malformed": b'{"type": "case.result", "v": 1, "spoke_id": "site-01"}',
    }

    for reason, message in refused.items():
        ingestor.handle(settled.delivery(message, reason))
    ingestor.handle(settled.delivery(result(status, "p", good), "good"))
    ingestor.flush()

    rejections = world.store.rejections()
    assert settled.of("reject") == list(refused) and settled.of("ack") == ["good"]
    assert [r.reason.split(":")[0] for r in reversed(rejections)] == list(refused)
    assert [r.message_id for r in world.store.rejections(limit=2)] == [
        "malformed", "algorithm not in experiment",
    ]  # fmt: skip
    malformed = rejections[0]
    assert (malformed.spoke_id, malformed.message_type) == ("site-01", "case.result")
    assert malformed.body_bytes == len(refused["malformed"])
    assert malformed.received_at.utcoffset() is not None
    assert world.store.result_count(status.experiment_id) == 1


def test_results_frame_has_a_column_per_output_and_reference_field(world: Any) -> None:
    status = world.launch()
    world.ingest(
        result(status, "p-1", {"lav950_percent": 3.5, "lung": {"volume_ml": 5200},
                               "note": "Zürich ✓", "big": 2**53 + 1},
               {"malignant": 1, "lav950_percent_t0": 4.0}),
        result(status, "p-2", {"lav950_percent": 12.25, "lung": {"volume_ml": 4100}},
               {"malignant": 0, "lav950_percent_t0": None}, spoke="site-02"),
        result(status, "p-1", {"malignancy_score": 0.1 + 0.2}, {"malignant": 1},
               algorithm=NODULE, attempt=2),
    )  # fmt: skip

    frame = world.store.results_frame(status.experiment_id)
    first = list(world.store.iter_results(status.experiment_id, limit=2))
    rest = list(world.store.iter_results(status.experiment_id, after=first[-1][0]))

    assert list(frame.columns) == [
        "experiment_id", "spoke_id", "participant_id", "algorithm", "attempt", "output_sha256",
        "image_digest", "received_at", "output.big", "output.lav950_percent",
        "output.lung.volume_ml", "output.malignancy_score", "output.note",
        "reference.lav950_percent_t0", "reference.malignant",
    ]  # fmt: skip
    assert list(frame["participant_id"]) == ["p-1", "p-2", "p-1"]
    assert list(frame["attempt"]) == [1, 1, 2]
    assert list(frame["image_digest"]) == [DIGESTS[LAV], DIGESTS[LAV], DIGESTS[NODULE]]
    assert frame["output.lav950_percent"].tolist()[:2] == [3.5, 12.25]
    assert frame["output.malignancy_score"].tolist()[2] == 0.1 + 0.2  # every bit kept
    assert frame["output.note"].tolist()[0] == "Zürich ✓"
    assert first[0][1].output["big"] == 2**53 + 1  # JSON integers are not floats
    assert frame["reference.lav950_percent_t0"].isna().tolist() == [False, True, True]
    assert str(frame["received_at"].dt.tz) == "UTC"
    assert [r.participant_id for _, r in first + rest] == ["p-1", "p-2", "p-1"]


PER_SPOKE_AND_ALGORITHM = 2_500  # 2 spokes x 2 algorithms: 10,000 results
BATCH = 1_000


def _bulk(status: ExperimentStatus) -> list[Inbound]:
    items: list[Inbound] = []

    def add(message: Any) -> None:
        items.append(Inbound(f"id-{len(items)}", "0" * 64, 100, utcnow(), message=message))

    for spoke in SPOKES:
        for algorithm in (LAV, NODULE):
            for i in range(PER_SPOKE_AND_ALGORITHM):
                add(m.CaseResult.model_construct(
                    id=f"r{len(items)}", v=1, type="case.result", attempt=1,
                    experiment_id=status.experiment_id, spoke_id=spoke,
                    participant_id=f"p-{i}", algorithm=algorithm,
                    manifest_hash=status.manifest_hash, image_digest=DIGESTS[algorithm],
                    output={"score": i / PER_SPOKE_AND_ALGORITHM}, output_sha256="1" * 64,
                    reference={"malignant": i % 2}, seconds=1.0,
                ))  # fmt: skip
    timeout = m.ErrorInfo(code=RunErrorCode.TIMEOUT, reason="late")
    for state, count in (("failed", 300), ("running", 200), ("queued", 100)):
        for _ in range(count):
            add(m.CaseStatus(
                experiment_id=status.experiment_id, spoke_id=SPOKES[1],
                participant_id=f"x-{len(items)}", algorithm=LAV, state=state,
                error=timeout if state == "failed" else None,
            ))  # fmt: skip
    return items


def test_progress_of_ten_thousand_results_is_exact_and_counted_in_sql(world: Any) -> None:
    status = world.launch()
    items = _bulk(status)
    for start in range(0, len(items), BATCH):
        world.store.apply(items[start : start + BATCH])
    world.store.apply(items[:BATCH])  # a redelivered batch changes nothing
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.lower())

    event.listen(Engine, "before_cursor_execute", record)
    try:
        got = world.experiments.status(status.experiment_id)
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    frame = world.store.results_frame(status.experiment_id)

    one, two = got.spokes
    assert (one.expected, one.done, one.results, one.failed) == (5_000, 5_000, 5_000, 0)
    assert (two.expected, two.done, two.failed) == (5_600, 5_000, 300)
    assert (two.running, two.queued, two.results) == (200, 100, 5_000)
    assert two.errors == {"TIMEOUT": 300}
    assert got.results == 10_000
    reading_results = [s for s in statements if "from results" in s]
    assert reading_results and all("count(" in s and "output" not in s for s in reading_results)
    assert frame.shape == (10_000, 10)
    assert frame["reference.malignant"].sum() == 5_000


# -- PostgreSQL only -------------------------------------------------------------------------


def test_an_unreachable_postgresql_is_a_transient_store_error() -> None:
    from pg_fixtures import free_port
    from services import need

    try:
        import psycopg  # noqa: F401
    except ImportError:
        need("the PostgreSQL driver is not installed (pip install 'psycopg[binary]')")

    with pytest.raises(StoreError) as raised:
        ResultsStore.open(f"postgresql+psycopg://nobody:x@127.0.0.1:{free_port()}/hub")

    assert raised.value.transient is True


def test_a_lost_connection_is_transient_and_the_batch_is_retried(postgres_database: str) -> None:
    world = make_world(postgres_database)
    status = world.launch()
    settled = Settled()
    ingestor = Ingestor(world.store)
    ingestor.handle(settled.delivery(result(status, "p-1", {"v": 1}), "d1"))
    _disconnect_everyone(postgres_database)

    lost = ingestor.flush()
    retried = ingestor.flush()

    count = world.store.result_count(status.experiment_id)
    world.store.close()
    assert (lost, ingestor.stats.failures) == (0, 1)
    assert retried == 1 and settled.of("ack") == ["d1"]
    assert count == 1


def _disconnect_everyone(url: str, timeout: float = 10.0) -> None:
    """End every other session on ``url``'s database; wait until they are gone."""
    others = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()"
    )
    ended = read(url, f"SELECT pg_terminate_backend(pid) FROM ({others}) AS s")
    assert ended and all(ok for (ok,) in ended)
    deadline = time.monotonic() + timeout
    while read(url, others):
        assert time.monotonic() < deadline, "sessions still alive after pg_terminate_backend"
        time.sleep(0.01)


# -- defects found on one backend ------------------------------------------------------------


def test_a_lone_message_the_database_refuses_is_rejected_not_retried_forever(
    world: Any, request: pytest.FixtureRequest
) -> None:
    status = world.launch()
    settled = Settled()
    ingestor = Ingestor(world.store)
    # A NUL character is valid JSON and a valid participant id; PostgreSQL text refuses it.
    ingestor.handle(settled.delivery(result(status, "p-\u0000", {"v": 1}), "nul"))

    ingestor.flush()

    assert ingestor.pending() == 0, "the message is still waiting to be written"
    assert len(settled.events) == 1 and ingestor.stats.failures == 0


def test_a_malformed_message_with_a_nul_character_does_not_block_the_inbox(
    world: Any, request: pytest.FixtureRequest
) -> None:
    status = world.launch()
    settled = Settled()
    ingestor = Ingestor(world.store)
    nul = b'{"type": "case.result\\u0000", "spoke_id": "site\\u0000-01"}'  # valid JSON

    ingestor.handle(settled.delivery(result(status, "p-1", {"v": 1}), "before"))
    ingestor.handle(settled.delivery(nul, "nul"))
    ingestor.handle(settled.delivery(result(status, "p-2", {"v": 2}), "after"))
    ingestor.flush()

    assert settled.of("ack") == ["before", "after"] and settled.of("reject") == ["nul"]
    assert world.store.rejections()[0].message_id == "nul"
    assert world.store.result_count(status.experiment_id) == 2


def test_a_result_with_a_non_finite_number_is_stored_by_neither_backend(
    world: Any, request: pytest.FixtureRequest
) -> None:
    status = world.launch()
    settled = Settled()
    ingestor = Ingestor(world.store)
    body = m.encode(result(status, "p-1", {"lav950_percent": 1.5}))

    ingestor.handle(settled.delivery(body.replace(b"1.5", b"NaN"), "nan"))
    ingestor.handle(settled.delivery(result(status, "p-2", {"lav950_percent": 2.0}), "good"))
    ingestor.flush()

    assert settled.of("reject") == ["nan"] and settled.of("ack") == ["good"]
    assert world.store.result_count(status.experiment_id) == 1
