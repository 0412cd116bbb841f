"""The drill's fault scenarios: each launches one experiment, breaks a part mid-study, heals it.

Every scenario waits for the moment its fault must hit (with a deadline), makes sure the
fault really hit then (a scenario whose fault came too late proves nothing, and says so in
``Trial.problems``), brings the part back and waits for the experiment to settle. Counting
is ``Drill.run``'s. ``SCENARIOS`` maps each name to its function, in the order they run.

- ``broker-restart``: ActiveMQ is killed (SIGKILL) once results flow, and started again on
  the same port and data once a spoke has finished a case meanwhile.
- ``hub-down``: the hub is stopped once results flow and stays down until every spoke has
  finished and handed its results to the broker; then it starts again.
- ``spoke-crash``: a spoke is killed (SIGKILL) while its container runs, and restarted; the
  orphaned container must be removed and the interrupted case re-run under the same attempt.
- ``spoke-offline``: a spoke is frozen (SIGSTOP) before the launch, so its order waits in the
  broker, until the broker drops it for missed heart-beats; thawed, it reconnects and works.
  Frozen a second time with a case running, its result waits in its outbox the same way.
- ``duplicate-delivery``: every message on a spoke's orders queue and on the hub's inbox is
  delivered twice (``Duplicator`` takes each and puts back two copies).
- ``poison-message``: a malformed message and one of an unknown type land in the hub's inbox
  mid-study; they must reach the dead-letter queue and ``/rejections``, and the rest flow.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workbench.core.messages import HUB_INBOX, orders_queue
from workbench.drill import Trial
from workbench.drill_duplicator import Duplicator
from workbench.drill_report import DrillError, read_db
from workbench.transport.base import DEAD_LETTER_QUEUE

if TYPE_CHECKING:
    from workbench.drill import Drill

FAULT_S = 90.0  # the longest a scenario waits for the moment of its fault
OFFLINE_S = 120.0  # the longest the broker may take to drop a silent spoke


# broker-restart ---------------------------------------------------------------------------


def broker_restart(d: Drill) -> Trial:
    """Kill the broker mid-study; restart it once a result is waiting at a spoke."""
    trial = Trial(d.launch())
    eid = trial.experiment_id
    if not d.wait("the first result", lambda: d.ingested(eid) >= 1, FAULT_S):
        trial.problems.append("no result came before the fault")
    before = d.ingested(eid)
    done_before = d.spoke_cases(eid).get("done", 0)
    d.federation.broker.kill()
    d.say(f"killed the broker (SIGKILL) with {before} results ingested")
    # Down until some spoke finished a case: its result then waits in that spoke's outbox.
    if not d.wait(
        "a case to finish while the broker is down",
        lambda: d.spoke_cases(eid).get("done", 0) > done_before,
        FAULT_S,
    ):
        trial.problems.append("no case finished while the broker was down")
    d.federation.broker.start()
    d.say(f"broker restarted on {d.federation.broker.stomp_url}")
    trial.fault = f"broker killed with {before} results in, restarted on the same port"
    trial.settled = d.settle(eid)
    _check_not_over(trial, d, before)
    return trial


# hub-down ---------------------------------------------------------------------------------


def hub_down(d: Drill) -> Trial:
    """Stop the hub while results arrive; start it once every spoke has sent everything."""
    trial = Trial(d.launch())
    eid = trial.experiment_id
    if not d.wait("the first result", lambda: d.ingested(eid) >= 1, FAULT_S):
        trial.problems.append("no result came before the fault")
    d.federation.stop_process("hub")
    before = d.ingested(eid)
    d.say(f"stopped the hub with {before} results ingested")
    if not d.wait("every spoke to finish and send", lambda: d.spokes_finished(eid), FAULT_S):
        trial.problems.append("the spokes did not finish while the hub was down")
    waiting = d.inbox_depth()
    d.say(f"starting the hub again; {waiting} messages wait in its inbox")
    d.federation.start_hub()
    trial.fault = f"hub stopped with {before} results in; {waiting} messages waited for it"
    trial.settled = d.settle(eid)
    _check_not_over(trial, d, before)
    return trial


# spoke-crash ------------------------------------------------------------------------------


def spoke_crash(d: Drill) -> Trial:
    """SIGKILL a spoke while its container runs; restart it; check the orphan and attempt."""
    target = d.spoke_ids[0]
    trial = Trial(d.launch())
    eid = trial.experiment_id
    interrupted: list[tuple[str, str, int]] = []
    orphans: set[str] = set()
    deadline = time.monotonic() + FAULT_S
    # A case may end between seeing its container and the kill: then crash at the next one.
    for _ in range(3):
        found = _crash_mid_case(d, target, eid, max(deadline - time.monotonic(), 1.0))
        if found is None:
            break
        interrupted, orphans = found
        d.federation.start_spoke(target)
        if interrupted and orphans:
            break
    if not interrupted or not orphans:
        trial.problems.append(f"no crash of {target} caught a case and its container running")
    if not d.wait(
        "the restarted spoke to remove its orphaned containers",
        lambda: not any(c.id in orphans for c in d.containers(target)),
        FAULT_S,
    ):
        trial.problems.append("the orphaned containers were not removed")
    trial.fault = (
        f"{target} killed with {len(interrupted)} case running and {len(orphans)} orphaned "
        "container(s); restarted"
    )
    trial.settled = d.settle(eid)
    with read_db(d.hub_db) as db:
        attempts = {
            (p, a): n
            for p, a, n in db.execute(
                "SELECT participant_id, algorithm, attempt FROM results"
                " WHERE experiment_id = ? AND spoke_id = ?",
                (eid, target),
            )
        }
    for participant_id, algorithm, attempt in interrupted:
        got = attempts.get((participant_id, algorithm))
        if got != attempt:
            trial.problems.append(
                f"the interrupted case {participant_id}/{algorithm} came back as attempt {got}, "
                f"not {attempt}"
            )
    return trial


def _crash_mid_case(
    d: Drill, target: str, eid: str, timeout: float
) -> tuple[list[tuple[str, str, int]], set[str]] | None:
    """Kill ``target`` once a container of its runs; the cases and containers it left.

    None when no container ran before ``timeout`` (the spoke is left running).
    """
    found: list[Any] = []

    def container_running() -> bool:
        found[:] = [c for c in d.containers(target) if c.status in ("created", "running")]
        return bool(found)

    if not d.wait(f"a container of {target} to run", container_running, timeout):
        return None
    d.federation.stop_process(target, kill=True)
    with read_db(d.spoke_db(target)) as db:
        interrupted = db.execute(
            "SELECT participant_id, algorithm, attempt FROM cases"
            " WHERE experiment_id = ? AND state = 'running'",
            (eid,),
        ).fetchall()
    # Nobody removes a dead spoke's container, running or exited: it is an orphan now.
    orphans = {c.id for c in d.containers(target)} & {c.id for c in found}
    d.say(f"killed {target} (SIGKILL): {len(interrupted)} case running, {len(orphans)} "
          "container(s) left behind")  # fmt: skip
    return [tuple(row) for row in interrupted], orphans


# spoke-offline ----------------------------------------------------------------------------


def spoke_offline(d: Drill) -> Trial:
    """Cut a spoke off (frozen until the broker drops it) twice: its order waits, then a result."""
    target = d.spoke_ids[-1]
    others = [s for s in d.spoke_ids if s != target]
    orders = orders_queue(target)
    d.federation.freeze(target)
    try:
        trial = Trial(d.launch())
        eid = trial.experiment_id
        d.say(f"{target} frozen (SIGSTOP) before the launch: its order has to wait")
        if not d.wait(f"the broker to drop {target}", lambda: _consumers(d, orders) == 0,
                      OFFLINE_S):  # fmt: skip
            trial.problems.append(f"the broker never dropped {target}")
        d.wait("the other spokes to finish", lambda: _finished(d, eid, others), FAULT_S)
        waiting = _depth(d, orders)
        if not waiting:
            trial.problems.append(f"no order waited on {orders}")
    finally:
        d.federation.thaw(target)
    d.say(f"{target} thawed with {waiting} order(s) waiting for it")

    def one_done_one_running() -> bool:
        states = d.spoke_cases(eid, [target])
        return states.get("done", 0) >= 1 and states.get("running", 0) >= 1

    second = d.wait(f"{target} to run its second case", one_done_one_running, FAULT_S)
    if second:
        d.federation.freeze(target)
        try:
            d.say(f"{target} frozen again with a case running: its result has to wait")
            if not d.wait(f"the broker to drop {target} again",
                          lambda: _consumers(d, orders) == 0, OFFLINE_S):  # fmt: skip
                trial.problems.append(f"the broker did not drop {target} the second time")
        finally:
            d.federation.thaw(target)
        d.say(f"{target} thawed")
    else:
        trial.problems.append(f"{target} never had a case running after the first outage")
    trial.fault = f"{target} cut off before the launch and again mid-case, until dropped each time"
    trial.settled = d.settle(eid)
    return trial


def _finished(d: Drill, eid: str, spoke_ids: list[str]) -> bool:
    states = d.spoke_cases(eid, spoke_ids)
    return bool(states) and not states.get("queued", 0) + states.get("running", 0)


def _queue(d: Drill, name: str) -> Any:
    queues = d.federation.broker.status().queues
    if queues is None:
        raise DrillError("the broker does not report its queues (XStream missing?)")
    return next((q for q in queues if q.name == name), None)


def _consumers(d: Drill, name: str) -> int:
    found = _queue(d, name)
    return 0 if found is None else int(found.consumers)


def _depth(d: Drill, name: str) -> int:
    found = _queue(d, name)
    return 0 if found is None else int(found.depth)


# duplicate-delivery -----------------------------------------------------------------------


def duplicate_delivery(d: Drill) -> Trial:
    """Deliver a spoke's order and every message to the hub twice."""
    target = d.spoke_ids[1]
    url, tls = d.federation.broker.stomp_url, d.federation.client_tls
    d.federation.stop_process(target)  # its order must wait in the queue to be copied
    trial = Trial(d.launch())
    eid = trial.experiment_id
    d.federation.stop_process("hub")  # everything the spokes send waits in the inbox
    d.say(f"stopped {target} and the hub: their queues fill up")
    dlq_before = _depth(d, DEAD_LETTER_QUEUE)
    # Only the spoke may read its orders queue and only the hub write it (with TLS).
    orders = Duplicator(url, orders_queue(target), tls(target), tls("hub")).run(expect=1)
    d.federation.start_spoke(target)
    d.wait("every spoke to finish and send", lambda: d.spokes_finished(eid), FAULT_S)
    inbox = Duplicator(url, HUB_INBOX, tls("hub"), tls("hub")).run(expect=d.inbox_depth() or 1)
    d.say(f"delivered {orders} order(s) to {target} and {inbox} inbox messages twice each")
    if orders < 1:
        trial.problems.append(f"no order of {target} was there to duplicate")
    done = d.spoke_cases(eid).get("done", 0)
    if inbox < done:
        trial.problems.append(f"only {inbox} inbox messages duplicated for {done} results")
    d.federation.start_hub()
    trial.fault = f"{orders} order(s) and {inbox} inbox messages (every result) delivered twice"
    trial.settled = d.settle(eid)
    if _depth(d, DEAD_LETTER_QUEUE) != dlq_before:
        trial.problems.append("a copy was refused to the dead-letter queue instead of absorbed")
    replays = _replays(d, eid)
    if replays < done:
        trial.problems.append(f"the hub saw {replays} second copies of {done} results")
    return trial


def _replays(d: Drill, eid: str) -> int:
    """How many result copies the hub recorded as replays of this experiment."""
    rows = d.client.rejections(limit=10000, experiment_id=eid, code="replayed")
    return sum(1 for r in rows if r.get("message_type") == "case.result")


# poison-message ---------------------------------------------------------------------------


def poison_message(d: Drill) -> Trial:
    """A malformed and an unknown-type message land in the inbox mid-study."""
    from workbench.transport.stomp_broker import StompBroker

    trial = Trial(d.launch())
    eid = trial.experiment_id
    if not d.wait("the first result", lambda: d.ingested(eid) >= 1, FAULT_S):
        trial.problems.append("no result came before the fault")
    # Signed by a spoke the hub trusts: they pass the signature check and fail where a
    # buggy spoke's message would, at parsing.
    sender_id = d.spoke_ids[0]
    poison = [
        b'{"type":"case.result","v":1,"id":"drill-' + uuid.uuid4().hex.encode() + b'",',
        json.dumps({"type": "spoke.selfie", "v": 1, "id": uuid.uuid4().hex,
                    "spoke_id": sender_id}, separators=(",", ":")).encode(),
    ]  # fmt: skip
    digests = {hashlib.sha256(body).hexdigest() for body in poison}
    dlq_before = _depth(d, DEAD_LETTER_QUEUE)
    signer = _spoke_signer(d, sender_id)
    url = d.federation.broker.stomp_url
    sender = StompBroker.from_url(url, tls=d.federation.client_tls(sender_id))
    try:
        for body in poison:
            sender.send(HUB_INBOX, body, signer(body))
    finally:
        sender.close()
    before = d.ingested(eid)
    d.say(f"sent a malformed and an unknown-type message to the inbox at {before} results")
    trial.fault = "a truncated case.result and a spoke.selfie in the hub's inbox mid-study"
    trial.settled = d.settle(eid)
    _check_not_over(trial, d, before)

    def rejected() -> bool:
        return digests <= {r["body_sha256"] for r in d.client.rejections(limit=1000)}

    if not d.wait("both to show in /rejections", rejected, 30.0):
        trial.problems.append("the poison messages are not in the hub's /rejections")
    if not d.wait("both to reach the dead-letter queue",
                  lambda: _depth(d, DEAD_LETTER_QUEUE) >= dlq_before + 2, 30.0):  # fmt: skip
        trial.problems.append("the poison messages did not reach the dead-letter queue")
    return trial


def _spoke_signer(d: Drill, spoke_id: str) -> Callable[[bytes], dict[str, str]]:
    """The signature headers ``spoke_id`` would put on a body (its key in the federation)."""
    from workbench.trust.keys import PRIVATE_FILE, load_private_key
    from workbench.trust.wire import WireSigner

    key = load_private_key(d.federation.keys / "spokes" / spoke_id / PRIVATE_FILE)
    return WireSigner(key).headers


def _check_not_over(trial: Trial, d: Drill, before: int) -> None:
    """A fault that came after the last result proved nothing: say so."""
    cases = d.count(trial.experiment_id).cases
    if cases and before >= cases:
        trial.problems.append(f"the fault came after all {cases} results were in")


SCENARIOS: dict[str, Callable[[Drill], Trial]] = {
    "broker-restart": broker_restart,
    "hub-down": hub_down,
    "spoke-crash": spoke_crash,
    "spoke-offline": spoke_offline,
    "duplicate-delivery": duplicate_delivery,
    "poison-message": poison_message,
}
