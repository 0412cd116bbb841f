"""A tamper-evident audit log: append-only, hash-chained JSON lines.

Each line is the canonical JSON (RFC 8785) of one entry::

    {"data":{"experiment_id":"e1"},"event":"order.received","hash":"5c1e...",
     "prev":"0000...0000","seq":1,"time":"2025-01-31T12:00:00.000000+00:00"}

``seq`` counts from 1; ``prev`` is the previous entry's ``hash`` (64 zeros for the first);
``hash`` is the SHA-256 of the canonical JSON of the entry without ``hash``. Editing,
removing, inserting or reordering any entry breaks the chain at that entry, and
``verify`` names the first one that no longer fits. Removing entries from the *end*
leaves a shorter valid chain; that is caught only against a chain head received elsewhere:
each spoke puts ``AuditLog.head()`` in every result it signs, and the Hub can check the
spoke's log against the last head it received (``verify(path, expected_head=...)``).

Problems ``verify`` reports (``VerifyReport.problem``):

=================  ==========================================================================
``malformed``      a line is not one JSON entry of the six fields (or is cut off)
``not_canonical``  a line parses, but is not its entry's canonical bytes (an edit)
``out_of_sequence``  ``seq`` is not the next number: an entry removed, moved or inserted
``broken_link``    ``prev`` is not the previous entry's hash
``hash_mismatch``  ``hash`` is not the hash of the entry's content: the entry was edited
``truncated``      the log ends before the expected head: entries cut from the end
``head_mismatch``  the entry at the expected head's ``seq`` has another hash: rewritten
=================  ==========================================================================

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "audit.jsonl"
>>> with AuditLog(path) as log:
...     _ = log.append("order.received", {"experiment_id": "e1"})
...     head = log.head()
>>> verify(path, expected_head=head).ok
True
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from workbench.errors import AuditError, CanonicalJSONError
from workbench.trust.canonical import canonical_json, parse_json, sha256_hex

__all__ = ["ZERO_HASH", "AuditLog", "ChainHead", "VerifyReport", "entry_hash", "verify"]

log = logging.getLogger(__name__)

ZERO_HASH = "0" * 64
FIELDS = frozenset({"seq", "time", "event", "data", "prev", "hash"})
_HASH = re.compile(r"^[0-9a-f]{64}$")
_TAIL_CHUNK = 64 * 1024


class ChainHead(NamedTuple):
    """The last entry of a chain: its ``seq`` and ``hash`` (``0`` and zeros when empty)."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> ChainHead:
        """Read ``SEQ:HASH``, as ``str(head)`` writes it.

        Raises:
            ValueError: not a non-negative number, a colon and 64 lowercase hex digits.
        """
        seq, sep, digest = text.strip().partition(":")
        if not sep or not seq.isdigit() or not _HASH.match(digest):
            raise ValueError(f"a chain head is SEQ:HASH (64 hex digits), got {text[:80]!r}")
        head = cls(int(seq), digest)
        if head.seq == 0 and head.hash != ZERO_HASH:
            raise ValueError("the head of an empty chain (seq 0) is 64 zeros")
        return head


def entry_hash(entry: Mapping[str, Any]) -> str:
    """The hash an entry must carry: SHA-256 of its canonical JSON without ``hash``.

    Raises:
        CanonicalJSONError: the entry holds a value that is not JSON.
    """
    return sha256_hex({k: v for k, v in entry.items() if k != "hash"})


def _now() -> datetime:
    return datetime.now(UTC)


class AuditLog:
    """An audit log open for appending; safe to share between threads.

    One process writes a log at a time: the file is locked (``flock``) while open, and a
    second writer is refused. Reopening recovers the head from the last line, after checking
    that line's own hash (the whole chain is ``verify``'s job). A last line cut off by a
    crash mid-write was never acknowledged; it is dropped and the drop is recorded as an
    ``audit.recovered`` entry, so the repair itself is on the record.

    Args:
        path: the log file; created (mode 0600, with its folder) if missing.
        clock: returns the current time (timezone-aware); ``datetime.now(UTC)`` by default.

    Raises:
        AuditError: the file cannot be opened or locked, or its last entry is corrupt.

    Example::

        with AuditLog("/var/lib/elic/audit.jsonl") as log:
            log.append("run.finished", {"participant": "p-1", "seconds": 4.2})
            head = log.head()   # put in the signed result
    """

    def __init__(self, path: Path | str, *, clock: Callable[[], datetime] | None = None) -> None:
        self._path = Path(path)
        self._clock = clock or _now
        self._lock = threading.Lock()
        self._broken: str | None = None
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise AuditError(f"cannot open the audit log {self._path}: {e.strerror}") from e
        self._fd: int | None = fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise AuditError(f"{self._path} is open for writing elsewhere") from e
        try:
            self._head = self._recover()
        except BaseException:
            self.close()
            raise

    @property
    def path(self) -> Path:
        """The log file."""
        return self._path

    def head(self) -> ChainHead:
        """The chain head: ``seq`` and ``hash`` of the last entry (``0`` and zeros if none)."""
        with self._lock:
            return self._head

    def append(
        self, event: str, data: Mapping[str, Any] | None = None, durable: bool = True
    ) -> dict[str, Any]:
        """Add one entry, on disk (fdatasync) before this returns; returns the entry.

        Args:
            event: what happened, a short dotted name (``order.received``, ``result.sent``).
            data: its details, a JSON object (never PHI: the log may be shown to auditors).
            durable: ``False`` writes without waiting for the disk; the next durable entry
                (or ``close``) makes it durable too. For frequent entries off the critical
                path that can be reconstructed (which outbox rows were sent); a crash may
                lose them, never corrupt the chain (a cut-off line is dropped at reopen).

        Raises:
            ValueError: ``event`` is empty or longer than 200 characters.
            CanonicalJSONError: ``data`` holds a value that is not JSON (nothing is written).
            AuditError: the log is closed, or the write failed (the log then refuses further
                appends: a half-written line must be looked at, not written over).
        """
        if not isinstance(event, str) or not 0 < len(event) <= 200:
            raise ValueError("an audit event is a name of 1 to 200 characters")
        body = dict(data or {})
        with self._lock:
            if self._fd is None:
                raise AuditError(f"the audit log {self._path} is closed")
            if self._broken:
                raise AuditError(f"the audit log {self._path} is unusable: {self._broken}")
            entry: dict[str, Any] = {
                "seq": self._head.seq + 1,
                "time": self._clock().isoformat(timespec="microseconds"),
                "event": event,
                "data": body,
                "prev": self._head.hash,
            }
            entry["hash"] = entry_hash(entry)
            self._write(canonical_json(entry) + b"\n", durable)
            self._head = ChainHead(entry["seq"], entry["hash"])
            return entry

    def close(self) -> None:
        """Release the file (and its lock); appending afterwards is an ``AuditError``."""
        with self._lock:
            if self._fd is not None:
                os.fdatasync(self._fd)  # entries appended with durable=False
                os.close(self._fd)  # closing releases the flock
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditLog({str(self._path)!r}, head={self._head})"

    def _write(self, line: bytes, durable: bool = True) -> None:
        assert self._fd is not None
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
            if durable:
                os.fdatasync(self._fd)
        except OSError as e:
            self._broken = f"a write failed ({e.strerror})"
            raise AuditError(f"cannot append to the audit log {self._path}: {e.strerror}") from e

    def _recover(self) -> ChainHead:
        assert self._fd is not None
        last, torn = _tail(self._fd)
        if torn:
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - len(torn))
            os.fsync(self._fd)
        head = ChainHead(0, ZERO_HASH) if last is None else self._head_of(last)
        if torn:
            log.warning("%s: dropped a cut-off last line of %d bytes", self._path, len(torn))
            self._head = head
            self.append(
                "audit.recovered",
                {"dropped_bytes": len(torn), "dropped_sha256": hashlib.sha256(torn).hexdigest()},
            )
            return self._head
        return head

    def _head_of(self, line: bytes) -> ChainHead:
        try:
            entry = parse_json(line)
        except CanonicalJSONError as e:
            raise AuditError(f"{self._path}: the last entry is not JSON; run audit verify") from e
        problem = _check_entry(entry)
        if problem is None and entry_hash(entry) != entry["hash"]:
            problem = "it does not match its hash"
        if problem is not None:
            raise AuditError(
                f"{self._path}: the last entry is corrupt ({problem}); refusing to extend a "
                "broken chain: run `workbench audit verify`"
            )
        return ChainHead(entry["seq"], entry["hash"])


def _tail(fd: int) -> tuple[bytes | None, bytes]:
    """The last complete line (with its newline, ``None`` if none) and any cut-off rest."""
    end = os.fstat(fd).st_size
    buf, pos = b"", end
    while pos > 0:
        step = min(_TAIL_CHUNK, pos)
        pos -= step
        buf = os.pread(fd, step, pos) + buf
        last_nl = buf.rfind(b"\n")
        if last_nl != -1 and buf.rfind(b"\n", 0, last_nl) != -1:
            break
    last_nl = buf.rfind(b"\n")
    if last_nl == -1:
        return None, buf
    start = buf.rfind(b"\n", 0, last_nl) + 1
    return buf[start : last_nl + 1], buf[last_nl + 1 :]


def _check_entry(entry: object) -> str | None:
    """Why ``entry`` is not shaped like an audit entry, or ``None``."""
    if not isinstance(entry, dict) or set(entry) != FIELDS:
        return "not an object of seq, time, event, data, prev and hash"
    seq = entry["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return "seq is not a positive integer"
    if not isinstance(entry["time"], str) or not isinstance(entry["event"], str):
        return "time or event is not a string"
    if not isinstance(entry["data"], dict):
        return "data is not an object"
    for name in ("prev", "hash"):
        if not isinstance(entry[name], str) or not _HASH.match(entry[name]):
            return f"{name} is not 64 hex digits"
    return None


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found: clean, or the first entry that breaks the chain.

    ``entries`` counts the entries that verified before the first problem, ``head`` is the
    last of them. ``bad_seq`` is the ``seq`` the first bad entry should have had (for
    ``truncated``, the first missing one), ``bad_line`` its 1-based line number.
    """

    path: Path
    ok: bool
    entries: int
    head: ChainHead
    problem: str | None = None
    bad_seq: int | None = None
    bad_line: int | None = None
    detail: str = ""

    def __str__(self) -> str:
        if self.ok:
            return f"{self.path}: ok, {self.entries} entries, head {self.head}"
        return (
            f"{self.path}: entry {self.bad_seq} (line {self.bad_line}): "
            f"{self.problem}: {self.detail}"
        )


def verify(
    path: Path | str, expected_head: ChainHead | tuple[int, str] | None = None
) -> VerifyReport:
    """Check a whole audit log and name the first entry that breaks the chain.

    Args:
        path: the log file.
        expected_head: a ``(seq, hash)`` received from the log's owner earlier (in a signed
            result); the log must hold that very entry. Without it, cutting entries off the
            end cannot be told from a shorter log.

    Returns:
        The report; ``ok`` is true when every entry verified (and the expected head is there).

    Raises:
        AuditError: the file cannot be read.
        ValueError: ``expected_head`` is not a valid head.
    """
    path = Path(path)
    expected = None if expected_head is None else ChainHead.parse(_head_text(expected_head))
    head, number = ChainHead(0, ZERO_HASH), 0
    try:
        with path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                found = _successor(raw, head)
                if isinstance(found, _Problem):
                    return _failed(path, head, number, found)
                if expected is not None and found.seq == expected.seq and found != expected:
                    return _failed(path, head, number, _Problem(
                        "head_mismatch",
                        f"this entry's hash is {found.hash[:16]}..., but the head received "
                        f"was {expected.hash[:16]}...: the log was rewritten at or before it",
                    ))  # fmt: skip
                head = found
    except OSError as e:
        raise AuditError(f"cannot read the audit log {path}: {e.strerror}") from e
    if expected is not None and head.seq < expected.seq:
        return _failed(path, head, number + 1, _Problem(
            "truncated",
            f"the log ends at entry {head.seq}, but its head was reported at entry "
            f"{expected.seq}: {_entries(head.seq + 1, expected.seq)} cut off",
        ))  # fmt: skip
    return VerifyReport(path, True, head.seq, head)


def _entries(first: int, last: int) -> str:
    return f"entry {first} is" if first == last else f"entries {first} to {last} are"


def _head_text(head: ChainHead | tuple[int, str]) -> str:
    seq, digest = head
    return f"{seq}:{digest}"


@dataclass(frozen=True)
class _Problem:
    problem: str
    detail: str


def _failed(path: Path, head: ChainHead, line: int, found: _Problem) -> VerifyReport:
    return VerifyReport(
        path, False, head.seq, head, found.problem, head.seq + 1, line, found.detail
    )


def _successor(raw: bytes, head: ChainHead) -> ChainHead | _Problem:
    """The new head if ``raw`` is the valid entry after ``head``; else what is wrong."""
    if not raw.endswith(b"\n"):
        return _Problem("malformed", "the last line is cut off (no newline): a partial write")
    try:
        entry = parse_json(raw)
    except CanonicalJSONError as e:
        return _Problem("malformed", str(e))
    shape = _check_entry(entry)
    if shape is not None:
        return _Problem("malformed", shape)
    try:
        canonical = canonical_json(entry) + b"\n"
    except CanonicalJSONError as e:
        return _Problem("malformed", str(e))
    if canonical != raw:
        return _Problem("not_canonical", "the line is not its entry's canonical JSON: edited")
    expected_seq, seq = head.seq + 1, entry["seq"]
    if seq != expected_seq:
        what = (
            f"{_entries(expected_seq, seq - 1)} missing, or entries were reordered"
            if seq > expected_seq
            else "an entry was inserted before it, duplicated, or entries were reordered"
        )
        return _Problem(
            "out_of_sequence", f"found entry {seq} where entry {expected_seq} belongs: {what}"
        )
    if entry["prev"] != head.hash:
        return _Problem("broken_link", (
            f"prev is {entry['prev'][:16]}..., but the previous entry's hash is "
            f"{head.hash[:16]}...: an entry before it was removed or replaced"
        ))  # fmt: skip
    if entry_hash(entry) != entry["hash"]:
        return _Problem("hash_mismatch", "the entry's content does not match its hash: edited")
    return ChainHead(seq, entry["hash"])
