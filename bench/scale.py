#!/usr/bin/env python3
"""Times creating and removing 1k / 10k / 100k of one kind of object on one broker, as a client
sees it (each request waits for its reply). Prints one JSON object per line:
{"broker", "kind", "n", "create_s", "remove_s"}, and with --pid the broker process's CPU
seconds (user + system, from /proc) for each phase as "create_cpu_s", "remove_cpu_s": on a
loaded machine the broker's own cost, which waiting for a core does not inflate. Run by
bench/scale.sh.

  scale.py BROKER --amqp HOST:PORT --mqtt HOST:PORT --sizes 1000,10000 --kinds bindings,queues
           [--pid PID]

Kinds: bindings (n bindings of one queue to amq.topic, then the queue deleted), queues (n
declared, then n deleted), consumers (n basic.consume on one queue, then the channel closed),
mqtt (one clean MQTT 3.1.1 session subscribing n filters, 500 per SUBSCRIBE, then DISCONNECT
and a reconnect with the same client id: remove_s is until that CONNACK), mqtt-one-packet (one
SUBSCRIBE naming n filters, then one UNSUBSCRIBE naming them all, while an MQTT QoS 0 bystander
on a topic of its own times its round trips: "bystander_max_ms" is its slowest in each phase)."""
import argparse
import json
import os
import socket
import struct
import time

import pika


def amqp_connection(addr):
    host, port = addr.rsplit(":", 1)
    params = pika.ConnectionParameters(
        host=host,
        port=int(port),
        credentials=pika.PlainCredentials("guest", "guest"),
        heartbeat=0,
        blocked_connection_timeout=600,
    )
    return pika.BlockingConnection(params)


def bindings(addr, n):
    conn = amqp_connection(addr)
    ch = conn.channel()
    q = ch.queue_declare("scale-bindings", auto_delete=False).method.queue
    t = now()
    for i in range(n):
        ch.queue_bind(q, "amq.topic", routing_key=f"k.{i}.*")
    created = now() - t
    t = now()
    ch.queue_delete(q)
    removed = now() - t
    conn.close()
    return created, removed


def queues(addr, n):
    conn = amqp_connection(addr)
    ch = conn.channel()
    t = now()
    for i in range(n):
        ch.queue_declare(f"scale-q-{i}")
    created = now() - t
    t = now()
    for i in range(n):
        ch.queue_delete(f"scale-q-{i}")
    removed = now() - t
    conn.close()
    return created, removed


def consumers(addr, n):
    conn = amqp_connection(addr)
    ch = conn.channel()
    ch.queue_declare("scale-consumers")
    t = now()
    for _ in range(n):
        ch.basic_consume("scale-consumers", lambda *a: None)
    created = now() - t
    t = now()
    ch.close()
    removed = now() - t
    ch = conn.channel()
    ch.queue_delete("scale-consumers")
    conn.close()
    return created, removed


# MQTT 3.1.1 packets written by hand: no client library's own per-subscription cost.
def mqtt_string(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def mqtt_length(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_packet(first, body):
    return bytes([first]) + mqtt_length(len(body)) + body


def mqtt_connect(addr, client_id):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=600)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Clean session, user name and password (guest/guest), keep alive 600 s.
    body = mqtt_string("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 600)
    body += mqtt_string(client_id) + mqtt_string("guest") + mqtt_string("guest")
    s.sendall(mqtt_packet(0x10, body))
    read_packet(s)
    return s


def read_exact(s, n):
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return bytes(out)


def read_packet(s):
    first = read_exact(s, 1)[0]
    length, shift = 0, 0
    while True:
        b = read_exact(s, 1)[0]
        length |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return first, read_exact(s, length)


def mqtt(addr, n):
    client_id = "scale-mqtt"
    s = mqtt_connect(addr, client_id)
    t = now()
    for p, start in enumerate(range(0, n, 500)):
        body = struct.pack("!H", p % 65535 + 1)
        for i in range(start, min(n, start + 500)):
            body += mqtt_string(f"dev/{i}/+/temp") + bytes([1])
        s.sendall(mqtt_packet(0x82, body))
        first, _ = read_packet(s)
        assert first >> 4 == 9, "SUBACK"
    created = now() - t
    t = now()
    s.sendall(mqtt_packet(0xE0, b""))
    s.close()
    mqtt_connect(addr, client_id).close()
    removed = now() - t
    return created, removed


def bystander(addr, stop, rtts):
    """An MQTT QoS 0 publisher and subscriber on a topic of its own: round trips (seconds) into
    `rtts` until `stop` is set."""
    s = mqtt_connect(addr, "scale-bystander")
    s.settimeout(30)
    s.sendall(mqtt_packet(0x82, struct.pack("!H", 1) + mqtt_string("bystander/rtt") + bytes([0])))
    read_packet(s)
    while not stop.is_set():
        t = time.monotonic()
        s.sendall(mqtt_packet(0x30, mqtt_string("bystander/rtt") + b"x"))
        first, _ = read_packet(s)
        assert first >> 4 == 3, "PUBLISH"
        rtts.append(time.monotonic() - t)
        time.sleep(0.001)
    s.close()


def mqtt_one_packet(addr, n):
    """One SUBSCRIBE naming n filters, then one UNSUBSCRIBE naming them all, while a bystander
    times its round trips: the slowest during each phase goes into the row."""
    import threading
    stop, rtts = threading.Event(), []
    by = threading.Thread(target=bystander, args=(addr, stop, rtts))
    by.start()
    time.sleep(0.5)
    s = mqtt_connect(addr, "scale-mqtt-one-packet")
    filters = b"".join(mqtt_string(f"dev/{i}/+/temp") + bytes([1]) for i in range(n))
    unsub = b"".join(mqtt_string(f"dev/{i}/+/temp") for i in range(n))
    phases = []
    for first, body in ((0x82, filters), (0xA2, unsub)):
        start = len(rtts)
        t = now()
        s.sendall(mqtt_packet(first, struct.pack("!H", 1) + body))
        read_packet(s)
        phases.append(now() - t)
        time.sleep(0.05)
        BYSTANDER_MAX_MS.append(round(max(rtts[start:] or [0]) * 1000, 1))
    s.sendall(mqtt_packet(0xE0, b""))
    s.close()
    stop.set()
    by.join()
    return phases[0], phases[1]


# Slowest bystander round trip (ms) of each phase of the current mqtt-one-packet run.
BYSTANDER_MAX_MS = []


def cpu_seconds(pid):
    """User + system CPU seconds process `pid` has used (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces; the fields after it are space-separated.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The broker's process (--pid), and its CPU seconds at each now() of the current run.
BROKER_PID = None
CPU_READINGS = []


def now():
    """The wall clock for timing a phase; with --pid, records the broker's CPU time too."""
    if BROKER_PID:
        CPU_READINGS.append(cpu_seconds(BROKER_PID))
    return time.monotonic()


def cpu_phases():
    """CPU seconds of the create and remove phases (readings: start, end, start, end)."""
    r = CPU_READINGS
    if len(r) != 4:
        return {}
    return {"create_cpu_s": round(r[1] - r[0], 3), "remove_cpu_s": round(r[3] - r[2], 3)}


KINDS = {"bindings": bindings, "queues": queues, "consumers": consumers, "mqtt": mqtt,
         "mqtt-one-packet": mqtt_one_packet}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("broker")
    ap.add_argument("--amqp")
    ap.add_argument("--mqtt")
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--kinds", default="bindings,queues,consumers,mqtt")
    ap.add_argument("--pid", type=int, help="the broker's process, to report its CPU time")
    a = ap.parse_args()
    global BROKER_PID
    BROKER_PID = a.pid
    for kind in a.kinds.split(","):
        addr = a.mqtt if kind.startswith("mqtt") else a.amqp
        if not addr:
            continue
        for n in map(int, a.sizes.split(",")):
            CPU_READINGS.clear()
            BYSTANDER_MAX_MS.clear()
            created, removed = KINDS[kind](addr, n)
            row = {"broker": a.broker, "kind": kind, "n": n,
                   "create_s": round(created, 3), "remove_s": round(removed, 3)}
            row.update(cpu_phases())
            if BYSTANDER_MAX_MS:
                row["bystander_max_ms"] = BYSTANDER_MAX_MS[:]
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
