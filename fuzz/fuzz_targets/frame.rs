//! The regular message decoder (`wire::FrameCodec` and `wire::frame::header`), used on both
//! directions of every session.
//!
//! The first two input bytes choose the size limit (`max_len`, 4..=65539); the rest is the
//! stream. Invariants: no panic; `header` agrees with the codec (tag, total length, error);
//! whole and one-byte-at-a-time decoding give the same frames and error; each frame
//! consumes `5 + body` bytes and re-encodes to exactly those bytes; `decode_eof` reports a
//! truncated stream exactly when bytes are left over.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};
use wire::frame::{header, Frame, FrameCodec, WireError};

fn decode_all(codec: &mut FrameCodec, buf: &mut BytesMut) -> (Vec<Frame>, Option<String>) {
    let mut out = Vec::new();
    loop {
        let before = buf.clone();
        let h = header(&before, codec.max_len);
        match codec.decode(buf) {
            Ok(Some(f)) => {
                let (tag, total) = h.expect("header failed where decode succeeded").unwrap();
                assert_eq!(tag, f.tag);
                assert_eq!(total, 5 + f.body.len());
                assert!(total - 1 <= codec.max_len);
                assert_eq!(before.len() - buf.len(), total);
                let mut enc = BytesMut::new();
                codec.encode(f.clone(), &mut enc).unwrap();
                assert_eq!(&enc[..], &before[..total], "re-encoding differs");
                out.push(f);
            }
            Ok(None) => {
                assert_eq!(&before[..], &buf[..], "Ok(None) consumed bytes");
                if let Ok(Some((_, total))) = h {
                    assert!(before.len() < total);
                } else {
                    assert!(matches!(h, Ok(None)));
                    assert!(before.len() < 5);
                }
                return (out, None);
            }
            Err(e) => {
                assert!(!matches!(e, WireError::Io(_) | WireError::Truncated));
                assert_eq!(h.unwrap_err().to_string(), e.to_string());
                return (out, Some(e.to_string()));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max_len = 4 + u16::from_be_bytes([data[0], data[1]]) as usize;
    let data = &data[2..];
    let mut codec = FrameCodec::new(max_len);

    let mut buf = BytesMut::from(data);
    let (whole, whole_err) = decode_all(&mut codec, &mut buf);
    if whole_err.is_none() {
        match codec.decode_eof(&mut buf.clone()) {
            Ok(None) => assert!(buf.is_empty()),
            Err(WireError::Truncated) => assert!(!buf.is_empty()),
            other => panic!("decode_eof after the last frame: {other:?}"),
        }
    }

    let mut inc = Vec::new();
    let mut inc_err = None;
    let mut buf = BytesMut::new();
    for &b in data {
        buf.extend_from_slice(&[b]);
        let (mut got, err) = decode_all(&mut codec, &mut buf);
        inc.append(&mut got);
        if err.is_some() {
            inc_err = err;
            break;
        }
    }
    assert_eq!(whole, inc, "whole and incremental decoding differ");
    assert_eq!(whole_err, inc_err);
});
