"""Bad STOMP input against the real broker binary: ERROR frames that stomp.py sees with a
`message` header and an explaining body, malformed frames, a 10 MB header line, a body without
terminator and abrupt disconnects each get an ERROR or a close, and stomp.py clients are still
served afterwards."""

import socket
import uuid

import pytest

from stomp_helpers import RawStomp, send, subscribe


def still_serving(stomp_connect):
    q = f"/queue/alive-{uuid.uuid4().hex[:8]}"
    conn, rec = stomp_connect()
    subscribe(conn, rec, q, id="s")
    send(conn, rec, q, "still here")
    assert rec.wait_messages(1)[0].body == "still here"


def test_stomp_py_sees_error_frames(stomp_connect):
    conn, rec = stomp_connect()
    conn.subscribe("/amq/queue/does-not-exist", id="s")
    err = rec.wait_error()
    assert err.headers["message"] == "not_found"
    assert "no queue 'does-not-exist'" in err.body
    rec.wait(lambda: rec.disconnected, "the broker to close after ERROR")
    still_serving(stomp_connect)


@pytest.mark.parametrize("data,expect", [
    (b"BOGUS\n\n\0", b"unknown command"),
    (b"SEND\ndestination\n\n\0", b"without a colon"),
    (b"SEND\ndestination:/queue/a\nk:bad\\tescape\n\n\0", b"escape"),
    (b"SEND\ndestination:/queue/a\ncontent-length:2\n\nabc\0", b"NUL"),
    (b"SEND\ndestination:/nowhere\n\n\0", b"not a valid destination"),
])
def test_malformed_frames(stomp_addr, stomp_connect, data, expect):
    raw = RawStomp(stomp_addr)
    assert raw.connect().startswith(b"CONNECTED")
    raw.send(data)
    err = raw.read_frame()
    assert err.startswith(b"ERROR\n"), err
    assert b"\nmessage:" in err
    assert expect in err, err
    assert raw.read_until_closed().strip(b"\r\n") == b""
    raw.close()
    still_serving(stomp_connect)


def test_a_10_mb_header_line_is_refused_early(stomp_addr, stomp_connect):
    raw = RawStomp(stomp_addr)
    assert raw.connect().startswith(b"CONNECTED")
    raw.send(b"SEND\ndestination:/queue/a\nhuge:")
    chunk = b"x" * 65536
    sent = 0
    try:
        while sent < 10 * 1024 * 1024:
            raw.sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the broker refused and closed: what we want
    err = raw.read_until_closed()
    assert b"header line longer than" in err or sent < 10 * 1024 * 1024
    raw.close()
    still_serving(stomp_connect)


def test_a_body_without_terminator_is_refused(stomp_addr, stomp_connect):
    # The interop broker's body limit is the default 16 MiB: send past it without a NUL.
    raw = RawStomp(stomp_addr)
    assert raw.connect().startswith(b"CONNECTED")
    raw.send(b"SEND\ndestination:/queue/a\n\n")
    chunk = b"y" * 65536
    sent = 0
    try:
        while sent < 17 * 1024 * 1024:
            raw.sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    err = raw.read_until_closed()
    assert b"ERROR" in err and b"body larger than" in err, err[:200]
    raw.close()
    still_serving(stomp_connect)


def test_abrupt_disconnects(stomp_addr, stomp_connect):
    q = f"/queue/abrupt-{uuid.uuid4().hex[:8]}"
    p, rp = stomp_connect()
    send(p, rp, q, "m")
    c, rc = stomp_connect()
    subscribe(c, rc, q, id="s", ack="client")
    rc.wait_messages(1)
    # Cut the consumer's socket mid-frame, without DISCONNECT.
    c.transport.socket.sendall(b"SEND\ndestination:/queue/x\ncontent-len")
    c.transport.socket.shutdown(socket.SHUT_RDWR)
    d, rd = stomp_connect()
    subscribe(d, rd, q, id="s")
    m = rd.wait_messages(1)[0]
    assert (m.body, m.headers["redelivered"]) == ("m", "true")
    for partial in (b"", b"CONNECT\naccept-vers"):
        raw = RawStomp(stomp_addr)
        raw.send(partial)
        raw.close()
    still_serving(stomp_connect)
