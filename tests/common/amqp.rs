//! lapin helpers shared by the AMQP integration tests: declaring, publishing, draining queues,
//! reading consumers with bounded waits and picking reply codes out of lapin errors.

use super::{bounded, WAIT};
use futures_lite::{Stream, StreamExt};
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer, Event};
use std::future::Future;
use std::time::Duration;

/// How long to wait for something that must NOT happen. Such a wait is expected to time out.
pub const QUIET: Duration = Duration::from_millis(200);

/// The reply code and text of an AMQP protocol error (channel or connection close).
pub fn amqp_error(e: &lapin::Error) -> Option<(u16, String)> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => Some((p.get_id(), p.get_message().to_string())),
        _ => None,
    }
}

/// Asserts that `result` failed with AMQP reply `code` and a reply text containing `text`.
#[track_caller]
pub fn assert_amqp_err<T: std::fmt::Debug>(result: lapin::Result<T>, code: u16, text: &str) {
    let err = result.expect_err("expected an AMQP error");
    let Some((got_code, got_text)) = amqp_error(&err) else {
        panic!("expected AMQP error {code}, got {err:?}");
    };
    assert_eq!(got_code, code, "reply code (text: {got_text})");
    assert!(
        got_text.contains(text),
        "reply text {got_text:?} lacks {text:?}"
    );
}

pub fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

/// Declares a plain (non-durable, non-exclusive) queue.
pub async fn declare(ch: &Channel, name: &str) -> lapin::Queue {
    bounded(ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("queue.declare")
}

pub async fn declare_exchange(ch: &Channel, name: &str, kind: lapin::ExchangeKind) {
    bounded(ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("exchange.declare");
}

pub async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    bind_args(ch, queue, exchange, key, FieldTable::default()).await;
}

pub async fn bind_args(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    bounded(ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        args,
    ))
    .await
    .expect("queue.bind");
}

pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    publish_with(ch, exchange, key, body, BasicProperties::default()).await;
}

pub async fn declare_durable_exchange(ch: &Channel, name: &str, kind: lapin::ExchangeKind) {
    bounded(ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("durable exchange.declare");
}

/// Publishes; returns the publisher confirm to wait for when `ch` is in confirm mode.
pub async fn publish_with(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> lapin::PublisherConfirm {
    bounded(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    ))
    .await
    .expect("basic.publish")
}

/// Publishes and ignores the outcome: for publishes meant to fail, whose channel may close
/// before lapin has finished sending them.
pub async fn publish_doomed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    let sent = bounded(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    ))
    .await;
    drop(sent);
}

/// Ready messages in `queue`, read with a passive declare (which also orders this after every
/// earlier method on `ch`).
pub async fn ready_count(ch: &Channel, queue: &str) -> u32 {
    bounded(ch.queue_declare(queue.into(), passive(), FieldTable::default()))
        .await
        .expect("passive queue.declare")
        .message_count()
}

pub async fn get(ch: &Channel, queue: &str, no_ack: bool) -> Option<BasicGetMessage> {
    bounded(ch.basic_get(queue.into(), BasicGetOptions { no_ack }))
        .await
        .expect("basic.get")
}

/// Every ready message's body, taken with `basic.get` (auto-ack) until the queue is empty.
pub async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue, true).await {
        out.push(text(&m.delivery));
    }
    out
}

pub fn text(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

pub async fn consume(ch: &Channel, queue: &str, no_ack: bool) -> Consumer {
    consume_with(
        ch,
        queue,
        "",
        BasicConsumeOptions {
            no_ack,
            ..Default::default()
        },
    )
    .await
}

pub async fn consume_with(
    ch: &Channel,
    queue: &str,
    tag: &str,
    options: BasicConsumeOptions,
) -> Consumer {
    bounded(ch.basic_consume(queue.into(), tag.into(), options, FieldTable::default()))
        .await
        .expect("basic.consume")
}

/// The consumer's next delivery; panics if the stream ends or fails, or after [`WAIT`].
pub async fn next(c: &mut Consumer) -> Delivery {
    match bounded(c.next()).await {
        Some(Ok(d)) => d,
        Some(Err(e)) => panic!("consumer failed: {e:?}"),
        None => panic!("consumer stream ended"),
    }
}

/// The next `n` deliveries' bodies.
pub async fn next_n(c: &mut Consumer, n: usize) -> Vec<Delivery> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next(c).await);
    }
    out
}

/// Asserts that nothing arrives on `c` for [`QUIET`]: this wait is expected to time out.
pub async fn assert_quiet(c: &mut Consumer) {
    if let Ok(got) = tokio::time::timeout(QUIET, c.next()).await {
        panic!("expected no delivery, got {got:?}");
    }
}

pub async fn ack(d: &Delivery) {
    assert!(
        bounded(d.acker.ack(BasicAckOptions::default()))
            .await
            .expect("basic.ack"),
        "acker already used"
    );
}

/// Waits for a connection event that satisfies `pick`.
pub async fn wait_event<T>(
    events: &mut (impl Stream<Item = Event> + Unpin),
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(ev) = events.next().await {
            if let Some(t) = pick(&ev) {
                return Some(t);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(t)) => t,
        Ok(None) => panic!("event stream ended before {what}"),
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Waits for an error event carrying AMQP reply `code`; returns its reply text.
pub async fn wait_error_event(
    events: &mut (impl Stream<Item = Event> + Unpin),
    code: u16,
) -> String {
    wait_event(
        events,
        &format!("an error event with code {code}"),
        |ev| match ev {
            Event::Error(e) => amqp_error(e).filter(|(c, _)| *c == code).map(|(_, t)| t),
            _ => None,
        },
    )
    .await
}

/// Runs `action`, a method without a reply (a publish, an ack), and returns the reply text of
/// the close with `code` that it provokes. The close is read from the connection's events,
/// which report it whatever the timing; a following synchronous method would see either that
/// error or merely "channel closed", depending on which came first.
pub async fn provoke(conn: &Connection, code: u16, action: impl Future<Output = ()>) -> String {
    let mut events = conn.events_listener();
    action.await;
    wait_error_event(&mut events, code).await
}

/// A queue-argument table from `(name, value)` pairs.
pub fn args(entries: &[(&str, lapin::types::AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// Declares a plain queue with arguments.
pub async fn declare_with_args(ch: &Channel, name: &str, arguments: FieldTable) -> lapin::Queue {
    bounded(ch.queue_declare(name.into(), QueueDeclareOptions::default(), arguments))
        .await
        .expect("queue.declare")
}

/// A long-string field value (queue arguments, headers).
pub fn longstr(v: &str) -> lapin::types::AMQPValue {
    lapin::types::AMQPValue::LongString(lapin::types::LongString::from(v))
}

pub fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

pub fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

pub async fn declare_durable(ch: &Channel, name: &str, args: FieldTable) {
    bounded(ch.queue_declare(name.into(), durable(), args))
        .await
        .expect("durable queue.declare");
}

pub async fn confirm_mode(ch: &Channel) {
    bounded(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
}

/// A new channel on `conn` in confirm mode.
pub async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = bounded(conn.create_channel()).await.expect("channel");
    confirm_mode(&ch).await;
    ch
}

/// Publishes on a confirm-mode channel and returns the broker's answer, ack or nack.
pub async fn publish_for_confirmation(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
) -> lapin::Confirmation {
    let pending = publish_with(ch, exchange, key, body, BasicProperties::default()).await;
    bounded(pending).await.expect("publisher confirm")
}

/// Publishes with confirms and waits for the broker's ack.
pub async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    let confirm = publish_with(ch, exchange, key, body, props).await;
    let c = bounded(confirm).await.expect("confirm");
    assert!(c.is_ack(), "publish was nacked");
}
