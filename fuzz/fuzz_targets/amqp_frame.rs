//! Feeds arbitrary bytes to every decoder of the AMQP codec. Decoding must never panic, and
//! whatever decodes must survive encode → decode unchanged.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_amqp::*;

/// Structural equality, except that values holding a NaN float never equal themselves; for
/// those compare the encodings instead (encoding is deterministic).
fn same<T: PartialEq + std::fmt::Debug>(a: &T, b: &T, enc: impl Fn(&T) -> BytesMut) {
    #[allow(clippy::eq_op)]
    if a == a {
        assert_eq!(a, b);
    } else {
        assert_eq!(enc(a), enc(b));
    }
}

fn enc_method(m: &Method) -> BytesMut {
    let mut out = BytesMut::new();
    m.encode(&mut out);
    out
}

fn enc_props(p: &BasicProperties) -> BytesMut {
    let mut out = BytesMut::new();
    p.encode(&mut out);
    out
}

fn enc_table(t: &FieldTable) -> BytesMut {
    let mut out = BytesMut::new();
    encode_table(&mut out, t);
    out
}

fn check_method(m: &Method) {
    let bytes = enc_method(m);
    assert_eq!(bytes.len(), m.encoded_len());
    let back = Method::decode(&bytes).expect("re-encoded method decodes");
    same(m, &back, enc_method);
    // and as a frame
    let mut frame = BytesMut::new();
    encode_method(&mut frame, 1, m);
    match decode_frame(&mut frame, 0).expect("re-encoded method frame decodes") {
        Some(Frame::Method { channel: 1, method }) => same(m, &method, enc_method),
        other => panic!("unexpected {other:?}"),
    }
    assert!(frame.is_empty());
}

fn check_properties(p: &BasicProperties) {
    let bytes = enc_props(p);
    assert_eq!(bytes.len(), p.encoded_len());
    let back = BasicProperties::decode(&bytes).expect("re-encoded properties decode");
    same(p, &back, enc_props);
}

fn frames(data: &[u8], frame_max: u32) -> Vec<Frame> {
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    loop {
        match decode_frame(&mut buf, frame_max) {
            Ok(Some(frame)) => {
                match &frame {
                    Frame::Method { method, .. } => check_method(method),
                    Frame::Header { class_id, properties, raw_properties, .. } => {
                        assert_eq!(*class_id, 60);
                        check_properties(properties);
                        let again = BasicProperties::decode(raw_properties).expect("raw properties decode");
                        same(&**properties, &again, enc_props);
                    }
                    Frame::Body { payload, .. } => {
                        if frame_max != 0 {
                            assert!(payload.len() + FRAME_OVERHEAD <= frame_max as usize);
                        }
                    }
                    Frame::Heartbeat { .. } => {}
                }
                out.push(frame);
            }
            Ok(None) => break,
            Err(e) => {
                assert!(matches!(e.reply_code(), 501 | 502 | 505 | 540));
                break;
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let small = frames(data, FRAME_MIN_SIZE);
    let large = frames(data, 131_072);
    // a smaller frame_max can only stop decoding earlier, never change a frame
    assert!(small.len() <= large.len());
    for (a, b) in small.iter().zip(&large) {
        if a == a {
            assert_eq!(a, b);
        }
    }

    // the same stream arriving in two pieces decodes to the same frames
    if let Some((&first, _)) = data.split_first() {
        let cut = (first as usize * 7) % (data.len() + 1);
        let mut buf = BytesMut::from(&data[..cut]);
        let mut split = Vec::new();
        let mut fed = false;
        loop {
            match decode_frame(&mut buf, 131_072) {
                Ok(Some(f)) => split.push(f),
                Ok(None) if !fed => {
                    buf.extend_from_slice(&data[cut..]);
                    fed = true;
                }
                _ => break,
            }
        }
        assert_eq!(split.len(), large.len());
        for (a, b) in split.iter().zip(&large) {
            if a == a {
                assert_eq!(a, b);
            }
        }
    }

    if let Ok(m) = Method::decode(data) {
        check_method(&m);
    }
    if let Ok(p) = BasicProperties::decode(data) {
        check_properties(&p);
    }
    let mut cursor = data;
    if let Ok(t) = decode_table(&mut cursor) {
        let bytes = enc_table(&t);
        assert_eq!(bytes.len(), table_encoded_len(&t));
        let back = decode_table(&mut &bytes[..]).expect("re-encoded table decodes");
        same(&t, &back, enc_table);
    }
});
