"""Our STOMP frame parser gives what stomp.py's gives, and our transports use it."""

from __future__ import annotations

import inspect

import stomp.transport
import stomp.utils
from hypothesis import given
from hypothesis import strategies as st

from workbench.transport import stomp_connection
from workbench.transport.stomp_frames import FastFrames, parse_frame

_TEXT = st.text(alphabet=st.sampled_from(list("ab:\\\r\nrnc-é ")), max_size=12)


def _same(frame: bytes) -> None:
    ours, theirs = parse_frame(frame), stomp.utils.parse_frame(frame)
    if theirs is None:
        assert ours is None
        return
    assert ours is not None
    assert (ours.cmd, ours.headers, ours.body) == (theirs.cmd, theirs.headers, theirs.body)
    assert ours.original_headers == theirs.original_headers
    assert ours.original_headers is not ours.headers


def test_an_activemq_message_frame_parses_as_stomp_py_parses_it() -> None:
    frame = (
        b"MESSAGE\ncontent-length:11\nexpires:0\ndestination:/queue/elic.hub.inbox\n"
        b"subscription:1\nmessage-id:ID\\cbox-1:1:1:1:7\nack:ID\\cbox-9:7\n"
        b'elic-signature:{"k"\\c"v"}\npersistent:true\n\n{"a": "b"}'
    )
    _same(frame)
    parsed = parse_frame(frame)
    assert parsed is not None
    assert parsed.headers["message-id"] == "ID:box-1:1:1:1:7"  # \c is a colon
    assert parsed.body == b'{"a": "b"}'


def test_repeated_headers_keep_the_first_and_odd_lines_are_skipped() -> None:
    frame = b"\r\nMESSAGE\r\na:1\r\na:2\r\nno-colon\r\n:empty-key\r\nb:x\\ty\r\n\r\nbody\x01"
    _same(frame)
    parsed = parse_frame(frame)
    assert parsed is not None
    assert parsed.headers == {"a": "1", "b": "x\\ty"}  # an unknown escape stays as it is


@given(
    leading=st.sampled_from(["", "\n", "\r\n\n"]),
    cmd=st.text(alphabet=st.sampled_from(list("MESAGrc\r:")), max_size=8),
    lines=st.lists(_TEXT, max_size=6),
    eol=st.sampled_from(["\n", "\r\n"]),
    body=st.binary(max_size=20),
    blank=st.booleans(),
)
def test_any_frame_parses_as_stomp_py_parses_it(
    leading: str, cmd: str, lines: list[str], eol: str, body: bytes, blank: bool
) -> None:
    preamble = leading + eol.join([cmd, *lines])
    frame = preamble.encode() + ((eol + eol).encode() + body if blank else b"")
    _same(frame)


@given(st.lists(st.binary(max_size=16), max_size=5), st.binary(max_size=8))
def test_any_bytes_in_the_headers_parse_as_stomp_py_parses_them(
    lines: list[bytes], body: bytes
) -> None:
    # Invalid UTF-8 too: stomp.py replaces it (U+FFFD) rather than failing the frame loop.
    _same(b"\n".join([b"MESSAGE", *lines]) + b"\n\n" + body)


def test_invalid_utf8_in_a_header_is_replaced_not_raised() -> None:
    parsed = parse_frame(b"MESSAGE\nx:\xff\xfe\nmessage-id:1\n\nbody")
    assert parsed is not None
    assert parsed.headers == {"x": "\ufffd\ufffd", "message-id": "1"}


# stomp.py 9.0's frame loop, which FastFrames repeats with only the parser changed.
_STOMP_PY_FRAME_LOOP = """\
    def __read_frames(self):
        frames = self.__read()

        for frame in frames:
            if self.__is_eol(frame):
                f = HEARTBEAT_FRAME
            else:
                f = parse_frame(frame)
            if f is None:
                continue
            if self.__auto_decode:
                f.body = decode(f.body)
            self.process_frame(f, frame)
"""


def test_our_transports_replace_the_frame_loop_stomp_py_has() -> None:
    # The mixin names stomp.py's private method and repeats its body: if a stomp.py release
    # renamed or changed it, ours would silently differ. This fails first.
    loop = stomp.transport.BaseTransport._BaseTransport__read_frames  # type: ignore[attr-defined]
    assert inspect.getsource(loop) == _STOMP_PY_FRAME_LOOP
    for transport in (stomp_connection._Transport, stomp_connection._TlsTransport):
        assert issubclass(transport, FastFrames)
        assert transport._BaseTransport__read_frames is FastFrames._BaseTransport__read_frames


def test_the_frame_loop_hands_parsed_frames_and_heartbeats_to_process_frame() -> None:
    class Fed(stomp_connection._Transport):
        def __init__(self, chunks: list[bytes]) -> None:
            super().__init__(host_and_ports=[("127.0.0.1", 1)], auto_decode=False)
            self.chunks = chunks
            self.seen: list[tuple[str, dict[str, str], bytes | None]] = []
            self.running = True

        def receive(self) -> bytes:
            return self.chunks.pop(0)

        def process_frame(self, f: stomp.utils.Frame, frame_str: bytes) -> None:
            self.seen.append((f.cmd, f.headers, f.body))

    body = b"a\x00b"  # a NUL inside: content-length says where the frame ends
    one = b"MESSAGE\ncontent-length:3\nmessage-id:1\n\n" + body + b"\x00\n"
    two = b"RECEIPT\nreceipt-id:r\n\n\x00"
    fed = Fed([one[:20], one[20:] + two])  # the first read ends inside a frame
    fed._BaseTransport__read_frames()
    assert fed.seen == [
        ("MESSAGE", {"content-length": "3", "message-id": "1"}, body),
        ("RECEIPT", {"receipt-id": "r"}, b""),
    ]
    heartbeat = Fed([b"\n"])
    heartbeat._BaseTransport__read_frames()
    assert heartbeat.seen == [("heartbeat", {}, None)]


def test_the_frame_loop_decodes_bodies_when_the_transport_auto_decodes() -> None:
    class Decoding(stomp_connection._Transport):
        def __init__(self) -> None:
            super().__init__(host_and_ports=[("127.0.0.1", 1)], auto_decode=True)
            self.seen: list[object] = []
            self.running = True

        def receive(self) -> bytes:
            return "MESSAGE\nmessage-id:1\n\nné\x00".encode()

        def process_frame(self, f: stomp.utils.Frame, frame_str: bytes) -> None:
            self.seen.append(f.body)

    decoding = Decoding()
    decoding._BaseTransport__read_frames()
    assert decoding.seen == ["né"]
