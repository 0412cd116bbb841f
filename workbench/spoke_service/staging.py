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

With a ``DicomCache`` the DICOM tree is laid out once per participant and shared, read-only,
by every run that reads the same files (each algorithm of an experiment, each later
experiment): hard-linking a CT's files is most of the cost of staging (5 to 10 ms for 160
files), and the tree is the same for every algorithm. A tree is named by a hash of the
files' paths, inode numbers, sizes and modification times, so a file replaced or changed
after indexing gets a new tree, never a stale one; the name says nothing about the patient.

When the spoke runs as root the output folder is a size-capped tmpfs owned by the sandbox
user, so a runaway algorithm hits ENOSPC instead of filling the spoke's disk. Without root
it is a plain folder and the size check happens after the run (documented in
``docs/sandbox.md``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import hashlib
import json
import logging
import os
import shutil
import stat
import time
import uuid
from pathlib import Path
from types import TracebackType

from workbench.core.participant import Case
from workbench.spoke_service.sandbox import SANDBOX_USER

log = logging.getLogger(__name__)

_SLACK = 64 * 1024
_MAX_OUTPUT_INODES = 16


class DicomCache:
    """Each participant's DICOM tree, laid out once and shared read-only by its runs.

    Args:
        root: the folder of the trees; on the same filesystem as the DICOM for hard links.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def tree(self, case: Case) -> Path:
        """The folder of ``case``'s files (``<series-key>/000001.dcm``...), made if missing.

        Two runs laying out the same tree at once both succeed: each builds its own copy
        under a temporary name, the first rename wins and the other copy is removed.
        """
        sources = [[(Path(path), os.stat(path)) for path in series.paths] for series in case.series]
        digest = hashlib.sha256()
        for series, files in zip(case.series, sources, strict=True):
            digest.update(f"{series.series_key}\0".encode())
            for path, st in files:
                digest.update(
                    f"{path}\0{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}\0".encode()
                )
        target = self.root / digest.hexdigest()[:40]
        if target.is_dir():
            with contextlib.suppress(OSError):
                os.utime(target)  # when it was last used, for evict()
            return target
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)  # the spoke's own, as runs
        building = self.root / f".{target.name}.{uuid.uuid4().hex}"
        try:
            building.mkdir(mode=0o755)
            building.chmod(0o755)
            for series, files in zip(case.series, sources, strict=True):
                _lay_out_series(building / series.series_key, files)
            try:
                os.rename(building, target)
            except OSError:
                if not target.is_dir():
                    raise
                shutil.rmtree(building, ignore_errors=True)  # another run made it first
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        return target

    def evict(self, unused_for_s: float) -> int:
        """Remove the trees no run used for ``unused_for_s`` seconds; returns how many.

        Call it when no container can be reading an old tree (at a spoke's start), or with
        an age longer than any case may run.
        """
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - unused_for_s
        removed = 0
        for folder in self.root.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if folder.stat().st_mtime <= cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
        return removed


class Staging:
    """The host-side folders of one run; a context manager that removes them afterwards.

    Args:
        work_root: where the run's folder is made.
        case: what the run reads.
        output_limit: the output folder's size cap, in bytes.
        dicom_cache: share the case's DICOM tree with other runs instead of laying out
            one for this run only.
    """

    def __init__(
        self,
        work_root: Path,
        case: Case,
        output_limit: int,
        dicom_cache: DicomCache | None = None,
    ) -> None:
        self.run_id = uuid.uuid4().hex
        self.root = Path(work_root) / self.run_id
        self.input_dir = self.root / "input"
        self.dicom_dir = self.root / "dicom"
        self.output_dir = self.root / "output"
        self._case = case
        self._output_limit = output_limit
        self._cache = dicom_cache
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
        own_tree = self._cache is None
        for folder in (self.input_dir, self.output_dir, *([self.dicom_dir] if own_tree else [])):
            folder.mkdir()
            folder.chmod(0o755)
        self.participant_json.write_text(json.dumps(self._case.document, indent=2) + "\n")
        self.participant_json.chmod(0o444)
        if self._cache is not None:
            self.dicom_dir = self._cache.tree(self._case)
        else:
            for series in self._case.series:
                files = [(Path(path), os.stat(path)) for path in series.paths]
                _lay_out_series(self.dicom_dir / series.series_key, files)
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


@functools.cache
def _libc() -> ctypes.CDLL:
    # Loaded once: find_library reads the linker cache, about a millisecond each time.
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


def _lay_out_series(target: Path, files: list[tuple[Path, os.stat_result]]) -> None:
    """``target/000001.dcm``... for the series' files, in order."""
    target.mkdir()
    target.chmod(0o755)
    for n, (source, st) in enumerate(files, start=1):
        _link_or_copy(source, target / f"{n:06d}.dcm", st.st_mode)


def _link_or_copy(source: Path, target: Path, mode: int) -> None:
    if mode & stat.S_IROTH:
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another filesystem, or links not allowed: copy instead
    shutil.copyfile(source, target)
    target.chmod(0o444)
