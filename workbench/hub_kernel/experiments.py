"""Experiments: launch (validate, freeze a manifest, dispatch), status, cancel.

Launching checks everything before anything is stored or sent: the study must be defined
and valid, every algorithm registered (``name`` takes the latest version, ``name:version``
one version), every spoke known (allow-listed or seen through a heartbeat), and each
algorithm's arguments valid against its ``args_schema``. The manifest is then frozen (with
each algorithm's image signature, if it was registered with one) and content-hashed,
stored, recorded in the hub's audit trail, and one signed, persistent order goes to each
spoke. An order the broker did
not confirm stays pending in the store (``order_sent: false`` in the status) and is sent
again by ``Dispatcher.redispatch``: a launch never fails half-way for a broker outage.

>>> experiments.launch({"study": "lung-screening", "algorithms": ["lung-lav950"],
...                     "spokes": ["site-01", "site-02"]}).state      # doctest: +SKIP
'running'
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import jsonschema
from pydantic import ValidationError

from workbench.core.deadline import DeadlineError, format_utc, parse_deadline, parse_utc
from workbench.core.messages import AlgorithmRef, Manifest, manifest_hash, orders_queue
from workbench.errors import BadRequestError, CanonicalJSONError, NotFoundError
from workbench.hub_kernel.audit_trail import AuditTrail
from workbench.hub_kernel.dispatcher import Dispatcher
from workbench.hub_kernel.models import (
    Algorithm,
    ExperimentState,
    ExperimentStatus,
    LaunchRequest,
)
from workbench.hub_kernel.registry import Registry
from workbench.hub_kernel.store import ResultsStore
from workbench.hub_kernel.studies import StudyCatalog
from workbench.hub_kernel.tables import utcnow
from workbench.trust.canonical import canonical_json, parse_json

log = logging.getLogger(__name__)


class Experiments:
    """Launches, follows and cancels experiments."""

    def __init__(
        self,
        store: ResultsStore,
        registry: Registry,
        studies: StudyCatalog,
        dispatcher: Dispatcher,
        clock: Callable[[], datetime] = utcnow,
        audit: AuditTrail | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._studies = studies
        self._dispatcher = dispatcher
        self._clock = clock
        self._audit = audit or AuditTrail(None)

    def launch(self, request: LaunchRequest | dict[str, Any]) -> ExperimentStatus:
        """Validate, freeze and dispatch an experiment; returns its status.

        Raises:
            BadRequestError: an invalid request, study definition or algorithm argument.
            NotFoundError: an unknown study (``unknown_study``), algorithm
                (``unknown_algorithm``) or spoke (``unknown_spoke``); nothing is sent.
        """
        request = _request(request)
        manifest = self.freeze(request)
        digest = manifest_hash(manifest)
        order_ids = {spoke: uuid.uuid4().hex for spoke in manifest.spokes}
        self._store.add_experiment(manifest, digest, order_ids)
        log.info("launched %s (%s) on %s", manifest.experiment_id, digest[:12], manifest.spokes)
        self._audit.record("experiment.launched", {
            "experiment_id": manifest.experiment_id, "manifest_hash": digest,
            "study": manifest.study, "spokes": list(manifest.spokes),
            "algorithms": [
                {"name": a.name, "version": a.version, "digest": a.digest,
                 "signed_by": _signer_of(a.signature)}
                for a in manifest.algorithms
            ],
        })  # fmt: skip
        for spoke_id in manifest.spokes:
            self._dispatcher.send_order(manifest, digest, spoke_id)
        return self.status(manifest.experiment_id)

    def freeze(self, request: LaunchRequest) -> Manifest:
        """The manifest a valid request becomes (nothing stored or sent)."""
        study = self._studies.get(request.study)
        algorithms = self._algorithms(request.algorithms)
        self._check_spokes(request.spokes)
        args = _args_by_name(request.args, request.algorithms, algorithms)
        refs = tuple(
            AlgorithmRef(
                name=a.name,
                version=a.version,
                image=a.image,
                digest=a.digest,
                args=args.get(a.name, {}),
                output_schema=a.output_schema,
                signature=a.signature,
            )
            for a in algorithms
        )
        now = self._clock()
        fields: dict[str, Any] = {
            "experiment_id": f"exp-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}",
            "study": study.name,
            "algorithms": refs,
            "spokes": tuple(request.spokes),
            "cohort": study.cohort.model_dump(exclude_none=True),
            "reference_fields": study.reference_fields,
            "created_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if request.timeout_s is not None:
            fields["timeout_s"] = request.timeout_s
        if request.memory_bytes is not None:
            fields["memory_bytes"] = request.memory_bytes
        if request.deadline is not None:
            try:
                fields["deadline"] = format_utc(parse_deadline(request.deadline, now))
            except DeadlineError as e:
                raise BadRequestError(f"invalid deadline: {e}", code="bad_deadline") from e
        try:
            manifest = Manifest.model_validate(fields)
            # The manifest as a spoke will read it back from the signed (canonical JSON)
            # order: canonical JSON writes 2.0 as 2, so an argument of 2.0 would otherwise
            # hash differently here (2.0) and at the spoke (2).
            wire = parse_json(canonical_json(manifest.model_dump(mode="json")))
            return Manifest.model_validate(wire)
        except ValidationError as e:
            raise BadRequestError(f"cannot build the manifest: {e.errors()[0]['msg']}") from e
        except CanonicalJSONError as e:
            raise BadRequestError(f"cannot build the manifest: {e}") from e

    def _algorithms(self, refs: list[str]) -> list[Algorithm]:
        found, missing = [], []
        for ref in refs:
            try:
                found.append(self._registry.get(ref))
            except NotFoundError:
                missing.append(ref)
        if missing:
            raise NotFoundError(
                f"algorithm(s) not registered: {', '.join(missing)}", code="unknown_algorithm"
            )
        names = [a.name for a in found]
        if len(set(names)) != len(names):
            raise BadRequestError("an experiment runs one version of each algorithm")
        return found

    def _check_spokes(self, spoke_ids: list[str]) -> None:
        unknown = []
        for spoke_id in spoke_ids:
            try:
                orders_queue(spoke_id)
            except ValueError as e:
                raise BadRequestError(str(e), code="bad_spoke_id") from e
            if not self._store.is_known_spoke(spoke_id):
                unknown.append(spoke_id)
        if unknown:
            raise NotFoundError(
                f"unknown spoke(s): {', '.join(unknown)} (neither allow-listed nor seen "
                "through a heartbeat)",
                code="unknown_spoke",
            )

    def status(self, experiment_id: str) -> ExperimentStatus:
        """An experiment's state and per-spoke progress.

        Raises:
            NotFoundError: no such experiment (``unknown_experiment``).
        """
        record = self._store.experiment(experiment_id)
        if record is None:
            raise NotFoundError(
                f"experiment {experiment_id!r} does not exist", code="unknown_experiment"
            )
        progress = self._store.progress(experiment_id)
        state: ExperimentState
        if record.cancelled_at is not None:
            state = "cancelled"
        elif progress and all(p.finished for p in progress):
            state = "complete"
        else:
            state = "running"
        return ExperimentStatus(
            experiment_id=record.experiment_id,
            study=record.study,
            manifest_hash=record.manifest_hash,
            state=state,
            created_at=record.created_at,
            cancelled_at=record.cancelled_at,
            deadline=parse_utc(record.manifest.deadline) if record.manifest.deadline else None,
            algorithms=[f"{a.name}:{a.version}" for a in record.manifest.algorithms],
            spokes=progress,
            results=sum(p.results for p in progress),
            results_verified=sum(p.results_verified for p in progress),
            rejections=self._store.rejection_counts(experiment_id),
        )

    def list(self) -> list[ExperimentStatus]:
        """Every experiment's status, newest first."""
        return [self.status(r.experiment_id) for r in self._store.experiments()]

    def cancel(self, experiment_id: str) -> ExperimentStatus:
        """Mark an experiment cancelled and send each spoke a cancel (idempotent).

        Raises:
            NotFoundError: no such experiment (``unknown_experiment``).
        """
        before = self.status(experiment_id)  # raises for an unknown experiment
        owed = self._store.mark_cancelled(experiment_id)
        if before.cancelled_at is None:
            self._audit.record("experiment.cancelled", {"experiment_id": experiment_id})
        for spoke_id in owed:
            self._dispatcher.send_cancel(experiment_id, spoke_id)
        log.info("cancelled %s", experiment_id)
        return self.status(experiment_id)


def _signer_of(signature: dict[str, Any] | None) -> str | None:
    """The key id an image signature document names, if any."""
    found = (signature or {}).get("signature")
    kid = found.get("key_id") if isinstance(found, dict) else None
    return kid if isinstance(kid, str) else None


def _request(request: LaunchRequest | dict[str, Any]) -> LaunchRequest:
    if isinstance(request, LaunchRequest):
        return request
    try:
        return LaunchRequest.model_validate(request)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(body)"
        raise BadRequestError(f"invalid launch request: {where}: {first['msg']}") from e


def _args_by_name(
    args: dict[str, dict[str, Any]], refs: list[str], algorithms: list[Algorithm]
) -> dict[str, dict[str, Any]]:
    """Arguments keyed by algorithm name (the request may key them by ``name:version``)."""
    by_ref = {ref: a for ref, a in zip(refs, algorithms, strict=True)}
    by_ref.update({a.name: a for a in algorithms})
    out: dict[str, dict[str, Any]] = {}
    for key, values in args.items():
        algorithm = by_ref.get(key)
        if algorithm is None:
            raise BadRequestError(f"arguments for {key!r}, which this experiment does not run")
        if algorithm.args_schema is not None:
            validator = jsonschema.validators.validator_for(algorithm.args_schema)
            problem = jsonschema.exceptions.best_match(
                validator(algorithm.args_schema).iter_errors(values)
            )
            if problem is not None:
                where = "/".join(str(p) for p in problem.absolute_path) or "(args)"
                raise BadRequestError(
                    f"invalid arguments for {algorithm.name}: {where}: {problem.message}",
                    code="bad_args",
                )
        out.setdefault(algorithm.name, {}).update(values)
    return out
