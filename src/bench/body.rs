//! The 16-byte stamp at the front of every bench message body: who sent it, its sequence
//! number and when, so a consumer can measure latency and count loss and duplicates without
//! any broker-specific metadata (properties and headers differ between protocols).

/// Bytes the stamp takes; bodies are at least this long.
pub const STAMP_LEN: usize = 16;

/// What a consumer reads back from a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Random per run, so messages left in a queue by an earlier run are told apart.
    pub run: u16,
    pub publisher: u16,
    pub seq: u32,
    /// Nanoseconds since the run's start instant.
    pub sent_ns: u64,
}

impl Stamp {
    /// Writes the stamp over the first [`STAMP_LEN`] bytes of `body`.
    pub fn write(&self, body: &mut [u8]) {
        body[0..2].copy_from_slice(&self.run.to_be_bytes());
        body[2..4].copy_from_slice(&self.publisher.to_be_bytes());
        body[4..8].copy_from_slice(&self.seq.to_be_bytes());
        body[8..16].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Reads a stamp; `None` for a body too short to carry one.
    pub fn read(body: &[u8]) -> Option<Stamp> {
        let b: &[u8; STAMP_LEN] = body.get(..STAMP_LEN)?.try_into().ok()?;
        Some(Stamp {
            run: u16::from_be_bytes([b[0], b[1]]),
            publisher: u16::from_be_bytes([b[2], b[3]]),
            seq: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            sent_ns: u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_and_short_bodies_carry_none() {
        let s = Stamp {
            run: 7,
            publisher: 3,
            seq: 0xDEAD_BEEF,
            sent_ns: 1 << 40,
        };
        let mut body = vec![0xAA; 20];
        s.write(&mut body);
        assert_eq!(Stamp::read(&body), Some(s));
        assert_eq!(body[16..], [0xAA; 4]);
        assert_eq!(Stamp::read(&body[..15]), None);
    }
}
