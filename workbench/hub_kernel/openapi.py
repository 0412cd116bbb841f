"""The OpenAPI 3.1 description of the hub's HTTP API, served at ``/openapi.json``.

``OPERATIONS`` describes each route of ``api.ROUTES`` (a test checks that every route is
described and every description is a route). Schemas of bodies come from the pydantic
models themselves, so the description cannot drift from what the server validates.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from workbench import __version__
from workbench.hub_kernel.models import (
    Algorithm,
    AlgorithmSpec,
    ExperimentStatus,
    LaunchRequest,
    Rejection,
    ResultRow,
    SpokeRecord,
)
from workbench.hub_kernel.studies import Study

_REQUESTS: tuple[type[BaseModel], ...] = (AlgorithmSpec, LaunchRequest)
_REPLIES: tuple[type[BaseModel], ...] = (
    Algorithm, ExperimentStatus, Rejection, ResultRow, SpokeRecord, Study,
)  # fmt: skip


def ref(model: type[BaseModel]) -> dict[str, str]:
    """A reference to a model's schema in ``components``."""
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _obj(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(properties), "properties": properties}


def _list(model: type[BaseModel]) -> dict[str, Any]:
    return {"type": "array", "items": ref(model)}


def _query(name: str, text: str, minimum: int, default: int) -> dict[str, Any]:
    schema = {"type": "integer", "minimum": minimum, "default": default}
    return {"name": name, "in": "query", "required": False, "description": text, "schema": schema}


def _text_query(name: str, text: str) -> dict[str, Any]:
    schema = {"type": "string"}
    return {"name": name, "in": "query", "required": False, "description": text, "schema": schema}


_NULLABLE_TEXT = {"type": ["string", "null"]}
_HEALTH = _obj(
    status={"type": "string"},
    version={"type": "string"},
    ingest=_obj(**{
        k: {"type": "integer"}
        for k in ("pending", "accepted", "rejected", "replayed", "batches", "failures")
    }),
    trust=_obj(
        signing_required={
            "type": "boolean",
            "description": "every inbox message must be signed by the spoke it names",
        },
        hub_key_id={**_NULLABLE_TEXT, "description": "the key id that signs orders"},
        spoke_keys={
            "type": "object",
            "description": "trusted key ids by spoke",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
    ),
    audit=_obj(
        path={**_NULLABLE_TEXT, "description": "the hub's audit log (JSON lines)"},
        head={
            **_NULLABLE_TEXT,
            "description": "its chain head, SEQ:HASH: `workbench audit verify PATH --head HEAD`",
        },
        failures={"type": "integer", "description": "entries that could not be appended"},
    ),
)  # fmt: skip


def _op(
    summary: str,
    reply: dict[str, Any],
    status: int = 200,
    body: type[BaseModel] | None = None,
    errors: tuple[int, ...] = (),
    query: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {str(status): {"description": "OK", "content": _json(reply)}},
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json(ref(body))}
        errors = (400, *errors)
    for code in sorted(set(errors)):
        op["responses"][str(code)] = {"$ref": f"#/components/responses/E{code}"}
    if query:
        op["parameters"] = list(query)
    return op


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_STATUS = ref(ExperimentStatus)
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/health"): _op(
        "The hub is up and its database answers; ingestion counters, trust and audit log",
        _HEALTH,
        errors=(503,),
    ),
    ("GET", "/openapi.json"): _op("This description", {"type": "object"}),
    ("GET", "/spokes"): _op(
        "Known spokes with their last heartbeat", _obj(spokes=_list(SpokeRecord))
    ),
    ("GET", "/algorithms"): _op("Registered algorithms", _obj(algorithms=_list(Algorithm))),
    ("POST", "/algorithms"): _op(
        "Register an algorithm (200 if already registered with the same digest)",
        _obj(algorithm=ref(Algorithm), created={"type": "boolean"}),
        status=201,
        body=AlgorithmSpec,
        errors=(409,),
    ),
    ("GET", "/studies"): _op(
        "Valid study definitions, and the problems of invalid ones",
        _obj(studies=_list(Study), invalid={"type": "object"}),
    ),
    ("GET", "/studies/{name}"): _op("One study definition", ref(Study), errors=(400, 404)),
    ("GET", "/experiments"): _op(
        "Every experiment's status, newest first", _obj(experiments=_list(ExperimentStatus))
    ),
    ("POST", "/experiments"): _op(
        "Launch an experiment: freeze its manifest and send one order per spoke",
        _STATUS,
        status=201,
        body=LaunchRequest,
        errors=(404,),
    ),
    ("GET", "/experiments/{experiment_id}"): _op(
        "An experiment's state and per-spoke progress", _STATUS, errors=(404,)
    ),
    ("POST", "/experiments/{experiment_id}/cancel"): _op(
        "Cancel an experiment: a cancel goes to each spoke", _STATUS, errors=(404,)
    ),
    ("GET", "/experiments/{experiment_id}/results"): _op(
        "Received results in arrival order, a page at a time",
        _obj(
            experiment_id={"type": "string"},
            rows=_list(ResultRow),
            next={"type": ["integer", "null"], "description": "`after` of the next page"},
        ),
        errors=(400, 404),
        query=(
            _query("after", "return rows after this row id (`next` of the last page)", 0, 0),
            _query("limit", "rows per page (at most 10000)", 1, 1000),
        ),
    ),
    ("GET", "/rejections"): _op(
        "Messages refused by the inbox, newest first: sent to the dead-letter queue, except "
        "replays (code `replayed`), which are acknowledged",
        _obj(rejections=_list(Rejection)),
        errors=(400,),
        query=(
            _query("limit", "how many (at most 10000)", 1, 100),
            _text_query("experiment_id", "only those of this experiment"),
            _text_query("code", "only those with this reason code (e.g. bad_signature)"),
        ),
    ),
}


@cache
def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    paths: dict[str, dict[str, Any]] = {}
    for (method, template), op in OPERATIONS.items():
        entry = paths.setdefault(template, {})
        names = re.findall(r"\{([a-z_]+)\}", template)
        if names:
            entry["parameters"] = [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                for n in names
            ]
        entry[method.lower()] = {"operationId": _operation_id(method, template), **op}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ELIC workbench hub",
            "version": __version__,
            "description": "Registry, experiments, progress and results of the federated "
            'imaging workbench. Errors are {"error": {"code", "message"}}.',
        },
        "paths": paths,
        "components": {"schemas": _schemas(), "responses": _error_responses()},
    }


def _operation_id(method: str, template: str) -> str:
    words = re.sub(r"[{}.]", "", template).strip("/").replace("/", "_").replace("-", "_")
    return f"{method.lower()}_{words or 'root'}"


def _schemas() -> dict[str, Any]:
    models = [(m, "validation") for m in _REQUESTS] + [(m, "serialization") for m in _REPLIES]
    _, top = models_json_schema(models, ref_template="#/components/schemas/{model}")  # type: ignore[arg-type]
    schemas: dict[str, Any] = top.get("$defs", {})
    schemas["Error"] = _obj(error=_obj(code={"type": "string"}, message={"type": "string"}))
    return schemas


def _error_responses() -> dict[str, Any]:
    texts = {
        400: "Invalid body, parameter or study definition",
        404: "Unknown experiment, algorithm, study or spoke",
        409: "Conflicts with what the hub holds",
        503: "The results store is unavailable",
    }
    error = {"$ref": "#/components/schemas/Error"}
    return {
        f"E{code}": {"description": text, "content": _json(error)} for code, text in texts.items()
    }
