//! AMQP 0-9-1 publishers and consumers for the bench, on [`BenchClient`].

use super::body::Stamp;
use super::client::{BenchClient, BenchReader, ClientError, CH};
use super::confirm::{self, Pending};
use super::live::{await_acks, finish_reader, write_goodbye, write_unless_stopped, Live, Pacer};
use super::record::Recorder;
use super::run::Task;
use super::{BenchError, Options};
use bytes::BytesMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use switchboard_amqp::*;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// Where an AMQP consumer takes messages from.
#[derive(Debug, Clone)]
pub enum Source {
    /// An existing queue, shared with other consumers.
    Queue(String),
    /// A private server-named queue bound to `exchange` with `key`.
    Bound { exchange: String, key: String },
}

/// Whether `arguments` declare a quorum queue.
fn is_quorum(arguments: &FieldTable) -> bool {
    arguments.get("x-queue-type").and_then(FieldValue::as_str) == Some("quorum")
}

/// Declares the queue of the publish → consume scenario and empties it.
pub async fn declare_queue(o: &Options, queue: &str) -> Result<(), BenchError> {
    let mut c = BenchClient::connect(o.amqp_addr, o.tls.as_ref(), &o.user, &o.password).await?;
    expect_ok(
        c.call(QueueDeclare {
            queue: queue.into(),
            // A quorum queue is always durable.
            durable: o.persistent || is_quorum(&o.queue_args),
            arguments: o.queue_args.clone(),
            ..Default::default()
        })
        .await?,
    )?;
    expect_ok(
        c.call(QueuePurge {
            queue: queue.into(),
            no_wait: false,
        })
        .await?,
    )?;
    Ok(())
}

/// Declares a fanout exchange (transient, kept: re-declaring it on the next run is a no-op).
pub async fn declare_fanout(o: &Options, exchange: &str) -> Result<(), BenchError> {
    let mut c = BenchClient::connect(o.amqp_addr, o.tls.as_ref(), &o.user, &o.password).await?;
    expect_ok(
        c.call(ExchangeDeclare {
            exchange: exchange.into(),
            kind: "fanout".into(),
            ..Default::default()
        })
        .await?,
    )?;
    Ok(())
}

/// A reply is what was asked for unless the broker closed the channel instead.
pub(super) fn expect_ok(m: Method) -> Result<Method, BenchError> {
    match m {
        Method::ChannelClose(c) => Err(BenchError::Refused(format!(
            "{} {}",
            c.reply_code, c.reply_text
        ))),
        m => Ok(m),
    }
}

/// Connects, subscribes, and consumes on a task until told to stop.
pub async fn start_consumer(
    o: &Options,
    source: &Source,
    recorder: Recorder,
    stop: watch::Receiver<bool>,
) -> Result<Task<Recorder>, BenchError> {
    let mut c = BenchClient::connect(o.amqp_addr, o.tls.as_ref(), &o.user, &o.password).await?;
    let queue = match source {
        Source::Queue(q) => q.clone(),
        Source::Bound { exchange, key } => {
            // Persistent runs need durable queues (exclusive ones are never stored); auto-delete
            // either way, so the queue goes with its consumer.
            let Method::QueueDeclareOk(ok) = expect_ok(
                c.call(QueueDeclare {
                    durable: o.persistent,
                    exclusive: !o.persistent,
                    auto_delete: true,
                    ..Default::default()
                })
                .await?,
            )?
            else {
                return Err(ClientError::Unexpected("expected queue.declare-ok").into());
            };
            expect_ok(
                c.call(QueueBind {
                    queue: ok.queue.clone(),
                    exchange: exchange.clone(),
                    routing_key: key.clone(),
                    ..Default::default()
                })
                .await?,
            )?;
            ok.queue
        }
    };
    if let Some(prefetch) = o.manual_ack {
        expect_ok(
            c.call(BasicQos {
                prefetch_size: 0,
                prefetch_count: prefetch,
                global: false,
            })
            .await?,
        )?;
    }
    expect_ok(
        c.call(BasicConsume {
            queue,
            no_ack: o.manual_ack.is_none(),
            ..Default::default()
        })
        .await?,
    )?;
    Ok(tokio::spawn(consume(
        c,
        recorder,
        o.manual_ack.is_some(),
        stop,
    )))
}

async fn consume(
    mut c: BenchClient,
    mut rec: Recorder,
    manual_ack: bool,
    mut stop: watch::Receiver<bool>,
) -> Result<Recorder, BenchError> {
    let mut frames = Vec::new();
    let mut acks = BytesMut::new();
    // A delivery's stamp is in its first body frame.
    let mut awaiting_body = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return Ok(rec),
            r = c.frames(&mut frames) => r?,
        }
        let mut last_tag = None;
        for f in frames.drain(..) {
            match f {
                Frame::Method {
                    method: Method::BasicDeliver(d),
                    ..
                } => {
                    last_tag = Some(d.delivery_tag);
                    awaiting_body = true;
                }
                Frame::Body { payload, .. } if awaiting_body => {
                    awaiting_body = false;
                    rec.record(&payload);
                }
                Frame::Method {
                    method: Method::ChannelClose(c),
                    ..
                } => {
                    return Err(BenchError::Refused(format!(
                        "{} {}",
                        c.reply_code, c.reply_text
                    )))
                }
                _ => {}
            }
        }
        if let Some(tag) = last_tag.filter(|_| manual_ack) {
            acks.clear();
            encode_method(
                &mut acks,
                CH,
                &BasicAck {
                    delivery_tag: tag,
                    multiple: true,
                }
                .into(),
            );
            c.wr.write_all(&acks).await?;
        }
        rec.flush().await;
    }
}

/// Connects (in confirm mode if asked) and publishes on a task until the run stops.
pub async fn start_publisher(
    o: &Options,
    exchange: &str,
    key: &str,
    id: u16,
    budget: u64,
    live: Arc<Live>,
) -> Result<Task<u64>, BenchError> {
    let mut c = BenchClient::connect(o.amqp_addr, o.tls.as_ref(), &o.user, &o.password).await?;
    if o.confirm_window.is_some() {
        expect_ok(c.call(ConfirmSelect { no_wait: false }).await?)?;
    }
    let method: Method = BasicPublish {
        exchange: exchange.into(),
        routing_key: key.into(),
        ..Default::default()
    }
    .into();
    let pacer = Pacer::new(budget, o.rate);
    Ok(tokio::spawn(publish(c, method, o.clone(), id, pacer, live)))
}

/// Reads what the broker sends a publisher: settles confirms (acks and nacks) in `pending`,
/// ends at `connection.close-ok` and fails on a `connection.close` or `channel.close` from the
/// broker.
async fn read_replies(
    mut rd: BenchReader,
    confirmed: Arc<AtomicU64>,
    wake: Arc<tokio::sync::Notify>,
    pending: Arc<Mutex<Pending>>,
    live: Arc<Live>,
) -> Result<(), BenchError> {
    let mut frames = Vec::new();
    loop {
        rd.frames(&mut frames).await?;
        for f in frames.drain(..) {
            let Frame::Method { method, .. } = f else {
                continue;
            };
            let (tag, nack) = match method {
                Method::BasicAck(a) => (a.delivery_tag, false),
                // A nack settles the message too (the broker will not confirm it): counted
                // apart, so a publisher's window does not wait for it forever.
                Method::BasicNack(n) => (n.delivery_tag, true),
                Method::ConnectionCloseOk(_) => return Ok(()),
                Method::ConnectionClose(c) => {
                    return Err(BenchError::Refused(format!(
                        "{} {}",
                        c.reply_code, c.reply_text
                    )))
                }
                Method::ChannelClose(c) => {
                    return Err(BenchError::Refused(format!(
                        "{} {}",
                        c.reply_code, c.reply_text
                    )))
                }
                _ => continue,
            };
            if let Ok(mut p) = pending.lock() {
                p.settle(tag, nack, live.now_ns(), live.killed_at_ns());
            }
            // Tags count from 1 and confirms only go forward; `multiple` covers all below.
            confirmed.fetch_max(tag, Ordering::Relaxed);
            wake.notify_one();
        }
    }
}

async fn publish(
    c: BenchClient,
    method: Method,
    o: Options,
    id: u16,
    mut pacer: Pacer,
    live: Arc<Live>,
) -> Result<u64, BenchError> {
    let (rd, mut wr, frame_max) = c.into_split();
    let confirmed = Arc::new(AtomicU64::new(0));
    let wake = Arc::new(tokio::sync::Notify::new());
    let pending =
        Arc::new(Mutex::new(Pending::new().map_err(|e| {
            BenchError::Options(format!("confirm latency histogram: {e}"))
        })?));
    let reader = tokio::spawn(read_replies(
        rd,
        confirmed.clone(),
        wake.clone(),
        pending.clone(),
        live.clone(),
    ));
    let window = o.confirm_window.map(u64::from);
    let props = BasicProperties {
        delivery_mode: o.persistent.then_some(2),
        ..Default::default()
    };
    let mut body = vec![0u8; o.size];
    let mut out = BytesMut::with_capacity(64 * 1024);
    while let Some(n) = pacer.next_batch(&live).await {
        if reader.is_finished() {
            break;
        }
        let Some(n) = pacer.fit_window(n, window, &confirmed, &wake).await else {
            continue;
        };
        out.clear();
        {
            // Held while the batch is encoded, so that its send times are queued before the
            // reader can see their confirms; not across the write.
            let mut queued = window.and_then(|_| pending.lock().ok());
            for i in 0..n {
                let sent_ns = live.now_ns();
                Stamp {
                    run: live.run,
                    publisher: id,
                    seq: (pacer.sent + i) as u32,
                    sent_ns,
                }
                .write(&mut body);
                encode_content(&mut out, CH, &method, &props, None, &body, frame_max);
                if let Some(p) = queued.as_mut() {
                    p.published(sent_ns);
                }
            }
        }
        if !write_unless_stopped(&mut wr, &out, &live).await? {
            break;
        }
        pacer.count_sent(&live, n);
    }
    if window.is_some() {
        await_acks(&confirmed, pacer.sent, &wake).await;
    }
    out.clear();
    encode_method(
        &mut out,
        0,
        &ConnectionClose {
            reply_code: 200,
            reply_text: "bench done".into(),
            class_id: 0,
            method_id: 0,
        }
        .into(),
    );
    if !write_goodbye(&mut wr, &out).await {
        reader.abort();
    }
    finish_reader(reader).await?;
    if window.is_some() {
        if let Ok(p) = pending.lock() {
            confirm::add_to(&live.confirms, &p.tally);
        }
    }
    Ok(pacer.sent)
}
