//! Crash suite, every protocol at once: while AMQP (confirmed persistent publishes), MQTT
//! (QoS 1 and 2 to persistent sessions offline and online, retained messages set and cleared)
//! and STOMP (persistent SENDs with receipts to a queue and to a durable topic subscription)
//! run, the broker binary is killed with SIGKILL, then restarted on the same data directory.
//! Checked after each restart: every acknowledged message is there, in order per publisher and
//! queue; nothing the MQTT subscriber settled comes back; the persistent sessions and the
//! acknowledged retained messages are present. Repeated at many kill points (the AMQP
//! consumer's acks are in tests/store_crash.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use bytes::BytesMut;
use common::mqtt::{connect_packet, publish_packet, RawMqtt};
use common::process::BrokerProcess;
use common::stomp::StompClient;
use common::{fresh_data_dir, WAIT};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, ConnectionProperties};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_mqtt::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const AMQP_QUEUE: &str = "crash-aq";
const STOMP_QUEUE: &str = "crash-sq";
const STOMP_TOPIC: &str = "/topic/crash.t";
const STOMP_SUB: &str = "crash-dsub";
const RETAINED_TOPICS: u64 = 4;
/// How long a subscriber listens after the last message to be sure nothing more comes.
const QUIET: Duration = Duration::from_millis(400);

/// What the clients saw acknowledged before the kill.
#[derive(Default)]
struct Seen {
    /// Acknowledged operations of every driver (what the kill point counts).
    acked: usize,
    /// QoS 1 to the offline session `crash-off1`: PUBACK'd sequence numbers.
    off1: BTreeSet<u64>,
    /// QoS 2 to the offline session `crash-off2`: PUBREC'd.
    off2: BTreeSet<u64>,
    /// QoS 2 to the online session `crash-on`: PUBREC'd to the publisher, received by the
    /// subscriber, and settled (the subscriber got the PUBREL).
    on_acked: BTreeSet<u64>,
    on_received: BTreeSet<u64>,
    on_settled: BTreeSet<u64>,
    /// Retained topic → (last acknowledged value, None for cleared; value of the publish in
    /// flight, if one is).
    retained: BTreeMap<String, (Option<String>, Option<Option<String>>)>,
    stomp_queue: BTreeSet<u64>,
    stomp_topic: BTreeSet<u64>,
    amqp: BTreeSet<u64>,
}

type Shared = Arc<Mutex<Seen>>;

fn note(seen: &Shared, f: impl FnOnce(&mut Seen)) {
    let mut s = seen.lock().expect("seen");
    s.acked += 1;
    f(&mut s);
}

/// An MQTT client that gives up quietly (None) when the broker is gone.
struct Wire {
    stream: TcpStream,
    buf: BytesMut,
}

impl Wire {
    async fn connect(addr: SocketAddr, client_id: &str, clean: bool) -> Option<(Wire, ConnAck)> {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
        let mut w = Wire {
            stream,
            buf: BytesMut::new(),
        };
        let connect = connect_packet(Protocol::V311, client_id, clean);
        w.send(&Packet::Connect(Box::new(connect))).await?;
        match w.recv(WAIT).await? {
            Packet::ConnAck(a) if a.code == 0 => Some((w, a)),
            _ => None,
        }
    }

    async fn send(&mut self, p: &Packet) -> Option<()> {
        let mut out = BytesMut::new();
        encode(p, Protocol::V311, &mut out).ok()?;
        tokio::time::timeout(WAIT, self.stream.write_all(&out))
            .await
            .ok()?
            .ok()
    }

    /// The next packet within `wait`; None on timeout, close or error.
    async fn recv(&mut self, wait: Duration) -> Option<Packet> {
        loop {
            if let Some(p) = decode(&mut self.buf, Protocol::V311, usize::MAX).ok()? {
                return Some(p);
            }
            let n = tokio::time::timeout(wait, self.stream.read_buf(&mut self.buf))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Publishes and waits for its PUBACK or PUBREC.
    async fn publish(&mut self, p: Publish) -> Option<()> {
        let id = p.packet_id;
        self.send(&Packet::Publish(p)).await?;
        loop {
            match self.recv(WAIT).await? {
                Packet::PubAck(a) | Packet::PubRec(a) if Some(a.packet_id) == id => return Some(()),
                _ => {}
            }
        }
    }

    /// Releases an inbound QoS 2 publish and waits for PUBCOMP.
    async fn release(&mut self, id: u16) -> Option<()> {
        self.send(&Packet::PubRel(PubResponse::new(id))).await?;
        loop {
            if let Packet::PubComp(a) = self.recv(WAIT).await? {
                if a.packet_id == id {
                    return Some(());
                }
            }
        }
    }
}

fn packet_id(seq: u64) -> u16 {
    (seq % 60_000) as u16 + 1
}

fn seq_of(payload: &[u8]) -> u64 {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("a sequence number")
}

/// QoS 1 to `off/`, QoS 2 to `off2/` and `on/`, one at a time.
async fn mqtt_publisher(addr: SocketAddr, seen: Shared) -> Option<()> {
    let (mut w, _) = Wire::connect(addr, "crash-pub", true).await?;
    for seq in 0u64.. {
        let body = seq.to_string();
        let id = packet_id(seq);
        w.publish(publish_packet(
            &format!("off/{seq}"),
            QoS::AtLeastOnce,
            id,
            body.as_bytes(),
        ))
        .await?;
        note(&seen, |s| {
            s.off1.insert(seq);
        });
        for (prefix, online) in [("off2", false), ("on", true)] {
            let topic = format!("{prefix}/{seq}");
            w.publish(publish_packet(
                &topic,
                QoS::ExactlyOnce,
                id,
                body.as_bytes(),
            ))
            .await?;
            note(&seen, |s| {
                if online {
                    s.on_acked.insert(seq);
                } else {
                    s.off2.insert(seq);
                }
            });
            w.release(id).await?;
        }
    }
    Some(())
}

/// The online persistent session: takes QoS 2 messages through PUBREC and PUBCOMP.
async fn mqtt_online_subscriber(addr: SocketAddr, seen: Shared) -> Option<()> {
    let (mut w, _) = Wire::connect(addr, "crash-on", false).await?;
    let mut by_id = HashMap::new();
    loop {
        match w.recv(WAIT).await? {
            Packet::Publish(p) => {
                let seq = seq_of(&p.payload);
                let id = p.packet_id?;
                seen.lock().expect("seen").on_received.insert(seq);
                by_id.insert(id, seq);
                w.send(&Packet::PubRec(PubResponse::new(id))).await?;
            }
            Packet::PubRel(r) => {
                if let Some(seq) = by_id.remove(&r.packet_id) {
                    seen.lock().expect("seen").on_settled.insert(seq);
                }
                w.send(&Packet::PubComp(PubResponse::new(r.packet_id)))
                    .await?;
            }
            _ => {}
        }
    }
}

/// Sets and clears retained messages on a few topics, one at a time.
async fn mqtt_retainer(addr: SocketAddr, seen: Shared) -> Option<()> {
    let (mut w, _) = Wire::connect(addr, "crash-ret", true).await?;
    for op in 0u64.. {
        let topic = format!("ret/{}", op % RETAINED_TOPICS);
        let value = (op % 5 != 4).then(|| format!("v{op}"));
        seen.lock()
            .expect("seen")
            .retained
            .entry(topic.clone())
            .or_default()
            .1 = Some(value.clone());
        let payload = value.clone().unwrap_or_default();
        let p = Publish {
            retain: true,
            ..publish_packet(&topic, QoS::AtLeastOnce, packet_id(op), payload.as_bytes())
        };
        w.publish(p).await?;
        note(&seen, |s| {
            s.retained.insert(topic, (value, None));
        });
    }
    Some(())
}

/// A STOMP client that gives up quietly when the broker is gone: persistent SENDs to `dest`,
/// one receipt at a time.
async fn stomp_sender(addr: SocketAddr, dest: &str, seen: Shared) -> Option<()> {
    use switchboard_stomp::{encode, Command, Decoder, Frame, Limits, Version};
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let mut buf = BytesMut::new();
    let mut decoder = Decoder::new();
    // Frame 0 is the CONNECT; frame n + 1 sends sequence number n.
    for n in 0u64.. {
        let frame = match n.checked_sub(1) {
            None => Frame::new(Command::Connect)
                .with("accept-version", "1.2")
                .with("host", "/")
                .with("login", "guest")
                .with("passcode", "guest"),
            Some(seq) => Frame::new(Command::Send)
                .with("destination", dest)
                .with("persistent", "true")
                .with("receipt", seq.to_string())
                .with_body(seq.to_string().into_bytes()),
        };
        let mut out = BytesMut::new();
        encode(&frame, Version::V1_2, &mut out);
        tokio::time::timeout(WAIT, stream.write_all(&out))
            .await
            .ok()?
            .ok()?;
        let answer = loop {
            switchboard_stomp::skip_heartbeats(&mut buf);
            if let Some(f) = decoder
                .decode(&mut buf, Version::V1_2, &Limits::default())
                .ok()?
            {
                break f;
            }
            let read = tokio::time::timeout(WAIT, stream.read_buf(&mut buf))
                .await
                .ok()?
                .ok()?;
            if read == 0 {
                return None;
            }
        };
        match answer.command {
            Command::Connected if n == 0 => {}
            Command::Receipt if n > 0 => {
                let seq = n - 1;
                note(&seen, |s| {
                    if dest == STOMP_TOPIC {
                        s.stomp_topic.insert(seq)
                    } else {
                        s.stomp_queue.insert(seq)
                    };
                });
            }
            _ => return None,
        }
    }
    Some(())
}

async fn amqp_connect(addr: SocketAddr) -> Option<lapin::Connection> {
    tokio::time::timeout(
        WAIT,
        lapin::Connection::connect(
            &format!("amqp://guest:guest@{addr}/%2f"),
            ConnectionProperties::default(),
        ),
    )
    .await
    .ok()?
    .ok()
}

/// Confirmed persistent publishes, one at a time.
async fn amqp_publisher(addr: SocketAddr, seen: Shared) -> Option<()> {
    let conn = amqp_connect(addr).await?;
    let ch = conn.create_channel().await.ok()?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .ok()?;
    for seq in 0u64.. {
        let confirm = ch
            .basic_publish(
                "".into(),
                AMQP_QUEUE.into(),
                BasicPublishOptions::default(),
                seq.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .ok()?;
        let c = tokio::time::timeout(WAIT, confirm).await.ok()?.ok()?;
        if !c.is_ack() {
            return None;
        }
        note(&seen, |s| {
            s.amqp.insert(seq);
        });
    }
    Some(())
}

/// The sessions, queues and subscriptions the traffic goes to, made before it starts.
async fn set_up(b: &BrokerProcess) {
    for (client, filter, qos) in [
        ("crash-off1", "off/#", QoS::AtLeastOnce),
        ("crash-off2", "off2/#", QoS::ExactlyOnce),
        ("crash-on", "on/#", QoS::ExactlyOnce),
    ] {
        let mut c = RawMqtt::connect(b.mqtt, Protocol::V311, client, false).await;
        c.subscribe(filter, qos).await;
        c.send(&Packet::Disconnect(Disconnect::default())).await;
        assert!(c.closed().await.is_none());
    }
    let mut s = StompClient::connect(b.stomp, "1.2").await;
    s.subscribe_with(
        STOMP_SUB,
        STOMP_TOPIC,
        "client",
        &[("durable", "true"), ("auto-delete", "false")],
    )
    .await;
    s.disconnect().await;
    let conn = amqp_connect(b.amqp).await.expect("AMQP connect");
    let ch = conn.create_channel().await.expect("channel");
    for q in [AMQP_QUEUE, STOMP_QUEUE] {
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("durable queue.declare");
    }
}

/// Every message of `queue`, in order, taken with basic.get.
async fn drain(ch: &lapin::Channel, queue: &str) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(m) = tokio::time::timeout(
        WAIT,
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("basic.get in time")
    .expect("basic.get")
    {
        out.push(seq_of(&m.delivery.data));
    }
    out
}

fn assert_increasing(what: &str, got: &[u64]) {
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "{what}: out of order or repeated: {got:?}"
    );
}

fn assert_kept(what: &str, acked: &BTreeSet<u64>, got: &[u64]) {
    let got: BTreeSet<u64> = got.iter().copied().collect();
    let lost: Vec<&u64> = acked.difference(&got).collect();
    assert!(lost.is_empty(), "{what}: acknowledged and lost: {lost:?}");
}

/// Reconnects a persistent session (it must be present) and takes what it is sent, completing
/// QoS 1 and 2 flows, until nothing more comes.
async fn collect_session(addr: SocketAddr, client: &str) -> Vec<u64> {
    let (mut w, ack) = Wire::connect(addr, client, false)
        .await
        .expect("reconnect after the restart");
    assert!(ack.session_present, "{client}: session lost in the crash");
    let mut got = Vec::new();
    while let Some(p) = w.recv(QUIET).await {
        match p {
            Packet::Publish(p) => {
                got.push(seq_of(&p.payload));
                let id = p.packet_id.expect("QoS 1 or 2");
                let ack = match p.qos {
                    QoS::ExactlyOnce => Packet::PubRec(PubResponse::new(id)),
                    _ => Packet::PubAck(PubResponse::new(id)),
                };
                w.send(&ack).await.expect("ack");
            }
            Packet::PubRel(r) => {
                w.send(&Packet::PubComp(PubResponse::new(r.packet_id)))
                    .await
                    .expect("PUBCOMP");
            }
            other => panic!("{client}: unexpected {other:?}"),
        }
    }
    got
}

/// The retained messages a new subscriber to `ret/#` gets.
async fn collect_retained(addr: SocketAddr) -> BTreeMap<String, String> {
    let (mut w, _) = Wire::connect(addr, "crash-check-ret", true)
        .await
        .expect("connect after the restart");
    let subscribe = Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        subscriptions: vec![Subscription {
            filter: "ret/#".into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
    };
    w.send(&Packet::Subscribe(subscribe))
        .await
        .expect("SUBSCRIBE");
    let mut got = BTreeMap::new();
    while let Some(p) = w.recv(QUIET).await {
        if let Packet::Publish(p) = p {
            assert!(p.retain);
            let text = String::from_utf8(p.payload.to_vec()).expect("text");
            got.insert(p.topic, text);
            if let Some(id) = p.packet_id {
                w.send(&Packet::PubAck(PubResponse::new(id))).await;
            }
        }
    }
    got
}

async fn check(b: &BrokerProcess, seen: &Seen) {
    let off1 = collect_session(b.mqtt, "crash-off1").await;
    assert_kept("MQTT QoS 1 to an offline session", &seen.off1, &off1);
    assert_increasing("MQTT QoS 1 to an offline session", &off1);
    let off2 = collect_session(b.mqtt, "crash-off2").await;
    assert_kept("MQTT QoS 2 to an offline session", &seen.off2, &off2);
    assert_increasing("MQTT QoS 2 to an offline session", &off2);
    let on = collect_session(b.mqtt, "crash-on").await;
    let mut had: Vec<u64> = seen.on_received.iter().copied().collect();
    had.extend(&on);
    assert_kept("MQTT QoS 2 to an online session", &seen.on_acked, &had);
    assert_increasing("MQTT QoS 2 to an online session, after the restart", &on);
    let back: Vec<&u64> = on.iter().filter(|s| seen.on_settled.contains(s)).collect();
    assert!(back.is_empty(), "settled MQTT messages came back: {back:?}");

    let retained = collect_retained(b.mqtt).await;
    for (topic, (acked, in_flight)) in &seen.retained {
        let now = retained.get(topic).cloned();
        assert!(
            now == *acked || Some(&now) == in_flight.as_ref(),
            "retained {topic}: {now:?}, acknowledged {acked:?}, in flight {in_flight:?}"
        );
    }

    let conn = amqp_connect(b.amqp).await.expect("AMQP after the restart");
    let ch = conn.create_channel().await.expect("channel");
    let amqp = drain(&ch, AMQP_QUEUE).await;
    assert_kept("AMQP confirmed", &seen.amqp, &amqp);
    assert_increasing("AMQP confirmed", &amqp);
    let stomp = drain(&ch, STOMP_QUEUE).await;
    assert_kept("STOMP receipted to a queue", &seen.stomp_queue, &stomp);
    assert_increasing("STOMP receipted to a queue", &stomp);
    let sub_queue = switchboard::adapter::stomp::destination::durable_subscription_queue(
        STOMP_TOPIC,
        STOMP_SUB,
    );
    let topic = drain(&ch, &sub_queue).await;
    assert_kept(
        "STOMP durable topic subscription",
        &seen.stomp_topic,
        &topic,
    );
    assert_increasing("STOMP durable topic subscription", &topic);
}

/// One round: traffic until `kill_after` operations were acknowledged, SIGKILL, restart, check.
async fn crash_round(kill_after: usize) {
    let dir = fresh_data_dir();
    let broker = BrokerProcess::spawn(&dir);
    set_up(&broker).await;
    let seen: Shared = Arc::default();
    let (amqp, mqtt, stomp) = (broker.amqp, broker.mqtt, broker.stomp);
    let tasks = vec![
        tokio::spawn(mqtt_online_subscriber(mqtt, seen.clone())),
        tokio::spawn(mqtt_publisher(mqtt, seen.clone())),
        tokio::spawn(mqtt_retainer(mqtt, seen.clone())),
        tokio::spawn(stomp_sender(stomp, "/queue/crash-sq", seen.clone())),
        tokio::spawn(stomp_sender(stomp, STOMP_TOPIC, seen.clone())),
        tokio::spawn(amqp_publisher(amqp, seen.clone())),
    ];
    broker
        .kill_at(kill_after, || seen.lock().expect("seen").acked, tasks)
        .await;
    let seen = std::mem::take(&mut *seen.lock().expect("seen"));
    let broker = BrokerProcess::spawn(&dir);
    check(&broker, &seen).await;
    eprintln!(
        "kill after {kill_after}: MQTT {}+{}+{} ({} settled online), retained {}, STOMP {}+{}, AMQP {}",
        seen.off1.len(),
        seen.off2.len(),
        seen.on_acked.len(),
        seen.on_settled.len(),
        seen.retained.len(),
        seen.stomp_queue.len(),
        seen.stomp_topic.len(),
        seen.amqp.len()
    );
    drop(broker);
    std::fs::remove_dir_all(&dir).ok();
}

/// Kill points: after this many acknowledged operations (summed over every client).
const EARLY: [usize; 6] = [1, 4, 9, 16, 25, 40];
const MIDDLE: [usize; 6] = [60, 85, 110, 140, 175, 215];
const LATE: [usize; 6] = [260, 310, 370, 440, 520, 620];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_killed_early() {
    for k in EARLY {
        crash_round(k).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_killed_mid_run() {
    for k in MIDDLE {
        crash_round(k).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_killed_late() {
    for k in LATE {
        crash_round(k).await;
    }
}
