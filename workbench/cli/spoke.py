"""``workbench spoke``: spoke-side tools."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from workbench.cli.common import Sub, counter, group, positive_int, say
from workbench.cli.experiment import add_hub_option


def register(sub: Sub) -> None:
    """Add this area's commands to the ``workbench`` parser."""
    spoke = group(sub, "spoke", "spoke-side tools")
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
        "--workers", type=positive_int, default=os.cpu_count() or 1, help="reader processes"
    )
    p.add_argument("--show-problems", action="store_true", help="list every skipped file")
    p.set_defaults(handler=_spoke_index)

    p = spoke.add_parser(
        "serve",
        help="run a spoke: take orders from the broker, run cases, send results",
        description="Run this institution's spoke until SIGINT or SIGTERM: index the DICOM "
        "folder, listen on the spoke's orders queue, run each order's cases in the sandbox and "
        "send only status events, results (output.json) and heartbeats to the hub. Settings "
        "come from a TOML file (see workbench/spoke_service/config.py for every key).",
    )
    p.add_argument("--config", type=Path, required=True, help="the spoke's TOML settings")
    p.set_defaults(handler=_spoke_serve)

    p = spoke.add_parser(
        "list",
        help="the spokes the hub knows, with their last heartbeat and clock skew",
        description="Every spoke the hub knows (allow-listed or seen): its last heartbeat on "
        "the hub's clock, queued and running cases, and the skew of its clock "
        f"against the hub's. A skew beyond {SKEW_WARN_S:g} s is flagged: the hub never uses "
        "a spoke's clock for a decision, but the spoke's own logs and audit times are off.",
    )
    add_hub_option(p)
    p.set_defaults(handler=_spoke_list)
    _register_review(spoke)


SKEW_WARN_S = 300.0


def _spoke_list(ns: argparse.Namespace) -> int:
    from workbench.hub_kernel.client import HubClient

    spokes = HubClient(ns.hub).spokes()
    if not spokes:
        say("the hub knows no spoke")
        return 0
    print("SPOKE".ljust(24) + "LAST HEARTBEAT (HUB)".ljust(28) + "QUEUED  RUNNING  SKEW")
    for s in spokes:
        skew = s.get("clock_skew_s")
        print(
            s["spoke_id"].ljust(24) + str(s.get("last_heartbeat_at") or "never").ljust(28)
            + str(s.get("queued") or 0).rjust(6) + str(s.get("running") or 0).rjust(9)
            + ("  ?" if skew is None else f"  {skew:+.0f} s")
        )  # fmt: skip
    for s in spokes:
        skew = s.get("clock_skew_s")
        if skew is not None and abs(skew) > SKEW_WARN_S:
            say(
                f"WARNING: {s['spoke_id']}'s clock is {abs(skew):.0f} s "
                f"{'ahead of' if skew > 0 else 'behind'} the hub's: fix its time sync (NTP)"
            )
    return 0


def _spoke_index(ns: argparse.Namespace) -> int:
    from workbench.spoke_service.catalog import Catalog

    with Catalog.open(ns.catalog) as catalog:
        report = catalog.index(ns.dicom_dir, workers=ns.workers, progress=counter("headers"))
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


def _spoke_serve(ns: argparse.Namespace) -> int:
    import signal
    import threading

    from workbench.spoke_service.config import SpokeConfig
    from workbench.spoke_service.engine import DockerEngine
    from workbench.spoke_service.service import Spoke

    config = SpokeConfig.from_file(ns.config)
    engine = DockerEngine.from_env()
    spoke = Spoke(config, config.connect(), engine)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    spoke.start()
    say(f"spoke {config.spoke_id} serving; catalog {config.catalog_path}")
    while not stop.wait(0.5) and not spoke.failed.is_set():
        pass
    say(f"spoke {config.spoke_id} stopping")
    spoke.stop()
    if spoke.failure is not None:
        raise spoke.failure  # exit 1 with the reason: its state could not be written
    return 0


# review of held results (manual release) -----------------------------------------------------


def _register_review(spoke: Sub) -> None:
    p = spoke.add_parser(
        "pending",
        help="list the results held for manual release",
        description="List the results this spoke holds for a person to review before they "
        "leave (the policy's manual_release): id, experiment, algorithm, participant "
        "pseudonym, since when, and the release gate's summary.",
    )
    p.add_argument("--config", type=Path, required=True, help="the spoke's TOML settings")
    p.add_argument("--all", action="store_true", help="also list released and rejected results")
    p.set_defaults(handler=_spoke_pending)

    p = spoke.add_parser(
        "release",
        help="send one held result to the hub",
        description="Release a held result: it goes into the spoke's outbox, and the running "
        "spoke sends it to the hub. A result is released at most once.",
    )
    p.add_argument("id", type=positive_int, metavar="ID", help="the id `spoke pending` shows")
    p.add_argument("--config", type=Path, required=True, help="the spoke's TOML settings")
    p.set_defaults(handler=_spoke_release)

    p = spoke.add_parser(
        "reject",
        help="decline one held result; the hub learns only RELEASE_REJECTED",
        description="Reject a held result: it never leaves the spoke. The hub is told the "
        "case failed with RELEASE_REJECTED; the reason stays in the spoke's pending store.",
    )
    p.add_argument("id", type=positive_int, metavar="ID", help="the id `spoke pending` shows")
    p.add_argument("--config", type=Path, required=True, help="the spoke's TOML settings")
    p.add_argument("--reason", default="", help="why (kept at the spoke, never sent)")
    p.set_defaults(handler=_spoke_reject)


def _spoke_pending(ns: argparse.Namespace) -> int:
    import time

    from workbench.spoke_service.config import SpokeConfig
    from workbench.spoke_service.pending import PendingStore

    config = SpokeConfig.from_file(ns.config)
    with PendingStore.open(config.state_dir) as store:
        held = store.list(None if ns.all else "held")
    if not held:
        say("no results held for release" if not ns.all else "the pending store is empty")
        return 0
    header = ["ID", "EXPERIMENT", "ALGORITHM", "PARTICIPANT", "HELD SINCE"]
    header += ["STATE"] if ns.all else []
    rows = [
        [str(h.id), h.case.experiment_id, h.case.algorithm, h.case.participant_id,
         time.strftime("%Y-%m-%d %H:%M", time.localtime(h.held_at))]
        + ([h.state] if ns.all else [])
        for h in held
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row, summary in zip([header, *rows], ["SUMMARY", *(h.summary for h in held)], strict=True):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)), summary)
    return 0


def _spoke_release(ns: argparse.Namespace) -> int:
    from workbench.spoke_service.config import SpokeConfig
    from workbench.spoke_service.pending import release_held

    held = release_held(SpokeConfig.from_file(ns.config).state_dir, ns.id)
    case = held.case
    print(f"released {held.id} ({case.experiment_id} {case.algorithm} {case.participant_id}): "
          "queued for the hub")  # fmt: skip
    return 0


def _spoke_reject(ns: argparse.Namespace) -> int:
    from workbench.spoke_service.config import SpokeConfig
    from workbench.spoke_service.pending import reject_held

    held = reject_held(SpokeConfig.from_file(ns.config).state_dir, ns.id, ns.reason)
    case = held.case
    print(f"rejected {held.id} ({case.experiment_id} {case.algorithm} {case.participant_id}): "
          "the hub is told RELEASE_REJECTED")  # fmt: skip
    return 0
