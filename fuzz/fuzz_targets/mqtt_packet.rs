//! Feeds arbitrary bytes to the MQTT decoder at every protocol version. Decoding must never
//! panic, and whatever decodes must survive encode → decode unchanged.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_mqtt::*;

/// A limit small enough that the size check is exercised by fuzzed length prefixes.
const MAX_PACKET: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    for version in [Protocol::V31, Protocol::V311, Protocol::V5] {
        let mut buf = BytesMut::from(data);
        // Several packets may follow one another; stop at the first error or incomplete one.
        while let Ok(Some(packet)) = decode(&mut buf, version, MAX_PACKET) {
            // CONNECT names its own version; every other packet is encoded in the one it was
            // decoded in.
            let v = match &packet {
                Packet::Connect(c) => c.protocol,
                _ => version,
            };
            let mut out = BytesMut::new();
            encode(&packet, v, &mut out).expect("a decoded packet encodes");
            assert_eq!(encoded_len(&packet, v).ok(), Some(out.len()));
            let again = decode(&mut out, version, usize::MAX)
                .expect("an encoded packet decodes")
                .expect("an encoded packet is complete");
            assert_eq!(again, packet);
            assert!(out.is_empty());
        }
    }
});
