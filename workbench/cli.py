"""The ``workbench`` command: parses arguments and forwards to the library, nothing more.

Exit status: 0 on success, 1 when the work failed (with a one-line reason on stderr),
2 for a usage error.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

from workbench import __version__
from workbench.errors import WorkbenchError

log = logging.getLogger("workbench")

DEFAULT_SECRET = Path("~/.config/workbench/pseudonym.key")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``workbench`` command line; returns the exit status."""
    parser = _parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if ns.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(ns, "handler"):
        parser.print_help()
        return 2
    try:
        return int(ns.handler(ns))
    except WorkbenchError as e:
        print(f"workbench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("workbench: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench",
        description="Federated imaging research workbench: algorithms travel to the data, "
        "only output.json comes back.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(metavar="COMMAND")

    images = _group(sub, "images", "build the offline base image and the algorithm images")
    p = images.add_parser(
        "build-base",
        help="build elic/base:bookworm with debootstrap from this machine's apt mirror",
        description="Build the Debian bookworm base image (python3, numpy, pydicom) offline: "
        "debootstrap from the mirror in /etc/apt, then docker import. Needs root, debootstrap "
        "and a running Docker Engine. A second call returns at once when the recipe is unchanged.",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if the image is current")
    p.set_defaults(handler=_images_build_base)
    p = images.add_parser(
        "build-algorithms",
        help="build the reference algorithm images FROM the base image",
        description="Build each algorithm under studies/algorithms as elic/<name>:<version>, "
        "with its declared output schema as an image label. Builds the base image first if it "
        "is missing.",
    )
    p.add_argument("names", nargs="*", help="only these algorithms (default: all)")
    p.add_argument("--algorithms-dir", type=Path, help="folder of algorithm folders")
    p.set_defaults(handler=_images_build_algorithms)

    p = sub.add_parser(
        "synth",
        help="generate a synthetic multi-site CT cohort",
        description="Write a synthetic multi-site chest CT cohort: per site, DICOM series "
        "for two time points per participant with realistic fake identifiers, and a "
        "site-local reference standard (reference.csv).",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--sites", type=_positive_int, default=3, help="number of sites (3)")
    p.add_argument(
        "--participants", type=_positive_int, default=12, help="participants per site (12)"
    )
    p.add_argument("--full", action="store_true", help="realistic 512x512 series (large)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.set_defaults(handler=_synth)

    spoke = _group(sub, "spoke", "spoke-side tools")
    p = spoke.add_parser(
        "index",
        help="index a folder of DICOM files into the spoke's catalog",
        description="Read the headers (never the pixels) of every file below DIR into a "
        "SQLite catalog. Files that are not DICOM images are counted and listed, never fatal. "
        "Re-indexing reads only new or changed files.",
    )
    p.add_argument("dicom_dir", type=Path, metavar="DIR")
    p.add_argument(
        "--catalog", type=Path, default=Path("spoke-catalog.sqlite"), help="catalog file"
    )
    p.add_argument(
        "--workers", type=_positive_int, default=os.cpu_count() or 1, help="reader processes"
    )
    p.add_argument("--show-problems", action="store_true", help="list every skipped file")
    p.set_defaults(handler=_spoke_index)

    algorithm = _group(sub, "algorithm", "algorithm developer tools")
    p = algorithm.add_parser(
        "run-local",
        help="run an algorithm image on one local case exactly as a spoke would",
        description="Treat the DICOM below --dicom as one participant case, build its "
        "de-identified participant.json, run IMAGE in the spoke's sandbox (no network, "
        "read-only root, non-root, no capabilities, limits) and write output.json, "
        "participant.json and container.log into --out. Exits 1 with a one-line reason "
        "(an error code from the fixed table) when the run fails.",
    )
    p.add_argument("image", metavar="IMAGE", help="image reference or id (never pulled)")
    p.add_argument("--dicom", type=Path, required=True, help="the case's DICOM folder")
    p.add_argument("--out", type=Path, required=True, help="where results are written")
    p.add_argument(
        "--arg", action="append", default=[], metavar="KEY=VALUE",
        help="an algorithm argument (repeatable); JSON values keep their type",
    )  # fmt: skip
    p.add_argument("--timeout", type=_positive_float, default=600.0, help="seconds (600)")
    p.add_argument("--memory", default="2g", help="memory limit, e.g. 512m, 2g (2g)")
    p.add_argument("--cpus", type=_positive_float, default=1.0, help="CPU limit (1.0)")
    p.add_argument("--pids", type=_positive_int, default=128, help="process limit (128)")
    p.add_argument(
        "--secret-file", type=Path, default=DEFAULT_SECRET,
        help=f"pseudonym secret, created if missing ({DEFAULT_SECRET})",
    )  # fmt: skip
    p.set_defaults(handler=_run_local)

    p = sub.add_parser(
        "demo",
        help="run the demo study (see README)",
        description="Run the demo: build the images, generate a synthetic multi-site cohort "
        "and run the reference algorithms on it at every site.",
    )
    p.add_argument("--spokes", type=_positive_int, default=3, help="number of sites (3)")
    p.add_argument(
        "--participants", type=_positive_int, default=12, help="participants per site (12)"
    )
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder")
    p.set_defaults(handler=_demo)
    return parser


_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _group(sub: _Sub, name: str, text: str) -> _Sub:
    parser = sub.add_parser(name, help=text, description=text)

    def show_help(ns: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(handler=show_help)
    group: _Sub = parser.add_subparsers(metavar="COMMAND")
    return group


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _counter(what: str) -> Callable[[int, int], None]:
    """A progress callback printing ``what: done/total`` in place on a terminal."""
    tty = sys.stderr.isatty()
    step = {"last": -1}

    def show(done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if tty:
            print(f"\r{what}: {done}/{total} ({percent}%)", end="", file=sys.stderr, flush=True)
            if done >= total:
                print(file=sys.stderr)
        elif percent // 10 != step["last"] or done >= total:
            step["last"] = percent // 10
            _say(f"{what}: {done}/{total} ({percent}%)")

    return show


def _docker_client() -> object:
    from workbench.spoke_service.engine import DockerEngine

    return DockerEngine.from_env().client


def _images_build_base(ns: argparse.Namespace) -> int:
    from workbench.images.base import build_base

    build_base(_docker_client(), force=ns.force, progress=_say)
    return 0


def _images_build_algorithms(ns: argparse.Namespace) -> int:
    from workbench.images.algorithms import build_algorithms
    from workbench.images.base import build_base

    client = _docker_client()
    build_base(client, progress=_say)
    built = build_algorithms(client, ns.algorithms_dir, ns.names or None, progress=_say)
    for item in built:
        print(f"{item.reference}\t{item.id}")
    return 0


def _synth(ns: argparse.Namespace) -> int:
    from workbench.synth.cohort import generate_cohort

    summary = generate_cohort(
        ns.out, ns.sites, ns.participants, full=ns.full, seed=ns.seed,
        progress=_counter("series written"),
    )  # fmt: skip
    print(
        f"{summary.participants} participants at {len(summary.sites)} sites: "
        f"{summary.series} series, {summary.files} files, {summary.bytes / 2**20:.1f} MiB "
        f"in {ns.out}"
    )
    return 0


def _spoke_index(ns: argparse.Namespace) -> int:
    from workbench.spoke_service.catalog import Catalog

    with Catalog.open(ns.catalog) as catalog:
        report = catalog.index(ns.dicom_dir, workers=ns.workers, progress=_counter("headers"))
        counts = catalog.counts()
        problems = catalog.problems() if ns.show_problems else []
    print(
        f"indexed {report.indexed} new or changed files, {report.unchanged} unchanged, "
        f"{report.removed} removed; {report.problem_count} not usable"
        + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(report.problems.items()))})"
           if report.problems else "")
    )  # fmt: skip
    print(
        f"catalog {ns.catalog}: {counts.participants} participants, {counts.studies} studies, "
        f"{counts.series} series, {counts.instances} instances, {counts.bytes / 2**20:.1f} MiB"
    )
    for path, kind, detail in problems:
        print(f"  {kind}\t{path}\t{detail}")
    return 0


def _run_local(ns: argparse.Namespace) -> int:
    from workbench.core.contract import parse_cli_args
    from workbench.core.pseudonym import Pseudonymizer
    from workbench.errors import CaseError, ConfigError, EngineError
    from workbench.spoke_service.engine import DockerEngine
    from workbench.spoke_service.run_local import run_local
    from workbench.spoke_service.sandbox import Limits, parse_size

    try:
        args = parse_cli_args(ns.arg)
        limits = Limits(
            timeout_s=ns.timeout, memory_bytes=parse_size(ns.memory), cpus=ns.cpus, pids=ns.pids
        )
    except ValueError as e:
        raise ConfigError(str(e)) from e
    secret = _load_secret(ns.secret_file.expanduser())
    try:
        engine = DockerEngine.from_env()
        done = run_local(engine, ns.image, ns.dicom, ns.out, Pseudonymizer(secret), args, limits)
    except (CaseError, EngineError) as e:
        print(f"run-local: {e.code.value}: {e.detail}", file=sys.stderr)
        return 1
    result = done.result
    skipped = sum(done.skipped.values())
    note = f"; {skipped} non-image files skipped" if skipped else ""
    if result.error is not None:
        where = f"; log: {ns.out / 'container.log'}" if result.log_path else ""
        print(
            f"run-local: {result.error.code.value}: {result.error.reason} ({result.detail}){where}",
            file=sys.stderr,
        )
        return 1
    print(
        f"ok in {result.seconds:.2f} s: {done.case.instance_count} files in "
        f"{len(done.case.series)} series{note}; wrote {ns.out / 'output.json'}"
    )
    return 0


def _load_secret(path: Path) -> bytes:
    """The spoke's pseudonym secret; a new random one is made (mode 0600) if missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    text = path.read_text().strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < 16:
        from workbench.errors import ConfigError

        raise ConfigError(f"{path} does not hold a hex secret of at least 16 bytes")
    return secret


def _demo(ns: argparse.Namespace) -> int:
    from workbench.demo import run_demo

    return run_demo(ns.out, ns.spokes, ns.participants, say=_say)


if __name__ == "__main__":
    sys.exit(main())
