//! Property: whatever the encoder writes, the decoder reads back, for every version, command,
//! header text and body (all 256 byte values, NUL included), with heart-beats around frames
//! and the input arriving in arbitrary pieces.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use bytes::BytesMut;
use proptest::prelude::*;
use switchboard_stomp::*;

fn version() -> impl Strategy<Value = Version> {
    prop::sample::select(Version::ALL.to_vec())
}

fn command() -> impl Strategy<Value = Command> {
    prop::sample::select(Command::ALL.to_vec())
}

/// Header text including every character the escaping rules care about.
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(vec!['\n', '\r', ':', '\\', ' ', 'c', 'n', 'r']),
            any::<char>(),
        ],
        0..12,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

fn frame() -> impl Strategy<Value = Frame> {
    (
        command(),
        prop::collection::vec((text(), text()), 0..6),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(command, headers, body)| Frame {
            command,
            // The encoder writes content-length itself.
            headers: headers
                .into_iter()
                .filter(|(n, _)| n != "content-length")
                .collect(),
            body: body.into(),
        })
}

/// The frame the decoder should produce: representable text, plus the content-length header.
fn expected(f: &Frame, v: Version) -> Frame {
    let mut headers: Vec<(String, String)> = f
        .headers
        .iter()
        .map(|(n, val)| {
            (
                representable(v, f.command, n, true).into_owned(),
                representable(v, f.command, val, false).into_owned(),
            )
        })
        .collect();
    // A name that reads back as "content-length" would frame the body itself; such frames are
    // not generated.
    if !f.body.is_empty() || matches!(f.command, Command::Send | Command::Message | Command::Error)
    {
        headers.push(("content-length".into(), f.body.len().to_string()));
    }
    Frame {
        command: f.command,
        headers,
        body: f.body.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode(
        frames in prop::collection::vec(frame(), 1..4),
        v in version(),
        beats in 0usize..3,
        chunk in 1usize..64,
    ) {
        let frames: Vec<Frame> = frames
            .into_iter()
            .filter(|f| f.headers.iter().all(|(n, _)| representable(v, f.command, n, true) != "content-length"))
            .collect();
        let mut wire = BytesMut::new();
        for f in &frames {
            for _ in 0..beats {
                wire.extend_from_slice(b"\r\n");
            }
            encode(f, v, &mut wire);
            wire.extend_from_slice(b"\n");
        }
        let limits = Limits::default();
        let want: Vec<Frame> = frames.iter().map(|f| expected(f, v)).collect();
        // A Decoder resuming where it stopped, and the stateless function, agree.
        let mut decoder = Decoder::new();
        let (mut buf, mut stateless_buf) = (BytesMut::new(), BytesMut::new());
        let (mut got, mut stateless_got) = (Vec::new(), Vec::new());
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(f) = decoder.decode(&mut buf, v, &limits).expect("decodes") {
                got.push(f);
            }
            stateless_buf.extend_from_slice(piece);
            while let Some(f) = decode(&mut stateless_buf, v, &limits).expect("decodes") {
                stateless_got.push(f);
            }
        }
        prop_assert!(buf.is_empty() && stateless_buf.is_empty());
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(stateless_got, want);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        input in prop::collection::vec(any::<u8>(), 0..400),
        v in version(),
    ) {
        let limits = Limits { max_frame_size: 200, max_headers: 4, max_header_line: 40, max_body_size: 100 };
        let mut buf = BytesMut::from(&input[..]);
        while let Ok(Some(_)) = decode(&mut buf, v, &limits) {}
        // Byte by byte through a Decoder: never more than a frame's worth waits in the buffer.
        let mut decoder = Decoder::new();
        let mut buf = BytesMut::new();
        'feed: for b in &input {
            buf.extend_from_slice(&[*b]);
            loop {
                match decoder.decode(&mut buf, v, &limits) {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
            prop_assert!(buf.len() <= limits.max_frame_size + 2);
        }
    }
}

#[test]
fn all_256_byte_values_round_trip_in_every_version() {
    let body: Vec<u8> = (0..=255u8).collect();
    for v in Version::ALL {
        let f = Frame::new(Command::Send)
            .with("destination", "/queue/b")
            .with_body(body.clone());
        let mut wire = BytesMut::new();
        encode(&f, v, &mut wire);
        let got = decode(&mut wire, v, &Limits::default()).unwrap().unwrap();
        assert_eq!(&got.body[..], &body[..]);
    }
}
