"""``HubClient``: the hub's HTTP API as Python calls, over ``urllib`` (no extra dependency).

Front ends (the CLI, notebook widgets, reports) talk to the hub only through this class:
one method per route, JSON in, JSON out. A refusal by the hub raises the ``HubError``
subclass of its status with the hub's own code and message (``NotFoundError`` for a 404,
``BadRequestError`` for a 400, ``ConflictError`` for a 409); a hub that cannot be reached
raises ``HubUnreachableError``.

>>> hub = HubClient("http://127.0.0.1:8750")                            # doctest: +SKIP
>>> exp = hub.launch("lung-screening", ["lung-lav950"], ["site-01"])     # doctest: +SKIP
>>> hub.experiment(exp["experiment_id"])["state"]                        # doctest: +SKIP
'running'
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

from workbench.errors import (
    BadRequestError,
    ConflictError,
    HubError,
    HubUnreachableError,
    NotFoundError,
)
from workbench.hub_kernel.results import to_frame

DEFAULT_HUB_URL = "http://127.0.0.1:8750"
HUB_URL_ENV = "WORKBENCH_HUB_URL"
_BY_STATUS: dict[int, type[HubError]] = {
    400: BadRequestError,
    404: NotFoundError,
    409: ConflictError,
}


class HubClient:
    """A client of one hub's HTTP API."""

    def __init__(self, base_url: str = DEFAULT_HUB_URL, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    @classmethod
    def from_env(cls) -> HubClient:
        """A client of ``$WORKBENCH_HUB_URL`` (or the default ``http://127.0.0.1:8750``)."""
        return cls(os.environ.get(HUB_URL_ENV) or DEFAULT_HUB_URL)

    def health(self) -> dict[str, Any]:
        """``GET /health``: status, version, ingestion counters, trust and audit log head."""
        return self._call("GET", "/health")

    def openapi(self) -> dict[str, Any]:
        """``GET /openapi.json``: the API's description."""
        return self._call("GET", "/openapi.json")

    def spokes(self) -> list[dict[str, Any]]:
        """``GET /spokes``: known spokes with their last heartbeat."""
        return list(self._call("GET", "/spokes")["spokes"])

    def algorithms(self) -> list[dict[str, Any]]:
        """``GET /algorithms``: every registered algorithm and version."""
        return list(self._call("GET", "/algorithms")["algorithms"])

    def register_algorithm(self, spec: dict[str, Any]) -> dict[str, Any]:
        """``POST /algorithms``: register (name, version, image, digest, output_schema, ...,
        and optionally the image's ``signature`` document).

        Returns ``{"algorithm": {...}, "created": bool}``. Raises ``ConflictError`` when the
        name and version are registered with another digest, ``BadRequestError`` when the
        signature names another digest.
        """
        return self._call("POST", "/algorithms", spec)

    def studies(self) -> list[dict[str, Any]]:
        """``GET /studies``: the valid study definitions."""
        return list(self._call("GET", "/studies")["studies"])

    def study(self, name: str) -> dict[str, Any]:
        """``GET /studies/{name}``: one study definition."""
        return self._call("GET", f"/studies/{quote(name, safe='')}")

    def experiments(self) -> list[dict[str, Any]]:
        """``GET /experiments``: every experiment's status, newest first."""
        return list(self._call("GET", "/experiments")["experiments"])

    def launch(
        self,
        study: str,
        algorithms: list[str],
        spokes: list[str],
        args: dict[str, dict[str, Any]] | None = None,
        timeout_s: float | None = None,
        memory_bytes: int | None = None,
        deadline: str | None = None,
    ) -> dict[str, Any]:
        """``POST /experiments``: launch; returns the new experiment's status.

        ``algorithms`` are ``name`` (latest version) or ``name:version``; ``args`` maps an
        algorithm name to its arguments. ``deadline`` is an ISO-8601 timestamp with a zone or
        a duration (``2h``, ``30m``) the hub counts from its own clock.
        """
        body: dict[str, Any] = {"study": study, "algorithms": algorithms, "spokes": spokes}
        if args:
            body["args"] = args
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        if memory_bytes is not None:
            body["memory_bytes"] = memory_bytes
        if deadline is not None:
            body["deadline"] = deadline
        return self._call("POST", "/experiments", body)

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        """``GET /experiments/{id}``: state and per-spoke progress."""
        return self._call("GET", f"/experiments/{quote(experiment_id, safe='')}")

    def cancel(self, experiment_id: str) -> dict[str, Any]:
        """``POST /experiments/{id}/cancel``: cancel; returns the status."""
        return self._call("POST", f"/experiments/{quote(experiment_id, safe='')}/cancel")

    def results(self, experiment_id: str, page_size: int = 1000) -> list[dict[str, Any]]:
        """``GET /experiments/{id}/results``, every page: one dict per result."""
        rows: list[dict[str, Any]] = []
        after: int | None = 0
        path = f"/experiments/{quote(experiment_id, safe='')}/results"
        while after is not None:
            page = self._call("GET", f"{path}?{urlencode({'after': after, 'limit': page_size})}")
            rows.extend(page["rows"])
            after = page["next"]
        return rows

    def results_frame(self, experiment_id: str) -> Any:
        """The results as a ``pandas.DataFrame`` with ``output.*``/``reference.*`` columns."""
        return to_frame(self.results(experiment_id))

    def rejections(
        self, limit: int = 100, experiment_id: str | None = None, code: str | None = None
    ) -> list[dict[str, Any]]:
        """``GET /rejections``: the latest refused inbox messages (filtered), newest first."""
        query: dict[str, Any] = {"limit": limit}
        if experiment_id is not None:
            query["experiment_id"] = experiment_id
        if code is not None:
            query["code"] = code
        return list(self._call("GET", f"/rejections?{urlencode(query)}")["rejections"])

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                document = json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise _hub_error(e) from e
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise HubUnreachableError(f"cannot reach the hub at {self.base_url}: {reason}") from e
        except ValueError as e:
            raise HubError(f"the hub at {self.base_url} answered {path} with non-JSON") from e
        if not isinstance(document, dict):
            raise HubError(f"the hub at {self.base_url} answered {path} with a non-object")
        return document


def _hub_error(e: urllib.error.HTTPError) -> HubError:
    """The ``HubError`` an error reply stands for, with the hub's code and message."""
    with e:
        raw = e.read()
    try:
        error = json.loads(raw)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{e.code}", f"HTTP {e.code} {e.reason}"
    cls = _BY_STATUS.get(e.code, HubError)
    error_obj = cls(message, code=code)
    error_obj.status = e.code
    return error_obj
