"""The sandbox an algorithm container runs in: limits, mounts, and the exact engine flags.

Every property DESIGN.md section 4 promises is set here, in one place: no network, read-only
root filesystem, a fixed non-root user, all capabilities dropped, ``no-new-privileges``,
memory (without swap), CPU and process limits, a small ``noexec`` tmpfs ``/tmp``, read-only
inputs and one writable output folder. ``docker_run_argv`` renders the same spec as a
``docker run`` command line, which the benchmarks use as the bare baseline and which an
operator can paste to reproduce a run by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from workbench.core.contract import DICOM_ROOT, ENV_VAR, INPUT_DIR, OUTPUT_DIR

SANDBOX_USER = "65534:65534"  # nobody:nogroup in Debian images
MANAGED_LABEL = "org.elic.managed"
RUN_LABEL = "org.elic.run"
SPOKE_LABEL = "org.elic.spoke"
EXPERIMENT_LABEL = "org.elic.experiment"  # a cancel stops that experiment's running containers

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """Bytes from a size such as ``512m``, ``2g``, ``1.5GiB`` or ``1048576``.

    >>> parse_size("512m")
    536870912
    """
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 512m, 2g)")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise ValueError(f"a size must be positive: {text!r}")
    return value


@dataclass(frozen=True)
class Limits:
    """Resource ceilings of one run."""

    timeout_s: float = 600.0
    memory_bytes: int = 2 * 1024**3
    cpus: float = 1.0
    pids: int = 128
    tmp_bytes: int = 64 * 1024**2
    output_bytes: int = 1024**2

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError("the timeout must be positive")
        if self.memory_bytes < 8 * 1024**2:
            raise ValueError("the memory limit must be at least 8 MiB")
        if self.cpus <= 0:
            raise ValueError("the CPU limit must be positive")
        if self.pids < 4:
            raise ValueError("the process limit must be at least 4")
        # tmpfs reads size=0 as "unlimited": a zero here must never reach a mount option.
        if self.tmp_bytes < 1024**2:
            raise ValueError("the /tmp size must be at least 1 MiB")
        if self.output_bytes < 1024:
            raise ValueError("the output limit must be at least 1 KiB")


@dataclass(frozen=True)
class SandboxSpec:
    """Everything needed to start one algorithm container."""

    image: str
    algo_arg: str
    input_dir: str
    dicom_dir: str
    output_dir: str
    limits: Limits = field(default_factory=Limits)
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def environment(self) -> dict[str, str]:
        """The container's environment: the contract's one variable and nothing else."""
        return {ENV_VAR: self.algo_arg}

    @property
    def binds(self) -> list[tuple[str, str, bool]]:
        """``(host path, container path, read_only)`` for each bind mount."""
        return [
            (self.input_dir, INPUT_DIR, True),
            (self.dicom_dir, DICOM_ROOT, True),
            (self.output_dir, OUTPUT_DIR, False),
        ]

    def host_config(self) -> dict[str, object]:
        """Keyword arguments for docker SDK's ``containers.create`` that enforce the sandbox."""
        lim = self.limits
        return {
            "user": SANDBOX_USER,
            "network_mode": "none",
            "read_only": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "mem_limit": lim.memory_bytes,
            "memswap_limit": lim.memory_bytes,
            "nano_cpus": int(lim.cpus * 1e9),
            "pids_limit": lim.pids,
            "tmpfs": {"/tmp": f"rw,noexec,nosuid,nodev,size={lim.tmp_bytes}"},
            "ipc_mode": "private",
        }


def docker_run_argv(spec: SandboxSpec, docker: str = "docker") -> list[str]:
    """The ``docker run`` command line that starts the same sandbox as ``spec``."""
    hc = spec.host_config()
    argv = [
        docker, "run", "--rm",
        "--user", str(hc["user"]),
        "--network", "none",
        "--read-only",
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "--memory", str(spec.limits.memory_bytes),
        "--memory-swap", str(spec.limits.memory_bytes),
        "--cpus", str(spec.limits.cpus),
        "--pids-limit", str(spec.limits.pids),
        "--tmpfs", f"/tmp:rw,noexec,nosuid,nodev,size={spec.limits.tmp_bytes}",
        "--ipc", "private",
    ]  # fmt: skip
    for name, value in spec.environment.items():
        argv += ["--env", f"{name}={value}"]
    for host, target, ro in spec.binds:
        mode = ",readonly" if ro else ""
        argv += ["--mount", f"type=bind,source={host},target={target}{mode}"]
    for name, value in spec.labels.items():
        argv += ["--label", f"{name}={value}"]
    argv.append(spec.image)
    return argv
