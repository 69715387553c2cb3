"""MQTT 5 with paho-mqtt: properties, request/response, subscription identifiers, No Local,
Retain Handling, message expiry, assigned client ids, reason codes."""

import time

import pytest

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions
from paho.mqtt.packettypes import PacketTypes
from mqtt_helpers import Paho, props, unique, PUBLISH, CONNECT, SUBSCRIBE


@pytest.fixture
def clients(mqtt_addr):
    made = []

    def make(**kw):
        kw.setdefault("protocol", mqtt.MQTTv5)
        c = Paho(mqtt_addr, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.close()
        except Exception:
            pass


def test_request_response_with_properties(clients):
    req_topic = unique("req")
    server = clients()
    server.subscribe(req_topic, qos=1)
    client = clients()
    reply_topic = unique("reply")
    client.subscribe(reply_topic, qos=1)
    client.publish(req_topic, b"ping", qos=1, properties=props(
        PUBLISH, ResponseTopic=reply_topic, CorrelationData=b"\x00\xffid",
        ContentType="text/plain", UserProperty=[("k", "v")], PayloadFormatIndicator=1))
    req = server.next_message()
    p = req.properties
    assert p.ResponseTopic == reply_topic
    assert p.CorrelationData == b"\x00\xffid"
    assert p.ContentType == "text/plain"
    assert ("k", "v") in p.UserProperty
    assert p.PayloadFormatIndicator == 1
    server.publish(p.ResponseTopic, b"pong", qos=1,
                   properties=props(PUBLISH, CorrelationData=p.CorrelationData))
    resp = client.next_message()
    assert resp.payload == b"pong"
    assert resp.properties.CorrelationData == b"\x00\xffid"


def test_subscription_identifiers_on_overlapping_subscriptions(clients):
    root = unique("sid")
    sub = clients()
    sub.subscribe(f"{root}/#", qos=1, properties=props(SUBSCRIBE, SubscriptionIdentifier=3))
    sub.subscribe(f"{root}/+", qos=2, properties=props(SUBSCRIBE, SubscriptionIdentifier=9))
    pub = clients()
    pub.publish(f"{root}/x", b"once", qos=2)
    msg = sub.next_message()
    assert msg.qos == 2
    assert sorted(msg.properties.SubscriptionIdentifier) == [3, 9]
    sub.assert_no_message()


def test_no_local_and_retain_handling(clients):
    topic = unique("nl")
    me = clients()
    me.subscribe(topic, options=SubscribeOptions(qos=1, noLocal=True))
    me.publish(topic, b"mine", qos=1)
    me.assert_no_message()
    other = clients()
    other.publish(topic, b"theirs", qos=1, retain=True)
    assert me.next_message().payload == b"theirs"
    late = clients()
    late.subscribe(topic, options=SubscribeOptions(
        qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND))
    late.assert_no_message()
    late2 = clients()
    late2.subscribe(topic, options=SubscribeOptions(qos=1))
    assert late2.next_message().retain


def test_message_expiry_counts_down_and_expires(clients):
    cid = unique("exp")
    topic = unique("exp")
    session = props(CONNECT, SessionExpiryInterval=60)
    c = clients(client_id=cid, clean=False, properties=session)
    c.subscribe(topic, qos=1)
    c.close()
    pub = clients()
    pub.publish(topic, b"short", qos=1, properties=props(PUBLISH, MessageExpiryInterval=1))
    pub.publish(topic, b"long", qos=1, properties=props(PUBLISH, MessageExpiryInterval=100))
    time.sleep(2.1)  # the expiry itself is what is tested
    again = clients(client_id=cid, clean=False, properties=props(CONNECT, SessionExpiryInterval=60))
    assert again.flags.session_present
    msg = again.next_message()
    assert msg.payload == b"long"
    assert msg.properties.MessageExpiryInterval < 100
    again.assert_no_message()


def test_assigned_client_identifier(clients):
    c = clients(client_id="")
    assert c.connack_props.AssignedClientIdentifier


def test_bad_credentials_reason_code(mqtt_addr):
    c = Paho(mqtt_addr, protocol=mqtt.MQTTv5, password="nope", expect_success=False)
    assert c.rc.value == 0x86
    c.client.loop_stop()


def test_takeover_disconnects_the_old_client_with_0x8e(clients):
    cid = unique("take")
    old = clients(client_id=cid)
    clients(client_id=cid)
    rc = old.disconnects.get(timeout=10)
    assert rc.value == 0x8E


def test_shared_subscription_splits_messages(clients):
    group = unique("grp")
    topic = unique("jobs")
    a = clients()
    b = clients()
    a.subscribe(f"$share/{group}/{topic}", qos=1)
    b.subscribe(f"$share/{group}/{topic}", qos=1)
    pub = clients()
    for i in range(6):
        pub.publish(topic, bytes([i]), qos=1)
    got = [a.next_message().payload for _ in range(3)] + [b.next_message().payload for _ in range(3)]
    assert sorted(got) == [bytes([i]) for i in range(6)]
    a.assert_no_message()
    b.assert_no_message()


def test_topic_alias_from_the_client(clients):
    topic = unique("alias")
    sub = clients()
    sub.subscribe(topic, qos=1)
    pub = clients()
    pub.publish(topic, b"first", qos=1, properties=props(PUBLISH, TopicAlias=1))
    pub.publish("", b"second", qos=1, properties=props(PUBLISH, TopicAlias=1))
    first = sub.next_message()
    second = sub.next_message()
    assert (first.topic, first.payload) == (topic, b"first")
    assert (second.topic, second.payload) == (topic, b"second")


def test_unsubscribe_reason_and_stop(clients):
    topic = unique("unsub")
    sub = clients()
    sub.subscribe(topic, qos=1)
    sub.unsubscribe(topic)
    pub = clients()
    pub.publish(topic, b"late", qos=1)
    sub.assert_no_message()


def test_will_with_delay_and_disconnect_with_will(clients):
    topic = unique("willv5")
    watcher = clients()
    watcher.subscribe(f"{topic}/#", qos=1)
    c = clients(will=dict(topic=f"{topic}/asked", payload=b"asked", qos=1))
    c.client.disconnect(reasoncode=mqtt.ReasonCode(PacketTypes.DISCONNECT, identifier=4))
    msg = watcher.next_message()
    assert (msg.topic, msg.payload) == (f"{topic}/asked", b"asked")
