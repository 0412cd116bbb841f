from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from workbench.core import messages as m

DIGEST = "sha256:" + "a" * 64
HASH = "b" * 64


def manifest() -> m.Manifest:
    algorithm = m.AlgorithmRef(
        name="lung-lav950", version="1.0.0", image="elic/lung-lav950:1.0.0", digest=DIGEST
    )
    return m.Manifest(
        experiment_id="exp-1",
        study="lung-screening",
        algorithms=(algorithm,),
        spokes=("site-01", "site-02"),
        created_at="2026-11-28T00:00:00Z",
    )


def result(**changes: object) -> m.CaseResult:
    fields = dict(
        experiment_id="exp-1", spoke_id="site-01", participant_id="p-1", algorithm="lung-lav950",
        manifest_hash=HASH, image_digest=DIGEST, output={"lav950_percent": 3.5},
        output_sha256=HASH, reference={"malignant": 1},
    )  # fmt: skip
    fields.update(changes)
    return m.CaseResult(**fields)  # type: ignore[arg-type]


def test_every_type_round_trips_through_bytes() -> None:
    order_hash = m.manifest_hash(manifest())
    failed = m.ErrorInfo(code=m.RunErrorCode.TIMEOUT, reason="late")
    messages = [
        m.ExperimentOrder(spoke_id="site-01", manifest=manifest(), manifest_hash=order_hash),
        m.ExperimentCancel(spoke_id="site-01", experiment_id="exp-1"),
        m.ExperimentAccepted(spoke_id="site-01", experiment_id="exp-1", participants=4, cases=8),
        m.CaseStatus(experiment_id="exp-1", spoke_id="site-01", participant_id="p-1",
                     algorithm="a", state="failed", error=failed),
        result(),
        m.SpokeHeartbeat(spoke_id="site-01", sent_at="2026-11-28T00:00:00Z", queued=3),
        m.ParticipantManifest(spoke_id="site-01", participants=12, series=24, instances=1920,
                              acquisition={"manufacturer": {"SIEMENS": 24}}),
    ]  # fmt: skip
    assert {msg.type for msg in messages} == set(m.TYPES)
    for msg in messages:
        assert m.parse_message(m.encode(msg)) == msg


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"type": "case.explode", "v": 1}', "unknown message type"),
        (b'{"type": "case.status", "v": 2}', "unsupported version"),
        (b'{"type": "case.status", "v": 1, "id": "12345678"}', "invalid case.status"),
    ],
)
def test_malformed_messages_are_message_errors(data: bytes, problem: str) -> None:
    with pytest.raises(m.MessageError, match=problem):
        m.parse_message(data)


def test_extra_fields_and_bad_values_are_refused() -> None:
    raw = json.loads(m.encode(result()))
    for key, value in [
        ("traceback", "..."),
        ("spoke_id", "Site 01"),
        ("attempt", 0),
        ("image_digest", "latest"),
    ]:
        bad = {**raw, key: value}
        with pytest.raises(m.MessageError):
            m.parse_message(json.dumps(bad))


def test_natural_key_ignores_the_message_id() -> None:
    a, b = result(), result()
    assert a.id != b.id
    assert a.natural_key == b.natural_key
    assert result(attempt=2).natural_key != a.natural_key


def test_manifest_hash_is_stable_and_sensitive() -> None:
    assert m.manifest_hash(manifest()) == m.manifest_hash(manifest())
    other = manifest().model_copy(update={"spokes": ("site-01",)})
    assert m.manifest_hash(other) != m.manifest_hash(manifest())


def test_orders_queue_refuses_odd_spoke_ids() -> None:
    assert m.orders_queue("site-01") == "/queue/elic.spoke.site-01.orders"
    for bad in ["", "Site", "a/b", "a.b", "x" * 80]:
        with pytest.raises(ValueError):
            m.orders_queue(bad)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_parser(data: bytes) -> None:
    with contextlib.suppress(m.MessageError):
        m.parse_message(data)


def _valid_documents() -> list[dict[str, object]]:
    failed = m.ErrorInfo(code=m.RunErrorCode.TIMEOUT, reason="late")
    order_hash = m.manifest_hash(manifest())
    messages = [
        m.ExperimentOrder(spoke_id="site-01", manifest=manifest(), manifest_hash=order_hash),
        m.ExperimentCancel(spoke_id="site-01", experiment_id="exp-1"),
        m.CaseStatus(experiment_id="exp-1", spoke_id="site-01", participant_id="p-1",
                     algorithm="a", state="failed", error=failed),
        result(seconds=1.5, audit_head="3:" + "0" * 64),
        m.SpokeHeartbeat(spoke_id="site-01", sent_at="2026-11-28T00:00:00Z", queued=3),
    ]  # fmt: skip
    return [json.loads(m.encode(msg)) for msg in messages]


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)


def _outcome(parse: object, data: bytes) -> tuple[object, ...]:
    try:
        message = parse(data)  # type: ignore[operator]
    except m.MessageError:
        return ("refused",)
    return ("accepted", message.type, message.model_dump(exclude={"id"}))


@settings(max_examples=400)
@example(document=_valid_documents()[1], drop="v", key="", value=None)  # v defaults to 1
@example(document=_valid_documents()[3], drop="", key="seconds", value=float("nan"))
@example(document=_valid_documents()[3], drop="", key="output", value={"x": float("nan")})
@example(document=_valid_documents()[3], drop="", key="output", value=[float("-inf")])
@example(document=_valid_documents()[3], drop="", key="seconds", value=10**400)  # inf
@given(
    document=st.sampled_from(_valid_documents()),
    drop=st.sampled_from(["", "v", "id", "type", "spoke_id", "output", "state"]),
    key=st.sampled_from(["", "v", "type", "queued", "output", "seconds", "error", "extra"]),
    value=_JSON_VALUES,
)
def test_the_fast_path_accepts_exactly_what_the_checked_path_accepts(
    document: dict[str, object], drop: str, key: str, value: object
) -> None:
    changed = dict(document)
    changed.pop(drop, None)
    if key:
        changed[key] = value
    data = json.dumps(changed).encode()  # NaN and Infinity are written as such: refused
    assert _outcome(m.parse_message, data) == _outcome(m._parse_checked, data)


def test_a_number_too_large_for_a_float_is_refused_in_a_result() -> None:
    body = m.encode(result(output={"lav950_percent": 3.5}))
    with pytest.raises(m.MessageError, match="not finite"):
        m.parse_message(body.replace(b"3.5", b"1e999"))
