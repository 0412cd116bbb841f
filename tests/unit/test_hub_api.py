from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hub_world import DIGESTS, LAV, NODULE, SPOKES, STUDIES, Keys, result, spec, wait_until

from workbench.core import messages as m
from workbench.errors import (
    BadRequestError,
    ConflictError,
    HubError,
    HubUnreachableError,
    NotFoundError,
)
from workbench.hub_kernel.api import ROUTES
from workbench.hub_kernel.client import HubClient
from workbench.hub_kernel.models import ExperimentStatus
from workbench.hub_kernel.service import Hub
from workbench.hub_kernel.store import ResultsStore
from workbench.hub_kernel.studies import StudyCatalog
from workbench.transport.base import DEAD_LETTER_QUEUE
from workbench.transport.memory import InMemoryBroker
from workbench.trust.audit import AuditLog
from workbench.trust.keys import key_id


@pytest.fixture
def hub(tmp_path: Path, server: InMemoryBroker, keys: Keys) -> Iterator[Hub]:
    store = ResultsStore.open(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    hub = Hub(
        store, server.connect(), StudyCatalog(STUDIES), allowed_spokes=SPOKES,
        signer=keys.hub_signer, trust=keys.trust(), audit=AuditLog(tmp_path / "audit.jsonl"),
        owns_audit=True,
    )  # fmt: skip
    hub.start()
    yield hub
    hub.stop()
    store.close()


@pytest.fixture
def client(hub: Hub) -> HubClient:
    client = HubClient(hub.url, timeout=10)
    for name in (LAV, NODULE):
        client.register_algorithm(spec(name).model_dump(mode="json"))
    return client


def _raw(url: str, method: str, data: bytes | None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def test_launch_status_and_results_through_the_client(
    client: HubClient, hub: Hub, server: InMemoryBroker, keys: Keys
) -> None:
    launched = client.launch("lung-screening", [LAV], list(SPOKES), {LAV: {"threshold_hu": -920}})
    status = ExperimentStatus.model_validate(launched)
    orders = [m.parse_message(b) for b in server.drain(m.orders_queue("site-01"))]
    spoke = server.connect()
    keys.send(spoke, result(status, "p-1", {"lav950_percent": 2.5}, {"y": 1}))
    keys.send(spoke, result(status, "p-2", {"lav950_percent": 7.0}, {"y": 0}))
    wait_until(lambda: client.experiment(status.experiment_id)["results"] == 2, "two results")

    got = client.experiment(status.experiment_id)
    rows = client.results(status.experiment_id, page_size=1)
    frame = client.results_frame(status.experiment_id)

    (order,) = orders
    assert isinstance(order, m.ExperimentOrder)
    assert order.manifest_hash == launched["manifest_hash"]
    assert got["state"] == "running" and got["spokes"][0]["results"] == 2
    assert got["results_verified"] == got["spokes"][0]["results_verified"] == 2
    assert [r["participant_id"] for r in rows] == ["p-1", "p-2"]
    assert rows[0]["output"] == {"lav950_percent": 2.5} and rows[0]["reference"] == {"y": 1}
    assert set(rows[0]) >= {
        "experiment_id", "spoke_id", "participant_id", "algorithm", "attempt", "output",
        "reference", "received_at",
    }  # fmt: skip
    assert frame["output.lav950_percent"].tolist() == [2.5, 7.0]
    assert [e["experiment_id"] for e in client.experiments()] == [status.experiment_id]


def test_registering_reports_created_then_existing_then_conflict(client: HubClient) -> None:
    body = spec(LAV).model_dump(mode="json")

    again = client.register_algorithm(body)
    with pytest.raises(ConflictError) as raised:
        client.register_algorithm({**body, "digest": "sha256:" + "9" * 64})

    assert again["created"] is False
    assert again["algorithm"]["digest"] == DIGESTS[LAV]
    assert raised.value.status == 409 and raised.value.code == "algorithm_conflict"
    assert sorted(a["name"] for a in client.algorithms()) == [LAV, NODULE]


def test_unknown_things_are_404_with_the_hubs_code(client: HubClient) -> None:
    with pytest.raises(NotFoundError) as experiment:
        client.experiment("exp-nope")
    with pytest.raises(NotFoundError) as results:
        client.results("exp-nope")
    with pytest.raises(NotFoundError) as spoke:
        client.launch("lung-screening", [LAV], ["site-42"])

    assert experiment.value.code == results.value.code == "unknown_experiment"
    assert "exp-nope" in experiment.value.message
    assert spoke.value.code == "unknown_spoke" and "site-42" in spoke.value.message


@pytest.mark.parametrize(
    ("method", "path", "data", "status", "code"),
    [
        ("POST", "/experiments", b"{not json", 400, "bad_request"),
        ("POST", "/experiments", b"[1, 2]", 400, "bad_request"),
        ("POST", "/experiments", b'{"study": "lung-screening"}', 400, "bad_request"),
        ("POST", "/algorithms", b'{"name": "x"}', 400, "bad_request"),
        ("GET", "/experiments/x/results?limit=0", None, 400, "bad_request"),
        ("GET", "/rejections?limit=lots", None, 400, "bad_request"),
        ("GET", "/nowhere", None, 404, "no_route"),
        ("DELETE", "/experiments", None, 405, "method_not_allowed"),
        ("GET", "/studies/nope", None, 404, "unknown_study"),
    ],
)
def test_bad_requests_get_a_json_error_and_never_a_traceback(
    hub: Hub, method: str, path: str, data: bytes | None, status: int, code: str
) -> None:
    got, body = _raw(hub.url + path, method, data)

    assert (got, body["error"]["code"]) == (status, code)
    assert body["error"]["message"] and "Traceback" not in json.dumps(body)


def test_an_unexpected_failure_is_a_500_without_a_traceback(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(limit: int = 100) -> list[object]:
        raise RuntimeError("secret internals at /srv/hub/store.py line 12")

    monkeypatch.setattr(hub.store, "rejections", explode)

    got, body = _raw(hub.url + "/rejections", "GET", None)

    assert got == 500 and body["error"]["code"] == "internal"
    assert "secret" not in json.dumps(body)


def test_the_client_raises_the_servers_message_for_a_bad_body(client: HubClient) -> None:
    with pytest.raises(BadRequestError) as raised:
        client.launch("lung-screening", [], ["site-01"])

    assert raised.value.status == 400
    assert "algorithms" in raised.value.message


def test_openapi_describes_every_route_and_nothing_else(hub: Hub, client: HubClient) -> None:
    document = client.openapi()
    described = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    served = {(r.method, r.template) for r in ROUTES}

    assert described == served
    for method, path in sorted(described):
        concrete = path.replace("{experiment_id}", "exp-x").replace("{name}", "lung-screening")
        status, body = _raw(hub.url + concrete, method, b"{}" if method == "POST" else None)
        assert body.get("error", {}).get("code") not in {"no_route", "method_not_allowed"}, path
        assert str(status) in document["paths"][path][method.lower()]["responses"], (path, status)
    assert document["openapi"].startswith("3.")
    assert "ExperimentStatus" in document["components"]["schemas"]


def test_lists_of_spokes_studies_and_rejections(
    client: HubClient, hub: Hub, server: InMemoryBroker, keys: Keys
) -> None:
    server.connect().send(m.HUB_INBOX, b"garbage", keys.sign_body(b"garbage", "site-01"))
    wait_until(lambda: server.depth(DEAD_LETTER_QUEUE) == 1, "the dead letter")

    spokes = client.spokes()
    studies = client.studies()
    rejections = client.rejections()

    assert [s["spoke_id"] for s in spokes] == [*SPOKES, "site-03"]  # site-03: a trusted key
    assert all(s["allowed"] and s["last_heartbeat_at"] is None for s in spokes)
    assert "lung-screening" in [s["name"] for s in studies]
    assert client.study("lung-screening")["cohort"]["min_timepoints"] == 2
    assert len(rejections) == 1 and rejections[0]["reason"].startswith("malformed")
    signer = key_id(keys.spokes["site-01"])
    assert (rejections[0]["code"], rejections[0]["key_id"]) == ("malformed", signer)
    assert client.health()["ingest"]["rejected"] == 1


def test_cancel_through_the_client(client: HubClient, server: InMemoryBroker) -> None:
    launched = client.launch("lung-screening", [LAV], ["site-02"])
    server.drain(m.orders_queue("site-02"))

    cancelled = client.cancel(launched["experiment_id"])

    assert cancelled["state"] == "cancelled"
    (cancel,) = [m.parse_message(b) for b in server.drain(m.orders_queue("site-02"))]
    assert isinstance(cancel, m.ExperimentCancel)


def test_an_unreachable_hub_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused

        with pytest.raises(HubUnreachableError) as raised:
            HubClient(f"http://127.0.0.1:{port}", timeout=5).health()

    assert f"127.0.0.1:{port}" in raised.value.message
    assert isinstance(raised.value, HubError)
