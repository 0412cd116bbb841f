"""The hub's HTTP JSON API on the standard library's ``ThreadingHTTPServer``.

Routing is one table, ``ROUTES``: method, path template, handler. ``HubApp`` holds the
handlers and knows nothing of HTTP; ``ApiServer`` reads requests, calls
``HubApp.dispatch`` and writes JSON. ``/openapi.json`` describes exactly these routes
(``openapi.py``; a test holds the two together).

Errors are JSON, ``{"error": {"code": ..., "message": ...}}``: a ``HubError`` answers with
its own status (400, 404, 409, 503), anything unexpected with a 500 whose message says to
look in the hub's log, where the traceback went. A traceback never reaches a response.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from workbench import __version__
from workbench.errors import BadRequestError, HubError, NotFoundError
from workbench.hub_kernel import openapi
from workbench.hub_kernel.experiments import Experiments
from workbench.hub_kernel.registry import Registry
from workbench.hub_kernel.store import ResultsStore
from workbench.hub_kernel.studies import StudyCatalog

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
RESULTS_PAGE = 1000
RESULTS_PAGE_MAX = 10000


@dataclass(frozen=True)
class Request:
    """A parsed request: path parameters, query parameters and the JSON body (if any)."""

    params: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    body: Any = None


Reply = tuple[int, Any]


@dataclass(frozen=True)
class Route:
    """One route: ``GET /experiments/{experiment_id}`` and the ``HubApp`` method serving it."""

    method: str
    template: str
    handler: Callable[[HubApp, Request], Reply]

    @property
    def pattern(self) -> re.Pattern[str]:
        """The template as a regular expression (``{name}`` matches one path segment)."""
        parts = re.split(r"(\{[a-z_]+\})", self.template)
        regex = "".join(
            f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts
        )
        return re.compile(f"^{regex}$")


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json")


class HubApp:
    """The API's handlers over the hub's parts; ``dispatch`` routes one request."""

    def __init__(
        self,
        store: ResultsStore,
        registry: Registry,
        studies: StudyCatalog,
        experiments: Experiments,
        health: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.studies = studies
        self.experiments = experiments
        self._health = health or dict

    def dispatch(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        """Find the route for ``method path`` and run it; errors become JSON replies."""
        allowed = []
        for route in ROUTES:
            match = route.pattern.match(path)
            if match is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            params = {k: unquote(v) for k, v in match.groupdict().items()}
            try:
                return route.handler(self, Request(params, query, body))
            except HubError as e:
                return e.status, error_body(e.code, e.message)
            except Exception:
                log.exception("%s %s failed", method, path)
                return 500, error_body("internal", "internal error; see the hub's log")
        if allowed:
            return 405, error_body("method_not_allowed", f"{path} allows {', '.join(allowed)}")
        return 404, error_body("no_route", f"no route {method} {path}")

    def health(self, req: Request) -> Reply:
        self.store.ping()
        return 200, {"status": "ok", "version": __version__, **self._health()}

    def openapi(self, req: Request) -> Reply:
        return 200, openapi.document()

    def list_spokes(self, req: Request) -> Reply:
        return 200, {"spokes": [_dump(s) for s in self.store.spokes()]}

    def list_algorithms(self, req: Request) -> Reply:
        return 200, {"algorithms": [_dump(a) for a in self.registry.list()]}

    def register_algorithm(self, req: Request) -> Reply:
        algorithm, created = self.registry.register(_object(req.body))
        return (201 if created else 200), {"algorithm": _dump(algorithm), "created": created}

    def list_studies(self, req: Request) -> Reply:
        studies, invalid = self.studies.all()
        return 200, {"studies": [_dump(s) for s in studies], "invalid": invalid}

    def get_study(self, req: Request) -> Reply:
        return 200, _dump(self.studies.get(req.params["name"]))

    def list_experiments(self, req: Request) -> Reply:
        return 200, {"experiments": [_dump(s) for s in self.experiments.list()]}

    def launch(self, req: Request) -> Reply:
        return 201, _dump(self.experiments.launch(_object(req.body)))

    def get_experiment(self, req: Request) -> Reply:
        return 200, _dump(self.experiments.status(req.params["experiment_id"]))

    def cancel(self, req: Request) -> Reply:
        return 200, _dump(self.experiments.cancel(req.params["experiment_id"]))

    def results(self, req: Request) -> Reply:
        experiment_id = req.params["experiment_id"]
        after = _int(req.query, "after", 0, 0, 2**62)
        limit = _int(req.query, "limit", RESULTS_PAGE, 1, RESULTS_PAGE_MAX)
        if self.store.experiment(experiment_id) is None:
            raise NotFoundError(
                f"experiment {experiment_id!r} does not exist", code="unknown_experiment"
            )
        page = list(self.store.iter_results(experiment_id, after, limit))
        more = len(page) == limit
        return 200, {
            "experiment_id": experiment_id,
            "rows": [_dump(row) for _, row in page],
            "next": page[-1][0] if more else None,
        }

    def list_rejections(self, req: Request) -> Reply:
        limit = _int(req.query, "limit", 100, 1, 10000)
        found = self.store.rejections(
            limit, experiment_id=req.query.get("experiment_id"), code=req.query.get("code")
        )
        return 200, {"rejections": [_dump(r) for r in found]}


ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", HubApp.health),
    Route("GET", "/openapi.json", HubApp.openapi),
    Route("GET", "/spokes", HubApp.list_spokes),
    Route("GET", "/algorithms", HubApp.list_algorithms),
    Route("POST", "/algorithms", HubApp.register_algorithm),
    Route("GET", "/studies", HubApp.list_studies),
    Route("GET", "/studies/{name}", HubApp.get_study),
    Route("GET", "/experiments", HubApp.list_experiments),
    Route("POST", "/experiments", HubApp.launch),
    Route("GET", "/experiments/{experiment_id}", HubApp.get_experiment),
    Route("POST", "/experiments/{experiment_id}/cancel", HubApp.cancel),
    Route("GET", "/experiments/{experiment_id}/results", HubApp.results),
    Route("GET", "/rejections", HubApp.list_rejections),
)


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON body of every error reply."""
    return {"error": {"code": code, "message": message}}


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequestError("the request body must be a JSON object")
    return body


def _int(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise BadRequestError(f"query parameter {name} must be an integer from {low} to {high}")
    return value


class _Handler(BaseHTTPRequestHandler):
    app: HubApp  # set on the subclass ApiServer makes
    server_version = "elic-hub"

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        try:
            body = self._body()
        except BadRequestError as e:
            self._reply(e.status, error_body(e.code, e.message))
            return
        status, payload = self.app.dispatch(method, url.path.rstrip("/") or "/", query, body)
        self._reply(status, payload)

    def _body(self) -> Any:
        length = self.headers.get("Content-Length")
        if not length:
            return None
        try:
            size = int(length)
        except ValueError as e:
            raise BadRequestError("Content-Length is not a number") from e
        if not 0 <= size <= MAX_BODY_BYTES:
            raise BadRequestError(f"the body must be at most {MAX_BODY_BYTES} bytes")
        data = self.rfile.read(size)
        if not data:
            return None
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequestError(f"the body is not JSON: {e}") from e

    def _reply(self, status: int, payload: Any) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors the server itself answers (a malformed request line, ...) as JSON too."""
        self.close_connection = True
        phrase = self.responses.get(code, ("error",))[0]
        self._reply(code, error_body(f"http_{code}", message or phrase))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class ApiServer:
    """``HubApp`` served over HTTP on its own thread; port 0 picks a free port.

    >>> server = ApiServer(app, "127.0.0.1", 0); server.start()    # doctest: +SKIP
    >>> server.url                                                  # doctest: +SKIP
    'http://127.0.0.1:41733'
    """

    def __init__(self, app: HubApp, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = type("HubHandler", (_Handler,), {"app": app})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL the API answers on."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        """Serve on a background thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="hub-api", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()
