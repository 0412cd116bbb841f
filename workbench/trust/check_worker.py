"""The signature checker process (``WorkerChecks`` in ``checks.py`` starts it).

    python -m workbench.trust.check_worker ANSWER_FD

Reads batches of checks from standard input and answers each on the pipe ``ANSWER_FD``
(never on standard output, where a stray print could land): the number of checks (4 bytes,
big endian), then ``Y`` (the signature matches) or ``N`` per check. It exits when its input
closes. It is given everything it checks; it has no key, no file and no socket of its own.
"""

from __future__ import annotations

import os
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
    """The answer to one encoded batch (``checks._encode`` without its length)."""
    count = int.from_bytes(payload[:4], "big")
    verdicts = bytearray(b"N" * count)
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
        verdicts[i] = ord("Y")
    if at != len(payload):
        raise ValueError("a batch of checks is not the length it says")
    return payload[:4] + bytes(verdicts)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdecimal():
        print("usage: python -m workbench.trust.check_worker ANSWER_FD", file=sys.stderr)
        return 2
    stdin, answers = sys.stdin.buffer, int(argv[0])
    while True:
        head = _read_exactly(stdin, 4)
        if head is None:
            return 0
        payload = _read_exactly(stdin, int.from_bytes(head, "big"))
        if payload is None:
            return 0
        reply = memoryview(answer(payload))
        try:
            while reply:
                reply = reply[os.write(answers, reply) :]
        except BrokenPipeError:  # the hub closed its end: it is stopping
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
