//! Decoder edge cases: framing, line ends, escaping per version, repeated headers, bodies with
//! NUL bytes, and every limit refused before the offending input is all buffered.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use bytes::BytesMut;
use switchboard_stomp::*;

fn dec(input: &[u8], v: Version) -> Result<Option<Frame>, DecodeError> {
    let mut buf = BytesMut::from(input);
    decode(&mut buf, v, &Limits::default())
}

fn one(input: &[u8], v: Version) -> Frame {
    dec(input, v).expect("decodes").expect("complete")
}

fn small() -> Limits {
    Limits {
        max_frame_size: 1000,
        max_headers: 3,
        max_header_line: 50,
        max_body_size: 100,
    }
}

#[test]
fn simple_send_with_lf_and_crlf() {
    for input in [
        &b"SEND\ndestination:/queue/a\n\nhello\0"[..],
        &b"SEND\r\ndestination:/queue/a\r\n\r\nhello\0"[..],
    ] {
        let f = one(input, Version::V1_2);
        assert_eq!(f.command, Command::Send);
        assert_eq!(f.header("destination"), Some("/queue/a"));
        assert_eq!(&f.body[..], b"hello");
    }
}

#[test]
fn heartbeats_between_frames_are_skipped_and_frames_leave_the_rest() {
    let mut buf = BytesMut::from(&b"\n\r\n\nDISCONNECT\n\n\0\n\nSEND\n\nx\0"[..]);
    let l = Limits::default();
    let f = decode(&mut buf, Version::V1_2, &l).unwrap().unwrap();
    assert_eq!(f.command, Command::Disconnect);
    let f = decode(&mut buf, Version::V1_2, &l).unwrap().unwrap();
    assert_eq!((f.command, &f.body[..]), (Command::Send, &b"x"[..]));
    assert!(buf.is_empty());
    let mut only_beats = BytesMut::from(&b"\n\r\n"[..]);
    assert_eq!(decode(&mut only_beats, Version::V1_2, &l), Ok(None));
    assert!(only_beats.is_empty());
}

#[test]
fn incomplete_input_asks_for_more_at_every_split() {
    let input = b"SEND\r\ndestination:/queue/a\r\ncontent-length:3\r\n\r\na\0b\0";
    for cut in 0..input.len() {
        let mut buf = BytesMut::from(&input[..cut]);
        assert_eq!(
            decode(&mut buf, Version::V1_2, &Limits::default()),
            Ok(None),
            "cut at {cut}"
        );
        buf.extend_from_slice(&input[cut..]);
        let f = decode(&mut buf, Version::V1_2, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(&f.body[..], b"a\0b");
    }
}

#[test]
fn content_length_body_may_hold_nul_and_must_end_in_nul() {
    let f = one(b"SEND\ncontent-length:4\n\n\0\0\0\0\0", Version::V1_1);
    assert_eq!(&f.body[..], &[0, 0, 0, 0]);
    assert_eq!(
        dec(b"SEND\ncontent-length:2\n\nabc\0", Version::V1_2),
        Err(DecodeError::MissingNul(2))
    );
    assert!(matches!(
        dec(b"SEND\ncontent-length:x1\n\n\0", Version::V1_2),
        Err(DecodeError::InvalidContentLength(_))
    ));
    assert!(matches!(
        dec(
            b"SEND\ncontent-length:99999999999999999999999\n\n\0",
            Version::V1_2
        ),
        Err(DecodeError::InvalidContentLength(_))
    ));
}

#[test]
fn repeated_headers_are_kept_and_the_first_wins() {
    let f = one(b"MESSAGE\nfoo:World\nfoo:Hello\n\n\0", Version::V1_2);
    assert_eq!(f.header("foo"), Some("World"));
    assert_eq!(f.headers.len(), 2);
    // Also for content-length: the first one frames the body.
    let f = one(
        b"SEND\ncontent-length:1\ncontent-length:5\n\na\0",
        Version::V1_2,
    );
    assert_eq!(&f.body[..], b"a");
}

#[test]
fn escaping_differs_per_version() {
    let input = b"SEND\nk\\cx:a\\nb\\\\c\\cd\n\n\0";
    let f = one(input, Version::V1_2);
    assert_eq!(f.headers[0], ("k:x".into(), "a\nb\\c:d".into()));
    let f = one(input, Version::V1_1);
    assert_eq!(f.headers[0], ("k:x".into(), "a\nb\\c:d".into()));
    let f = one(input, Version::V1_0);
    assert_eq!(f.headers[0], ("k\\cx".into(), "a\\nb\\\\c\\cd".into()));
    // \r is 1.2 only; undefined escapes are errors.
    assert_eq!(
        one(b"SEND\nk:a\\rb\n\n\0", Version::V1_2).header("k"),
        Some("a\rb")
    );
    assert_eq!(
        dec(b"SEND\nk:a\\rb\n\n\0", Version::V1_1),
        Err(DecodeError::InvalidEscape('r'))
    );
    assert_eq!(
        dec(b"SEND\nk:a\\tb\n\n\0", Version::V1_2),
        Err(DecodeError::InvalidEscape('t'))
    );
}

#[test]
fn connect_headers_are_never_escaped() {
    let f = one(b"CONNECT\npasscode:a\\tb\\c\n\n\0", Version::V1_2);
    assert_eq!(f.header("passcode"), Some("a\\tb\\c"));
    let f = one(b"CONNECTED\nserver:x\\y\n\n\0", Version::V1_2);
    assert_eq!(f.header("server"), Some("x\\y"));
}

#[test]
fn values_keep_colons_and_spaces() {
    let f = one(b"SEND\nk: a:b \n\n\0", Version::V1_0);
    assert_eq!(f.header("k"), Some(" a:b "));
}

#[test]
fn malformed_input_is_named() {
    assert!(matches!(
        dec(b"FOO\n\n\0", Version::V1_2),
        Err(DecodeError::UnknownCommand(c)) if c == "FOO"
    ));
    assert!(matches!(
        dec(b"send\n\n\0", Version::V1_2),
        Err(DecodeError::UnknownCommand(_))
    ));
    assert!(matches!(
        dec(b"SEND\nnocolon\n\n\0", Version::V1_2),
        Err(DecodeError::MalformedHeader(_))
    ));
    assert_eq!(
        dec(b"SEND\nk:\xff\n\n\0", Version::V1_2),
        Err(DecodeError::NotUtf8)
    );
    // The command is checked as soon as its line is complete, before the body arrives.
    assert!(matches!(
        dec(b"BOGUS\nk:v\n\nstill coming", Version::V1_2),
        Err(DecodeError::UnknownCommand(_))
    ));
}

#[test]
fn a_long_header_line_is_refused_before_it_ends() {
    let l = small();
    let mut buf = BytesMut::from(&b"SEND\nk:"[..]);
    buf.extend_from_slice(&[b'x'; 49]);
    assert_eq!(decode(&mut buf, Version::V1_2, &l), Ok(None));
    buf.extend_from_slice(&[b'x'; 2]);
    assert_eq!(
        decode(&mut buf, Version::V1_2, &l),
        Err(DecodeError::HeaderLineTooLong { limit: 50 })
    );
    // The command line counts too.
    let mut buf = BytesMut::from(&[b'S'; 60][..]);
    assert!(decode(&mut buf, Version::V1_2, &l).is_err());
}

#[test]
fn header_count_limit() {
    let l = small();
    let mut buf = BytesMut::from(&b"SEND\na:1\nb:2\nc:3\n\n\0"[..]);
    assert!(decode(&mut buf, Version::V1_2, &l).unwrap().is_some());
    let mut buf = BytesMut::from(&b"SEND\na:1\nb:2\nc:3\nd:4\n"[..]);
    assert_eq!(
        decode(&mut buf, Version::V1_2, &l),
        Err(DecodeError::TooManyHeaders { limit: 3 })
    );
}

#[test]
fn body_limits_with_and_without_content_length() {
    let l = small();
    let mut buf = BytesMut::from(&b"SEND\ncontent-length:101\n\n"[..]);
    assert_eq!(
        decode(&mut buf, Version::V1_2, &l),
        Err(DecodeError::BodyTooLarge { limit: 100 })
    );
    // No terminator: refused once more than the body limit is buffered.
    let mut buf = BytesMut::from(&b"SEND\n\n"[..]);
    buf.extend_from_slice(&[b'x'; 100]);
    assert_eq!(decode(&mut buf, Version::V1_2, &l), Ok(None));
    buf.extend_from_slice(b"x");
    assert_eq!(
        decode(&mut buf, Version::V1_2, &l),
        Err(DecodeError::BodyTooLarge { limit: 100 })
    );
    let mut buf = BytesMut::from(&b"SEND\n\n"[..]);
    buf.extend_from_slice(&[b'x'; 100]);
    buf.extend_from_slice(b"\0");
    assert_eq!(
        decode(&mut buf, Version::V1_2, &l)
            .unwrap()
            .unwrap()
            .body
            .len(),
        100
    );
}

#[test]
fn frame_size_limit_counts_headers_and_body() {
    let l = Limits {
        max_frame_size: 30,
        ..small()
    };
    let mut buf = BytesMut::from(&b"SEND\ncontent-length:20\n\n"[..]);
    assert_eq!(
        decode(&mut buf, Version::V1_2, &l),
        Err(DecodeError::FrameTooLarge { limit: 30 })
    );
    let mut buf = BytesMut::from(&b"SEND\na:1234567890\nb:1234567890\nc:123"[..]);
    assert_eq!(
        decode(&mut buf, Version::V1_2, &l),
        Err(DecodeError::FrameTooLarge { limit: 30 })
    );
}

#[test]
fn body_is_a_slice_of_the_input_not_a_copy() {
    let mut buf = BytesMut::from(&b"SEND\ncontent-length:5\n\nhello\0"[..]);
    let start = buf.as_ptr() as usize;
    let f = decode(&mut buf, Version::V1_2, &Limits::default())
        .unwrap()
        .unwrap();
    let body = f.body.as_ptr() as usize;
    assert_eq!(body - start, b"SEND\ncontent-length:5\n\n".len());
}

#[test]
fn encoder_writes_content_length_and_escapes() {
    let f = Frame::new(Command::Message)
        .with("a:b", "x\ny")
        .with("content-length", "999")
        .with_body(&b"n\0l"[..]);
    let mut out = BytesMut::new();
    encode(&f, Version::V1_2, &mut out);
    assert_eq!(
        &out[..],
        b"MESSAGE\na\\cb:x\\ny\ncontent-length:3\n\nn\0l\0"
    );
    out.clear();
    encode(
        &Frame::new(Command::Receipt).with("receipt-id", "7"),
        Version::V1_0,
        &mut out,
    );
    assert_eq!(&out[..], b"RECEIPT\nreceipt-id:7\n\n\0");
    out.clear();
    encode(
        &Frame::new(Command::Connected).with("server", "a:b\\c"),
        Version::V1_2,
        &mut out,
    );
    assert_eq!(&out[..], b"CONNECTED\nserver:a:b\\c\n\n\0");
}
