//! STOMP 1.2 publishers and consumers for the bench, on the `switchboard_stomp` codec:
//! SEND with optional receipts, SUBSCRIBE with `ack:auto` or `client-individual`.

use super::body::Stamp;
use super::live::{await_acks, finish_reader, write_goodbye, write_unless_stopped, Live, Pacer};
use super::record::Recorder;
use super::run::Task;
use super::transport::{self, ReadHalf, WriteHalf};
use super::{BenchError, Options};
use bytes::BytesMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use switchboard_stomp::{encode, encode_parts, Command, Decoder, Frame, Limits, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const VERSION: Version = Version::V1_2;

/// The read side of a STOMP connection.
struct Reader {
    rd: ReadHalf,
    buf: BytesMut,
    decoder: Decoder,
    limits: Limits,
}

impl Reader {
    /// Every complete frame buffered now, reading once if none is. An ERROR frame ends the
    /// connection with the broker's message.
    async fn frames(&mut self, out: &mut Vec<Frame>) -> Result<(), BenchError> {
        out.clear();
        loop {
            while let Some(f) = self
                .decoder
                .decode(&mut self.buf, VERSION, &self.limits)
                .map_err(|e| BenchError::Protocol(e.to_string()))?
            {
                if f.command == Command::Error {
                    let message = f.header("message").unwrap_or("").to_string();
                    return Err(BenchError::Refused(message));
                }
                out.push(f);
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

/// Connects and logs in (STOMP 1.2, no heart-beats).
async fn connect(o: &Options) -> Result<(Reader, WriteHalf), BenchError> {
    let (rd, mut wr) = transport::connect_split(o.stomp_addr, o.tls.as_ref()).await?;
    let mut reader = Reader {
        rd,
        buf: BytesMut::with_capacity(256 * 1024),
        decoder: Decoder::new(),
        limits: Limits::default(),
    };
    let mut out = BytesMut::new();
    encode(
        &Frame::new(Command::Connect)
            .with("accept-version", VERSION.as_str())
            .with("host", "/")
            .with("login", o.user.as_str())
            .with("passcode", o.password.as_str())
            .with("heart-beat", "0,0"),
        VERSION,
        &mut out,
    );
    wr.write_all(&out).await?;
    let mut frames = Vec::new();
    reader.frames(&mut frames).await?;
    match frames.first() {
        Some(f) if f.command == Command::Connected => Ok((reader, wr)),
        _ => Err(BenchError::Protocol("expected CONNECTED".into())),
    }
}

/// Connects, subscribes (asking for a receipt, so the subscription is in place on return) and
/// consumes on a task until told to stop.
pub async fn start_consumer(
    o: &Options,
    destination: &str,
    recorder: Recorder,
    stop: watch::Receiver<bool>,
) -> Result<Task<Recorder>, BenchError> {
    let (mut rd, mut wr) = connect(o).await?;
    let mut subscribe = Frame::new(Command::Subscribe)
        .with("id", "0")
        .with("destination", destination)
        .with("receipt", "subscribed");
    subscribe = match o.manual_ack {
        Some(prefetch) => subscribe
            .with("ack", "client-individual")
            .with("prefetch-count", prefetch.to_string()),
        None => subscribe.with("ack", "auto"),
    };
    let mut out = BytesMut::new();
    encode(&subscribe, VERSION, &mut out);
    wr.write_all(&out).await?;
    let mut frames = Vec::new();
    rd.frames(&mut frames).await?;
    if !frames.iter().any(|f| f.command == Command::Receipt) {
        return Err(BenchError::Protocol(
            "expected the SUBSCRIBE receipt".into(),
        ));
    }
    Ok(tokio::spawn(consume(
        rd,
        wr,
        recorder,
        o.manual_ack.is_some(),
        stop,
    )))
}

async fn consume(
    mut rd: Reader,
    mut wr: WriteHalf,
    mut rec: Recorder,
    ack_each: bool,
    mut stop: watch::Receiver<bool>,
) -> Result<Recorder, BenchError> {
    let mut frames = Vec::new();
    let mut acks = BytesMut::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return Ok(rec),
            r = rd.frames(&mut frames) => r?,
        }
        acks.clear();
        for f in frames.drain(..).filter(|f| f.command == Command::Message) {
            rec.record(&f.body);
            if let Some(ack) = f.header("ack").filter(|_| ack_each) {
                encode_parts(&mut acks, VERSION, Command::Ack, [("id", ack)], &[]);
            }
        }
        if !acks.is_empty() {
            wr.write_all(&acks).await?;
        }
        rec.flush().await;
    }
}

/// Connects and sends on a task until the run stops; with `confirm_window`, every SEND asks
/// for a receipt and at most that many are outstanding.
pub async fn start_publisher(
    o: &Options,
    destination: &str,
    id: u16,
    budget: u64,
    live: Arc<Live>,
) -> Result<Task<u64>, BenchError> {
    let (rd, wr) = connect(o).await?;
    let pacer = Pacer::new(budget, o.rate);
    Ok(tokio::spawn(publish(
        rd,
        wr,
        destination.to_string(),
        o.clone(),
        id,
        pacer,
        live,
    )))
}

/// The receipt asked for with the publisher's DISCONNECT.
const GOODBYE: &str = "bench-done";

/// Counts receipts: they come in order, and receipt `n` is the SEND with sequence number `n`.
/// Ends at the DISCONNECT's receipt.
async fn read_receipts(
    mut rd: Reader,
    confirmed: Arc<AtomicU64>,
    wake: Arc<tokio::sync::Notify>,
) -> Result<(), BenchError> {
    let mut frames = Vec::new();
    loop {
        rd.frames(&mut frames).await?;
        for f in frames.drain(..) {
            if f.header("receipt-id") == Some(GOODBYE) {
                return Ok(());
            }
            if let Some(n) = f.header("receipt-id").and_then(|r| r.parse::<u64>().ok()) {
                confirmed.fetch_max(n + 1, Ordering::Relaxed);
                wake.notify_one();
            }
        }
    }
}

async fn publish(
    rd: Reader,
    mut wr: WriteHalf,
    destination: String,
    o: Options,
    id: u16,
    mut pacer: Pacer,
    live: Arc<Live>,
) -> Result<u64, BenchError> {
    let confirmed = Arc::new(AtomicU64::new(0));
    let wake = Arc::new(tokio::sync::Notify::new());
    let reader = tokio::spawn(read_receipts(rd, confirmed.clone(), wake.clone()));
    let window = o.confirm_window.map(u64::from);
    // Only `persistent:true` is sent: RabbitMQ takes a SEND's `persistent:false` as a
    // queue property and refuses it (resource_locked) for a queue a subscriber declared.
    let persistent = o.persistent.then_some(("persistent", "true"));
    let mut body = vec![0u8; o.size];
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut receipt = String::new();
    while let Some(n) = pacer.next_batch(&live).await {
        if reader.is_finished() {
            break;
        }
        let Some(n) = pacer.fit_window(n, window, &confirmed, &wake).await else {
            continue;
        };
        out.clear();
        for i in 0..n {
            let seq = pacer.sent + i;
            Stamp {
                run: live.run,
                publisher: id,
                seq: seq as u32,
                sent_ns: live.now_ns(),
            }
            .write(&mut body);
            receipt.clear();
            if window.is_some() {
                receipt.push_str(&seq.to_string());
            }
            let headers = [("destination", destination.as_str())]
                .into_iter()
                .chain(persistent)
                .chain((!receipt.is_empty()).then_some(("receipt", receipt.as_str())));
            encode_parts(&mut out, VERSION, Command::Send, headers, &body);
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
    encode(
        &Frame::new(Command::Disconnect).with("receipt", GOODBYE),
        VERSION,
        &mut out,
    );
    if !write_goodbye(&mut wr, &out).await {
        reader.abort();
    }
    // An ERROR or a close from the broker, not the stop, may have ended the run.
    finish_reader(reader).await?;
    Ok(pacer.sent)
}
