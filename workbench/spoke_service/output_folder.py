"""Reads ``output.json`` out of a finished run's output folder without trusting the folder.

The algorithm controlled that folder, so: no link is followed (``O_NOFOLLOW``), anything but
one regular file named ``output.json`` is refused, and never more than the size limit plus
one byte is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from workbench.core.contract import OUTPUT_FILE
from workbench.core.run_errors import RunErrorCode

_MAX_LISTED = 1000


@dataclass(frozen=True)
class OutputRead:
    """The bytes of ``output.json``, or why they could not be taken."""

    data: bytes | None
    code: RunErrorCode | None = None
    detail: str = ""


def folder_bytes(folder: Path) -> int:
    """Total size of the regular files directly in ``folder`` (links are not followed)."""
    total = 0
    with os.scandir(folder) as entries:
        for n, entry in enumerate(entries):
            if n >= _MAX_LISTED:
                break
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total


def read_output(folder: Path, max_bytes: int) -> OutputRead:
    """Take ``output.json`` from ``folder``: exactly one regular file, at most ``max_bytes``."""
    with os.scandir(folder) as it:
        entries = [e for _, e in zip(range(_MAX_LISTED), it, strict=False)]
    names = sorted(e.name for e in entries)
    if not entries:
        return OutputRead(None, RunErrorCode.OUTPUT_MISSING, "the output folder is empty")
    target = next((e for e in entries if e.name == OUTPUT_FILE), None)
    if target is None:
        return OutputRead(None, RunErrorCode.OUTPUT_MISSING, f"no {OUTPUT_FILE}; found {names}")
    if not target.is_file(follow_symlinks=False):
        return OutputRead(None, RunErrorCode.OUTPUT_UNSAFE, f"{OUTPUT_FILE} is not a regular file")
    if len(entries) > 1:
        return OutputRead(None, RunErrorCode.OUTPUT_UNSAFE, f"extra entries: {names}")
    try:
        fd = os.open(folder / OUTPUT_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        return OutputRead(None, RunErrorCode.OUTPUT_UNSAFE, f"cannot open {OUTPUT_FILE}: {e}")
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            return OutputRead(None, RunErrorCode.OUTPUT_TOO_LARGE, f"{size} bytes > {max_bytes}")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        return OutputRead(None, RunErrorCode.OUTPUT_TOO_LARGE, f"more than {max_bytes} bytes")
    return OutputRead(data)
