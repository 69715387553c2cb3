"""Tutorial 6 "RPC": rpc_server.py / rpc_client.py as assertions.

A Fibonacci RPC server on its own thread and connection; clients with an
exclusive callback queue (reply_to + correlation_id) and with direct
reply-to (amq.rabbitmq.reply-to).
"""

import threading
import time
import uuid

import pika
import pytest

from helpers import raises_channel_error, wait_for

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class RpcServer:
    """rpc_server.py, running on its own thread with its own connection."""

    def __init__(self, broker, queue):
        self.broker = broker
        self.queue = queue
        self.seen_reply_to = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="rpc-server", daemon=True)

    def __enter__(self):
        self._thread.start()
        if not self._ready.wait(timeout=15):
            raise AssertionError("RPC server did not start within 15s")
        self._raise_if_failed()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "RPC server thread did not stop"
        if exc[0] is None:
            self._raise_if_failed()

    def _raise_if_failed(self):
        if self._error is not None:
            raise AssertionError(f"RPC server failed: {self._error!r}") from self._error

    def _on_request(self, ch, method, props, body):
        self.seen_reply_to.append(props.reply_to)
        response = fib(int(body))
        ch.basic_publish(exchange="", routing_key=props.reply_to,
                         properties=pika.BasicProperties(correlation_id=props.correlation_id),
                         body=str(response))
        ch.basic_ack(delivery_tag=method.delivery_tag)

    def _run(self):
        conn = None
        try:
            conn = pika.BlockingConnection(self.broker.params())
            ch = conn.channel()
            ch.queue_declare(queue=self.queue)
            ch.basic_qos(prefetch_count=1)
            ch.basic_consume(queue=self.queue, on_message_callback=self._on_request)
            self._ready.set()
            while not self._stop.is_set():
                conn.process_data_events(time_limit=0.05)
        except BaseException as e:  # reported to the test thread
            self._error = e
            self._ready.set()
        finally:
            if conn is not None and conn.is_open:
                try:
                    conn.close()
                except Exception:
                    pass


class FibonacciRpcClient:
    """rpc_client.py: exclusive callback queue, correlation ids."""

    def __init__(self, connection, server_queue, direct_reply_to=False):
        self.connection = connection
        self.channel = connection.channel()
        self.server_queue = server_queue
        if direct_reply_to:
            self.callback_queue = DIRECT_REPLY_TO
        else:
            result = self.channel.queue_declare(queue="", exclusive=True)
            self.callback_queue = result.method.queue
        # For direct reply-to, consuming (auto-ack) must come before publishing.
        self.channel.basic_consume(queue=self.callback_queue,
                                   on_message_callback=self.on_response, auto_ack=True)
        self.responses = {}
        self.stray = []

    def on_response(self, ch, method, props, body):
        if props.correlation_id in self.responses:
            self.responses[props.correlation_id] = body
        else:
            self.stray.append((props.correlation_id, body))

    def send(self, n):
        corr_id = str(uuid.uuid4())
        self.responses[corr_id] = None
        self.channel.basic_publish(
            exchange="", routing_key=self.server_queue,
            properties=pika.BasicProperties(reply_to=self.callback_queue,
                                            correlation_id=corr_id),
            body=str(n))
        return corr_id

    def wait(self, corr_ids, timeout=10):
        wait_for(self.connection,
                 lambda: all(self.responses[c] is not None for c in corr_ids),
                 f"{len(corr_ids)} RPC response(s)", timeout=timeout)
        return [int(self.responses[c]) for c in corr_ids]

    def call(self, n):
        return self.wait([self.send(n)])[0]


@pytest.fixture
def rpc_queue(names):
    return names.queue("rpc_queue")


def test_rpc_with_callback_queue(broker, connection, rpc_queue):
    with RpcServer(broker, rpc_queue) as server:
        client = FibonacciRpcClient(connection, rpc_queue)
        assert client.callback_queue.startswith("amq.gen-")
        assert client.call(30) == 832040
        for n in (0, 1, 2, 10, 20):
            assert client.call(n) == fib(n)
        assert client.stray == []
        assert server.seen_reply_to == [client.callback_queue] * 6


def test_rpc_concurrent_calls_matched_by_correlation_id(broker, connect, rpc_queue):
    with RpcServer(broker, rpc_queue):
        clients = [FibonacciRpcClient(connect(), rpc_queue) for _ in range(2)]
        ns = list(range(15))
        pending = [(c, n, c.send(n)) for n in ns for c in clients]
        for c in clients:
            ids = [cid for cc, _, cid in pending if cc is c]
            assert c.wait(ids) == [fib(n) for n in ns]
            assert c.stray == []


def test_rpc_with_direct_reply_to(broker, connection, rpc_queue):
    with RpcServer(broker, rpc_queue) as server:
        client = FibonacciRpcClient(connection, rpc_queue, direct_reply_to=True)
        assert client.call(30) == 832040
        assert client.call(7) == 13
        assert client.stray == []
        # The broker hands the server a routable pseudo-queue name, not the
        # literal amq.rabbitmq.reply-to.
        assert len(server.seen_reply_to) == 2
        for reply_to in server.seen_reply_to:
            assert reply_to.startswith(DIRECT_REPLY_TO + "."), reply_to


def test_direct_reply_to_concurrent_clients(broker, connect, rpc_queue):
    with RpcServer(broker, rpc_queue) as server:
        clients = [FibonacciRpcClient(connect(), rpc_queue, direct_reply_to=True)
                   for _ in range(3)]
        pending = [(c, c.send(10 + i)) for i, c in enumerate(clients)]
        for i, (c, cid) in enumerate(pending):
            assert c.wait([cid]) == [fib(10 + i)]
            assert c.stray == []
        # Each client's channel gets its own reply address.
        assert len(set(server.seen_reply_to)) == 3


def test_direct_reply_to_requires_consumer_first(connection, rpc_queue):
    ch = connection.channel()
    ch.queue_declare(queue=rpc_queue)
    with raises_channel_error(406):
        ch.basic_publish(exchange="", routing_key=rpc_queue, body=b"1",
                         properties=pika.BasicProperties(reply_to=DIRECT_REPLY_TO))
        ch.basic_qos(prefetch_count=0)  # synchronous: surfaces the channel close
    assert connection.is_open
