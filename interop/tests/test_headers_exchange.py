"""Headers exchange: routing on message headers with x-match all / any."""

import pika

from helpers import drain_until_fence, get_message


def test_headers_exchange_x_match_all_and_any(connection, names):
    exchange = names.exchange("headers")
    ch = connection.channel()
    ch.exchange_declare(exchange=exchange, exchange_type="headers")

    def bound(arguments):
        q = ch.queue_declare(queue="", exclusive=True).method.queue
        ch.queue_bind(queue=q, exchange=exchange, routing_key="", arguments=arguments)
        return q

    q_all = bound({"x-match": "all", "format": "pdf", "type": "report"})
    q_any = bound({"x-match": "any", "format": "pdf", "type": "log"})
    q_default = bound({"format": "zip"})  # x-match defaults to "all"
    q_int = bound({"x-match": "all", "priority": 5})

    cases = [
        # (headers, routing key, expected recipients)
        ({"format": "pdf", "type": "report"}, "", {"all", "any"}),
        ({"format": "pdf", "type": "report", "extra": "x"}, "whatever", {"all", "any"}),
        ({"format": "pdf", "type": "log"}, "", {"any"}),
        ({"type": "log"}, "", {"any"}),
        ({"format": "pdf"}, "", {"any"}),
        ({"format": "zip", "type": "report"}, "", {"default"}),
        ({"format": "PDF", "type": "report"}, "", set()),
        ({"other": "pdf"}, "", set()),
        ({}, "", set()),
        (None, "", set()),
        ({"priority": 5}, "", {"int"}),
        ({"priority": 6}, "", set()),
    ]
    for i, (headers, key, _) in enumerate(cases):
        ch.basic_publish(exchange=exchange, routing_key=key, body=f"case {i}".encode(),
                         properties=pika.BasicProperties(headers=headers))

    got = drain_until_fence(ch, [q_all, q_any, q_default, q_int])
    for label, q in [("all", q_all), ("any", q_any), ("default", q_default), ("int", q_int)]:
        expected = [f"case {i}".encode() for i, (_, _, who) in enumerate(cases) if label in who]
        assert got[q] == expected, label


def test_headers_are_delivered_intact(connection, names):
    exchange = names.exchange("headers")
    ch = connection.channel()
    ch.exchange_declare(exchange=exchange, exchange_type="headers")
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(queue=q, exchange=exchange, arguments={"x-match": "any", "k": "v"})
    headers = {"k": "v", "n": 42, "neg": -7, "flag": True, "list": [1, "two"],
               "nested": {"a": "b"}}
    ch.basic_publish(exchange=exchange, routing_key="", body=b"h",
                     properties=pika.BasicProperties(headers=headers))
    method, props, body = get_message(ch, q, auto_ack=True)
    assert body == b"h"
    assert props.headers == headers
