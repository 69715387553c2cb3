"""STOMP sessions with stomp.py: every protocol version, login, the default vhost for a client
that sends its hostname as `host`, heart-beats both ways, receipts and DISCONNECT, and
version negotiation failures."""

import pytest
import stomp
from stomp.exception import ConnectFailedException

from stomp_helpers import RawStomp, receipt_id, send, subscribe


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_connect_each_version(stomp_connect, version):
    conn, rec = stomp_connect(version=version)
    assert conn.is_connected()
    headers = rec.connected.headers
    assert headers.get("version") == version
    assert headers.get("server", "").startswith("Switchboard/")
    assert headers.get("session", "").startswith("session-")


def test_stomp_py_default_host_header_reaches_the_default_vhost(stomp_connect, stomp_addr):
    # stomp.py 1.1/1.2 send the host they connect to ("127.0.0.1") as `host`, which names no
    # vhost: that means the default vhost (RabbitMQ would refuse it).
    conn, rec = stomp_connect(version="1.2")
    assert rec.connected is not None
    subscribe(conn, rec, "/queue/stomp-default-host", id="s")
    send(conn, rec, "/queue/stomp-default-host", "hi")
    assert rec.wait_messages(1)[0].body == "hi"


def test_bad_password_is_refused(stomp_addr):
    conn = stomp.Connection12([stomp_addr], reconnect_attempts_max=1)
    with pytest.raises(ConnectFailedException):
        conn.connect("guest", "wrong", wait=True)


def test_no_login_uses_the_default_login(stomp_connect):
    # The interop config sets stomp.default_login = guest (as RabbitMQ's default_user), which
    # applies to loopback connections.
    conn, rec = stomp_connect(login=None, passcode=None)
    assert conn.is_connected()


def test_heart_beats_both_ways_keep_a_connection_alive(stomp_connect):
    # The interop broker offers 200 ms heart-beats.
    conn, rec = stomp_connect(version="1.2", heartbeats=(200, 200))
    assert rec.connected.headers.get("heart-beat") == "200,200"
    # The broker beats to us, and our beats keep it from closing us for several intervals.
    rec.wait(lambda: rec.heartbeats >= 5, "five heart-beats from the broker")
    r = receipt_id()
    conn.begin(transaction="alive", receipt=r)
    rec.wait_receipt(r)
    assert conn.is_connected()


def test_a_silent_client_is_closed_after_missed_heart_beats(stomp_addr):
    raw = RawStomp(stomp_addr)
    raw.send(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n"
             b"heart-beat:100,0\n\n\0")
    assert raw.read_frame().startswith(b"CONNECTED\n")
    # We promised a beat every 200 ms (the slower of ours and the broker's) and send none.
    assert raw.read_until_closed().strip(b"\r\n") == b""
    raw.close()


def test_receipts_for_every_frame_and_disconnect(stomp_connect):
    conn, rec = stomp_connect(version="1.2")
    for action in (
        lambda r: conn.subscribe("/queue/stomp-receipts", id="s", receipt=r),
        lambda r: conn.unsubscribe(id="s", receipt=r),
        lambda r: conn.begin(transaction="t", receipt=r),
        lambda r: conn.abort(transaction="t", receipt=r),
        lambda r: conn.send("/queue/stomp-receipts", "x", receipt=r),
    ):
        r = receipt_id()
        action(r)
        rec.wait_receipt(r)
    conn.disconnect(receipt="bye")
    rec.wait_receipt("bye")
    rec.wait(lambda: rec.disconnected, "the broker to close after DISCONNECT")


def test_no_common_version_is_an_error(stomp_addr):
    raw = RawStomp(stomp_addr)
    raw.send(b"CONNECT\naccept-version:2.0\nhost:/\nlogin:guest\npasscode:guest\n\n\0")
    frame = raw.read_frame()
    assert frame.startswith(b"ERROR\n")
    assert b"version:1.0,1.1,1.2" in frame
    assert raw.read_until_closed() == b""
    raw.close()


def test_no_accept_version_means_1_0(stomp_addr):
    raw = RawStomp(stomp_addr)
    raw.send(b"CONNECT\nlogin:guest\npasscode:guest\n\n\0")
    frame = raw.read_frame()
    assert frame.startswith(b"CONNECTED\n")
    assert b"version:1.0" in frame
    raw.close()
