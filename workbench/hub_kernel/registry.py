"""The algorithm registry: algorithms pinned by image digest, looked up by name or name:version.

An algorithm image declares itself through ``org.elic.*`` labels (``docs/algorithm-contract.md``):
``spec_from_image`` reads them from a local image (the digest is the image ID,
``sha256:...``), so registering needs no hand-typed schema. The same name and version
registered again with the same digest is a no-op (or adds the image signature it brings);
with another digest it is a ``ConflictError``: a changed image needs a new version.

An algorithm may carry its publisher's image signature (``workbench algorithm sign``); the
registry checks that it is a signature document naming the registered digest (a 400
otherwise), and every experiment's manifest carries it to the spokes, which verify it
against the publisher keys they trust before each run. The hub holds no publisher keys.

>>> registry = Registry(store)                                          # doctest: +SKIP
>>> registry.register(spec_from_image(DockerEngine.from_env(), "elic/lung-lav950:1.0.0"))
... # doctest: +SKIP
>>> registry.get("lung-lav950").digest                                  # doctest: +SKIP
'sha256:...'
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from workbench.core.contract import (
    CONTRACT,
    LABEL_ARGS_SCHEMA,
    LABEL_CONTRACT,
    LABEL_NAME,
    LABEL_OUTPUT_SCHEMA,
    LABEL_VERSION,
)
from workbench.core.output_schema import check_schema
from workbench.errors import BadRequestError, NotFoundError, SignatureError
from workbench.hub_kernel.models import Algorithm, AlgorithmSpec
from workbench.trust.image_signature import SIGNATURE_TYPE
from workbench.trust.signing import Signature

if TYPE_CHECKING:  # the CLI reads image labels without loading SQLAlchemy
    from workbench.hub_kernel.store import ResultsStore

log = logging.getLogger(__name__)


class ImageLike(Protocol):
    """What the registry needs to know of a local image."""

    @property
    def id(self) -> str: ...

    @property
    def labels(self) -> dict[str, str]: ...


class ImageLookup(Protocol):
    """Anything that finds a local image by reference (``DockerEngine`` does)."""

    def image(self, reference: str) -> ImageLike:
        """The image's id and labels."""
        ...


def spec_from_image(lookup: ImageLookup, reference: str) -> AlgorithmSpec:
    """Read an algorithm's declaration from the labels of a local image.

    Raises:
        BadRequestError: the image does not declare an ``elic-algo/1`` algorithm properly.
    """
    image = lookup.image(reference)
    labels = image.labels
    if labels.get(LABEL_CONTRACT) != CONTRACT:
        raise BadRequestError(
            f"{reference} is not an {CONTRACT} algorithm image (label {LABEL_CONTRACT} is "
            f"{labels.get(LABEL_CONTRACT)!r})",
            code="not_an_algorithm",
        )
    missing = [k for k in (LABEL_NAME, LABEL_VERSION, LABEL_OUTPUT_SCHEMA) if k not in labels]
    if missing:
        raise BadRequestError(f"{reference} lacks the label(s) {', '.join(missing)}")
    fields: dict[str, Any] = {
        "name": labels[LABEL_NAME],
        "version": labels[LABEL_VERSION],
        "image": reference,
        "digest": image.id,
        "output_schema": _label_json(labels, LABEL_OUTPUT_SCHEMA, reference),
    }
    if LABEL_ARGS_SCHEMA in labels:
        fields["args_schema"] = _label_json(labels, LABEL_ARGS_SCHEMA, reference)
    return validate_spec(fields)


def validate_spec(fields: dict[str, Any]) -> AlgorithmSpec:
    """Validate explicit registration fields, including that the schemas are JSON Schemas.

    Raises:
        BadRequestError: a field is missing or invalid.
    """
    try:
        spec = AlgorithmSpec.model_validate(fields)
    except ValidationError as e:
        raise BadRequestError(f"invalid algorithm: {_first_error(e)}") from e
    for which, schema in (("output_schema", spec.output_schema), ("args_schema", spec.args_schema)):
        if schema is None:
            continue
        try:
            check_schema(schema)
        except Exception as e:  # jsonschema.SchemaError
            raise BadRequestError(f"{which} of {spec.name} is not a JSON Schema: {e}") from e
    if spec.signature is not None:
        signed = signed_digest(spec.signature)
        if signed != spec.digest:
            raise BadRequestError(
                f"the image signature of {spec.name}:{spec.version} is for {signed}, not for "
                f"the registered digest {spec.digest}",
                code="signature_mismatch",
            )
    return spec


def signed_digest(document: dict[str, Any]) -> str:
    """The image id an image signature document names (its shape checked, not its key).

    Raises:
        BadRequestError: not a sealed simple-signing payload (``bad_signature_document``).
    """

    def bad(what: str) -> BadRequestError:
        return BadRequestError(
            f"not an image signature ({what}): use `workbench algorithm sign`",
            code="bad_signature_document",
        )

    if set(document) != {"payload", "signature"}:
        raise bad("an object of payload and signature")
    try:
        Signature.from_json(document["signature"])
    except SignatureError as e:
        raise bad(e.detail) from e
    payload = document["payload"]
    critical = payload.get("critical") if isinstance(payload, dict) else None
    if not isinstance(critical, dict) or critical.get("type") != SIGNATURE_TYPE:
        raise bad(f"no critical part of type {SIGNATURE_TYPE!r}")
    image = critical.get("image")
    digest = image.get("docker-manifest-digest") if isinstance(image, dict) else None
    if not isinstance(digest, str):
        raise bad("it names no image digest")
    return digest


class Registry:
    """Registered algorithms, in the results store."""

    def __init__(self, store: ResultsStore) -> None:
        self._store = store

    def register(self, spec: AlgorithmSpec | dict[str, Any]) -> tuple[Algorithm, bool]:
        """Register an algorithm; returns it and whether it was new.

        Raises:
            BadRequestError: invalid fields.
            ConflictError: that name and version are registered with another digest.
        """
        spec = validate_spec(spec if isinstance(spec, dict) else spec.model_dump())
        algorithm, created = self._store.add_algorithm(spec)
        if created:
            log.info("registered %s:%s = %s", spec.name, spec.version, spec.digest)
        return algorithm, created

    def list(self) -> list[Algorithm]:
        """Every registered algorithm and version."""
        return self._store.algorithms()

    def get(self, ref: str) -> Algorithm:
        """``name`` (its latest version) or ``name:version``.

        Raises:
            NotFoundError: no such algorithm or version is registered.
        """
        name, _, version = ref.partition(":")
        found = self._store.algorithms(name, version or None)
        if not found:
            what = f"{name}:{version}" if version else name
            raise NotFoundError(f"algorithm {what} is not registered", code="unknown_algorithm")
        return max(found, key=lambda a: (version_key(a.version), a.registered_at))


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key ordering ``1.10.0`` after ``1.9.2`` (numbers numerically, text as text).

    >>> sorted(["1.10.0", "1.9.2", "1.9"], key=version_key)
    ['1.9', '1.9.2', '1.10.0']
    """
    parts = re.findall(r"\d+|[A-Za-z]+", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def _label_json(labels: dict[str, str], key: str, reference: str) -> dict[str, Any]:
    try:
        value = json.loads(labels[key])
    except ValueError as e:
        raise BadRequestError(f"label {key} of {reference} is not JSON: {e}") from e
    if not isinstance(value, dict):
        raise BadRequestError(f"label {key} of {reference} is not a JSON object")
    return value


def _first_error(e: ValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(body)"
    return f"{where}: {first['msg']}"
