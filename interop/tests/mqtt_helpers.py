"""paho-mqtt clients for the MQTT interop tests: callbacks feed queues, every wait is bounded."""

import queue
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WAIT = 10.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Paho:
    """A connected paho client. ``messages`` receives every PUBLISH."""

    def __init__(self, addr, client_id=None, protocol=mqtt.MQTTv311, clean=True,
                 username="guest", password="guest", will=None, properties=None,
                 expect_success=True, transport="tcp", tls=None):
        """``transport="websockets"`` speaks MQTT over WebSocket at /ws; ``tls``: the keyword
        arguments of paho's ``tls_set`` (CA, client certificate)."""
        self.messages = queue.Queue()
        self.connacks = queue.Queue()
        self.subacks = queue.Queue()
        self.unsubacks = queue.Queue()
        self.disconnects = queue.Queue()
        self.published = queue.Queue()
        self.protocol = protocol
        v5 = protocol == mqtt.MQTTv5
        kwargs = dict(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                      client_id=client_id if client_id is not None else unique("paho"),
                      protocol=protocol)
        if not v5:
            kwargs["clean_session"] = clean
        c = mqtt.Client(transport=transport, **kwargs)
        if transport == "websockets":
            c.ws_set_options(path="/ws")
        if tls is not None:
            c.tls_set(**tls)
        if username is not None:
            c.username_pw_set(username, password)
        if will is not None:
            c.will_set(**will)
        c.on_connect = lambda _c, _u, flags, rc, props: self.connacks.put((flags, rc, props))
        c.on_message = lambda _c, _u, msg: self.messages.put(msg)
        c.on_subscribe = lambda _c, _u, mid, rcs, props: self.subacks.put((mid, rcs))
        c.on_unsubscribe = lambda _c, _u, mid, rcs, props: self.unsubacks.put(mid)
        c.on_disconnect = lambda _c, _u, flags, rc, props: self.disconnects.put(rc)
        c.on_publish = lambda _c, _u, mid, rc, props: self.published.put(mid)
        self.client = c
        host, port = addr
        if v5:
            c.connect(host, port, keepalive=30, clean_start=clean, properties=properties)
        else:
            c.connect(host, port, keepalive=30)
        c.loop_start()
        self.flags, self.rc, self.connack_props = self.connacks.get(timeout=WAIT)
        if expect_success:
            assert not self.rc.is_failure, f"CONNACK {self.rc}"

    def subscribe(self, topic, qos=0, **kw):
        result, mid = self.client.subscribe(topic, qos, **kw)
        assert result == mqtt.MQTT_ERR_SUCCESS
        got_mid, rcs = self.subacks.get(timeout=WAIT)
        assert got_mid == mid
        return rcs

    def unsubscribe(self, topic):
        _, mid = self.client.unsubscribe(topic)
        assert self.unsubacks.get(timeout=WAIT) == mid

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(timeout=WAIT)
        assert info.is_published()

    def next_message(self, timeout=WAIT):
        return self.messages.get(timeout=timeout)

    def assert_no_message(self, wait=0.3):
        try:
            msg = self.messages.get(timeout=wait)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {msg.topic}: {msg.payload!r}")

    def drop(self):
        """Closes the socket without DISCONNECT (an abnormal loss)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def props(packet_type, **values) -> Properties:
    p = Properties(packet_type)
    for k, v in values.items():
        setattr(p, k, v)
    return p


PUBLISH = PacketTypes.PUBLISH
CONNECT = PacketTypes.CONNECT
SUBSCRIBE = PacketTypes.SUBSCRIBE
