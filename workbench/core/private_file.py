"""Reading a secret kept in a file only its owner may read (store passwords, for example)."""

from __future__ import annotations

import os
from pathlib import Path


class PrivateFileError(ValueError):
    """The file is unreadable, empty, or readable by group or others."""


def read_private_text(path: Path | str) -> str:
    """The stripped text of ``path``, refusing a file others could read.

    Raises:
        PrivateFileError: naming what is wrong with the file.
    """
    try:
        mode = os.stat(path).st_mode
        text = Path(path).read_text().strip()
    except OSError as e:
        raise PrivateFileError(f"cannot read the password file {path}: {e}") from e
    if mode & 0o077:
        raise PrivateFileError(f"the password file {path} is readable by others: chmod 600 it")
    if not text:
        raise PrivateFileError(f"the password file {path} is empty")
    return text
