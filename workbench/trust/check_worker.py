"""The signature checker process (``WorkerChecks`` in ``checks.py`` starts it).

Reads batches of checks from standard input, answers one byte per check on standard
output (1: the signature matches, 0: it does not), and exits when its input closes. It is
given everything it checks; it has no key, no file and no socket of its own.
"""

from __future__ import annotations

import sys
from typing import BinaryIO

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    if len(data) < n:
        return None  # the hub closed its end
    return data


def answer(payload: bytes) -> bytes:
    """The verdicts for one encoded batch (``checks._encode`` without its length)."""
    count = int.from_bytes(payload[:4], "big")
    verdicts = bytearray(count)
    at = 4
    for i in range(count):
        raw, public = payload[at : at + 64], payload[at + 64 : at + 96]
        size = int.from_bytes(payload[at + 96 : at + 100], "big")
        data = payload[at + 100 : at + 100 + size]
        at += 100 + size
        try:
            crypto_sign_open(raw + data, public)
        except BadSignatureError:
            continue
        verdicts[i] = 1
    if at != len(payload):
        raise ValueError("a batch of checks is not the length it says")
    return bytes(verdicts)


def main() -> int:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = _read_exactly(stdin, 4)
        if head is None:
            return 0
        payload = _read_exactly(stdin, int.from_bytes(head, "big"))
        if payload is None:
            return 0
        stdout.write(answer(payload))
        stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
