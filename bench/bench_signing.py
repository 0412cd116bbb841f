"""Cost of the trust primitives per result: canonical JSON, Ed25519 sign and verify, audit.

Figures, in microseconds per result-sized document (a ``case.result`` message of about
1 KiB) unless named otherwise: RFC 8785 canonicalisation against ``json.dumps(sort_keys)``,
Ed25519 over bytes alone, ``sign`` and ``verify`` as the spoke and the Hub call them
(canonicalisation included), and the audit log's append rate with an fsync per entry, on
the disk under ``.work/bench/`` (a tmpfs would flatter it).

    .venv/bin/python -m bench.bench_signing [--rounds 2000] [--appends 500]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.core.messages import CaseResult
from workbench.trust.audit import AuditLog
from workbench.trust.canonical import canonical_json
from workbench.trust.keys import TrustStore, generate_key
from workbench.trust.signing import open_sealed, seal, sign, verify, verify_bytes

WORK = Path(__file__).resolve().parents[1] / ".work" / "bench" / "signing"


def result_document() -> dict[str, Any]:
    """A realistic ``case.result`` as it travels: ids, hashes, an output of 20 measures."""
    output: dict[str, Any] = {f"measure_{n:02d}": 1234.5678 / (n + 1) for n in range(16)}
    output |= {"lav950_percent": 12.37, "lung_volume_ml": 5123.4, "model": "lav950", "ok": True}
    message = CaseResult(
        experiment_id="exp-2025-01-31-lung", spoke_id="site-01", participant_id="p-7f3a9c2e",
        algorithm="lung-lav950", attempt=1, manifest_hash="ab" * 32,
        image_digest="sha256:" + "cd" * 32, output=output, output_sha256="ef" * 32,
        reference={"fev1_percent": 81.0, "ct_lav950": None}, seconds=4.2,
    )  # fmt: skip
    return message.model_dump(mode="json")


def per_call_us(call: Callable[[], object], rounds: int, repeat: int = 5) -> float:
    """Median over ``repeat`` runs of the mean time of one call, in microseconds."""
    call()
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(rounds):
            call()
        runs.append((time.perf_counter() - started) / rounds * 1e6)
    return round(statistics.median(runs), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--appends", type=int, default=500)
    ns = parser.parse_args()
    document = result_document()
    key = generate_key()
    trust = TrustStore()
    trust.add(key.public_key(), name="site-01")
    data = canonical_json(document)
    raw_signature = key.sign(data)
    public = key.public_key()
    signature = sign(document, key)
    envelope = json.loads(json.dumps(seal(document, key)))

    figures = {
        "document_bytes": len(data),
        "json_dumps_sorted_us": per_call_us(
            lambda: json.dumps(document, sort_keys=True, separators=(",", ":")), ns.rounds
        ),
        "canonical_json_us": per_call_us(lambda: canonical_json(document), ns.rounds),
        "ed25519_sign_bytes_us": per_call_us(lambda: key.sign(data), ns.rounds),
        "ed25519_verify_bytes_us": per_call_us(
            lambda: public.verify(raw_signature, data), ns.rounds
        ),
        # What the hub and the spokes check wire messages with (libsodium, via PyNaCl).
        "verify_bytes_us": per_call_us(lambda: verify_bytes(data, signature, trust), ns.rounds),
        "sign_document_us": per_call_us(lambda: sign(document, key), ns.rounds),
        "verify_document_us": per_call_us(lambda: verify(document, signature, trust), ns.rounds),
        "open_sealed_us": per_call_us(
            lambda: open_sealed(envelope, trust, signer="site-01"), ns.rounds
        ),
    }

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    rates = []
    for attempt in range(3):
        with AuditLog(WORK / f"audit-{attempt}.jsonl") as log:
            started = time.perf_counter()
            for n in range(ns.appends):
                log.append("case.result.sent", {"participant": f"p-{n}", "hash": "ef" * 32})
            rates.append(ns.appends / (time.perf_counter() - started))
    shutil.rmtree(WORK, ignore_errors=True)
    figures["audit_appends_per_s_fsync"] = round(statistics.median(rates))
    figures["audit_append_us_fsync"] = round(1e6 / statistics.median(rates), 1)

    json.dump(figures, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
