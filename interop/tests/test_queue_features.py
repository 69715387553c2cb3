"""Queue features with pika: priorities, TTL, dead-lettering with x-death, retry with back-off,
length limits (reject-publish nacks) and RabbitMQ's argument validation."""

import datetime

import pika
import pytest
from pika.exceptions import NackError

from helpers import get_message, message_count, raises_channel_error, wait_for


def test_priority_queue_delivers_higher_first_fifo_within(connection, names):
    queue = names.queue("prio")
    ch = connection.channel()
    ch.queue_declare(queue=queue, arguments={"x-max-priority": 10})
    for body, priority in [("low-1", 1), ("none", None), ("high-1", 9), ("high-2", 9),
                           ("low-2", 1), ("max", 250)]:
        ch.basic_publish(exchange="", routing_key=queue, body=body.encode(),
                         properties=pika.BasicProperties(priority=priority))
    got = [get_message(ch, queue, auto_ack=True)[2].decode() for _ in range(6)]
    # 250 is above the max (10): it counts as 10, above the 9s.
    assert got == ["max", "high-1", "high-2", "low-1", "low-2", "none"]


def test_message_ttl_expires_without_a_consumer(connection, names):
    queue = names.queue("ttl")
    ch = connection.channel()
    ch.queue_declare(queue=queue, arguments={"x-message-ttl": 100})
    ch.basic_publish(exchange="", routing_key=queue, body=b"queue ttl")
    other = names.queue("ttl-msg")
    ch.queue_declare(queue=other)
    ch.basic_publish(exchange="", routing_key=other, body=b"short",
                     properties=pika.BasicProperties(expiration="50"))
    ch.basic_publish(exchange="", routing_key=other, body=b"kept")
    wait_for(connection, lambda: message_count(ch, queue) == 0, "queue TTL expiry")
    wait_for(connection, lambda: message_count(ch, other) == 1, "message TTL expiry")
    assert get_message(ch, other, auto_ack=True)[2] == b"kept"


def test_rejected_message_is_dead_lettered_with_x_death(connection, names):
    work, dead, dlx = names.queue("work"), names.queue("dead"), names.exchange("dlx")
    ch = connection.channel()
    ch.exchange_declare(exchange=dlx, exchange_type="fanout")
    ch.queue_declare(queue=dead)
    ch.queue_bind(queue=dead, exchange=dlx)
    ch.queue_declare(queue=work, arguments={"x-dead-letter-exchange": dlx})
    ch.basic_publish(exchange="", routing_key=work, body=b"job",
                     properties=pika.BasicProperties(expiration="60000"))
    method, _, _ = get_message(ch, work)
    ch.basic_reject(delivery_tag=method.delivery_tag, requeue=False)
    method, props, body = get_message(ch, dead, auto_ack=True)
    assert body == b"job"
    assert method.exchange == dlx
    assert props.expiration is None
    (death,) = props.headers["x-death"]
    assert death["count"] == 1
    assert death["reason"] == "rejected"
    assert death["queue"] == work
    assert death["exchange"] == ""
    assert death["routing-keys"] == [work]
    assert death["original-expiration"] == "60000"
    assert isinstance(death["time"], datetime.datetime)
    assert props.headers["x-first-death-reason"] == "rejected"
    assert props.headers["x-first-death-queue"] == work
    assert props.headers["x-first-death-exchange"] == ""


def test_retry_with_back_off(connection, names):
    work, retry = names.queue("work"), names.queue("retry")
    ch = connection.channel()
    ch.queue_declare(queue=retry, arguments={
        "x-message-ttl": 50, "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": work})
    ch.queue_declare(queue=work, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": retry})
    ch.basic_publish(exchange="", routing_key=work, body=b"flaky")
    for attempt in range(1, 4):
        method, props, body = get_message(ch, work)
        assert body == b"flaky"
        if attempt > 1:
            counts = {(d["queue"], d["reason"]): d["count"] for d in props.headers["x-death"]}
            assert counts == {(retry, "expired"): attempt - 1, (work, "rejected"): attempt - 1}
        if attempt < 3:
            ch.basic_nack(delivery_tag=method.delivery_tag, requeue=False)
        else:
            ch.basic_ack(delivery_tag=method.delivery_tag)
    assert message_count(ch, work) == 0
    assert message_count(ch, retry) == 0


def test_reject_publish_nacks_the_refused_publish(connection, names):
    queue = names.queue("full")
    ch = connection.channel()
    ch.queue_declare(queue=queue, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish(exchange="", routing_key=queue, body=b"fits")
    with pytest.raises(NackError):
        ch.basic_publish(exchange="", routing_key=queue, body=b"refused")
    assert message_count(ch, queue) == 1


def test_drop_head_dead_letters_with_maxlen(connection, names):
    queue, dead = names.queue("short"), names.queue("dead")
    ch = connection.channel()
    ch.queue_declare(queue=dead)
    ch.queue_declare(queue=queue, arguments={
        "x-max-length": 1, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead})
    ch.basic_publish(exchange="", routing_key=queue, body=b"old")
    ch.basic_publish(exchange="", routing_key=queue, body=b"new")
    _, props, body = get_message(ch, dead, auto_ack=True)
    assert body == b"old"
    assert props.headers["x-death"][0]["reason"] == "maxlen"
    assert get_message(ch, queue, auto_ack=True)[2] == b"new"


def test_invalid_arguments_are_refused_with_406(connection, names):
    ch = connection.channel()
    with raises_channel_error(406) as excinfo:
        ch.queue_declare(queue=names.queue("bad"), arguments={"x-message-ttl": -1})
    assert "value_negative" in excinfo.value.reply_text


def test_delayed_message_exchange(connection, names):
    exchange, queue = names.exchange("delayed"), names.queue("delayed")
    ch = connection.channel()
    ch.exchange_declare(exchange=exchange, exchange_type="x-delayed-message",
                        arguments={"x-delayed-type": "direct"})
    ch.queue_declare(queue=queue)
    ch.queue_bind(queue=queue, exchange=exchange, routing_key="k")
    ch.basic_publish(exchange=exchange, routing_key="k", body=b"later",
                     properties=pika.BasicProperties(headers={"x-delay": 1000}))
    ch.basic_publish(exchange=exchange, routing_key="k", body=b"now")
    assert get_message(ch, queue, auto_ack=True)[2] == b"now"
    assert message_count(ch, queue) == 0, "the delayed one is still held"
    _, props, body = get_message(ch, queue, auto_ack=True)
    assert body == b"later"
    assert props.headers["x-delay"] == 1000


def test_single_active_consumer(connection, names):
    queue = names.queue("sac")
    ch = connection.channel()
    ch.queue_declare(queue=queue, arguments={"x-single-active-consumer": True})
    got = {"first": [], "second": []}
    ch.basic_consume(queue=queue, consumer_tag="first", auto_ack=True,
                     on_message_callback=lambda c, m, p, b: got["first"].append(b))
    ch.basic_consume(queue=queue, consumer_tag="second", auto_ack=True,
                     on_message_callback=lambda c, m, p, b: got["second"].append(b))
    for i in range(3):
        ch.basic_publish(exchange="", routing_key=queue, body=f"a{i}".encode())
    wait_for(connection, lambda: len(got["first"]) == 3, "the active consumer's messages")
    ch.basic_cancel("first")
    ch.basic_publish(exchange="", routing_key=queue, body=b"b0")
    wait_for(connection, lambda: got["second"] == [b"b0"], "the hand-over")
    assert got["first"] == [b"a0", b"a1", b"a2"]
