"""MQTT 3.1.1 with paho-mqtt: QoS levels, wildcards, retained, wills, persistent sessions,
auth, and MQTT <-> AMQP (pika) through amq.topic."""

import pika
import pytest

import paho.mqtt.client as mqtt
from mqtt_helpers import Paho, unique

ALL_BYTES = bytes(range(256))


@pytest.fixture
def clients(mqtt_addr):
    made = []

    def make(**kw):
        c = Paho(mqtt_addr, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.close()
        except Exception:
            pass


def test_qos_levels_round_trip(clients):
    topic = unique("t311")
    sub = clients()
    assert [rc.value for rc in sub.subscribe(topic, qos=2)] == [2]
    pub = clients()
    for qos in (0, 1, 2):
        pub.publish(topic, f"q{qos}".encode(), qos=qos)
        msg = sub.next_message()
        assert (msg.topic, msg.payload, msg.qos) == (topic, f"q{qos}".encode(), qos)


def test_wildcards_follow_mqtt_rules(clients):
    root = unique("sport")
    sub = clients()
    sub.subscribe(f"{root}/#", qos=1)
    sub.subscribe(f"+/{root}", qos=0)
    pub = clients()
    pub.publish(root, b"parent", qos=1)  # sport/# matches sport
    pub.publish(f"x/{root}", b"plus", qos=1)
    pub.publish(f"{root}/a/b", b"deep", qos=1)
    got = sorted(sub.next_message().payload for _ in range(3))
    assert got == [b"deep", b"parent", b"plus"]
    sub.assert_no_message()


def test_retained_message_on_wildcard_subscribe_and_clear(clients):
    root = unique("ret")
    pub = clients()
    pub.publish(f"{root}/a", b"kept", qos=1, retain=True)
    sub = clients()
    sub.subscribe(f"{root}/+", qos=1)
    msg = sub.next_message()
    assert (msg.topic, msg.payload, msg.retain) == (f"{root}/a", b"kept", True)
    pub.publish(f"{root}/a", b"", qos=1, retain=True)
    sub2 = clients()
    sub2.subscribe(f"{root}/+", qos=1)
    sub2.assert_no_message()


def test_will_on_abnormal_loss_not_on_disconnect(clients):
    topic = unique("will")
    watcher = clients()
    watcher.subscribe(f"{topic}/#", qos=1)
    polite = clients(will=dict(topic=f"{topic}/polite", payload=b"bye", qos=1))
    polite.close()
    rude = clients(will=dict(topic=f"{topic}/rude", payload=b"lost", qos=1))
    rude.drop()
    msg = watcher.next_message()
    assert (msg.topic, msg.payload, msg.qos) == (f"{topic}/rude", b"lost", 1)
    watcher.assert_no_message()


def test_persistent_session_gets_offline_messages(clients, mqtt_addr):
    cid = unique("persist")
    topic = unique("off")
    first = Paho(mqtt_addr, client_id=cid, clean=False)
    first.subscribe(topic, qos=1)
    first.close()
    pub = clients()
    for i in range(3):
        pub.publish(topic, f"m{i}".encode(), qos=1)
    again = clients(client_id=cid, clean=False)
    assert again.flags.session_present
    got = [again.next_message().payload for _ in range(3)]
    assert got == [b"m0", b"m1", b"m2"]


def test_bad_password_is_refused(mqtt_addr):
    c = Paho(mqtt_addr, password="wrong", expect_success=False)
    # paho reports the 3.1.1 return code 4 as "Bad user name or password".
    assert c.rc.is_failure
    assert c.rc.value in (4, 134)
    c.client.loop_stop()


def test_mqtt_publish_reaches_pika_consumer_byte_for_byte(clients, broker):
    conn = pika.BlockingConnection(broker.params())
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        key = unique("dev")
        ch.queue_bind(q, "amq.topic", f"{key}.*.temp")
        pub = clients()
        pub.publish(f"{key}/k1/temp", ALL_BYTES, qos=1)
        for method, properties, body in ch.consume(q, auto_ack=True, inactivity_timeout=10):
            assert method is not None, "no message"
            assert body == ALL_BYTES
            assert method.routing_key == f"{key}.k1.temp"
            assert properties.delivery_mode == 2
            break
    finally:
        conn.close()


def test_pika_publish_reaches_mqtt_wildcard_subscriber(clients, broker):
    key = unique("cmd")
    sub = clients()
    sub.subscribe(f"{key}/+/reboot", qos=1)
    conn = pika.BlockingConnection(broker.params())
    try:
        ch = conn.channel()
        ch.basic_publish("amq.topic", f"{key}.d7.reboot", ALL_BYTES,
                         pika.BasicProperties(delivery_mode=2))
    finally:
        conn.close()
    msg = sub.next_message()
    assert (msg.topic, msg.payload, msg.qos) == (f"{key}/d7/reboot", ALL_BYTES, 1)


def test_mqtt_31_client_on_the_same_listener(clients):
    topic = unique("v31")
    old = clients(protocol=mqtt.MQTTv31)
    old.subscribe(topic, qos=1)
    new = clients(protocol=mqtt.MQTTv5)
    new.publish(topic, b"across versions", qos=1)
    assert old.next_message().payload == b"across versions"
