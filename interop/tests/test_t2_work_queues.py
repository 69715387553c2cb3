"""Tutorial 2 "Work Queues": new_task.py / worker.py as assertions.

Durable queue, persistent messages, prefetch_count=1 fair dispatch, manual
acks, redelivery of unacked messages, nack/reject with requeue.
"""

import pika

from helpers import get_message, message_count, pump, wait_for


class Worker:
    """worker.py: one connection, prefetch_count=1, manual ack."""

    def __init__(self, connect, queue, auto_ack_deliveries=True):
        self.conn = connect()
        self.ch = self.conn.channel()
        self.ch.queue_declare(queue=queue, durable=True)
        self.ch.basic_qos(prefetch_count=1)
        self.ack_immediately = auto_ack_deliveries
        self.deliveries = []  # (method, properties, body)
        self.tag = self.ch.basic_consume(queue=queue, on_message_callback=self._on_message)

    def _on_message(self, ch, method, properties, body):
        self.deliveries.append((method, properties, body))
        if self.ack_immediately:
            ch.basic_ack(delivery_tag=method.delivery_tag)

    @property
    def bodies(self):
        return [b for _, _, b in self.deliveries]


def new_task(ch, queue, body):
    ch.basic_publish(
        exchange="", routing_key=queue, body=body,
        properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))


def test_durable_queue_persistent_message(connection, names):
    queue = names.queue("task_queue")
    ch = connection.channel()
    ok = ch.queue_declare(queue=queue, durable=True)
    assert ok.method.queue == queue
    assert ok.method.message_count == 0
    # Redeclaring with the same arguments is fine.
    ch.queue_declare(queue=queue, durable=True)

    new_task(ch, queue, b"First message.")
    method, props, body = get_message(ch, queue)
    assert body == b"First message."
    assert props.delivery_mode == 2
    assert method.redelivered is False
    ch.basic_ack(delivery_tag=method.delivery_tag)
    assert message_count(ch, queue) == 0


def test_fair_dispatch_with_prefetch_one(connect, names):
    queue = names.queue("task_queue")
    publisher = connect()
    pch = publisher.channel()
    pch.queue_declare(queue=queue, durable=True)

    # A slow worker takes the first task and does not ack it.
    slow = Worker(connect, queue, auto_ack_deliveries=False)
    new_task(pch, queue, b"slow task.....")
    wait_for(slow.conn, lambda: slow.deliveries, "the slow worker's first task")
    assert slow.bodies == [b"slow task....."]

    # A fast worker joins; every further task must go to it.
    fast = Worker(connect, queue)
    tasks = [f"task {i}.".encode() for i in range(6)]
    for t in tasks:
        new_task(pch, queue, t)
    wait_for([slow.conn, fast.conn], lambda: len(fast.deliveries) == len(tasks),
             "the fast worker to get all tasks")
    assert fast.bodies == tasks
    assert slow.bodies == [b"slow task....."], "busy worker got more than prefetch_count"

    # With the fast worker gone, a new task waits in the queue: the slow one
    # still holds its unacked message and may not receive another.
    fast.ch.basic_cancel(fast.tag)
    new_task(pch, queue, b"last task.")
    pump([slow.conn, fast.conn], 0.5)
    assert slow.bodies == [b"slow task....."]
    assert message_count(pch, queue) == 1

    # Acking frees the prefetch slot: the waiting task is delivered.
    slow.ch.basic_ack(delivery_tag=slow.deliveries[0][0].delivery_tag)
    wait_for(slow.conn, lambda: len(slow.deliveries) == 2,
             "the slow worker's next task after its ack")
    assert slow.bodies[1] == b"last task."
    slow.ch.basic_ack(delivery_tag=slow.deliveries[1][0].delivery_tag)
    assert message_count(pch, queue) == 0


def test_prefetch_round_robin_between_acking_workers(connect, names):
    queue = names.queue("task_queue")
    w1 = Worker(connect, queue)
    w2 = Worker(connect, queue)
    publisher = connect()
    pch = publisher.channel()
    tasks = [f"task {i}".encode() for i in range(10)]
    for t in tasks:
        new_task(pch, queue, t)
    wait_for([w1.conn, w2.conn],
             lambda: len(w1.deliveries) + len(w2.deliveries) == len(tasks),
             "all tasks to be delivered")
    assert sorted(w1.bodies + w2.bodies) == sorted(tasks)
    # Each task once, and each worker's share is in publish order.
    assert w1.bodies == [t for t in tasks if t in w1.bodies]
    assert w2.bodies == [t for t in tasks if t in w2.bodies]
    assert w1.bodies and w2.bodies, "one worker got nothing"


def test_unacked_message_redelivered_when_worker_dies(connect, names):
    queue = names.queue("task_queue")
    publisher = connect()
    pch = publisher.channel()
    pch.queue_declare(queue=queue, durable=True)

    dying = Worker(connect, queue, auto_ack_deliveries=False)
    new_task(pch, queue, b"important task")
    wait_for(dying.conn, lambda: dying.deliveries, "the first delivery")
    first_method = dying.deliveries[0][0]
    assert first_method.redelivered is False

    other = Worker(connect, queue, auto_ack_deliveries=False)
    pump([other.conn], 0.2)
    assert other.deliveries == [], "message delivered twice while still unacked"

    dying.conn.close()  # dies without acking
    wait_for(other.conn, lambda: other.deliveries, "redelivery to the other worker")
    method, props, body = other.deliveries[0]
    assert body == b"important task"
    assert method.redelivered is True
    assert props.delivery_mode == 2
    other.ch.basic_ack(delivery_tag=method.delivery_tag)
    assert len(other.deliveries) == 1
    assert message_count(pch, queue) == 0


def test_unacked_message_requeued_when_channel_closes(connection, names):
    queue = names.queue("task_queue")
    ch = connection.channel()
    ch.queue_declare(queue=queue, durable=True)
    new_task(ch, queue, b"task")

    ch2 = connection.channel()
    method, _, body = get_message(ch2, queue)
    assert body == b"task" and method.redelivered is False
    ch2.close()

    method, _, body = get_message(ch, queue)
    assert body == b"task"
    assert method.redelivered is True
    ch.basic_ack(delivery_tag=method.delivery_tag)
    assert message_count(ch, queue) == 0


def test_nack_with_requeue_redelivers(connection, names):
    queue = names.queue("task_queue")
    ch = connection.channel()
    ch.queue_declare(queue=queue, durable=True)
    ch.basic_qos(prefetch_count=1)
    new_task(ch, queue, b"retry me")

    deliveries = []
    ch.basic_consume(queue=queue,
                     on_message_callback=lambda c, m, p, b: deliveries.append((m, b)))
    wait_for(connection, lambda: deliveries, "the first delivery")
    m1, b1 = deliveries[0]
    assert (b1, m1.redelivered) == (b"retry me", False)

    ch.basic_nack(delivery_tag=m1.delivery_tag, requeue=True)
    wait_for(connection, lambda: len(deliveries) == 2, "redelivery after nack")
    m2, b2 = deliveries[1]
    assert b2 == b"retry me"
    assert m2.redelivered is True
    assert m2.delivery_tag != m1.delivery_tag

    ch.basic_ack(delivery_tag=m2.delivery_tag)
    assert message_count(ch, queue) == 0


def test_reject_with_and_without_requeue(connection, names):
    queue = names.queue("task_queue")
    ch = connection.channel()
    ch.queue_declare(queue=queue, durable=True)
    new_task(ch, queue, b"reject me")

    method, _, _ = get_message(ch, queue)
    ch.basic_reject(delivery_tag=method.delivery_tag, requeue=True)
    method, _, body = get_message(ch, queue)
    assert body == b"reject me" and method.redelivered is True

    ch.basic_reject(delivery_tag=method.delivery_tag, requeue=False)
    # Dropped (no dead-letter exchange): the queue is empty for good.
    assert message_count(ch, queue) == 0
    assert ch.basic_get(queue=queue) == (None, None, None)


def test_nack_multiple_requeues_all_in_order(connection, names):
    queue = names.queue("task_queue")
    ch = connection.channel()
    ch.queue_declare(queue=queue, durable=True)
    bodies = [b"a", b"b", b"c"]
    for b in bodies:
        new_task(ch, queue, b)
    tags = []
    for b in bodies:
        method, _, body = get_message(ch, queue)
        assert body == b
        tags.append(method.delivery_tag)
    assert message_count(ch, queue) == 0

    ch.basic_nack(delivery_tag=tags[-1], multiple=True, requeue=True)
    again = []
    for _ in bodies:
        method, _, body = get_message(ch, queue)
        assert method.redelivered is True
        again.append(body)
        ch.basic_ack(delivery_tag=method.delivery_tag)
    # Requeued messages keep their original queue order.
    assert again == bodies
    assert message_count(ch, queue) == 0
