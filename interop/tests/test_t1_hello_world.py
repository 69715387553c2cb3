"""Tutorial 1 "Hello World!": send.py / receive.py as assertions."""

import pika

from helpers import message_count, wait_for


def test_hello_world_auto_ack_consumer(connect, names):
    queue = names.queue("hello")

    # send.py
    sender = connect()
    ch = sender.channel()
    ch.queue_declare(queue=queue)
    ch.basic_publish(exchange="", routing_key=queue, body="Hello World!")
    sender.close()

    # receive.py (declares the queue again: idempotent)
    receiver = connect()
    rch = receiver.channel()
    ok = rch.queue_declare(queue=queue)
    assert ok.method.queue == queue

    received = []

    def callback(ch, method, properties, body):
        received.append((method, body))

    rch.basic_consume(queue=queue, on_message_callback=callback, auto_ack=True)
    wait_for(receiver, lambda: received, "the Hello World message")

    method, body = received[0]
    assert body == b"Hello World!"
    assert method.routing_key == queue
    assert method.exchange == ""
    assert method.redelivered is False
    # auto-ack: nothing is left in the queue, nothing else arrives.
    assert len(received) == 1
    assert message_count(receiver.channel(), queue) == 0


def test_hello_world_many_messages_in_order(connection, names):
    queue = names.queue("hello")
    ch = connection.channel()
    ch.queue_declare(queue=queue)
    bodies = [f"Hello World! #{i}".encode() for i in range(20)]
    for body in bodies:
        ch.basic_publish(exchange="", routing_key=queue, body=body,
                         properties=pika.BasicProperties(content_type="text/plain"))

    got = []
    for method, props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=5):
        assert method is not None, f"consumer idle for 5s after {len(got)} messages"
        assert props.content_type == "text/plain"
        got.append(body)
        if len(got) == len(bodies):
            break
    ch.cancel()
    assert got == bodies
    assert message_count(ch, queue) == 0


def test_empty_and_large_bodies(connection, names):
    queue = names.queue("hello")
    ch = connection.channel()
    ch.queue_declare(queue=queue)
    # frame_max is negotiated (typically 128 KiB): 1 MiB spans many body frames.
    large = bytes(range(256)) * 4096
    ch.basic_publish(exchange="", routing_key=queue, body=b"")
    ch.basic_publish(exchange="", routing_key=queue, body=large)

    got = []
    for method, _, body in ch.consume(queue, auto_ack=True, inactivity_timeout=5):
        assert method is not None, "consumer idle for 5s"
        got.append(body)
        if len(got) == 2:
            break
    ch.cancel()
    assert got[0] == b""
    assert len(got[1]) == len(large) and got[1] == large
