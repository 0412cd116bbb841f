"""``SpokePolicy``: what a spoke accepts to run and what it lets leave, from ``[policy]``.

The institution, not the hub, decides these. In the spoke's TOML file::

    [policy]
    signers = ["hub-2024", "lung-lab"]   # key ids whose signatures the spoke accepts
    image_digests = []                   # empty: any image signed by an accepted signer
    max_timeout_s = 3600                 # ceilings no order can exceed
    max_memory = "4g"
    max_cpus = 2
    max_output = "1m"                    # largest output.json the release gate lets out
    manual_release = false               # true: every result waits for a person

Every key is optional. The policy fails closed: with no ``signers`` the spoke accepts no
signature, so it runs nothing until the institution names the keys it trusts.

>>> policy = SpokePolicy.from_dict({"signers": ["hub-2024"], "manual_release": True})
>>> policy.accepts_signer("hub-2024"), policy.accepts_signer("someone-else")
(True, False)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from workbench.core.messages import MAX_MESSAGE_BYTES
from workbench.core.output_schema import DEFAULT_MAX_OUTPUT_BYTES
from workbench.errors import ConfigError
from workbench.spoke_service.sandbox import Limits, parse_size

_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+/=-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_MIN_MEMORY = 8 * 1024**2  # the sandbox refuses less (``Limits``)
_MAX_TIMEOUT_S = 7 * 86400.0
# An output travels inside one message; the broker side refuses messages above this, and the
# message around the output (ids, hashes, reference values) needs room of its own.
_MAX_OUTPUT_CEILING = MAX_MESSAGE_BYTES // 2
_MIN_OUTPUT = 1024  # the sandbox's own floor (``Limits``)
_KNOWN = ("signers", "image_digests", "max_timeout_s", "max_memory", "max_cpus", "max_output",
          "manual_release")  # fmt: skip


@dataclass(frozen=True)
class SpokePolicy:
    """The institution's rules for running algorithms and releasing their results.

    Attributes:
        signers: key ids whose signatures (on manifests and images) the spoke accepts.
        image_digests: the only image digests the spoke runs; empty means any image that an
            accepted signer signed.
        max_timeout_s: the longest wall-clock time any run may take.
        max_memory_bytes: the most memory any run may have.
        max_cpus: the most CPUs any run may use.
        max_output_bytes: the largest ``output.json`` the release gate lets out.
        manual_release: hold every result that passes the gate until a person releases it.
    """

    signers: frozenset[str] = frozenset()
    image_digests: frozenset[str] = frozenset()
    max_timeout_s: float = 3600.0
    max_memory_bytes: int = 4 * 1024**3
    max_cpus: float = 2.0
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    manual_release: bool = False

    def __post_init__(self) -> None:
        for key_id in self.signers:
            if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
                raise ConfigError(
                    f"policy.signers: {key_id!r} is not a key id (letters, digits, . _ : - ...)"
                )
        for digest in self.image_digests:
            if not isinstance(digest, str) or not _DIGEST.match(digest):
                raise ConfigError(
                    f"policy.image_digests: {digest!r} is not an image digest (sha256:<64 hex>)"
                )
        if not 0 < self.max_timeout_s <= _MAX_TIMEOUT_S:
            raise ConfigError(
                f"policy.max_timeout_s must be above 0 and at most {_MAX_TIMEOUT_S:.0f} s, "
                f"got {self.max_timeout_s}"
            )
        if self.max_memory_bytes < _MIN_MEMORY:
            raise ConfigError(
                f"policy.max_memory must be at least 8m, got {self.max_memory_bytes} bytes"
            )
        if not (math.isfinite(self.max_cpus) and self.max_cpus > 0):
            raise ConfigError(f"policy.max_cpus must be a positive number, got {self.max_cpus}")
        if not _MIN_OUTPUT <= self.max_output_bytes <= _MAX_OUTPUT_CEILING:
            raise ConfigError(
                f"policy.max_output must be at least 1k and at most {_MAX_OUTPUT_CEILING} bytes "
                f"(it travels inside one message), got {self.max_output_bytes}"
            )
        if not isinstance(self.manual_release, bool):
            raise ConfigError("policy.manual_release must be true or false")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SpokePolicy:
        """Build from the parsed ``[policy]`` table; ``None`` or ``{}`` give the defaults.

        Raises:
            ConfigError: an unknown key (a typo must not pass silently), a value of the wrong
                type, or a value out of range; the message names the key.

        >>> SpokePolicy.from_dict({"max_memory": "2g"}).max_memory_bytes
        2147483648
        """
        data = data or {}
        if not isinstance(data, dict):
            raise ConfigError("[policy] must be a table")
        unknown = set(data) - set(_KNOWN)
        if unknown:
            raise ConfigError(
                f"unknown policy settings: {', '.join(sorted(unknown))} "
                f"(known: {', '.join(_KNOWN)})"
            )
        defaults = cls()
        return cls(
            signers=_strings(data, "signers"),
            image_digests=_strings(data, "image_digests"),
            max_timeout_s=_number(data, "max_timeout_s", defaults.max_timeout_s),
            max_memory_bytes=_size(data, "max_memory", defaults.max_memory_bytes),
            max_cpus=_number(data, "max_cpus", defaults.max_cpus),
            max_output_bytes=_size(data, "max_output", defaults.max_output_bytes),
            manual_release=_flag(data, "manual_release", defaults.manual_release),
        )

    def accepts_signer(self, key_id: str) -> bool:
        """Whether a signature by ``key_id`` is acceptable (never, when no signer is named)."""
        return key_id in self.signers

    def accepts_image(self, digest: str) -> bool:
        """Whether the spoke may run the image ``digest`` (its signature is checked apart)."""
        return not self.image_digests or digest in self.image_digests

    def bound(self, limits: Limits) -> Limits:
        """``limits`` with every resource brought down to the policy's ceilings.

        >>> SpokePolicy(max_timeout_s=60).bound(Limits(timeout_s=600)).timeout_s
        60.0
        """
        return replace(
            limits,
            timeout_s=float(min(limits.timeout_s, self.max_timeout_s)),
            memory_bytes=min(limits.memory_bytes, self.max_memory_bytes),
            cpus=float(min(limits.cpus, self.max_cpus)),
            output_bytes=min(limits.output_bytes, self.max_output_bytes),
        )


def _strings(data: dict[str, Any], key: str) -> frozenset[str]:
    value = data.get(key, [])
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigError(f"policy.{key} must be a list of strings, got {value!r}")
    items = list(value)
    if not all(isinstance(item, str) for item in items):
        raise ConfigError(f"policy.{key} must be a list of strings, got {value!r}")
    return frozenset(item.strip() for item in items)


def _number(data: dict[str, Any], key: str, default: float) -> float:
    value = data.get(key, default)
    # bool is an int in Python; ``max_cpus = true`` is a typo, not 1 CPU.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"policy.{key} must be a number, got {value!r}")
    return float(value)


def _size(data: dict[str, Any], key: str, default: int) -> int:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f'policy.{key} must be a size such as "512m" or a byte count')
    try:
        return parse_size(str(value))
    except ValueError as e:
        raise ConfigError(f"policy.{key}: {e}") from e


def _flag(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    # A quoted "false" is truthy in Python: refuse it rather than hold nothing by mistake.
    if not isinstance(value, bool):
        raise ConfigError(f"policy.{key} must be true or false (unquoted), got {value!r}")
    return value
