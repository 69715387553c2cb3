"""STOMP messaging with stomp.py: every destination kind, ack modes in each version, NACK,
prefetch, transactions over SEND and ACK, durable topic subscriptions, queue arguments,
headers and /temp-queue request-reply."""

import uuid

import pytest

from stomp_helpers import receipt_id, send, subscribe


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ack(conn, version: str, msg, **kw):
    """ACK as each version names the message."""
    h = msg.headers
    r = receipt_id()
    if version == "1.2":
        conn.ack(h["ack"], receipt=r, **kw)
    elif version == "1.1":
        conn.ack(h["message-id"], h["subscription"], receipt=r, **kw)
    else:
        conn.ack(h["message-id"], receipt=r, **kw)
    return r


def nack(conn, version: str, msg, **kw):
    h = msg.headers
    r = receipt_id()
    if version == "1.2":
        conn.nack(h["ack"], receipt=r, **kw)
    else:
        conn.nack(h["message-id"], h["subscription"], receipt=r, **kw)
    return r


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_queue_round_trip(stomp_connect, version):
    q = f"/queue/{unique('rt')}"
    conn, rec = stomp_connect(version=version)
    subscribe(conn, rec, q, id="s1")
    send(conn, rec, q, "hello")
    m = rec.wait_messages(1)[0]
    assert m.body == "hello"
    assert m.headers["destination"] == q
    assert m.headers["subscription"] == "s1"
    assert m.headers["redelivered"] == "false"
    assert "message-id" in m.headers
    assert m.headers["content-length"] == "5"


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_client_ack_is_cumulative_and_unacked_come_back(stomp_connect, version):
    q = f"/queue/{unique('cum')}"
    conn, rec = stomp_connect(version=version)
    for i in range(3):
        send(conn, rec, q, f"m{i}")
    subscribe(conn, rec, q, id="s", ack="client")
    ms = rec.wait_messages(3)
    if version == "1.2":
        assert ms[1].headers["ack"] == ms[1].headers["message-id"]
    rec.wait_receipt(ack(conn, version, ms[1]))  # covers m0 and m1
    conn.disconnect()
    rec.wait(lambda: rec.disconnected, "disconnect")
    conn2, rec2 = stomp_connect(version=version)
    subscribe(conn2, rec2, q, id="s", ack="client-individual")
    m = rec2.wait_messages(1)[0]
    assert (m.body, m.headers["redelivered"]) == ("m2", "true")
    rec2.wait_receipt(ack(conn2, version, m))
    rec2.quiet()


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_nack_requeues_by_default_and_discards_with_requeue_false(stomp_connect, version):
    q = f"/queue/{unique('nack')}"
    conn, rec = stomp_connect(version=version)
    send(conn, rec, q, "again")
    subscribe(conn, rec, q, id="s", ack="client-individual")
    m = rec.take_messages(1)[0]
    rec.wait_receipt(nack(conn, version, m))
    m = rec.take_messages(1)[0]
    assert (m.body, m.headers["redelivered"]) == ("again", "true")
    rec.wait_receipt(nack(conn, version, m, requeue="false"))
    rec.quiet()


def test_prefetch_count(stomp_connect):
    q = f"/queue/{unique('pf')}"
    conn, rec = stomp_connect()
    for i in range(5):
        send(conn, rec, q, str(i))
    subscribe(conn, rec, q, id="s", ack="client-individual", **{"prefetch-count": "2"})
    first = rec.take_messages(2)
    rec.quiet()
    rec.wait_receipt(ack(conn, "1.2", first[0]))
    assert rec.take_messages(1)[0].body == "2"


def test_transaction_covers_send_and_ack(stomp_connect):
    q = f"/queue/{unique('tx')}"
    conn, rec = stomp_connect()
    send(conn, rec, q, "before")
    subscribe(conn, rec, q, id="s", ack="client-individual")
    before = rec.take_messages(1)[0]
    tx = conn.begin()
    send(conn, rec, q, "in-tx", transaction=tx)
    rec.wait_receipt(ack(conn, "1.2", before, transaction=tx))
    rec.quiet()
    r = receipt_id()
    conn.commit(tx, receipt=r)
    rec.wait_receipt(r)
    in_tx = rec.take_messages(1)[0]
    assert in_tx.body == "in-tx"
    tx2 = conn.begin()
    send(conn, rec, q, "aborted", transaction=tx2)
    rec.wait_receipt(ack(conn, "1.2", in_tx, transaction=tx2))
    r = receipt_id()
    conn.abort(tx2, receipt=r)
    rec.wait_receipt(r)
    rec.quiet()
    # The aborted ACK did not happen: in-tx comes back after a reconnect, "before" does not.
    conn.disconnect()
    rec.wait(lambda: rec.disconnected, "disconnect")
    conn2, rec2 = stomp_connect()
    subscribe(conn2, rec2, q, id="s")
    m = rec2.take_messages(1)[0]
    assert (m.body, m.headers["redelivered"]) == ("in-tx", "true")
    rec2.quiet()


def test_topic_fan_out_and_wildcards(stomp_connect):
    key = unique("news").replace("-", "_")
    a, ra = stomp_connect()
    b, rb = stomp_connect(version="1.1")
    subscribe(a, ra, f"/topic/{key}.*", id="a")
    subscribe(b, rb, f"/topic/{key}.sport", id="b")
    p, rp = stomp_connect(version="1.0")
    send(p, rp, f"/topic/{key}.sport", "goal")
    for r in (ra, rb):
        m = r.wait_messages(1)[0]
        assert m.body == "goal"
        assert m.headers["destination"] == f"/topic/{key}.sport"


def test_durable_topic_subscription_keeps_messages_while_away(stomp_connect):
    dest = f"/topic/{unique('durable')}"
    durable = {"durable": "true", "auto-delete": "false"}
    conn, rec = stomp_connect()
    subscribe(conn, rec, dest, id="sub-1", ack="client", **durable)
    conn.disconnect()
    rec.wait(lambda: rec.disconnected, "disconnect")
    p, rp = stomp_connect()
    send(p, rp, dest, "while away", persistent="true")
    conn2, rec2 = stomp_connect()
    subscribe(conn2, rec2, dest, id="sub-1", ack="client", **durable)
    m = rec2.take_messages(1)[0]
    assert (m.body, m.headers.get("persistent")) == ("while away", "true")
    rec2.wait_receipt(ack(conn2, "1.2", m))
    r = receipt_id()
    conn2.unsubscribe(id="sub-1", receipt=r, headers={"durable": "true"})
    rec2.wait_receipt(r)


def test_exchange_and_amq_queue_destinations(stomp_connect, channel):
    existing = unique("existing")
    channel.queue_declare(queue=existing, auto_delete=True)
    conn, rec = stomp_connect()
    subscribe(conn, rec, "/exchange/amq.direct/rk-stomp", id="direct")
    subscribe(conn, rec, f"/amq/queue/{existing}", id="amq")
    send(conn, rec, "/exchange/amq.direct/rk-stomp", "d")
    m = rec.take_messages(1)[0]
    assert (m.headers["subscription"], m.headers["destination"]) == (
        "direct", "/exchange/amq.direct/rk-stomp")
    send(conn, rec, f"/amq/queue/{existing}", "a")
    m = rec.take_messages(1)[0]
    assert (m.headers["subscription"], m.headers["destination"]) == ("amq", f"/queue/{existing}")


def test_subscribe_queue_arguments_and_x_queue_name(stomp_connect, channel):
    import pika.exceptions

    q = unique("args")
    conn, rec = stomp_connect()
    subscribe(conn, rec, f"/queue/{q}", id="s", **{"x-max-length": "10",
                                                 "x-message-ttl": "60000"})
    # The arguments were declared as integers: an AMQP declare with the same ints is
    # equivalent, a different value is refused.
    channel.queue_declare(queue=q, durable=True,
                          arguments={"x-max-length": 10, "x-message-ttl": 60000})
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        channel.queue_declare(queue=q, durable=True, arguments={"x-max-length": 11})
    assert e.value.reply_code == 406
    named = unique("named")
    subscribe(conn, rec, "/topic/named.key", id="t", **{"x-queue-name": named})
    # The subscription's queue exists under that name, exclusive to the STOMP connection (a
    # missing queue would be 404).
    ch2 = channel.connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch2.queue_declare(queue=named, passive=True)
    assert e.value.reply_code == 405


def test_headers_round_trip(stomp_connect):
    q = f"/queue/{unique('props')}"
    conn, rec = stomp_connect()
    subscribe(conn, rec, q, id="s")
    sent = {
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "persistent": "true",
        "priority": "7",
        "correlation-id": "c-1",
        "reply-to": "/queue/replies",
        "expiration": "60000",
        "amqp-message-id": "m-1",
        "timestamp": "1700000000",
        "type": "greeting",
        "user-id": "guest",
        "app-id": "tests",
        "x-custom": "with:colon",
    }
    send(conn, rec, q, "{}", **sent)
    m = rec.wait_messages(1)[0]
    for k, v in sent.items():
        assert m.headers.get(k) == v, k


def test_temp_queue_request_reply(stomp_connect):
    service = f"/queue/{unique('service')}"
    server, rs = stomp_connect()
    subscribe(server, rs, service, id="svc")
    client, rc = stomp_connect(version="1.1")
    send(client, rc, service, "ping", **{"reply-to": "/temp-queue/answers"})
    req = rs.wait_messages(1)[0]
    reply_to = req.headers["reply-to"]
    assert reply_to.startswith("/reply-queue/")
    send(server, rs, reply_to, "pong")
    reply = rc.wait_messages(1)[0]
    assert reply.body == "pong"
    assert reply.headers["subscription"] == "/temp-queue/answers"
