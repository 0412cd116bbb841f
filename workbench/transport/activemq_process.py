"""The managed broker's JVM process and its port: launch, recognise, stop; loopback ports.

``launch`` starts the JVM through ``/bin/sh … &`` in a new session, so the broker outlives the
process that started it (and the CLI) without ever being its zombie. A pid file is never
trusted on its own: ``is_broker`` also wants the process alive, not a zombie, and started with
this broker's ``activemq.xml``. ``terminate`` sends SIGTERM, then SIGKILL after a grace
period.

>>> command = ["java", "-jar", "activemq.jar", "start", "xbean:file:/tmp/b/conf/activemq.xml"]
>>> pid = launch(command, Path("/tmp/b/log/jvm.out"), "java")           # doctest: +SKIP
>>> terminate(pid, Path("/tmp/b/conf/activemq.xml"), grace=30.0)        # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from workbench.transport.activemq_config import HOST, BrokerError

__all__ = ["free_port", "is_broker", "launch", "port_free", "running", "terminate"]

# The managed broker's logger, as before these helpers left workbench.transport.activemq:
# logging configured by that name keeps covering them.
_LOG = logging.getLogger("workbench.transport.activemq")


def launch(command: list[str], jvm_out: Path, java: str) -> int:
    """Run ``command`` detached, its output appended to ``jvm_out``; return its pid.

    Raises:
        BrokerError: the shell could not start ``java`` (the message names it).
    """
    # The shell backgrounds the JVM and exits, so the broker outlives this process (and
    # the CLI) without ever being our zombie; it prints the JVM's pid.
    script = 'out="$1"; shift; "$@" </dev/null >>"$out" 2>&1 & echo $!'
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", script, "sh", str(jvm_out), *command],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
            start_new_session=True, check=True,
        )  # fmt: skip
        return int(done.stdout.strip())
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        raise BrokerError(f"cannot launch {java}: {e}") from e


def is_broker(pid: int, config: Path) -> bool:
    """Whether ``pid`` is a running JVM started with ``config``: never trust a pid file."""
    if not running(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no procfs: trust the signal probe
    except OSError:
        return False
    return str(config) in cmdline


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def terminate(pid: int, config: Path, grace: float) -> None:
    """SIGTERM (if ``grace``), wait up to ``grace`` s, then SIGKILL; return once it exited.

    Raises:
        BrokerError: the process still runs 10 s after SIGKILL.
    """
    if not is_broker(pid, config):
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if sig == signal.SIGTERM and grace <= 0:
            continue
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not running(pid):
                return
            time.sleep(0.05)
        if sig == signal.SIGTERM:
            _LOG.warning("broker pid %d did not stop in %g s: killing it", pid, grace)
    raise BrokerError(f"broker pid {pid} is still running after SIGKILL")


def port_free(port: int, grace: float = 0.0) -> bool:
    """Whether ``port`` on loopback can be bound now, or becomes so within ``grace`` s."""
    deadline = time.monotonic() + grace
    while True:
        with socket.socket() as s:
            # The JVM binds with SO_REUSEADDR too: connections in TIME_WAIT do not count.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
        time.sleep(0.05)


def free_port() -> int:
    """A loopback port that was free a moment ago (the kernel's pick for port 0)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port
