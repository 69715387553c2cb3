//! Every byte a client holds is counted (issue 13): unfinished AMQP bodies and unfinished
//! STOMP frames are charged to the memory monitor by the connection driver, trip the high
//! watermark, and are released when their connections go.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::in_memory::{self, Protocol};
use common::raw::{unfinished_publish, RawClient};
use common::stomp::StompClient;
use common::wait_until;
use tokio::io::AsyncWriteExt;

const MIB: usize = 1 << 20;
const WATERMARK: usize = 4 * MIB;

fn small_watermark() -> in_memory::MemoryBroker {
    in_memory::broker(|c| {
        c.server.memory_high_watermark_bytes = Some(WATERMARK as u64);
        c.stomp.max_body_size = 64 * MIB;
        c.stomp.max_frame_size = 65 * MIB;
        c.stomp.heartbeat_ms = 100;
    })
}

/// Writes `bytes` from a task of its own: once the alarm blocks the connection, the write
/// stalls (as the client's TCP window would fill), and the test goes on without it.
fn write_in_background<S>(mut stream: S, bytes: Vec<u8>) -> tokio::task::JoinHandle<S>
where
    S: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let _ = stream.write_all(&bytes).await;
        stream
    })
}

/// The unfinished frames trip the alarm; once their clients go, every byte is released.
async fn alarm_then_release<S>(
    broker: &in_memory::MemoryBroker,
    writers: Vec<tokio::task::JoinHandle<S>>,
) {
    let memory = &broker.memory;
    wait_until("the unfinished frames trip the alarm", || memory.alarm()).await;
    assert!(
        memory.used() >= WATERMARK,
        "{} bytes counted",
        memory.used()
    );
    for w in writers {
        w.abort();
    }
    wait_until("everything released with the connections", || {
        broker.connections().is_empty()
    })
    .await;
    assert_eq!(memory.used(), 0);
    assert!(!memory.alarm());
}

#[tokio::test]
async fn unfinished_amqp_bodies_are_charged_and_trip_the_watermark() {
    let broker = small_watermark();
    let mut writers = Vec::new();
    // Three publishers each announce an 8 MiB body and send 1.5 MiB of it: 4.5 MiB unfinished.
    // A blocked connection is not read, so it notices its peer gone only when a write fails:
    // heartbeats make the broker write.
    for _ in 0..3 {
        let mut c = RawClient::over(in_memory::connect(&broker, Protocol::Amqp))
            .handshake(1)
            .await;
        c.open_channel(1).await;
        let out = unfinished_publish(8 * MIB as u64, 3 * MIB / 2);
        writers.push(write_in_background(c.stream, out.to_vec()));
    }
    alarm_then_release(&broker, writers).await;
}

#[tokio::test]
async fn unfinished_stomp_frames_are_charged_and_trip_the_watermark() {
    let broker = small_watermark();
    let mut writers = Vec::new();
    // Three SENDs of 15 MiB each, 1.5 MiB of each sent.
    for _ in 0..3 {
        let (c, answer) = StompClient::over(in_memory::connect(&broker, Protocol::Stomp))
            .handshake(&[
                ("accept-version", "1.2"),
                ("login", "guest"),
                ("passcode", "guest"),
                // Server beats every 100 ms: how a blocked connection finds its peer gone.
                ("heart-beat", "0,100"),
            ])
            .await;
        assert_eq!(answer.command, switchboard_stomp::Command::Connected);
        let mut frame = format!(
            "SEND\ndestination:/queue/big\ncontent-length:{}\n\n",
            15 * MIB
        )
        .into_bytes();
        frame.resize(frame.len() + 3 * MIB / 2, b'x');
        writers.push(write_in_background(c.stream, frame));
    }
    alarm_then_release(&broker, writers).await;
}
