"""Tutorial 4 "Routing": emit_log_direct.py / receive_logs_direct.py.

Direct exchange keyed by severity; several queues bound with the same key,
one queue bound with several keys, unrouted keys reach nobody.
"""

from helpers import drain_until_fence, wait_for

SEVERITIES = ["info", "warning", "error"]


def bind_queue(ch, exchange, keys):
    queue = ch.queue_declare(queue="", exclusive=True).method.queue
    for key in keys:
        ch.queue_bind(exchange=exchange, queue=queue, routing_key=key)
    return queue


def test_direct_routing_by_severity(connection, names):
    exchange = names.exchange("direct_logs")
    ch = connection.channel()
    ch.exchange_declare(exchange=exchange, exchange_type="direct")

    errors_only = bind_queue(ch, exchange, ["error"])           # the "disk" log
    everything = bind_queue(ch, exchange, SEVERITIES)           # the "screen" log
    info_warning = bind_queue(ch, exchange, ["info", "warning"])

    published = [
        ("info", b"Run. Run. Or it will explode."),
        ("warning", b"Disk almost full"),
        ("error", b"Run. Run. Or it will explode. [error]"),
        ("debug", b"nobody is bound for debug"),
        ("Error", b"keys are case-sensitive"),
        ("error.disk", b"no pattern matching in direct exchanges"),
        ("", b"empty key"),
        ("info", b"second info"),
    ]
    for key, body in published:
        ch.basic_publish(exchange=exchange, routing_key=key, body=body)

    got = drain_until_fence(ch, [errors_only, everything, info_warning])

    def expected(keys):
        return [body for key, body in published if key in keys]

    assert got[errors_only] == expected({"error"})
    assert got[everything] == expected(set(SEVERITIES))
    assert got[info_warning] == expected({"info", "warning"})


def test_same_queue_bound_twice_with_same_key_gets_one_copy(connection, names):
    exchange = names.exchange("direct_logs")
    ch = connection.channel()
    ch.exchange_declare(exchange=exchange, exchange_type="direct")
    queue = bind_queue(ch, exchange, ["error", "error"])
    ch.basic_publish(exchange=exchange, routing_key="error", body=b"once")
    assert drain_until_fence(ch, [queue])[queue] == [b"once"]


def test_unbind_stops_routing(connection, names):
    exchange = names.exchange("direct_logs")
    ch = connection.channel()
    ch.exchange_declare(exchange=exchange, exchange_type="direct")
    queue = bind_queue(ch, exchange, ["info", "error"])
    ch.queue_unbind(queue=queue, exchange=exchange, routing_key="info")
    ch.basic_publish(exchange=exchange, routing_key="info", body=b"info")
    ch.basic_publish(exchange=exchange, routing_key="error", body=b"error")
    assert drain_until_fence(ch, [queue])[queue] == [b"error"]


def test_consumers_on_separate_connections(connect, names):
    """receive_logs_direct.py run twice (error / info warning error)."""
    exchange = names.exchange("direct_logs")
    receivers = []
    for keys in (["error"], ["info", "warning", "error"]):
        conn = connect()
        ch = conn.channel()
        ch.exchange_declare(exchange=exchange, exchange_type="direct")
        queue = bind_queue(ch, exchange, keys)
        got = []
        ch.basic_consume(queue=queue, auto_ack=True,
                         on_message_callback=lambda c, m, p, b, got=got: got.append(
                             (m.routing_key, b)))
        receivers.append((conn, got))

    emitter = connect().channel()
    emitter.exchange_declare(exchange=exchange, exchange_type="direct")
    for sev in ["info", "debug", "warning", "error"]:
        emitter.basic_publish(exchange=exchange, routing_key=sev, body=sev.encode())

    (c1, got1), (c2, got2) = receivers
    wait_for([c1, c2], lambda: len(got1) >= 1 and len(got2) >= 3,
             "both receivers to get their messages")
    assert got1 == [("error", b"error")]
    assert got2 == [("info", b"info"), ("warning", b"warning"), ("error", b"error")]
