"""Tutorial 7 "Publisher Confirms", the way pika's BlockingChannel does them."""

import pika
import pytest
from pika.exceptions import UnroutableError

from helpers import drain_until_fence, message_count

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)


def test_publish_many_all_confirmed(connection, names):
    queue = names.queue("confirms")
    ch = connection.channel()
    ch.queue_declare(queue=queue, durable=True)
    ch.confirm_delivery()

    total = 500
    for i in range(total):
        # Raises NackError / UnroutableError if the broker does not ack.
        ch.basic_publish(exchange="", routing_key=queue, body=f"msg {i}".encode(),
                         properties=PERSISTENT)
    # Confirmed means enqueued: the count is exact right away.
    assert message_count(ch, queue) == total

    bodies = []
    for method, _, body in ch.consume(queue, inactivity_timeout=5):
        assert method is not None, f"consumer idle for 5s after {len(bodies)} messages"
        bodies.append(body)
        if len(bodies) == total:
            ch.basic_ack(delivery_tag=method.delivery_tag, multiple=True)
            break
    ch.cancel()
    assert bodies == [f"msg {i}".encode() for i in range(total)]
    assert message_count(ch, queue) == 0


def test_confirm_select_is_idempotent_and_channel_scoped(connection, names):
    queue = names.queue("confirms")
    ch = connection.channel()
    ch.queue_declare(queue=queue)
    ch.confirm_delivery()
    ch.basic_publish(exchange="", routing_key=queue, body=b"confirmed")
    # A second channel on the same connection is unaffected (no confirms).
    other = connection.channel()
    other.basic_publish(exchange="", routing_key=queue, body=b"fire and forget")
    assert drain_until_fence(other, [queue])[queue] == [b"confirmed", b"fire and forget"]


def test_confirmed_fanout_to_many_queues(connection, names):
    exchange = names.exchange("confirms")
    ch = connection.channel()
    ch.exchange_declare(exchange=exchange, exchange_type="fanout")
    queues = [ch.queue_declare(queue="", exclusive=True).method.queue for _ in range(3)]
    for q in queues:
        ch.queue_bind(queue=q, exchange=exchange)
    ch.confirm_delivery()
    for i in range(50):
        ch.basic_publish(exchange=exchange, routing_key="", body=str(i))
    for q in queues:
        assert message_count(ch, q) == 50


def test_mandatory_unroutable_raises(connection, names):
    exchange = names.exchange("confirms")
    ch = connection.channel()
    ch.exchange_declare(exchange=exchange, exchange_type="direct")
    queue = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(queue=queue, exchange=exchange, routing_key="routed")
    ch.confirm_delivery()

    with pytest.raises(UnroutableError) as excinfo:
        ch.basic_publish(exchange=exchange, routing_key="nowhere", body=b"lost",
                         mandatory=True)
    returned = excinfo.value.messages
    assert len(returned) == 1
    ret = returned[0]
    assert ret.method.reply_code == 312  # NO_ROUTE
    assert ret.method.exchange == exchange
    assert ret.method.routing_key == "nowhere"
    assert ret.body == b"lost"

    # Same via the default exchange to a queue that does not exist.
    with pytest.raises(UnroutableError):
        ch.basic_publish(exchange="", routing_key=names.queue("missing"), body=b"lost",
                         mandatory=True)

    # The channel is still fine: routable mandatory publishes succeed,
    # unroutable non-mandatory ones are confirmed and dropped.
    assert ch.is_open
    ch.basic_publish(exchange=exchange, routing_key="routed", body=b"ok", mandatory=True)
    ch.basic_publish(exchange=exchange, routing_key="nowhere", body=b"dropped")
    assert drain_until_fence(ch, [queue])[queue] == [b"ok"]


def test_mandatory_return_without_confirms(connection, names):
    """Basic.Return also arrives on a channel without confirms."""
    exchange = names.exchange("returns")
    ch = connection.channel()
    ch.exchange_declare(exchange=exchange, exchange_type="direct")
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m, p, b)))
    ch.basic_publish(exchange=exchange, routing_key="nowhere", body=b"back to sender",
                     mandatory=True,
                     properties=pika.BasicProperties(correlation_id="abc"))
    ch.basic_qos(prefetch_count=0)  # round trip: the return precedes its reply
    connection.process_data_events(time_limit=0)
    assert len(returned) == 1
    method, props, body = returned[0]
    assert method.reply_code == 312
    assert body == b"back to sender"
    assert props.correlation_id == "abc"
