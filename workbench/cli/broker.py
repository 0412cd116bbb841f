"""``workbench broker``: run the message broker (ActiveMQ Classic from the OS package)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from workbench.cli.common import Sub, group, positive_float, positive_int

_DIR_HELP = "the broker's directory: conf/, data/ (KahaDB), log/, activemq.pid"


def register(sub: Sub) -> None:
    """Add this area's commands to the ``workbench`` parser."""
    broker = group(sub, "broker", "run the ActiveMQ message broker between the hub and the spokes")
    p = broker.add_parser(
        "start",
        help="start a broker with a generated configuration in DIR",
        description="Write DIR/conf/activemq.xml (STOMP on 127.0.0.1 only, KahaDB persistence "
        "in DIR/data, NACKed messages to the dead-letter queue ActiveMQ.DLQ, the statistics "
        "plugin for queue depths, memory limits) and start ActiveMQ Classic from "
        "ACTIVEMQ_HOME (default /usr/share/activemq, Debian's activemq package) in the "
        "background. Returns once the STOMP port answers a CONNECT; fails with the tail of "
        "DIR/log/activemq.log otherwise. Refuses to start a second broker in the same DIR.",
    )
    p.add_argument("--dir", type=Path, required=True, metavar="DIR", help=_DIR_HELP)
    p.add_argument(
        "--stomp-port", type=_port, metavar="N",
        help="STOMP port on 127.0.0.1 (default: the port of the last start in DIR if it is "
        "free, else any free port)",
    )  # fmt: skip
    p.add_argument("--heap-mb", type=positive_int, default=384, help="JVM heap limit (384)")
    p.add_argument(
        "--nack-retries", type=int, default=0, metavar="N",
        help="redeliver a NACKed message N times before the dead-letter queue (0: at once)",
    )  # fmt: skip
    p.add_argument(
        "--nack-delay", type=positive_float, default=5.0, metavar="SECONDS",
        help="first redelivery delay with --nack-retries, doubling (5; must exceed 1)",
    )  # fmt: skip
    p.add_argument("--timeout", type=positive_float, default=60.0, help="seconds to wait (60)")
    p.set_defaults(handler=_start)

    p = broker.add_parser(
        "stop",
        help="stop the broker running in DIR",
        description="Stop the broker of DIR cleanly (SIGTERM), killing it if it has not "
        "stopped after --timeout seconds. Stopping a broker that does not run is not an error.",
    )
    p.add_argument("--dir", type=Path, required=True, metavar="DIR", help=_DIR_HELP)
    p.add_argument("--timeout", type=positive_float, default=30.0, help="seconds (30)")
    p.set_defaults(handler=_stop)

    p = broker.add_parser(
        "status",
        help="whether the broker of DIR runs, its port, version and queue depths",
        description="Show whether the broker of DIR runs, its pid, STOMP URL, ActiveMQ "
        "version, configuration and log paths, and each queue's depth (messages stored and "
        "not yet acknowledged), in-flight count and consumers, as the broker's statistics "
        "plugin reports them. Exit status 0 when it runs, 3 when it does not.",
    )
    p.add_argument("--dir", type=Path, required=True, metavar="DIR", help=_DIR_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_status)


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def _managed(ns: argparse.Namespace, **options: Any) -> Any:
    from workbench.transport.activemq import ManagedBroker

    return ManagedBroker.from_env(ns.dir, **options)


def _start(ns: argparse.Namespace) -> int:
    from workbench.errors import ConfigError

    if ns.nack_retries < 0 or (ns.nack_retries and ns.nack_delay <= 1.0):
        raise ConfigError("--nack-retries must be 0 or more, and --nack-delay above 1 second")
    broker = _managed(
        ns, stomp_port=ns.stomp_port, heap_mb=ns.heap_mb,
        nack_retries=ns.nack_retries, nack_delay_s=ns.nack_delay,
    )  # fmt: skip
    status = broker.start(timeout=ns.timeout)
    print(f"ActiveMQ {status.version} running: {status.stomp_url} (pid {status.pid})")
    print(f"config {status.config}")
    print(f"log    {status.log}")
    return 0


def _stop(ns: argparse.Namespace) -> int:
    broker = _managed(ns)
    if broker.stop(timeout=ns.timeout):
        print(f"stopped the broker in {broker.directory}")
    else:
        print(f"no broker was running in {broker.directory}")
    return 0


def _status(ns: argparse.Namespace) -> int:
    status = _managed(ns).status()
    if ns.json:
        doc = {
            "running": status.running, "pid": status.pid, "stomp_url": status.stomp_url,
            "version": status.version, "config": str(status.config), "log": str(status.log),
            "queues": None if status.queues is None else [vars(q) for q in status.queues],
            "problems": list(status.problems),
        }  # fmt: skip
        print(json.dumps(doc, indent=2))
        return 0 if status.running else 3
    state = f"running (pid {status.pid})" if status.running else "not running"
    print(f"broker  {state}")
    print(f"stomp   {status.stomp_url or '-'}")
    print(f"version ActiveMQ {status.version or '?'}")
    print(f"config  {status.config}")
    print(f"log     {status.log}")
    if status.queues is not None:
        print(f"queues  {len(status.queues)}")
        width = max([len(q.name) for q in status.queues] + [5])
        if status.queues:
            print(f"  {'queue':<{width}}  {'depth':>7}  {'in-flight':>9}  {'consumers':>9}")
        for q in status.queues:
            print(f"  {q.name:<{width}}  {q.depth:>7}  {q.in_flight:>9}  {q.consumers:>9}")
    for problem in status.problems:
        print(f"problem {problem}")
    return 0 if status.running else 3
