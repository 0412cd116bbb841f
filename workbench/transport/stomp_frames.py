"""Reading STOMP frames faster than stomp.py does, on our connections only.

stomp.py 9 parses each received frame with ``stomp.utils.parse_frame``, which runs two
``re.sub`` calls per header line to undo STOMP's header escapes. A MESSAGE frame from
ActiveMQ has ten or more headers, so that is 20 regular-expression calls per message, most
of the ~25 µs stomp.py spends on a frame: as much as the hub spends parsing and validating
the message itself (profile of 5,000 signed results). ``parse_frame`` here gives the same
``Frame`` (command, headers, body), and undoes escapes only in a header that has a
backslash, which a MESSAGE from ActiveMQ almost never has.

``FastFrames`` is mixed into our transports (``workbench.transport.stomp_connection``): it
replaces the transport's frame loop, which calls stomp.py's module-level ``parse_frame``,
with one that calls ours. It has to name stomp.py's private method
(``BaseTransport.__read_frames``), so the stomp.py versions it works with are pinned in
``pyproject.toml``, and ``tests/unit/test_stomp_frames.py`` checks both that the method it
replaces is still the loop it repeats and that every frame parses as stomp.py parses it. The module
global is not patched: raw stomp.py connections in the same process (the benchmarks'
baselines) keep stomp.py's own parser.

>>> f = parse_frame(b"MESSAGE\\ndestination:/queue/a\\nmessage-id:7\\n\\n{}")
>>> f.cmd, f.headers, f.body
('MESSAGE', {'destination': '/queue/a', 'message-id': '7'}, b'{}')
"""

from __future__ import annotations

import re
from typing import Any

from stomp.utils import HEARTBEAT_FRAME, Frame, decode

__all__ = ["FastFrames", "parse_frame"]

_PREAMBLE_END = re.compile(rb"\n\n|\r\n\r\n")  # as stomp.utils.PREAMBLE_END_RE
_LINE_END = re.compile("\n|\r\n")  # as stomp.utils.LINE_END_RE
_ESCAPE = re.compile(r"\\.")
_UNESCAPES = {"\\r": "\r", "\\n": "\n", "\\c": ":", "\\\\": "\\"}


def parse_frame(frame: bytes) -> Frame | None:
    """A received frame (without its NUL) as stomp.py's ``Frame``; None if it has no command.

    Same result as ``stomp.utils.parse_frame``: the headers are UTF-8 (an invalid byte
    becomes U+FFFD), lines end with LF or CRLF, leading empty
    lines are skipped, a header line is ``key:value`` split at the first colon, a line
    without a colon or with an empty key is ignored, the first of repeated headers wins
    (STOMP 1.2), escapes ``\\r \\n \\c \\\\`` are undone in keys and values (others are kept
    as they are), and the body is everything after the blank line.
    """
    end = _PREAMBLE_END.search(frame)
    if end is None:
        preamble, body = frame, b""
    else:
        preamble, body = frame[: end.start()], frame[end.end() :]
    lines = _LINE_END.split(preamble.decode("utf-8", "replace"))  # as stomp.utils.decode
    first = 0
    while first < len(lines) and not lines[first]:
        first += 1
    if first == len(lines):
        return None
    cmd = lines[first]
    headers: dict[str, str] = {}
    for line in lines[first + 1 :]:
        key, colon, value = line.partition(":")
        if not colon or not key:
            continue
        if "\\" in key:
            key = _ESCAPE.sub(_unescape, key)
        if key in headers:
            continue
        if "\\" in value:
            value = _ESCAPE.sub(_unescape, value)
        headers[key] = value
    parsed = Frame.__new__(Frame)  # Frame.__init__ deep-copies nothing but costs a copy.copy
    parsed.cmd, parsed.headers, parsed.original_headers, parsed.body = (
        cmd, headers, dict(headers), body,
    )  # fmt: skip
    return parsed


def _unescape(match: re.Match[str]) -> str:
    escaped = match.group(0)
    return _UNESCAPES.get(escaped, escaped)


class FastFrames:
    """Mixin for a ``stomp.transport.Transport``: its receiver loop parses with ``parse_frame``.

    The loop is stomp.py 9's ``BaseTransport.__read_frames`` with only the parser changed:
    stomp.py reads the socket and splits it into frames (``__read``, which honours
    ``content-length``), tells heart-beats by its ``__is_eol``, decodes bodies if the
    transport ``auto_decode``s (ours do not: signatures are over bytes), and hands each frame
    to ``process_frame`` and the listeners.
    """

    def _BaseTransport__read_frames(self) -> None:  # stomp.py's mangled name
        this: Any = self
        for frame in this._BaseTransport__read():
            if this._BaseTransport__is_eol(frame):
                parsed = HEARTBEAT_FRAME
            else:
                parsed = parse_frame(frame)
                if parsed is None:
                    continue
            if this._BaseTransport__auto_decode:
                parsed.body = decode(parsed.body)
            this.process_frame(parsed, frame)
