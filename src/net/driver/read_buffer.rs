//! A connection's read buffer, and the memory it holds charged to the broker's monitor.
//!
//! What a client has sent but not finished (a frame whose end has not arrived, an AMQP body
//! still being collected by its session) is memory the client controls: it is charged, so that
//! many connections each holding an unfinished 15 MiB frame trip the memory alarm like the
//! messages they would become (issue 13, "every byte counted").
//!
//! Charged are the bytes received and not yet handled, not the buffer's capacity: an empty
//! buffer's spare room (32 KiB for AMQP) is the connection's fixed cost, not something a client
//! can grow, and room reserved for an announced frame is not resident until the frame's bytes
//! arrive.

use crate::core::memory::{MemoryCharge, MemoryMonitor};
use bytes::BytesMut;
use std::sync::Arc;

/// How a protocol wants its read buffer managed.
#[derive(Debug, Clone, Copy)]
pub enum ReadPolicy {
    /// Starts with this capacity and keeps it: the buffer's allocation is reused as frames are
    /// split off (AMQP and STOMP bodies are sliced out of it, zero-copy).
    Keep { initial: usize },
    /// Holds almost nothing while idle (many idle MQTT connections): grows by `busy` while data
    /// flows, by `idle` on an empty buffer, and is released once emptied.
    Lean { idle: usize, busy: usize },
}

/// Below this much spare room a [`ReadPolicy::Lean`] buffer grows before the next read.
const LEAN_MIN_SPARE: usize = 64;

#[derive(Debug)]
pub struct ReadBuffer {
    pub buf: BytesMut,
    policy: ReadPolicy,
    /// The bytes in the buffer plus what the session holds of unfinished frames.
    charge: MemoryCharge,
}

impl ReadBuffer {
    pub fn new(policy: ReadPolicy, memory: &Arc<MemoryMonitor>) -> Self {
        let buf = match policy {
            ReadPolicy::Keep { initial } => BytesMut::with_capacity(initial),
            ReadPolicy::Lean { .. } => BytesMut::new(),
        };
        let charge = memory.charge(0);
        ReadBuffer {
            buf,
            policy,
            charge,
        }
    }

    /// Makes room for the next read, as the policy says.
    pub fn prepare_read(&mut self) {
        if let ReadPolicy::Lean { idle, busy } = self.policy {
            if self.buf.capacity() - self.buf.len() < LEAN_MIN_SPARE {
                self.buf
                    .reserve(if self.buf.is_empty() { idle } else { busy });
            }
        }
    }

    /// After the session took what it could: releases an emptied lean buffer, and charges what
    /// is held now (`session_held`: unfinished frames the session keeps outside the buffer).
    pub fn processed(&mut self, session_held: usize) {
        if let ReadPolicy::Lean { idle, .. } = self.policy {
            if self.buf.is_empty() && self.buf.capacity() > idle {
                self.buf = BytesMut::new();
            }
        }
        let held = self.unfinished(session_held);
        if held != self.charge.bytes() {
            self.charge.resize(held);
        }
    }

    /// Bytes of frames received but not complete yet: in the buffer, and `session_held`.
    pub fn unfinished(&self, session_held: usize) -> usize {
        self.buf.len() + session_held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lean_buffer_is_released_when_emptied_and_its_charge_with_it() {
        let memory = MemoryMonitor::new(0);
        let mut rb = ReadBuffer::new(
            ReadPolicy::Lean {
                idle: 64,
                busy: 2048,
            },
            &memory,
        );
        assert_eq!(memory.used(), 0);
        rb.prepare_read();
        rb.buf.extend_from_slice(&[1; 100]);
        rb.prepare_read();
        rb.processed(0);
        assert!(memory.used() >= 100, "the filled buffer is charged");
        let _ = rb.buf.split();
        rb.processed(0);
        assert_eq!(memory.used(), 0, "an emptied lean buffer holds nothing");
    }

    #[test]
    fn unfinished_frames_held_by_the_session_are_charged() {
        let memory = MemoryMonitor::new(1000);
        let mut rb = ReadBuffer::new(ReadPolicy::Keep { initial: 100 }, &memory);
        assert_eq!(memory.used(), 0, "spare room is not charged");
        rb.buf.extend_from_slice(&[1; 10]);
        rb.processed(5000);
        assert_eq!(memory.used(), 5010);
        assert!(memory.alarm());
        assert_eq!(rb.unfinished(5000), 5010);
        drop(rb);
        assert_eq!(memory.used(), 0);
        assert!(!memory.alarm());
    }
}
