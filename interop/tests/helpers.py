"""Bounded-wait helpers shared by the interop tests.

Nothing here sleeps hoping for an outcome: every wait polls a condition
under a deadline and fails with a message naming what it waited for.
"""

import time
import uuid
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

DEFAULT_TIMEOUT = 10.0
POLL = 0.02


def wait_for(connections, predicate: Callable[[], bool], what: str,
             timeout: float = DEFAULT_TIMEOUT) -> None:
    """Pump I/O on one or more BlockingConnections until predicate() holds."""
    if isinstance(connections, pika.BlockingConnection):
        connections = [connections]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        slice_ = POLL / max(1, len(connections))
        for conn in connections:
            conn.process_data_events(time_limit=slice_)


def pump(connections, duration: float) -> None:
    """Pump I/O for a fixed, short time (used only to give the broker a chance
    to do something it must NOT do; the positive outcome is asserted
    separately)."""
    if isinstance(connections, pika.BlockingConnection):
        connections = [connections]
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        for conn in connections:
            conn.process_data_events(time_limit=POLL)


def get_message(ch, queue: str, timeout: float = DEFAULT_TIMEOUT,
                auto_ack: bool = False):
    """basic_get polling with a deadline. Returns (method, properties, body)."""
    deadline = time.monotonic() + timeout
    while True:
        method, props, body = ch.basic_get(queue=queue, auto_ack=auto_ack)
        if method is not None:
            return method, props, body
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for a message on {queue!r}")
        ch.connection.sleep(POLL)


def message_count(ch, queue: str) -> int:
    """Ready-message count via passive queue.declare."""
    return ch.queue_declare(queue=queue, passive=True).method.message_count


def drain_until_fence(ch, queues: Sequence[str],
                      timeout: float = DEFAULT_TIMEOUT) -> Dict[str, List[bytes]]:
    """Return every body each queue holds, deterministically.

    Publishes a unique fence message straight to each queue (default
    exchange) on ``ch`` *after* whatever the test already published on ``ch``,
    then takes messages (basic_get, auto-ack) until the fence comes out.
    Messages from one channel reach a queue in publish order, so anything that
    was routed to the queue shows up before its fence; anything that shows up
    after it was never routed there. Fails if the queue has more behind the
    fence.
    """
    fences = {q: f"fence-{uuid.uuid4().hex}".encode() for q in queues}
    for q in queues:
        ch.basic_publish(exchange="", routing_key=q, body=fences[q])
    result = {}
    for q in queues:
        got = []
        deadline = time.monotonic() + timeout
        while True:
            _, _, body = get_message(
                ch, q, timeout=max(0.1, deadline - time.monotonic()),
                auto_ack=True)
            if body == fences[q]:
                break
            got.append(body)
        result[q] = got
        leftover = message_count(ch, q)
        assert leftover == 0, f"{q!r} still holds {leftover} message(s) after its fence"
    return result


def assert_channel_error(excinfo, code: int) -> None:
    err = excinfo.value
    assert isinstance(err, ChannelClosedByBroker), repr(err)
    assert err.reply_code == code, f"expected {code}, got {err.reply_code} {err.reply_text!r}"


def raises_channel_error(code: int):
    """Context manager: the block must raise ChannelClosedByBroker(code)."""
    return _ChannelErrorContext(code)


class _ChannelErrorContext:
    def __init__(self, code):
        self.code = code
        self._ctx = pytest.raises(ChannelClosedByBroker)
        self.excinfo = None

    def __enter__(self):
        self.excinfo = self._ctx.__enter__()
        return self.excinfo

    def __exit__(self, *exc):
        handled = self._ctx.__exit__(*exc)
        if handled:
            assert_channel_error(self.excinfo, self.code)
        return handled
