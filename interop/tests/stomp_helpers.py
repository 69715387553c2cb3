"""stomp.py helpers for the STOMP interop tests: a listener that records every frame and
bounded waits on it, a connection factory per protocol version, and a raw-socket client for
frames stomp.py would never send.

Nothing here sleeps hoping for an outcome: every wait is on a condition with a deadline.
"""

import socket
import threading
import time
from typing import Callable, List

import stomp

DEFAULT_TIMEOUT = 10.0

CONNECTION_CLASSES = {
    "1.0": stomp.Connection10,
    "1.1": stomp.Connection11,
    "1.2": stomp.Connection12,
}


class Recorder(stomp.ConnectionListener):
    """Records CONNECTED, MESSAGE, RECEIPT and ERROR frames, heart-beats and disconnects."""

    def __init__(self):
        self.cond = threading.Condition()
        self.connected = None
        self.messages: List = []
        self.receipts: List[str] = []
        self.errors: List = []
        self.heartbeats = 0
        self.disconnected = False

    def _record(self, fn):
        with self.cond:
            fn()
            self.cond.notify_all()

    def on_connected(self, frame):
        self._record(lambda: setattr(self, "connected", frame))

    def on_message(self, frame):
        self._record(lambda: self.messages.append(frame))

    def on_receipt(self, frame):
        self._record(lambda: self.receipts.append(frame.headers.get("receipt-id")))

    def on_error(self, frame):
        self._record(lambda: self.errors.append(frame))

    def on_heartbeat(self):
        def bump():
            self.heartbeats += 1
        self._record(bump)

    def on_disconnected(self):
        self._record(lambda: setattr(self, "disconnected", True))

    def wait(self, predicate: Callable[[], bool], what: str,
             timeout: float = DEFAULT_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
                self.cond.wait(left)

    def wait_messages(self, n: int, timeout: float = DEFAULT_TIMEOUT) -> List:
        self.wait(lambda: len(self.messages) >= n, f"{n} message(s)", timeout)
        return list(self.messages[:n])

    def take_messages(self, n: int) -> List:
        """Waits for n messages and removes them from the record."""
        got = self.wait_messages(n)
        with self.cond:
            del self.messages[:n]
        return got

    def wait_receipt(self, receipt: str) -> None:
        self.wait(lambda: receipt in self.receipts, f"RECEIPT {receipt}")

    def wait_error(self):
        self.wait(lambda: self.errors, "an ERROR frame")
        return self.errors[0]

    def quiet(self, seconds: float = 0.3) -> None:
        """Asserts that no MESSAGE arrives for a short time (a wait expected to time out)."""
        with self.cond:
            before = len(self.messages)
            self.cond.wait_for(lambda: len(self.messages) > before, timeout=seconds)
            assert len(self.messages) == before, f"unexpected message: {self.messages[before:]}"


_receipt_counter = [0]


def receipt_id() -> str:
    _receipt_counter[0] += 1
    return f"r{_receipt_counter[0]}"


def open_stomp(addr, version: str = "1.2", login: str = "guest", passcode: str = "guest",
               heartbeats=(0, 0), auto_decode: bool = True, headers=None, ssl=None):
    """A connected stomp.py client and its Recorder; ``ssl``: the keyword arguments of
    stomp.py's ``set_ssl`` (CA, client certificate), for a TLS listener."""
    cls = CONNECTION_CLASSES[version]
    if version == "1.0":
        conn = cls([addr], auto_decode=auto_decode, reconnect_attempts_max=1)
    else:
        conn = cls([addr], heartbeats=heartbeats, auto_decode=auto_decode,
                   reconnect_attempts_max=1)
    if ssl is not None:
        conn.set_ssl(for_hosts=[addr], **ssl)
    rec = Recorder()
    conn.set_listener("recorder", rec)
    conn.connect(login, passcode, wait=True, headers=headers or {})
    # stomp.py releases connect(wait=True) before it calls the listeners.
    rec.wait(lambda: rec.connected is not None, "CONNECTED")
    return conn, rec


def subscribe(conn, rec, destination: str, id: str, ack: str = "auto", **headers) -> None:
    """SUBSCRIBE and wait for its receipt."""
    r = receipt_id()
    conn.subscribe(destination=destination, id=id, ack=ack, headers=headers, receipt=r)
    rec.wait_receipt(r)


def send(conn, rec, destination: str, body, **headers) -> None:
    """SEND and wait for its receipt."""
    r = receipt_id()
    conn.send(destination, body, headers=headers, receipt=r)
    rec.wait_receipt(r)


class RawStomp:
    """A bare socket speaking STOMP bytes, for malformed input."""

    def __init__(self, addr, timeout: float = DEFAULT_TIMEOUT):
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(self, version: str = "1.2") -> bytes:
        self.send(f"CONNECT\naccept-version:{version}\nhost:/\nlogin:guest\npasscode:guest\n\n\0"
                  .encode())
        return self.read_frame()

    def read_frame(self) -> bytes:
        """The next frame up to its NUL (heart-beat EOLs dropped); b'' when the server closed.
        Bodies here are text (ERROR, CONNECTED), so the first NUL ends the frame."""
        while b"\0" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return b""
            self.buf += chunk
        frame, _, self.buf = self.buf.partition(b"\0")
        return frame.lstrip(b"\r\n")

    def read_until_closed(self) -> bytes:
        """Everything the server sends until it closes (bounded by the socket timeout)."""
        data = self.buf
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk

    def close(self) -> None:
        self.sock.close()
