from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hub_world import DIGESTS, LAV, NODULE, SPOKES, STUDIES, Keys, result, spec, wait_until

from workbench.cli import hub as hub_cli
from workbench.cli.experiment import parse_args
from workbench.cli.main import main
from workbench.core import messages as m
from workbench.errors import ConfigError
from workbench.hub_kernel.client import HubClient
from workbench.hub_kernel.models import ExperimentStatus
from workbench.hub_kernel.service import Hub
from workbench.hub_kernel.store import ResultsStore
from workbench.hub_kernel.studies import StudyCatalog
from workbench.images.algorithms import default_algorithms_dir, load
from workbench.transport.memory import InMemoryBroker
from workbench.trust.audit import verify


@pytest.fixture
def hub(tmp_path: Path, server: InMemoryBroker, keys: Keys) -> Iterator[Hub]:
    store = ResultsStore.open(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    parts = {"signer": keys.hub_signer, "trust": keys.trust()}
    with Hub(store, server.connect(), StudyCatalog(STUDIES), allowed_spokes=SPOKES,
             **parts) as hub:  # fmt: skip
        client = HubClient(hub.url)
        for name in (LAV, NODULE):
            client.register_algorithm(spec(name).model_dump(mode="json"))
        yield hub
    store.close()


def test_launch_status_results_and_cancel_from_the_command_line(
    hub: Hub, server: InMemoryBroker, keys: Keys, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    common = ["--hub", hub.url]
    launch = ["experiment", "launch", "--study", "lung-screening", "--algorithm", LAV]
    assert main([*launch, "--spoke", "site-01", "--arg", f"{LAV}.threshold_hu=-900", *common]) == 0
    experiment_id = capsys.readouterr().out.strip()
    (order,) = [m.parse_message(b) for b in server.drain(m.orders_queue("site-01"))]
    status = ExperimentStatus.model_validate(HubClient(hub.url).experiment(experiment_id))
    keys.send(server.connect(), result(status, "p-1", {"score": 0.75}, {"y": 1}))
    keys.send(server.connect(), result(status, "p-2", {"score": 0.5}), by="site-02")  # forged
    wait_until(lambda: hub.store.result_count(experiment_id) == 1, "the result")
    wait_until(lambda: hub.ingestor.stats.rejected == 1, "the refusal")

    assert main(["experiment", "status", experiment_id, *common]) == 0
    shown = capsys.readouterr().out
    assert main(["experiment", "results", experiment_id, "--csv", str(tmp_path / "r.csv"),
                 *common]) == 0  # fmt: skip
    assert main(["experiment", "cancel", experiment_id, "--json", *common]) == 0
    cancelled = json.loads(capsys.readouterr().out)

    assert isinstance(order, m.ExperimentOrder)
    assert order.manifest.algorithms[0].args == {"threshold_hu": -900}
    assert experiment_id in shown and "site-01" in shown and "running" in shown
    assert "(1 signature-verified)" in shown and "wrong_signer: 1" in shown
    with (tmp_path / "r.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert (row["participant_id"], row["output.score"], row["reference.y"]) == (
        "p-1",
        "0.75",
        "1.0",
    )
    assert cancelled["state"] == "cancelled"


def test_an_unknown_experiment_exits_1_with_the_hubs_message(
    hub: Hub, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["experiment", "status", "exp-missing", "--hub", hub.url])

    assert code == 1
    assert "exp-missing" in capsys.readouterr().err


def test_an_unreachable_hub_exits_1_with_a_clear_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        code = main(["experiment", "status", "e", "--hub", url])

    assert code == 1
    assert f"cannot reach the hub at {url}" in capsys.readouterr().err


def test_algorithm_arguments_are_grouped_by_algorithm() -> None:
    parsed = parse_args(["a-1.x=1", "a-1.mode=fast", "b.flags=[1,2]"])

    assert parsed == {"a-1": {"x": 1, "mode": "fast"}, "b": {"flags": [1, 2]}}
    with pytest.raises(ConfigError):
        parse_args(["no-dot=1"])
    with pytest.raises(ConfigError):
        parse_args(["a.x=1", "a.x=2"])


class _Image:
    def __init__(self, image_id: str, labels: dict[str, str]) -> None:
        self.id, self.labels = image_id, labels


class _Engine:
    def image(self, reference: str) -> _Image:
        return _Image(DIGESTS[LAV], load(default_algorithms_dir() / "lung_lav950").labels())


def test_algorithm_register_reads_the_image_labels_and_registers_them(
    hub: Hub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from workbench.spoke_service.engine import DockerEngine

    monkeypatch.setattr(DockerEngine, "from_env", classmethod(lambda cls: _Engine()))
    hub.store.algorithms()  # lav 1.0.0 is registered by the fixture with the same digest

    code = main(["algorithm", "register", "elic/lung-lav950:1.0.0", "--hub", hub.url])

    assert code == 0
    assert f"already registered: lung-lav950:1.0.0 = {DIGESTS[LAV]}" in capsys.readouterr().out


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    hub_cli.register(parser.add_subparsers())
    return parser.parse_args(["hub", "serve", *argv])


def test_hub_serve_options_override_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        'db = "sqlite:///x.sqlite"\nbroker = "stomp://127.0.0.1:61613"\nport = 9000\n'
        'studies = "my-studies"\nallowed_spokes = ["site-01"]\n'
    )

    settings = hub_cli.settings(_serve_args("--config", str(config), "--port", "0", "--spoke",
                                            "site-02"))  # fmt: skip

    assert settings.port == 0 and settings.db == "sqlite:///x.sqlite"
    assert settings.broker == ("stomp://127.0.0.1:61613",)
    assert settings.studies == tmp_path / "my-studies"
    assert settings.allowed_spokes == ("site-01", "site-02")


def test_the_signature_worker_is_set_in_the_file_or_on_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('db = "sqlite:///x.sqlite"\nsignature_worker = false\n')

    assert hub_cli.settings(_serve_args()).signature_worker is None  # by the cores
    assert hub_cli.settings(_serve_args("--config", str(config))).signature_worker is False
    on = hub_cli.settings(_serve_args("--config", str(config), "--signature-worker"))
    assert on.signature_worker is True
    config.write_text('signature_worker = "yes"\n')
    with pytest.raises(ConfigError, match="signature_worker must be true or false"):
        hub_cli.settings(_serve_args("--config", str(config)))


def test_an_unknown_config_setting_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "hub.json"
    config.write_text(json.dumps({"db": "sqlite:///x.sqlite", "prot": 1}))

    with pytest.raises(ConfigError) as raised:
        hub_cli.settings(_serve_args("--config", str(config)))

    assert "prot" in str(raised.value)


def test_hub_serve_options_for_keys_and_audit_log_resolve_like_the_config_file(
    tmp_path: Path,
) -> None:
    config = tmp_path / "conf" / "hub.toml"
    config.parent.mkdir()
    config.write_text('db = "sqlite:///x.sqlite"\nsigning_key = "keys/hub/private.pem"\n'
                      'spoke_keys = "keys/spokes"\n')  # fmt: skip

    from_file = hub_cli.settings(_serve_args("--config", str(config)))
    overridden = hub_cli.settings(_serve_args(
        "--config", str(config), "--audit-log", str(tmp_path / "a.jsonl"), "--insecure-unsigned"
    ))  # fmt: skip

    assert from_file.signing_key == config.parent / "keys" / "hub" / "private.pem"
    assert from_file.spoke_keys == config.parent / "keys" / "spokes"
    assert from_file.audit_path() == Path("x.audit.jsonl")  # beside the SQLite file
    assert from_file.insecure_unsigned is False and overridden.insecure_unsigned is True
    assert overridden.audit_path() == tmp_path / "a.jsonl"


def _serve_until_interrupted(
    argv: list[str], server: InMemoryBroker, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, dict[str, Any]]:
    """Run ``workbench hub serve ARGV``, read its health, interrupt it; exit code, health."""
    started: list[Hub] = []
    real_start = Hub.start

    def start(self: Hub) -> Hub:
        started.append(real_start(self))
        return self

    monkeypatch.setattr(
        "workbench.hub_kernel.service.connect_broker", lambda urls, tls=None: server.connect()
    )
    monkeypatch.setattr(Hub, "start", start)
    seen: dict[str, Any] = {}

    def use_then_interrupt() -> None:
        try:
            wait_until(lambda: bool(started), "the hub to start")
            seen.update(HubClient(started[0].url).health())
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=use_then_interrupt)
    thread.start()
    code = main(["hub", "serve", "--broker", "memory://", "--port", "0", *argv])
    thread.join(timeout=10)
    return code, seen


def test_hub_serve_runs_until_sigint_and_shuts_down_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_key, spoke_keys = Keys.make(["site-01"]).write(tmp_path / "keys")
    db = tmp_path / "h.sqlite"
    before = signal.getsignal(signal.SIGINT)

    code, health = _serve_until_interrupted(
        ["--db", f"sqlite:///{db}", "--signing-key", str(hub_key), "--spoke-keys",
         str(spoke_keys)],
        InMemoryBroker(), monkeypatch,
    )  # fmt: skip

    assert code == 0
    assert health["status"] == "ok"
    assert health["trust"]["signing_required"] is True
    assert list(health["trust"]["spoke_keys"]) == ["site-01"]
    assert health["audit"]["path"] == str(tmp_path / "h.audit.jsonl")
    assert signal.getsignal(signal.SIGINT) is before
    store = ResultsStore.open(f"sqlite:///{db}")
    assert [s.spoke_id for s in store.spokes()] == ["site-01"]  # allow-listed by its key
    store.close()
    report = verify(tmp_path / "h.audit.jsonl")
    assert report.ok and report.entries == 2  # hub.started, hub.stopped


def test_hub_serve_without_keys_refuses_to_start_unless_insecure_unsigned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 'h.sqlite'}"]

    refused = main(["hub", "serve", "--broker", "memory://", "--port", "0", *db])
    message = capsys.readouterr().err
    code, health = _serve_until_interrupted(
        [*db, "--insecure-unsigned", "--spoke", "site-01"], InMemoryBroker(), monkeypatch
    )

    assert refused == 1
    assert "signing_key" in message and "insecure_unsigned" in message
    assert code == 0 and health["trust"]["signing_required"] is False
    assert health["trust"]["hub_key_id"] is None
