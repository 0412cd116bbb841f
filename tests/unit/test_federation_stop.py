"""A local federation's stop always stops the registry and the broker."""

from __future__ import annotations

import pytest

from workbench import federation
from workbench.federation import LocalFederation


class Stoppable:
    def __init__(self, calls: list[str], name: str) -> None:
        self.calls, self.name, self.address = calls, name, "127.0.0.1:5000"

    def stop(self) -> None:
        self.calls.append(self.name)


def test_stop_stops_registry_and_broker_when_removing_image_names_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(client: object, registry: str) -> int:
        raise ConnectionError("the Docker daemon went away")

    monkeypatch.setattr(federation, "forget_references", refuse)
    calls: list[str] = []
    fed = LocalFederation.__new__(LocalFederation)  # no PKI, broker or processes needed
    fed._processes = {}
    fed._docker = object()  # images were pushed
    fed.registry = Stoppable(calls, "registry")  # type: ignore[assignment]
    fed.broker = Stoppable(calls, "broker")  # type: ignore[assignment]

    fed.stop()

    assert calls == ["registry", "broker"]
    assert "could not remove the registry's image names" in caplog.text
