from __future__ import annotations

import pytest

from workbench.spoke_service.sandbox import Limits, SandboxSpec, docker_run_argv, parse_size


def spec() -> SandboxSpec:
    return SandboxSpec(
        image="sha256:abc", algo_arg='{"contract":"elic-algo/1"}', input_dir="/s/in",
        dicom_dir="/s/dicom", output_dir="/s/out",
        limits=Limits(timeout_s=5, memory_bytes=256 * 2**20, cpus=0.5, pids=32, tmp_bytes=2**20),
        labels={"org.elic.managed": "true"},
    )  # fmt: skip


def test_host_config_enforces_every_sandbox_property() -> None:
    hc = spec().host_config()
    assert hc["user"] == "65534:65534"
    assert hc["network_mode"] == "none"
    assert hc["read_only"] is True
    assert hc["cap_drop"] == ["ALL"]
    assert hc["security_opt"] == ["no-new-privileges"]
    assert hc["mem_limit"] == hc["memswap_limit"] == 256 * 2**20  # no swap beyond the limit
    assert hc["nano_cpus"] == 500_000_000
    assert hc["pids_limit"] == 32
    assert "size=1048576" in hc["tmpfs"]["/tmp"] and "noexec" in hc["tmpfs"]["/tmp"]  # type: ignore[index]


def test_only_the_output_is_mounted_writable() -> None:
    assert [(target, ro) for _, target, ro in spec().binds] == [
        ("/elic/input", True), ("/elic/dicom", True), ("/elic/output", False),
    ]  # fmt: skip


def test_docker_run_argv_carries_the_same_flags() -> None:
    argv = docker_run_argv(spec())
    joined = " ".join(argv)
    for flag in ["--network none", "--read-only", "--cap-drop ALL", "--user 65534:65534",
                 "--security-opt no-new-privileges", "--pids-limit 32", "--memory 268435456",
                 "--memory-swap 268435456", "--cpus 0.5",
                 "type=bind,source=/s/dicom,target=/elic/dicom,readonly",
                 "type=bind,source=/s/out,target=/elic/output "]:  # fmt: skip
        assert flag in joined + " "
    assert argv[-1] == "sha256:abc"


@pytest.mark.parametrize(
    ("text", "value"),
    [("512m", 512 * 2**20), ("2g", 2 * 2**30), ("1.5GiB", 3 * 2**29), ("4096", 4096)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["12q", "", "-1m", "0"])
def test_parse_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_limits_refuse_nonsense() -> None:
    for bad in [{"timeout_s": 0}, {"memory_bytes": 1000}, {"cpus": 0}, {"pids": 1},
                {"tmp_bytes": 0}, {"tmp_bytes": -5}, {"output_bytes": 0}]:  # fmt: skip
        with pytest.raises(ValueError):
            Limits(**bad)  # type: ignore[arg-type]
