"""Ed25519 checks in batches, here or in a worker process beside the hub.

The hub's ingestion is one busy Python thread (``hub_kernel.ingest``), and a third of its
CPU per message is the Ed25519 check. ``WorkerChecks`` moves the checks to a child process
with its own interpreter (``python -m workbench.trust.check_worker``), so that they run on
another core while the ingesting thread parses, writes and acknowledges. A thread would
not do: the check releases the GIL, but taking it back after each check means waiting for
the ingesting thread to let go of it, and the two threads queue for it instead of working
side by side (measured: no faster).

The child does nothing but the check: it gets the signature, the public key and the bytes
(the caller looked up the key, in its own ``TrustStore``) and answers each batch on a pipe
of its own (not its standard output, where a stray print could land): the count, then
``Y`` or ``N`` per check. An answer of any other shape is a failure, never a verdict. It
holds no key, reads no file and opens no socket. If it dies, stops reading or stops
answering (``timeout_s``), or answers out of shape, the checks it was given are made here
instead, and a new child is started for the next batch; after ``_MAX_RESTARTS`` restarts in
a row without ``_GOOD_RUN`` good batches between them, every check is made here, and that
is logged.

>>> from workbench.trust.keys import generate_key
>>> from workbench.trust.wire import WireSigner, signature_of
>>> key = generate_key()
>>> body, headers = WireSigner(key).sign({"type": "x"})
>>> public = key.public_key().public_bytes_raw()
>>> InlineChecks().submit([(signature_of(headers).raw(), public, body)]).result()
[True]
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import IO, Protocol

from workbench.trust.signing import signature_matches

log = logging.getLogger(__name__)

Check = tuple[bytes, bytes, bytes]
"""One check: the 64 signature bytes, the 32 public key bytes, the signed bytes."""

_YES = ord("Y")
_MAX_RESTARTS = 3
_GOOD_RUN = 100  # good batches in a row that forgive the failures before them
_PIPE_BYTES = 1 << 20  # most batches fit in the pipe at once (a batch of results: ~200 KB)


class Verdicts(Protocol):
    """The outcome of a batch of checks, once it is known."""

    def result(self) -> list[bool]:
        """One verdict per check, in order: ``True`` if the signature matches."""
        ...


class Checks(Protocol):
    """Where checks are made."""

    @property
    def parallel(self) -> bool:
        """Whether they run while the caller does other work."""
        ...

    def submit(self, checks: Sequence[Check]) -> Verdicts:
        """Start checking ``checks``; results are read in the order of submission."""
        ...

    def start(self) -> None:
        """Get ready (a worker process starts here)."""
        ...

    def close(self) -> None:
        """Release what ``start`` took."""
        ...


class _Deferred:
    """Checks made in the calling thread when their result is asked for."""

    def __init__(self, checks: Sequence[Check]) -> None:
        self._checks = checks

    def result(self) -> list[bool]:
        return [signature_matches(raw, data, public) for raw, public, data in self._checks]


class InlineChecks:
    """Every check in the calling thread, when its result is asked for."""

    parallel = False

    def submit(self, checks: Sequence[Check]) -> Verdicts:
        return _Deferred(checks)

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Ticket:
    """A batch given to the worker; ``result()`` reads its answer (and any before it)."""

    def __init__(self, owner: WorkerChecks, checks: Sequence[Check]) -> None:
        self._owner = owner
        self.checks = checks
        self.verdicts: list[bool] | None = None

    def result(self) -> list[bool]:
        if self.verdicts is None:
            self._owner._collect(self)
        assert self.verdicts is not None
        return self.verdicts


class WorkerChecks:
    """Checks made by a child process, one batch at a time, in the order submitted.

    Args:
        timeout_s: how long to wait for the child's answer to a batch before the batch is
            checked here and the child replaced.
        command: the child's command line (tests replace it).
    """

    def __init__(self, timeout_s: float = 30.0, command: Sequence[str] | None = None) -> None:
        self.timeout_s = timeout_s
        self._command = list(command or [sys.executable, "-m", "workbench.trust.check_worker"])
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._answers: int | None = None  # our end of the child's answer pipe
        self._outstanding: deque[_Ticket] = deque()
        self._restarts = 0
        self._good = 0
        self._closed = False

    @property
    def parallel(self) -> bool:
        """Whether checks run beside the caller: not once the worker was given up on."""
        return self._restarts <= _MAX_RESTARTS

    @property
    def pid(self) -> int | None:
        """The child's process id, while it runs."""
        child = self._child
        return child.pid if child is not None and child.poll() is None else None

    def start(self) -> None:
        """Start the child now (it imports while the caller goes on)."""
        with self._lock:
            self._closed = False
            self._ensure_child()

    def submit(self, checks: Sequence[Check]) -> Verdicts:
        if not checks:
            return _Deferred(checks)
        with self._lock:
            child = self._ensure_child()
            ticket = _Ticket(self, checks)
            if child is None:
                return _Deferred(checks)
            problem = self._write(child, _encode(checks))
            if problem is not None:
                self._lost(problem)
                return _Deferred(checks)
            self._outstanding.append(ticket)
            return ticket

    def _write(self, child: subprocess.Popen[bytes], data: bytes) -> str | None:
        """Write ``data`` to the child within ``timeout_s``; why not, if it could not."""
        assert child.stdin is not None
        fd = child.stdin.fileno()
        view = memoryview(data)
        deadline = time.monotonic() + self.timeout_s
        try:
            while view:
                if not _ready(fd, select.POLLOUT, deadline):
                    return f"it took no input for {self.timeout_s:g} s"
                with contextlib.suppress(BlockingIOError):
                    view = view[os.write(fd, view) :]
        except OSError as e:
            return f"cannot write to it: {e}"
        return None

    def close(self) -> None:
        """Stop the child: it exits when its input closes. A batch still out is checked
        here if its result is asked for."""
        with self._lock:
            self._closed = True
            child, self._child = self._child, None
            self._outstanding.clear()
            self._stop(child)

    def _collect(self, wanted: _Ticket) -> None:
        with self._lock:
            while wanted.verdicts is None:
                if self._child is None or wanted not in self._outstanding:
                    # Given up on with a lost child, or given to no child: checked here.
                    wanted.verdicts = _Deferred(wanted.checks).result()
                    return
                ticket = self._outstanding[0]
                answer = self._read(self._child, len(ticket.checks))
                if answer is None:
                    continue  # the child was lost: its batches are checked here (_lost)
                self._outstanding.popleft()
                ticket.verdicts = [b == _YES for b in answer]
                self._good += 1
                if self._good >= _GOOD_RUN:
                    self._restarts = 0

    def _read(self, child: subprocess.Popen[bytes], n: int) -> bytes | None:
        """The child's answer to a batch of ``n``: its ``n`` verdict bytes, or ``None`` (and
        the child is lost) if it gives none in time or one of another shape."""
        deadline = time.monotonic() + self.timeout_s
        head = self._read_exactly(child, 4, deadline)
        if head is None:
            return None
        if int.from_bytes(head, "big") != n:
            self._lost(f"it answered {int.from_bytes(head, 'big')} checks for {n}")
            return None
        answer = self._read_exactly(child, n, deadline)
        if answer is not None and answer.strip(b"YN"):
            self._lost("it answered something other than Y or N")
            return None
        return answer

    def _read_exactly(
        self, child: subprocess.Popen[bytes], n: int, deadline: float
    ) -> bytes | None:
        fd = self._answers
        assert fd is not None
        chunks: list[bytes] = []
        got = 0
        while got < n:
            if not _ready(fd, select.POLLIN, deadline):
                self._lost(f"no answer in {self.timeout_s:g} s")
                return None
            chunk = os.read(fd, n - got)
            if not chunk:
                self._lost(f"it exited ({child.poll()})")
                return None
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _ensure_child(self) -> subprocess.Popen[bytes] | None:
        if self._child is not None or self._closed or not self.parallel:
            return self._child
        child: subprocess.Popen[bytes] | None = None
        read_end = write_end = -1
        try:
            read_end, write_end = os.pipe()
            child = subprocess.Popen(
                [*self._command, str(write_end)], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, pass_fds=(write_end,), close_fds=True, bufsize=0,
                start_new_session=True,  # a terminal's Ctrl-C is for the hub, which stops it
            )  # fmt: skip
            assert child.stdin is not None
            _widen(child.stdin)
            os.set_blocking(child.stdin.fileno(), False)  # _write waits with a deadline
        except BaseException as e:
            for fd in (read_end, write_end):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            if child is not None:
                child.kill()
                child.wait()
            if not isinstance(e, OSError):
                raise
            self._restarts += 1  # out of processes or descriptors, for now: check here
            log.error("cannot start the signature checker (%s): checking in the hub", e)
            return None
        os.close(write_end)  # the child's end
        self._child, self._answers = child, read_end
        return child

    def _lost(self, why: str) -> None:
        """The child failed: its batches are checked here, another starts for the next."""
        child, self._child = self._child, None
        self._restarts += 1
        self._good = 0
        give_up = not self.parallel
        log.error(
            "the signature checker process failed (%s)%s", why,
            "; checking in the hub itself from now on" if give_up else "; starting another",
        )  # fmt: skip
        self._outstanding.clear()  # each is checked here when its result is asked for
        self._stop(child, kill=True)

    def _stop(self, child: subprocess.Popen[bytes] | None, kill: bool = False) -> None:
        """End ``child`` (at once with ``kill``; else it exits as its input closes), then
        close our end of its answers (after: a child still answering must not die of it)."""
        if child is not None:
            if kill:
                child.kill()
            if child.stdin is not None:
                with contextlib.suppress(OSError):
                    child.stdin.close()
            try:
                child.wait(timeout=2)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        answers, self._answers = self._answers, None
        if answers is not None:
            with contextlib.suppress(OSError):
                os.close(answers)


def _ready(fd: int, event: int, deadline: float) -> bool:
    """Whether ``fd`` is ready for ``event`` before ``deadline`` (``poll``: ``select`` fails
    on descriptors past 1023, which a busy hub may hold)."""
    poller = select.poll()
    poller.register(fd, event | select.POLLERR | select.POLLHUP)
    left_ms = max(0, int((deadline - time.monotonic()) * 1000))
    return bool(poller.poll(left_ms)) if left_ms > 0 else False


def _encode(checks: Sequence[Check]) -> bytes:
    """``COUNT`` then per check ``SIGNATURE(64) KEY(32) LENGTH DATA``; numbers 4 bytes, big
    endian; the whole preceded by its length."""
    parts = [len(checks).to_bytes(4, "big")]
    for raw, public, data in checks:
        if len(raw) != 64 or len(public) != 32:
            raise ValueError("an Ed25519 check takes a 64-byte signature and a 32-byte key")
        parts += (raw, public, len(data).to_bytes(4, "big"), data)
    payload = b"".join(parts)
    return len(payload).to_bytes(4, "big") + payload


def _widen(pipe: IO[bytes]) -> None:
    """Make the pipe hold a whole batch (Linux); its default 64 KiB holds ~80 messages."""
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), setsize, _PIPE_BYTES)
