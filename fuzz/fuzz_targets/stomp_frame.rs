//! Feeds arbitrary bytes to a STOMP `Decoder` under every version, in two pieces split at an
//! arbitrary point (so that it resumes mid-frame). Decoding must never panic, must never leave more buffered than the frame
//! limit allows, and whatever decodes must survive encode -> decode unchanged.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_stomp::*;

const LIMITS: Limits = Limits {
    max_frame_size: 4096,
    max_headers: 16,
    max_header_line: 256,
    max_body_size: 2048,
};

fn check(data: &[u8], version: Version, split: usize) {
    let mut buf = BytesMut::new();
    let mut decoder = Decoder::new();
    for piece in [&data[..split], &data[split..]] {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf, version, &LIMITS) {
                Ok(Some(frame)) => round_trip(&frame, version),
                Ok(None) => {
                    // Waiting for more: never with more than a frame's worth buffered.
                    assert!(buf.len() <= LIMITS.max_frame_size + 2);
                    break;
                }
                Err(_) => return,
            }
        }
    }
}

fn round_trip(frame: &Frame, version: Version) {
    let mut wire = BytesMut::new();
    encode(frame, version, &mut wire);
    let again = decode(&mut wire, version, &Limits::default())
        .expect("re-decodes")
        .expect("complete");
    assert_eq!(again.command, frame.command);
    assert_eq!(again.body, frame.body);
    // Headers read back as representable text; the encoder writes its own content-length.
    let want: Vec<(String, String)> = frame
        .headers
        .iter()
        .filter(|(n, _)| n != "content-length")
        .map(|(n, v)| {
            (
                representable(version, frame.command, n, true).into_owned(),
                representable(version, frame.command, v, false).into_owned(),
            )
        })
        .collect();
    let got: Vec<(String, String)> = again
        .headers
        .iter()
        .filter(|(n, _)| n != "content-length")
        .cloned()
        .collect();
    if want.iter().all(|(n, _)| n != "content-length") {
        assert_eq!(got, want);
    }
    assert!(wire.is_empty());
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let version = Version::ALL[usize::from(selector % 3)];
    let split = if rest.is_empty() {
        0
    } else {
        usize::from(selector / 3) % (rest.len() + 1)
    };
    check(rest, version, split);
});
