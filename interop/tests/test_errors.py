"""Error handling as pika sees it: channel-level and connection-level errors."""

import pika
import pytest
from pika.exceptions import ProbableAuthenticationError

from helpers import drain_until_fence, get_message, raises_channel_error


def assert_connection_usable(connection, names):
    """A new channel on the same connection works normally."""
    assert connection.is_open
    ch = connection.channel()
    q = names.queue("after-error")
    ch.queue_declare(queue=q)
    ch.basic_publish(exchange="", routing_key=q, body=b"still works")
    assert drain_until_fence(ch, [q])[q] == [b"still works"]


def test_passive_declare_missing_queue_404(connection, names):
    ch = connection.channel()
    missing = names.queue("missing")
    with raises_channel_error(404) as excinfo:
        ch.queue_declare(queue=missing, passive=True)
    assert "NOT_FOUND" in excinfo.value.reply_text
    assert ch.is_closed
    assert_connection_usable(connection, names)


def test_passive_declare_missing_exchange_404(connection, names):
    ch = connection.channel()
    with raises_channel_error(404):
        ch.exchange_declare(exchange=names.exchange("missing"), passive=True)
    assert_connection_usable(connection, names)


def test_redeclare_queue_with_different_durable_406(connection, names):
    queue = names.queue("durable")
    ch = connection.channel()
    ch.queue_declare(queue=queue, durable=True)
    with raises_channel_error(406) as excinfo:
        ch.queue_declare(queue=queue, durable=False)
    assert "PRECONDITION_FAILED" in excinfo.value.reply_text
    assert ch.is_closed
    assert_connection_usable(connection, names)
    # The original queue is untouched.
    ch = connection.channel()
    ch.queue_declare(queue=queue, durable=True)


def test_redeclare_exchange_with_different_type_406(connection, names):
    exchange = names.exchange("typed")
    ch = connection.channel()
    ch.exchange_declare(exchange=exchange, exchange_type="direct")
    with raises_channel_error(406):
        ch.exchange_declare(exchange=exchange, exchange_type="fanout")
    assert_connection_usable(connection, names)


def test_publish_to_missing_exchange_404(connection, names):
    ch = connection.channel()
    with raises_channel_error(404) as excinfo:
        ch.basic_publish(exchange=names.exchange("missing"), routing_key="k", body=b"x")
        # basic.publish has no reply; the next synchronous call on the
        # channel surfaces the broker's Channel.Close.
        ch.basic_qos(prefetch_count=0)
    assert "NOT_FOUND" in excinfo.value.reply_text
    assert ch.is_closed
    assert_connection_usable(connection, names)


def test_publish_to_missing_exchange_with_confirms_404(connection, names):
    ch = connection.channel()
    ch.confirm_delivery()
    with raises_channel_error(404):
        ch.basic_publish(exchange=names.exchange("missing"), routing_key="k", body=b"x")
    assert_connection_usable(connection, names)


def test_consume_from_missing_queue_404(connection, names):
    ch = connection.channel()
    with raises_channel_error(404):
        ch.basic_consume(queue=names.queue("missing"), on_message_callback=lambda *a: None)
    assert_connection_usable(connection, names)


def test_bind_to_missing_exchange_404(connection, names):
    ch = connection.channel()
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    with raises_channel_error(404):
        ch.queue_bind(queue=q, exchange=names.exchange("missing"), routing_key="k")
    assert_connection_usable(connection, names)


def test_ack_unknown_delivery_tag_406(connection, names):
    queue = names.queue("acks")
    ch = connection.channel()
    ch.queue_declare(queue=queue)
    ch.basic_publish(exchange="", routing_key=queue, body=b"m")
    method, _, _ = get_message(ch, queue)
    with raises_channel_error(406):
        ch.basic_ack(delivery_tag=method.delivery_tag + 100)
        ch.basic_qos(prefetch_count=0)
    # Closing the channel requeued the unacked message.
    ch = connection.channel()
    method, _, body = get_message(ch, queue)
    assert body == b"m" and method.redelivered is True
    ch.basic_ack(delivery_tag=method.delivery_tag)


def test_errors_on_one_channel_do_not_affect_others(connection, names):
    queue = names.queue("survivor")
    good = connection.channel()
    good.queue_declare(queue=queue)
    bad = connection.channel()
    with raises_channel_error(404):
        bad.queue_declare(queue=names.queue("missing"), passive=True)
    assert good.is_open
    good.basic_publish(exchange="", routing_key=queue, body=b"fine")
    assert drain_until_fence(good, [queue])[queue] == [b"fine"]


def test_wrong_password_rejected(broker):
    params = broker.params(credentials=pika.PlainCredentials("guest", "wrong-password"))
    with pytest.raises(ProbableAuthenticationError) as excinfo:
        pika.BlockingConnection(params)
    # authentication_failure_close: pika saw Connection.Close(403
    # ACCESS_REFUSED), not just a dropped socket.
    assert "(403)" in str(excinfo.value), str(excinfo.value)
    assert "ACCESS_REFUSED" in str(excinfo.value), str(excinfo.value)


def test_unknown_user_rejected(broker):
    params = broker.params(credentials=pika.PlainCredentials("no-such-user", "guest"))
    with pytest.raises(ProbableAuthenticationError):
        pika.BlockingConnection(params)


def test_good_credentials_after_bad_ones(broker, connect):
    with pytest.raises(ProbableAuthenticationError):
        pika.BlockingConnection(
            broker.params(credentials=pika.PlainCredentials("guest", "nope")))
    conn = connect()
    assert conn.is_open
    conn.channel().queue_declare(queue="", exclusive=True)
