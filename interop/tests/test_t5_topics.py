"""Tutorial 5 "Topics": emit_log_topic.py / receive_logs_topic.py.

Bindings from the tutorial: Q1 gets "*.orange.*", Q2 gets "*.*.rabbit" and
"lazy.#"; plus "#" alone and empty words.
"""

import pytest

from helpers import drain_until_fence, wait_for

# routing key -> which of the tutorial's queues get it
TUTORIAL_CASES = [
    ("quick.orange.rabbit", {"Q1", "Q2"}),
    ("lazy.orange.elephant", {"Q1", "Q2"}),
    ("quick.orange.fox", {"Q1"}),
    ("lazy.brown.fox", {"Q2"}),
    ("lazy.pink.rabbit", {"Q2"}),          # matches both Q2 bindings: one copy
    ("quick.brown.fox", set()),
    ("orange", set()),
    ("quick.orange.male.rabbit", set()),
    ("lazy.orange.male.rabbit", {"Q2"}),   # only "lazy.#" (4 words)
    ("lazy", {"Q2"}),                       # "#" matches zero words
]


def declare_bound(ch, exchange, patterns):
    queue = ch.queue_declare(queue="", exclusive=True).method.queue
    for p in patterns:
        ch.queue_bind(exchange=exchange, queue=queue, routing_key=p)
    return queue


def test_tutorial_bindings_and_keys(connection, names):
    exchange = names.exchange("topic_logs")
    ch = connection.channel()
    ch.exchange_declare(exchange=exchange, exchange_type="topic")
    queues = {
        "Q1": declare_bound(ch, exchange, ["*.orange.*"]),
        "Q2": declare_bound(ch, exchange, ["*.*.rabbit", "lazy.#"]),
        "ALL": declare_bound(ch, exchange, ["#"]),
    }
    for key, _ in TUTORIAL_CASES:
        ch.basic_publish(exchange=exchange, routing_key=key, body=key.encode())

    got = drain_until_fence(ch, list(queues.values()))
    for label in ("Q1", "Q2"):
        expected = [k.encode() for k, who in TUTORIAL_CASES if label in who]
        assert got[queues[label]] == expected, label
    # "#" alone catches everything, each message once.
    assert got[queues["ALL"]] == [k.encode() for k, _ in TUTORIAL_CASES]


@pytest.mark.parametrize("pattern,matching,not_matching", [
    ("#", ["a", "a.b.c", "", "a..b", "."], []),
    # An empty routing key has zero words; "a..b" has three, one empty.
    ("*", ["a"], ["a.b", ".", ""]),
    ("a.*.b", ["a.x.b", "a..b"], ["a.b", "a.x.y.b", "a.x.b.c"]),
    ("a.#.b", ["a.b", "a.x.b", "a.x.y.b", "a..b"], ["a.x.b.c", "b.a.b.x"]),
    ("a..b", ["a..b"], ["a.b", "a.x.b"]),
    ("#.b", ["b", "a.b", "a.x.b", ".b"], ["b.a", "ab"]),
    ("a.#", ["a", "a.b", "a.b.c", "a."], ["b.a", "ab"]),
    ("*.*", ["a.b", ".", "a."], ["a", "a.b.c"]),
    ("#.#", ["", "a", "a.b.c"], []),
    ("a.*.#", ["a.b", "a.b.c"], ["a", "b.c"]),
    ("exact.key", ["exact.key"], ["exact", "exact.key.x", "Exact.key"]),
])
def test_topic_pattern_matching(connection, names, pattern, matching, not_matching):
    exchange = names.exchange("topic")
    ch = connection.channel()
    ch.exchange_declare(exchange=exchange, exchange_type="topic")
    queue = declare_bound(ch, exchange, [pattern])
    keys = not_matching + matching + not_matching
    for key in keys:
        ch.basic_publish(exchange=exchange, routing_key=key, body=key.encode())
    got = drain_until_fence(ch, [queue])[queue]
    assert got == [k.encode() for k in keys if k in matching], pattern


def test_receive_logs_topic_consumers(connect, names):
    """receive_logs_topic.py on separate connections, emit_log_topic.py."""
    exchange = names.exchange("topic_logs")
    receivers = []
    for patterns in (["kern.*"], ["*.critical"], ["kern.*", "*.critical"]):
        conn = connect()
        ch = conn.channel()
        ch.exchange_declare(exchange=exchange, exchange_type="topic")
        queue = declare_bound(ch, exchange, patterns)
        got = []
        ch.basic_consume(queue=queue, auto_ack=True,
                         on_message_callback=lambda c, m, p, b, got=got: got.append(m.routing_key))
        receivers.append((conn, got))

    emitter = connect().channel()
    emitter.exchange_declare(exchange=exchange, exchange_type="topic")
    for key in ["anonymous.info", "kern.critical", "kern.info", "cron.critical"]:
        emitter.basic_publish(exchange=exchange, routing_key=key, body=b"A critical kernel error")

    expected = [
        ["kern.critical", "kern.info"],
        ["kern.critical", "cron.critical"],
        ["kern.critical", "kern.info", "cron.critical"],
    ]
    conns = [c for c, _ in receivers]
    wait_for(conns, lambda: all(len(g) >= len(e) for (_, g), e in zip(receivers, expected)),
             "every receiver's messages")
    assert [g for _, g in receivers] == expected
