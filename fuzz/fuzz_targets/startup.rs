//! The start-up phase decoder (`wire::StartupCodec`): packets before login (StartupMessage,
//! SSLRequest, GSSENCRequest, CancelRequest), read from untrusted clients.
//!
//! Invariants: no panic; decoding the input at once and decoding it as it arrives one byte
//! at a time give the same packets and the same error; a decoded packet consumes exactly its
//! length field's bytes and nothing is consumed by `Ok(None)`; every packet re-encoded with
//! the `wire::msg` builders gives back the bytes it was read from (protocol 3.0).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use wire::frame::{
    StartupCodec, StartupFrame, GSSENC_REQUEST_CODE, MAX_STARTUP_LEN, PROTOCOL_3_0,
    SSL_REQUEST_CODE,
};
use wire::msg;

/// Decodes every packet of `buf`; the packets with the bytes each came from, and the error
/// that stopped decoding.
fn decode_all(buf: &mut BytesMut) -> (Vec<(StartupFrame, Vec<u8>)>, Option<String>) {
    let mut out = Vec::new();
    loop {
        let before = buf.clone();
        match StartupCodec.decode(buf) {
            Ok(Some(f)) => {
                let used = before.len() - buf.len();
                assert!(
                    (8..=MAX_STARTUP_LEN).contains(&used),
                    "consumed {used} bytes"
                );
                let len = i32::from_be_bytes([before[0], before[1], before[2], before[3]]);
                assert_eq!(
                    used, len as usize,
                    "consumed bytes differ from the length field"
                );
                out.push((f, before[..used].to_vec()));
            }
            Ok(None) => {
                assert_eq!(&before[..], &buf[..], "Ok(None) consumed bytes");
                return (out, None);
            }
            Err(e) => return (out, Some(e.to_string())),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (whole, whole_err) = decode_all(&mut BytesMut::from(data));

    // The same bytes arriving one at a time.
    let mut inc = Vec::new();
    let mut inc_err = None;
    let mut buf = BytesMut::new();
    for &b in data {
        buf.extend_from_slice(&[b]);
        let (mut got, err) = decode_all(&mut buf);
        inc.append(&mut got);
        if err.is_some() {
            inc_err = err;
            break;
        }
    }
    assert_eq!(whole, inc, "whole and incremental decoding differ");
    assert_eq!(
        whole_err, inc_err,
        "whole and incremental decoding fail differently"
    );

    for (f, bytes) in &whole {
        let mut again = BytesMut::new();
        match f {
            StartupFrame::SslRequest => {
                again.extend_from_slice(&8i32.to_be_bytes());
                again.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
            }
            StartupFrame::GssEncRequest => {
                again.extend_from_slice(&8i32.to_be_bytes());
                again.extend_from_slice(&GSSENC_REQUEST_CODE.to_be_bytes());
            }
            StartupFrame::Cancel { pid, secret } => msg::cancel_request(&mut again, *pid, *secret),
            StartupFrame::Startup { version, params } => {
                assert_eq!(version >> 16, 3);
                if *version != PROTOCOL_3_0 {
                    continue;
                }
                let p: Vec<(&str, &str)> = params
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                assert!(p.iter().all(|(k, _)| !k.is_empty()));
                msg::startup_message(&mut again, &p);
                assert_eq!(
                    StartupCodec.decode(&mut again.clone()).unwrap().as_ref(),
                    Some(f)
                );
            }
        }
        // SSLRequest and GSSENCRequest may carry ignored bytes after the code.
        if !matches!(f, StartupFrame::SslRequest | StartupFrame::GssEncRequest) {
            assert_eq!(&again[..], &bytes[..], "re-encoding {f:?} differs");
        }
    }
});
