//! MQTT 3.1.1 / 5 publishers and subscribers for the bench, on the `switchboard_mqtt` codec.
//! QoS 1 and 2 publishers keep a window of unacknowledged packets; subscribers answer PUBACK,
//! PUBREC and PUBCOMP in one write per read.

use super::body::Stamp;
use super::live::{await_acks, write_unless_stopped, Live, Pacer};
use super::record::Recorder;
use super::run::Task;
use super::{BenchError, Options};
use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchboard_mqtt::{
    decode, encode, Connect, Packet, Properties, Protocol, PubResponse, Publish, QoS, Subscribe,
    Subscription, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Mutex};

/// Largest packet the bench accepts from a broker (bodies are at most a few MiB).
const MAX_PACKET: usize = 64 * 1024 * 1024;

/// Unacknowledged QoS 1/2 publishes per publisher unless `--confirm` says otherwise (packet
/// ids are 16-bit, so the window must stay well below 65535). MQTT 3 has no way to learn the
/// broker's limit, and brokers close connections that exceed theirs (Switchboard's
/// `receive_maximum` is 128 by default), so this stays below it; a v5 broker's Receive
/// Maximum from CONNACK lowers it further.
pub const DEFAULT_WINDOW: u32 = 100;
const MAX_WINDOW: u32 = 30_000;

use super::transport::{self, ReadHalf, WriteHalf};

/// The read side of an MQTT connection.
pub struct Reader {
    rd: ReadHalf,
    buf: BytesMut,
    version: Protocol,
    /// The broker's Receive Maximum (v5 CONNACK): QoS 1/2 publishes it accepts unacknowledged.
    receive_maximum: Option<u16>,
}

impl Reader {
    /// Every complete packet buffered now, reading once if none is.
    pub async fn packets(&mut self, out: &mut Vec<Packet>) -> Result<(), BenchError> {
        out.clear();
        loop {
            while let Some(p) = decode(&mut self.buf, self.version, MAX_PACKET)
                .map_err(|e| BenchError::Protocol(e.to_string()))?
            {
                out.push(p);
            }
            if !out.is_empty() {
                return Ok(());
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Err(BenchError::Closed);
            }
        }
    }
}

fn encode_into(p: &Packet, version: Protocol, out: &mut BytesMut) -> Result<(), BenchError> {
    encode(p, version, out).map_err(|e| BenchError::Protocol(e.to_string()))
}

/// Connects with a clean session (`--persistent`: a session the broker keeps, 5 minutes past
/// the connection in v5) and no keep-alive (bench connections are never idle long enough to
/// need one, and `--connections` measures memory, not pings).
pub async fn connect(o: &Options, client_id: String) -> Result<(Reader, WriteHalf), BenchError> {
    let (rd, mut wr) = open(o).await?;
    let version = o.mqtt_version;
    let mut reader = Reader {
        rd,
        buf: BytesMut::with_capacity(if o.size > 0 { 64 * 1024 } else { 256 }),
        version,
        receive_maximum: None,
    };
    let mut properties = Properties::default();
    if version.is_v5() {
        properties.receive_maximum = Some(u16::MAX);
        if o.persistent {
            properties.session_expiry_interval = Some(300);
        }
    }
    let connect = Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start: !o.persistent,
        keep_alive: o.mqtt_keep_alive,
        client_id,
        will: None,
        username: Some(o.user.clone()),
        password: Some(Bytes::from(o.password.clone().into_bytes())),
        properties,
    }));
    let mut out = BytesMut::new();
    encode_into(&connect, version, &mut out)?;
    wr.write_all(&out).await?;
    let mut packets = Vec::new();
    reader.packets(&mut packets).await?;
    match packets.first() {
        Some(Packet::ConnAck(ack)) if ack.code == 0 => {
            reader.receive_maximum = ack.properties.receive_maximum;
            Ok((reader, wr))
        }
        Some(Packet::ConnAck(ack)) => Err(BenchError::Refused(format!(
            "CONNACK code {:#04x}",
            ack.code
        ))),
        _ => Err(BenchError::Protocol("expected CONNACK".into())),
    }
}

/// A TCP connection (TLS with `--tls`), upgraded to a WebSocket at `/ws` (subprotocol `mqtt`)
/// with `--ws`.
async fn open(o: &Options) -> Result<(ReadHalf, WriteHalf), BenchError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    if !o.mqtt_ws {
        return Ok(transport::connect_split(o.mqtt_addr, o.tls.as_ref()).await?);
    }
    let sock = transport::connect(o.mqtt_addr, o.tls.as_ref()).await?;
    let scheme = if o.tls.is_some() { "wss" } else { "ws" };
    let mut request = format!("{scheme}://{}/ws", o.mqtt_addr).into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    let (ws, _) = tokio_tungstenite::client_async(request, sock).await?;
    let (rd, wr) = tokio::io::split(crate::net::websocket::WsBytes::from(ws));
    Ok((Box::new(rd), Box::new(wr)))
}

/// Subscribes to `filter` and waits for the SUBACK.
pub async fn subscribe(
    reader: &mut Reader,
    wr: &mut WriteHalf,
    filter: &str,
    qos: QoS,
) -> Result<(), BenchError> {
    let sub = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        subscriptions: vec![Subscription {
            filter: filter.into(),
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
        }],
    });
    let mut out = BytesMut::new();
    encode_into(&sub, reader.version, &mut out)?;
    wr.write_all(&out).await?;
    let mut packets = Vec::new();
    reader.packets(&mut packets).await?;
    match packets.first() {
        Some(Packet::SubAck(ack)) if ack.codes.iter().all(|c| *c <= 2) => Ok(()),
        Some(Packet::SubAck(ack)) => {
            Err(BenchError::Refused(format!("SUBACK codes {:?}", ack.codes)))
        }
        _ => Err(BenchError::Protocol("expected SUBACK".into())),
    }
}

/// Connects, subscribes, and consumes on a task until told to stop.
pub async fn start_consumer(
    o: &Options,
    topic: &str,
    client_id: String,
    recorder: Recorder,
    stop: watch::Receiver<bool>,
) -> Result<Task<Recorder>, BenchError> {
    let (mut rd, mut wr) = connect(o, client_id).await?;
    subscribe(&mut rd, &mut wr, topic, o.qos).await?;
    Ok(tokio::spawn(consume(rd, wr, recorder, stop)))
}

async fn consume(
    mut rd: Reader,
    mut wr: WriteHalf,
    mut rec: Recorder,
    mut stop: watch::Receiver<bool>,
) -> Result<Recorder, BenchError> {
    let version = rd.version;
    let mut packets = Vec::new();
    let mut replies = BytesMut::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return Ok(rec),
            r = rd.packets(&mut packets) => r?,
        }
        replies.clear();
        for p in packets.drain(..) {
            match p {
                Packet::Publish(p) => {
                    rec.record(&p.payload);
                    match (p.qos, p.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => encode_into(
                            &Packet::PubAck(PubResponse::new(id)),
                            version,
                            &mut replies,
                        )?,
                        (QoS::ExactlyOnce, Some(id)) => encode_into(
                            &Packet::PubRec(PubResponse::new(id)),
                            version,
                            &mut replies,
                        )?,
                        _ => {}
                    }
                }
                Packet::PubRel(r) => encode_into(
                    &Packet::PubComp(PubResponse::new(r.packet_id)),
                    version,
                    &mut replies,
                )?,
                Packet::Disconnect(d) => {
                    return Err(BenchError::Refused(format!("DISCONNECT {:#04x}", d.reason)))
                }
                _ => {}
            }
        }
        if !replies.is_empty() {
            wr.write_all(&replies).await?;
        }
        rec.flush().await;
    }
}

/// A PUBLISH encoded once; each message patches its stamp and packet id in place.
struct PublishTemplate {
    bytes: Vec<u8>,
    /// Offset of the packet id (QoS > 0).
    packet_id_at: Option<usize>,
    payload_at: usize,
}

impl PublishTemplate {
    fn new(topic: &str, qos: QoS, size: usize, version: Protocol) -> Result<Self, BenchError> {
        let publish = Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id: (qos != QoS::AtMostOnce).then_some(1),
            properties: Properties::default(),
            payload: Bytes::from(vec![0u8; size]),
        });
        let mut out = BytesMut::new();
        encode_into(&publish, version, &mut out)?;
        let payload_at = out.len() - size;
        // Remaining length is a variable-length integer after the first byte; the variable
        // header starts with the topic (2-byte length + bytes), then the packet id (spec
        // 3.3.2).
        let remaining_len_bytes = out[1..].iter().position(|b| b & 0x80 == 0).unwrap_or(0) + 1;
        let packet_id_at =
            (qos != QoS::AtMostOnce).then_some(1 + remaining_len_bytes + 2 + topic.len());
        Ok(PublishTemplate {
            bytes: out.to_vec(),
            packet_id_at,
            payload_at,
        })
    }

    fn append(&mut self, out: &mut BytesMut, stamp: Stamp, packet_id: u16) {
        stamp.write(&mut self.bytes[self.payload_at..]);
        if let Some(at) = self.packet_id_at {
            self.bytes[at..at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        out.extend_from_slice(&self.bytes);
    }
}

/// Connects and publishes on a task until the run stops.
pub async fn start_publisher(
    o: &Options,
    topic: &str,
    client_id: String,
    id: u16,
    budget: u64,
    live: Arc<Live>,
) -> Result<Task<u64>, BenchError> {
    let (rd, wr) = connect(o, client_id).await?;
    let template = PublishTemplate::new(topic, o.qos, o.size, o.mqtt_version)?;
    let pacer = Pacer::new(budget, o.rate);
    Ok(tokio::spawn(publish(
        rd,
        wr,
        template,
        o.clone(),
        id,
        pacer,
        live,
    )))
}

/// Counts completed QoS 1/2 publishes (PUBACK, PUBCOMP) and answers PUBREC with PUBREL.
async fn read_acks(
    mut rd: Reader,
    wr: Arc<Mutex<WriteHalf>>,
    completed: Arc<AtomicU64>,
    wake: Arc<tokio::sync::Notify>,
) -> Result<(), BenchError> {
    let version = rd.version;
    let mut packets = Vec::new();
    let mut rels = BytesMut::new();
    loop {
        rd.packets(&mut packets).await?;
        rels.clear();
        let mut done = 0;
        for p in packets.drain(..) {
            match p {
                Packet::PubAck(_) | Packet::PubComp(_) => done += 1,
                Packet::PubRec(r) => encode_into(
                    &Packet::PubRel(PubResponse::new(r.packet_id)),
                    version,
                    &mut rels,
                )?,
                Packet::Disconnect(d) => {
                    return Err(BenchError::Refused(format!("DISCONNECT {:#04x}", d.reason)))
                }
                _ => {}
            }
        }
        if !rels.is_empty() {
            wr.lock().await.write_all(&rels).await?;
        }
        if done > 0 {
            completed.fetch_add(done, Ordering::Relaxed);
            wake.notify_one();
        }
    }
}

async fn publish(
    rd: Reader,
    wr: WriteHalf,
    mut template: PublishTemplate,
    o: Options,
    id: u16,
    mut pacer: Pacer,
    live: Arc<Live>,
) -> Result<u64, BenchError> {
    let broker_limit = rd.receive_maximum.map_or(MAX_WINDOW, u32::from);
    let wr = Arc::new(Mutex::new(wr));
    let completed = Arc::new(AtomicU64::new(0));
    let wake = Arc::new(tokio::sync::Notify::new());
    let reader = tokio::spawn(read_acks(rd, wr.clone(), completed.clone(), wake.clone()));
    let window = (o.qos != QoS::AtMostOnce).then(|| {
        u64::from(
            o.confirm_window
                .unwrap_or(DEFAULT_WINDOW)
                .clamp(1, MAX_WINDOW.min(broker_limit)),
        )
    });
    let mut out = BytesMut::with_capacity(64 * 1024);
    while let Some(n) = pacer.next_batch(&live).await {
        if reader.is_finished() {
            break;
        }
        let Some(n) = pacer.fit_window(n, window, &completed, &wake).await else {
            continue;
        };
        out.clear();
        for i in 0..n {
            let seq = pacer.sent + i;
            let stamp = Stamp {
                run: live.run,
                publisher: id,
                seq: seq as u32,
                sent_ns: live.now_ns(),
            };
            // Packet ids cycle through 1..=65535; the window keeps them unique in flight.
            template.append(&mut out, stamp, (seq % 65_535) as u16 + 1);
        }
        let mut w = wr.lock().await;
        if !write_unless_stopped(&mut *w, &out, &live).await? {
            break;
        }
        drop(w);
        pacer.count_sent(&live, n);
    }
    if window.is_some() {
        await_acks(&completed, pacer.sent, &wake).await;
    }
    reader.abort();
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::ZERO, reader).await {
        return Err(e);
    }
    // A clean end: the broker reads everything before the DISCONNECT, then closes.
    out.clear();
    encode_into(
        &Packet::Disconnect(Default::default()),
        o.mqtt_version,
        &mut out,
    )?;
    // Bounded: a broker under its memory alarm may not be reading.
    let mut w = wr.lock().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), w.write_all(&out)).await;
    Ok(pacer.sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patched_template_decodes_as_the_publish_it_stands_for() {
        for version in [Protocol::V311, Protocol::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let mut t = PublishTemplate::new("a/b", qos, 200, version).expect("encodes");
                let stamp = Stamp {
                    run: 1,
                    publisher: 2,
                    seq: 3,
                    sent_ns: 4,
                };
                let mut out = BytesMut::new();
                t.append(&mut out, stamp, 4242);
                let Ok(Some(Packet::Publish(p))) = decode(&mut out, version, MAX_PACKET) else {
                    panic!("{version:?} {qos:?} does not decode");
                };
                assert_eq!(p.topic, "a/b");
                assert_eq!(p.qos, qos);
                assert_eq!(p.packet_id, (qos != QoS::AtMostOnce).then_some(4242));
                assert_eq!(Stamp::read(&p.payload), Some(stamp));
                assert_eq!(p.payload.len(), 200);
            }
        }
    }
}
