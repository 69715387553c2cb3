"""Tutorial 3 "Publish/Subscribe": emit_log.py / receive_logs.py as assertions.

Fanout exchange, exclusive server-named queues, every subscriber gets every
message; exclusivity (405) and auto-deletion of exclusive queues (404).
"""

import time

import pytest
from pika.exceptions import ChannelClosedByBroker

from helpers import drain_until_fence, raises_channel_error, wait_for


class Subscriber:
    """receive_logs.py: exclusive server-named queue bound to the fanout."""

    def __init__(self, connect, exchange):
        self.conn = connect()
        self.ch = self.conn.channel()
        self.ch.exchange_declare(exchange=exchange, exchange_type="fanout")
        result = self.ch.queue_declare(queue="", exclusive=True)
        self.queue = result.method.queue
        self.ch.queue_bind(exchange=exchange, queue=self.queue)
        self.bodies = []
        self.ch.basic_consume(queue=self.queue, auto_ack=True,
                              on_message_callback=lambda c, m, p, b: self.bodies.append(b))


def test_server_named_exclusive_queue(connection):
    ch = connection.channel()
    a = ch.queue_declare(queue="", exclusive=True).method
    b = ch.queue_declare(queue="", exclusive=True).method
    assert a.queue.startswith("amq.gen-"), a.queue
    assert b.queue.startswith("amq.gen-"), b.queue
    assert a.queue != b.queue
    assert a.message_count == 0 and a.consumer_count == 0
    # The owning connection can use it like any queue.
    ch.basic_publish(exchange="", routing_key=a.queue, body=b"x")
    assert drain_until_fence(ch, [a.queue])[a.queue] == [b"x"]


def test_fanout_every_subscriber_gets_every_message(connect, names):
    exchange = names.exchange("logs")
    subs = [Subscriber(connect, exchange) for _ in range(2)]
    assert subs[0].queue != subs[1].queue

    emitter = connect()
    ech = emitter.channel()
    ech.exchange_declare(exchange=exchange, exchange_type="fanout")
    messages = [f"info: Hello World! {i}".encode() for i in range(5)]
    for i, m in enumerate(messages):
        # fanout ignores the routing key
        ech.basic_publish(exchange=exchange, routing_key=f"ignored.{i}" if i % 2 else "",
                          body=m)

    wait_for([s.conn for s in subs],
             lambda: all(len(s.bodies) >= len(messages) for s in subs),
             "both subscribers to get every message")
    for s in subs:
        assert s.bodies == messages


def test_fanout_without_bound_queue_drops_messages(connect, names):
    exchange = names.exchange("logs")
    ch = connect().channel()
    ch.exchange_declare(exchange=exchange, exchange_type="fanout")
    ch.basic_publish(exchange=exchange, routing_key="", body=b"nobody listens")

    queue = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(exchange=exchange, queue=queue)
    ch.basic_publish(exchange=exchange, routing_key="", body=b"now someone does")
    assert drain_until_fence(ch, [queue])[queue] == [b"now someone does"]


def test_exclusive_queue_is_locked_to_its_connection(connect):
    owner = connect()
    queue = owner.channel().queue_declare(queue="", exclusive=True).method.queue

    other = connect()
    ch = other.channel()
    with raises_channel_error(405):
        ch.basic_consume(queue=queue, on_message_callback=lambda *a: None)
    assert ch.is_closed
    assert other.is_open

    ch = other.channel()
    with raises_channel_error(405):
        ch.basic_get(queue=queue)

    ch = other.channel()
    with raises_channel_error(405):
        ch.queue_declare(queue=queue, passive=True)

    # The owner is unaffected.
    och = owner.channel()
    och.basic_publish(exchange="", routing_key=queue, body=b"still mine")
    assert drain_until_fence(och, [queue])[queue] == [b"still mine"]


def test_named_exclusive_queue_cannot_be_redeclared_elsewhere(connect, names):
    queue = names.queue("exclusive")
    owner = connect()
    owner.channel().queue_declare(queue=queue, exclusive=True)
    other = connect()
    with raises_channel_error(405):
        other.channel().queue_declare(queue=queue, exclusive=True)
    with raises_channel_error(405):
        other.channel().queue_declare(queue=queue)
    # Server-chosen names use the reserved amq. prefix: clients may not
    # declare those themselves.
    with raises_channel_error(403):
        other.channel().queue_declare(queue="amq.gen-client-chosen")


def test_exclusive_queue_deleted_when_connection_closes(connect):
    owner = connect()
    queue = owner.channel().queue_declare(queue="", exclusive=True).method.queue
    observer = connect()
    # While the owner lives, the queue exists (other connections get 405, not 404).
    with raises_channel_error(405):
        observer.channel().queue_declare(queue=queue, passive=True)

    owner.close()

    deadline = time.monotonic() + 10
    while True:
        ch = observer.channel()
        try:
            ch.queue_declare(queue=queue, passive=True)
            code = 200
        except ChannelClosedByBroker as e:
            code = e.reply_code
        if code == 404:
            break
        assert code == 405, f"unexpected reply {code}"
        if time.monotonic() >= deadline:
            pytest.fail(f"exclusive queue {queue} still exists 10s after its "
                        f"connection closed (last reply {code})")
        observer.sleep(0.05)
    assert observer.is_open
