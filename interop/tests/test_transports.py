"""The Python clients over TLS and WebSocket: pika with ssl_options, paho-mqtt with tls_set
and its websockets transport (ws:// and wss://), stomp.py with set_ssl; with and without a
client certificate, and a certificate from a CA the broker does not trust refused."""

import ssl

import paho.mqtt.client as mqtt
import pika
import pytest

from conftest import _parse_addr
from mqtt_helpers import Paho, unique
from stomp_helpers import open_stomp, send, subscribe

WAIT = 10.0


def listener(broker, key):
    addrs = broker.extra.get(key) or []
    if not addrs:
        pytest.skip(f"the broker has no {key} listener")
    return _parse_addr(addrs[0])


@pytest.fixture(scope="module")
def certs(broker):
    if "pki" not in broker.extra:
        pytest.skip("an external broker: no test certificates")
    return broker.extra["pki"]


def client_context(certs, identity=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs["ca"])
    if identity is not None:
        ctx.load_cert_chain(certs[f"{identity}_cert"], certs[f"{identity}_key"])
    return ctx


def paho_tls(certs, identity=None) -> dict:
    kw = {"ca_certs": certs["ca"]}
    if identity is not None:
        kw.update(certfile=certs[f"{identity}_cert"], keyfile=certs[f"{identity}_key"])
    return kw


def amqps(broker, certs, identity=None) -> pika.ConnectionParameters:
    host, port = listener(broker, "amqp_tls")
    options = pika.SSLOptions(client_context(certs, identity), "localhost")
    return broker.params(host=host, port=port, ssl_options=options)


@pytest.mark.parametrize("identity", [None, "client"])
def test_pika_over_tls(broker, certs, names, identity):
    conn = pika.BlockingConnection(amqps(broker, certs, identity))
    try:
        ch = conn.channel()
        q = names.queue("tls")
        ch.queue_declare(q)
        ch.basic_publish("", q, b"over amqps")
        method, _, body = ch.basic_get(q, auto_ack=True)
        assert method is not None and body == b"over amqps"
    finally:
        conn.close()


def test_pika_with_a_stranger_certificate_is_refused(broker, certs):
    with pytest.raises((pika.exceptions.AMQPConnectionError, ssl.SSLError, OSError)):
        conn = pika.BlockingConnection(amqps(broker, certs, "stranger"))
        # TLS 1.3: the refusal may come only with the first read.
        conn.channel()


@pytest.mark.parametrize("identity", [None, "client"])
def test_paho_over_tls_meets_stomp_over_tls(broker, certs, identity):
    mqtts = listener(broker, "mqtt_tls")
    stomps = listener(broker, "stomp_tls")
    sub = Paho(mqtts, tls=paho_tls(certs, identity))
    conn, rec = open_stomp(stomps, ssl=dict(ca_certs=certs["ca"]))
    try:
        topic = unique("tls")
        sub.subscribe(f"tls/{topic}", qos=1)
        send(conn, rec, f"/topic/tls.{topic}", "sealed")
        msg = sub.next_message()
        assert msg.payload == b"sealed"
    finally:
        sub.close()
        conn.disconnect()


def test_paho_with_a_stranger_certificate_is_refused(broker, certs):
    host, port = listener(broker, "mqtt_tls")
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                    client_id=unique("eve"))
    c.username_pw_set("guest", "guest")
    c.tls_set(**paho_tls(certs, "stranger"))
    accepted = []
    c.on_connect = lambda _c, _u, _f, rc, _p: accepted.append(not rc.is_failure)
    refused = False
    try:
        c.connect(host, port, keepalive=30)
        # TLS 1.3: the client's side of the handshake is done; the refusal comes with the
        # first read.
        for _ in range(3):
            if c.loop(timeout=WAIT) != mqtt.MQTT_ERR_SUCCESS:
                refused = True
                break
    except (ssl.SSLError, OSError):
        refused = True
    finally:
        c.disconnect()
    assert refused and not any(accepted)


def test_stomp_with_a_client_certificate_over_tls(broker, certs, names):
    stomps = listener(broker, "stomp_tls")
    conn, rec = open_stomp(stomps, ssl=dict(ca_certs=certs["ca"], cert_file=certs["client_cert"],
                                            key_file=certs["client_key"]))
    try:
        q = names.queue("stomps")
        subscribe(conn, rec, f"/queue/{q}", id="1")
        send(conn, rec, f"/queue/{q}", "hello over stomp+tls")
        rec.wait(lambda: rec.messages, "MESSAGE")
        assert rec.messages[0].body == "hello over stomp+tls"
    finally:
        conn.disconnect()


def test_paho_over_websocket_meets_pika(broker, connection):
    sub = Paho(listener(broker, "mqtt_ws"), transport="websockets")
    try:
        topic = unique("ws")
        sub.subscribe(f"web/{topic}", qos=1)
        connection.channel().basic_publish("amq.topic", f"web.{topic}", b"from pika")
        assert sub.next_message().payload == b"from pika"
        # And back: a publish over WebSocket reaches the WebSocket subscriber itself.
        sub.publish(f"web/{topic}", b"from paho over ws", qos=1)
        assert sub.next_message().payload == b"from paho over ws"
    finally:
        sub.close()


@pytest.mark.parametrize("identity", [None, "client"])
def test_paho_over_secure_websocket(broker, certs, identity):
    sub = Paho(listener(broker, "mqtt_wss"), transport="websockets",
               tls=paho_tls(certs, identity))
    try:
        topic = unique("wss")
        sub.subscribe(f"wss/{topic}", qos=1)
        sub.publish(f"wss/{topic}", b"over wss", qos=1)
        assert sub.next_message().payload == b"over wss"
    finally:
        sub.close()
