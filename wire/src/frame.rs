//! Framing (PostgreSQL docs 53.7 "Message Formats").
//!
//! Startup-phase messages have no type byte: `Int32 length` (including itself) then a body
//! whose first `Int32` is a protocol code. Every later message is `Byte1 tag`, `Int32 length`
//! (including itself, excluding the tag), body.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Protocol 3.0 version code (53.7 StartupMessage).
pub const PROTOCOL_3_0: i32 = 196608;
/// SSLRequest code (53.7 SSLRequest).
pub const SSL_REQUEST_CODE: i32 = 80877103;
/// GSSENCRequest code (53.7 GSSENCRequest).
pub const GSSENC_REQUEST_CODE: i32 = 80877104;
/// CancelRequest code (53.7 CancelRequest).
pub const CANCEL_REQUEST_CODE: i32 = 80877102;
/// Largest startup-phase packet PostgreSQL accepts (`MAX_STARTUP_PACKET_LENGTH`, 10000 bytes).
pub const MAX_STARTUP_LEN: usize = 10000;

/// A protocol violation by the peer. Each maps to SQLSTATE 08P01 (protocol_violation) for
/// the `ErrorResponse` sent before closing, except I/O errors, which end the connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid message length {len} for message type '{tag}'")]
    BadLength { tag: char, len: i64 },
    #[error("message type '{tag}' of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { tag: char, len: usize, max: usize },
    #[error("invalid startup packet length {0}")]
    BadStartupLength(i64),
    #[error("unsupported frontend protocol {major}.{minor}: pgshift speaks 3.0")]
    UnsupportedProtocol { major: i32, minor: i32 },
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
    #[error("connection closed in the middle of a message")]
    Truncated,
}

impl WireError {
    /// SQLSTATE for an `ErrorResponse` describing this error (Appendix A "PostgreSQL Error Codes").
    pub fn sqlstate(&self) -> &'static str {
        match self {
            WireError::Io(_) | WireError::Truncated => "08006",
            _ => "08P01",
        }
    }
    pub fn malformed(what: &'static str, why: impl Into<String>) -> WireError {
        WireError::Malformed {
            what,
            why: why.into(),
        }
    }
}

/// A startup-phase packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupFrame {
    /// SSLRequest: answer `S` or `N` (one byte), then expect another startup packet.
    SslRequest,
    /// GSSENCRequest: answer `N`, then expect another startup packet.
    GssEncRequest,
    /// CancelRequest with the key the client was given in `BackendKeyData`.
    Cancel { pid: i32, secret: i32 },
    /// StartupMessage: protocol version code and the parameters (`user`, `database`, ...), in order.
    Startup {
        version: i32,
        params: Vec<(String, String)>,
    },
}

impl StartupFrame {
    /// Value of a startup parameter.
    pub fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Decoder of startup-phase packets (client → server).
#[derive(Debug, Default)]
pub struct StartupCodec;

impl Decoder for StartupCodec {
    type Item = StartupFrame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<StartupFrame>, WireError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([src[0], src[1], src[2], src[3]]) as i64;
        if !(8..=MAX_STARTUP_LEN as i64).contains(&len) {
            return Err(WireError::BadStartupLength(len));
        }
        let len = len as usize;
        if src.len() < len {
            src.reserve(len - src.len());
            return Ok(None);
        }
        let mut pkt = src.split_to(len);
        pkt.advance(4);
        let code = pkt.get_i32();
        match code {
            SSL_REQUEST_CODE => Ok(Some(StartupFrame::SslRequest)),
            GSSENC_REQUEST_CODE => Ok(Some(StartupFrame::GssEncRequest)),
            CANCEL_REQUEST_CODE => {
                if pkt.len() != 8 {
                    return Err(WireError::malformed(
                        "CancelRequest",
                        format!("{} key bytes, expected 8", pkt.len()),
                    ));
                }
                Ok(Some(StartupFrame::Cancel {
                    pid: pkt.get_i32(),
                    secret: pkt.get_i32(),
                }))
            }
            version => {
                let major = version >> 16;
                if major != 3 {
                    return Err(WireError::UnsupportedProtocol {
                        major,
                        minor: version & 0xffff,
                    });
                }
                let mut params = Vec::new();
                let mut rest: &[u8] = &pkt;
                loop {
                    let key = take_cstr(&mut rest, "StartupMessage")?;
                    if key.is_empty() {
                        break;
                    }
                    let val = take_cstr(&mut rest, "StartupMessage")?;
                    params.push((key.to_string(), val.to_string()));
                }
                if !rest.is_empty() {
                    return Err(WireError::malformed(
                        "StartupMessage",
                        "trailing bytes after the terminator",
                    ));
                }
                Ok(Some(StartupFrame::Startup { version, params }))
            }
        }
    }
}

/// One regular message: its tag and its body (without tag and length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// Decoder/encoder of regular messages, either direction, with a size limit.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    /// Largest accepted message (length field value), in bytes.
    pub max_len: usize,
}

impl FrameCodec {
    pub fn new(max_len: usize) -> Self {
        FrameCodec { max_len }
    }
}

/// Parse the 5-byte header at the start of `buf`: `(tag, total frame length including tag)`.
/// `Ok(None)` when fewer than 5 bytes are there. Rejects lengths below 4 (the length counts
/// itself) and above `max_len`.
#[inline]
pub fn header(buf: &[u8], max_len: usize) -> Result<Option<(u8, usize)>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(WireError::BadLength {
            tag: buf[0] as char,
            len: len as i64,
        });
    }
    let len = len as usize;
    if len > max_len {
        return Err(WireError::TooLarge {
            tag: buf[0] as char,
            len,
            max: max_len,
        });
    }
    Ok(Some((buf[0], len + 1)))
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        let Some((tag, total)) = header(src, self.max_len)? else {
            return Ok(None);
        };
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let mut f = src.split_to(total);
        f.advance(5);
        Ok(Some(Frame {
            tag,
            body: f.freeze(),
        }))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        match self.decode(buf)? {
            Some(f) => Ok(Some(f)),
            None if buf.is_empty() => Ok(None),
            None => Err(WireError::Truncated),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = WireError;
    fn encode(&mut self, f: Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        dst.reserve(5 + f.body.len());
        dst.extend_from_slice(&[f.tag]);
        dst.extend_from_slice(&((f.body.len() + 4) as i32).to_be_bytes());
        dst.extend_from_slice(&f.body);
        Ok(())
    }
}

/// Read a NUL-terminated UTF-8 string off the front of `buf`.
pub fn take_cstr<'a>(buf: &mut &'a [u8], what: &'static str) -> Result<&'a str, WireError> {
    let Some(nul) = buf.iter().position(|&b| b == 0) else {
        return Err(WireError::malformed(what, "string without terminating NUL"));
    };
    let s = std::str::from_utf8(&buf[..nul])
        .map_err(|_| WireError::malformed(what, "string is not valid UTF-8"))?;
    *buf = &buf[nul + 1..];
    Ok(s)
}

/// Read a NUL-terminated string off the front of `buf` as bytes, in whatever encoding the
/// peer uses: SQL texts, names and server messages are in the session's `client_encoding`
/// (PostgreSQL docs 24.3.3 "Automatic Character Set Conversion Between Server and Client"),
/// not necessarily UTF-8.
pub fn take_cbytes<'a>(buf: &mut &'a [u8], what: &'static str) -> Result<&'a [u8], WireError> {
    let Some(nul) = buf.iter().position(|&b| b == 0) else {
        return Err(WireError::malformed(what, "string without terminating NUL"));
    };
    let s = &buf[..nul];
    *buf = &buf[nul + 1..];
    Ok(s)
}

/// Read a big-endian Int32 off the front of `buf`.
pub fn take_i32(buf: &mut &[u8], what: &'static str) -> Result<i32, WireError> {
    if buf.len() < 4 {
        return Err(WireError::malformed(what, "message too short"));
    }
    let v = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    *buf = &buf[4..];
    Ok(v)
}

/// Read a big-endian Int16 off the front of `buf`.
pub fn take_i16(buf: &mut &[u8], what: &'static str) -> Result<i16, WireError> {
    if buf.len() < 2 {
        return Err(WireError::malformed(what, "message too short"));
    }
    let v = i16::from_be_bytes([buf[0], buf[1]]);
    *buf = &buf[2..];
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_bytes(params: &[(&str, &str)]) -> BytesMut {
        let mut body = Vec::new();
        body.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut b = BytesMut::new();
        b.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        b.extend_from_slice(&body);
        b
    }

    #[test]
    fn startup_roundtrip_and_partial() {
        let full = startup_bytes(&[("user", "app"), ("database", "db")]);
        let mut part = BytesMut::from(&full[..7]);
        assert_eq!(StartupCodec.decode(&mut part).unwrap(), None);
        let mut b = full.clone();
        let f = StartupCodec.decode(&mut b).unwrap().unwrap();
        assert_eq!(
            f,
            StartupFrame::Startup {
                version: PROTOCOL_3_0,
                params: vec![
                    ("user".into(), "app".into()),
                    ("database".into(), "db".into())
                ]
            }
        );
        assert!(b.is_empty());
    }

    #[test]
    fn startup_rejects_garbage() {
        let mut b = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0][..]);
        assert!(matches!(
            StartupCodec.decode(&mut b),
            Err(WireError::BadStartupLength(_))
        ));
        let mut b = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(StartupCodec.decode(&mut b).is_err());
        let mut b = BytesMut::from(&[0, 0, 0, 8, 0, 2, 0, 0][..]);
        assert!(matches!(
            StartupCodec.decode(&mut b),
            Err(WireError::UnsupportedProtocol { major: 2, .. })
        ));
        // missing terminator
        let mut b = BytesMut::from(&[0, 0, 0, 12, 0, 3, 0, 0, b'u', b's', b'e', b'r'][..]);
        assert!(StartupCodec.decode(&mut b).is_err());
    }

    #[test]
    fn cancel_and_ssl() {
        let mut b = BytesMut::new();
        b.extend_from_slice(&16i32.to_be_bytes());
        b.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        b.extend_from_slice(&7i32.to_be_bytes());
        b.extend_from_slice(&9i32.to_be_bytes());
        b.extend_from_slice(&8i32.to_be_bytes());
        b.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        assert_eq!(
            StartupCodec.decode(&mut b).unwrap(),
            Some(StartupFrame::Cancel { pid: 7, secret: 9 })
        );
        assert_eq!(
            StartupCodec.decode(&mut b).unwrap(),
            Some(StartupFrame::SslRequest)
        );
    }

    #[test]
    fn frames_limits() {
        let mut c = FrameCodec::new(1024);
        let mut b = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(c.decode(&mut b), Err(WireError::TooLarge { .. })));
        let mut b = BytesMut::from(&[b'Q', 0, 0, 0, 2][..]);
        assert!(matches!(c.decode(&mut b), Err(WireError::BadLength { .. })));
        let mut b = BytesMut::from(&[b'S', 0, 0, 0, 4, b'Q', 0, 0][..]);
        let f = c.decode(&mut b).unwrap().unwrap();
        assert_eq!(f.tag, b'S');
        assert!(f.body.is_empty());
        assert_eq!(c.decode(&mut b).unwrap(), None);
        assert!(matches!(c.decode_eof(&mut b), Err(WireError::Truncated)));
        let mut out = BytesMut::new();
        c.encode(
            Frame {
                tag: b'Q',
                body: Bytes::from_static(b"select 1\0"),
            },
            &mut out,
        )
        .unwrap();
        let back = c.decode(&mut out).unwrap().unwrap();
        assert_eq!(&back.body[..], b"select 1\0");
    }
}
