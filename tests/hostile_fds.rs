//! A listener out of file descriptors (issue 13, Deliver 4): the broker's accept fails with
//! EMFILE, backs off instead of spinning, and serves new connections once descriptors are
//! free again. Alone in its binary: it lowers the process's open-file
//! limit, which every test in the process would share.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Descriptors this process holds.
fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count() as u64
}

/// CPU seconds this process has used (user + system), read from `/proc/self/stat` opened
/// before the descriptors ran out.
fn cpu_seconds(stat: &mut std::fs::File) -> f64 {
    use std::io::{Read, Seek};
    stat.rewind().expect("rewind");
    let mut text = String::new();
    stat.read_to_string(&mut text).expect("/proc/self/stat");
    let stat = text;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("comm")
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// An AMQP protocol header answered with connection.start: the listener serves.
async fn served(addr: std::net::SocketAddr) -> bool {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
    else {
        return false;
    };
    if s.write_all(b"AMQP\x00\x00\x09\x01").await.is_err() {
        return false;
    }
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut first)).await,
        Ok(Ok(1))
    ) && first[0] == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_backs_off_out_of_file_descriptors_and_serves_again() {
    let b = TestBroker::start().await;
    let (soft, _) = switchboard::sys::open_file_limit().expect("a finite open-file limit");
    let mut held = vec![];
    let mut stat = std::fs::File::open("/proc/self/stat").expect("/proc/self/stat");
    // A little room above what the process holds: the broker's accepted sockets and the
    // clients' share it, so the broker's accept runs out while clients still connect (the
    // kernel completes their handshakes into the listen backlog).
    assert!(switchboard::sys::set_open_file_limit(open_fds() + 24));
    let kept = TcpStream::connect(b.amqp)
        .await
        .expect("one connection before");
    held.push(kept);
    for _ in 0..64 {
        match TcpStream::connect(b.amqp).await {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    // The kernel completed every client's handshake; the broker could not accept them all.
    wait_until("the broker's accept out of descriptors", || {
        b.broker().connections().len() < held.len()
    })
    .await;
    // The broker is out of descriptors now: its accept fails and must back off. Its CPU time
    // over half a second shows whether it spins (a spinning accept loop burns a core).
    let before = cpu_seconds(&mut stat);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spent = cpu_seconds(&mut stat) - before;
    eprintln!(
        "{} clients held, {} accepted; the process used {spent:.2} s of CPU in 0.5 s",
        held.len(),
        b.broker().connections().len()
    );
    assert!(spent < 0.25, "accept spins: {spent:.2} s of CPU in 0.5 s");
    drop(held);
    assert!(switchboard::sys::set_open_file_limit(soft));
    wait_until_async("a new connection served", || served(b.amqp)).await;
    b.stop().await;
}
