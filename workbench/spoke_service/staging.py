"""Lays out one case on the host for a container: participant JSON, DICOM, output folder.

::

    <work>/<run-id>/input/participant.json     mounted read-only at /elic/input
    <work>/<run-id>/dicom/<series-key>/000001.dcm ...   read-only at /elic/dicom
    <work>/<run-id>/output/                    the only writable mount, /elic/output

DICOM files are hard links to the catalogued files when the filesystem allows (no copy, and
the read-only mount protects them), copies otherwise, and always copies when a file is not
readable by the sandbox user. Their names are sequence numbers: original file names can
carry patient names or dates, and the container sees only the case's own files, never the
rest of the folder they came from.

When the spoke runs as root the output folder is a size-capped tmpfs owned by the sandbox
user, so a runaway algorithm hits ENOSPC instead of filling the spoke's disk. Without root
it is a plain folder and the size check happens after the run (documented in
``docs/sandbox.md``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import shutil
import stat
import uuid
from pathlib import Path
from types import TracebackType

from workbench.core.participant import Case
from workbench.spoke_service.sandbox import SANDBOX_USER

log = logging.getLogger(__name__)

_SLACK = 64 * 1024
_MAX_OUTPUT_INODES = 16


class Staging:
    """The host-side folders of one run; a context manager that removes them afterwards."""

    def __init__(self, work_root: Path, case: Case, output_limit: int) -> None:
        self.run_id = uuid.uuid4().hex
        self.root = Path(work_root) / self.run_id
        self.input_dir = self.root / "input"
        self.dicom_dir = self.root / "dicom"
        self.output_dir = self.root / "output"
        self._case = case
        self._output_limit = output_limit
        self.output_is_tmpfs = False

    def __enter__(self) -> Staging:
        try:
            self._lay_out()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    @property
    def participant_json(self) -> Path:
        """The participant JSON as the container sees it."""
        return self.input_dir / "participant.json"

    def cleanup(self) -> None:
        """Unmount the output tmpfs and remove every staged file."""
        if self.output_is_tmpfs:
            _umount(self.output_dir)
            self.output_is_tmpfs = False
        shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def sweep(work_root: Path) -> int:
        """Remove every staged run left below ``work_root`` by a crash; returns how many."""
        if not work_root.is_dir():
            return 0
        swept = 0
        for folder in work_root.iterdir():
            output = folder / "output"
            if os.path.ismount(output):
                _umount(output)
            shutil.rmtree(folder, ignore_errors=True)
            swept += 1
        return swept

    def _lay_out(self) -> None:
        self.root.mkdir(parents=True, mode=0o700)
        # The root stays private to the spoke; the container reaches only the mounted folders.
        for folder in (self.input_dir, self.dicom_dir, self.output_dir):
            folder.mkdir()
            folder.chmod(0o755)
        self.participant_json.write_text(json.dumps(self._case.document, indent=2) + "\n")
        self.participant_json.chmod(0o444)
        for series in self._case.series:
            target = self.dicom_dir / series.series_key
            target.mkdir()
            target.chmod(0o755)
            for n, source in enumerate(series.paths, start=1):
                _link_or_copy(Path(source), target / f"{n:06d}.dcm")
        self._prepare_output()

    def _prepare_output(self) -> None:
        uid, gid = SANDBOX_USER.split(":")
        if os.geteuid() == 0:
            size = self._output_limit + _SLACK
            opts = f"size={size},nr_inodes={_MAX_OUTPUT_INODES},uid={uid},gid={gid},mode=0700"
            problem = _mount_tmpfs(self.output_dir, opts)
            if problem is None:
                self.output_is_tmpfs = True
                return
            log.warning("no size-capped tmpfs for the output (%s)", problem)
            os.chown(self.output_dir, int(uid), int(gid))
            self.output_dir.chmod(0o700)
        else:
            self.output_dir.chmod(0o777)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _mount_tmpfs(target: Path, options: str) -> str | None:
    """mount(2) a tmpfs at ``target``; ``None`` on success, else the reason.

    The system call directly, not the ``mount`` command: two process spawns per case cost
    ~10 ms, a third of the spoke's whole order-to-result path.
    """
    done = _libc().mount(b"tmpfs", os.fsencode(target), b"tmpfs", 0, options.encode())
    return None if done == 0 else os.strerror(ctypes.get_errno())


def _umount(target: Path) -> None:
    if _libc().umount2(os.fsencode(target), 0) != 0:
        log.error("could not unmount %s: %s", target, os.strerror(ctypes.get_errno()))


def _link_or_copy(source: Path, target: Path) -> None:
    mode = source.stat().st_mode
    if mode & stat.S_IROTH:
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another filesystem, or links not allowed: copy instead
    shutil.copyfile(source, target)
    target.chmod(0o444)
