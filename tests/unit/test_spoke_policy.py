from __future__ import annotations

import tomllib
from typing import Any

import pytest

from workbench.errors import ConfigError
from workbench.spoke_service.policy import SpokePolicy
from workbench.spoke_service.sandbox import Limits

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32

TOML = f"""
spoke_id = "site-01"

[policy]
signers = ["hub-2024", "lung-lab"]
image_digests = ["{DIGEST}"]
max_timeout_s = 900
max_memory = "2g"
max_cpus = 1.5
max_output = "256k"
manual_release = true
"""


def test_the_policy_table_of_a_spoke_toml_is_read() -> None:
    table = tomllib.loads(TOML)["policy"]

    policy = SpokePolicy.from_dict(table)

    assert policy.signers == {"hub-2024", "lung-lab"}
    assert policy.image_digests == {DIGEST}
    assert policy.max_timeout_s == 900.0
    assert policy.max_memory_bytes == 2 * 1024**3
    assert policy.max_cpus == 1.5
    assert policy.max_output_bytes == 256 * 1024
    assert policy.manual_release is True


def test_no_policy_table_gives_defaults_that_accept_no_signer() -> None:
    policy = SpokePolicy.from_dict(None)

    assert policy == SpokePolicy()
    assert policy.manual_release is False
    assert not policy.accepts_signer("hub-2024")


def test_signers_and_digests_are_checked_by_membership() -> None:
    policy = SpokePolicy.from_dict({"signers": ["hub-2024"], "image_digests": [DIGEST]})

    assert policy.accepts_signer("hub-2024")
    assert not policy.accepts_signer("hub-2025")
    assert policy.accepts_image(DIGEST)
    assert not policy.accepts_image(OTHER)


def test_no_digest_list_accepts_any_signed_image() -> None:
    policy = SpokePolicy.from_dict({"signers": ["hub-2024"]})

    assert policy.accepts_image(DIGEST) and policy.accepts_image(OTHER)


def test_bound_lowers_every_limit_to_the_ceilings() -> None:
    policy = SpokePolicy(max_timeout_s=60, max_memory_bytes=64 * 1024**2, max_cpus=0.5,
                         max_output_bytes=4096)  # fmt: skip
    asked = Limits(timeout_s=600, memory_bytes=1024**3, cpus=4, output_bytes=1024**2)

    bounded = policy.bound(asked)

    assert (bounded.timeout_s, bounded.memory_bytes, bounded.cpus, bounded.output_bytes) == (
        60, 64 * 1024**2, 0.5, 4096,
    )  # fmt: skip
    assert bounded.pids == asked.pids


def test_bound_keeps_limits_already_below_the_ceilings() -> None:
    asked = Limits(timeout_s=30, memory_bytes=16 * 1024**2, cpus=0.25, output_bytes=2000)

    assert SpokePolicy().bound(asked) == asked


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"manual_releese": True}, "unknown policy settings: manual_releese"),
        ({"manual_release": "false"}, "policy.manual_release must be true or false"),
        ({"signers": "hub-2024"}, "policy.signers must be a list of strings"),
        ({"signers": [1]}, "policy.signers must be a list of strings"),
        ({"signers": ["has space"]}, "policy.signers: 'has space' is not a key id"),
        ({"image_digests": ["sha256:abc"]}, "policy.image_digests: 'sha256:abc' is not"),
        ({"max_timeout_s": 0}, "policy.max_timeout_s must be above 0"),
        ({"max_timeout_s": "1h"}, "policy.max_timeout_s must be a number"),
        ({"max_memory": "1m"}, "policy.max_memory must be at least 8m"),
        ({"max_memory": "lots"}, "policy.max_memory: not a size"),
        ({"max_cpus": 0}, "policy.max_cpus must be a positive number"),
        ({"max_cpus": True}, "policy.max_cpus must be a number"),
        ({"max_output": "64m"}, "policy.max_output must be at least 1k and at most"),
        ({"max_output": 100}, "policy.max_output must be at least 1k and at most"),
    ],
)
def test_invalid_settings_are_config_errors_naming_the_key(
    table: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        SpokePolicy.from_dict(table)

    assert message in str(raised.value)


def test_a_policy_that_is_not_a_table_is_refused() -> None:
    with pytest.raises(ConfigError, match="must be a table"):
        SpokePolicy.from_dict(["manual_release"])  # type: ignore[arg-type]
