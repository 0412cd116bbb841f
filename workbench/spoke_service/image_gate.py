"""Which local image a case runs: signed by a trusted publisher, accepted, by digest.

The publisher's signature is checked before every run, against the digest the order names
(``trust.image_signature``), and the spoke policy must accept both the signer and the
digest; the image is then run by its content id, pulled by digest if it is not here, so a
tag moved meanwhile changes nothing. A refusal is an ``IMAGE_UNTRUSTED`` engine error and
an ``image.refused`` audit entry.
"""

from __future__ import annotations

import threading

from workbench.core import messages as m
from workbench.core.run_errors import RunErrorCode
from workbench.errors import EngineError, SignatureError
from workbench.spoke_service.engine import ContainerEngine
from workbench.spoke_service.policy import SpokePolicy
from workbench.trust.audit import AuditLog
from workbench.trust.image_signature import verify_image_signature
from workbench.trust.keys import TrustStore


class ImageGate:
    """Turns an order's algorithm into the id of a verified local image."""

    def __init__(
        self, engine: ContainerEngine, trust: TrustStore, policy: SpokePolicy, audit: AuditLog
    ) -> None:
        self._engine = engine
        self._trust = trust
        self._policy = policy
        self._audit = audit
        self._lock = threading.Lock()
        self._local: dict[str, str] = {}  # digest -> local image id, once checked

    def image_id(self, algorithm: m.AlgorithmRef) -> str:
        """The local image id of ``algorithm``: signed, pulled by digest if needed, checked.

        Raises:
            EngineError: ``IMAGE_UNTRUSTED`` (signature or policy), ``IMAGE_NOT_FOUND``
                (absent and not pullable by digest, or another image under that name).
        """
        self._check_signature(algorithm)
        with self._lock:
            if algorithm.digest in self._local:
                return self._local[algorithm.digest]
            try:
                info = self._engine.image(algorithm.image)
            except EngineError as e:
                if e.code is not RunErrorCode.IMAGE_NOT_FOUND or "@" not in algorithm.image:
                    raise
                info = self._engine.pull(algorithm.image)
            if info.id != algorithm.digest:
                raise EngineError(
                    RunErrorCode.IMAGE_NOT_FOUND,
                    f"{algorithm.image} is {info.id}, not the ordered {algorithm.digest}",
                )
            self._local[algorithm.digest] = info.id
            return info.id

    def _check_signature(self, algorithm: m.AlgorithmRef) -> None:
        try:
            signed = verify_image_signature(algorithm.signature, algorithm.digest, self._trust)
            if not self._policy.accepts_signer(signed.key_id):
                raise SignatureError("not_accepted", f"key {signed.key_id} is not accepted")
            if not self._policy.accepts_image(algorithm.digest):
                raise SignatureError("not_accepted", f"{algorithm.digest} is not on the list")
        except SignatureError as e:
            self._audit.append("image.refused", {"digest": algorithm.digest, "reason": e.reason})
            raise EngineError(RunErrorCode.IMAGE_UNTRUSTED, f"{algorithm.image}: {e}") from e
