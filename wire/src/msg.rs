//! Typed views of the messages pgshift writes and reads (PostgreSQL docs 53.7
//! "Message Formats"). Builders append one complete message to a `BytesMut`; parsers take a
//! message body (without tag and length) and borrow from it.

use crate::frame::{take_cstr, take_i16, take_i32, WireError, CANCEL_REQUEST_CODE, PROTOCOL_3_0};
use bytes::{BufMut, BytesMut};

// ---- backend message tags (53.7) ----
pub const AUTHENTICATION: u8 = b'R';
pub const BACKEND_KEY_DATA: u8 = b'K';
pub const PARAMETER_STATUS: u8 = b'S';
pub const READY_FOR_QUERY: u8 = b'Z';
pub const ERROR_RESPONSE: u8 = b'E';
pub const NOTICE_RESPONSE: u8 = b'N';
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
pub const COMMAND_COMPLETE: u8 = b'C';
pub const NOTIFICATION_RESPONSE: u8 = b'A';
pub const DATA_ROW: u8 = b'D';
// ---- frontend message tags (53.7) ----
pub const QUERY: u8 = b'Q';
pub const PARSE: u8 = b'P';
pub const BIND: u8 = b'B';
pub const EXECUTE: u8 = b'E';
pub const DESCRIBE: u8 = b'D';
pub const CLOSE: u8 = b'C';
pub const SYNC: u8 = b'S';
pub const FLUSH: u8 = b'H';
pub const FUNCTION_CALL: u8 = b'F';
pub const TERMINATE: u8 = b'X';
pub const PASSWORD: u8 = b'p';
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';
pub const COPY_FAIL: u8 = b'f';

/// Transaction status of `ReadyForQuery` (53.7): idle, in a transaction block, in a failed one.
pub const TX_IDLE: u8 = b'I';
pub const TX_BLOCK: u8 = b'T';
pub const TX_FAILED: u8 = b'E';

/// Append a message: tag, length, then whatever `body` writes.
#[inline]
pub fn put_msg(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

// ---------------------------------------------------------------- backend → frontend

/// AuthenticationOk (R, 0).
pub fn auth_ok(buf: &mut BytesMut) {
    put_msg(buf, AUTHENTICATION, |b| b.put_i32(0));
}
/// AuthenticationCleartextPassword (R, 3).
pub fn auth_cleartext(buf: &mut BytesMut) {
    put_msg(buf, AUTHENTICATION, |b| b.put_i32(3));
}
/// AuthenticationMD5Password (R, 5, salt).
pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    put_msg(buf, AUTHENTICATION, |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}
/// AuthenticationSASL (R, 10, mechanism names).
pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    put_msg(buf, AUTHENTICATION, |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m);
        }
        b.put_u8(0);
    });
}
/// AuthenticationSASLContinue (R, 11, data).
pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    put_msg(buf, AUTHENTICATION, |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}
/// AuthenticationSASLFinal (R, 12, data).
pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    put_msg(buf, AUTHENTICATION, |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}
/// ParameterStatus (S).
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    put_msg(buf, PARAMETER_STATUS, |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}
/// BackendKeyData (K): process id and secret key for CancelRequest.
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    put_msg(buf, BACKEND_KEY_DATA, |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}
/// ReadyForQuery (Z) with transaction status `I`, `T` or `E`.
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    put_msg(buf, READY_FOR_QUERY, |b| b.put_u8(status));
}
/// NegotiateProtocolVersion (v): newest minor version supported and the unrecognised
/// `_pq_.` options (53.2.1 "Start-up").
pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: i32, unrecognized: &[&str]) {
    put_msg(buf, NEGOTIATE_PROTOCOL_VERSION, |b| {
        b.put_i32(minor);
        b.put_i32(unrecognized.len() as i32);
        for o in unrecognized {
            put_cstr(b, o);
        }
    });
}

/// ErrorResponse (E) or NoticeResponse (N) with severity, SQLSTATE, message and optional
/// detail and hint (53.8 "Error and Notice Message Fields").
pub fn error_response(
    buf: &mut BytesMut,
    severity: &str,
    sqlstate: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    notice_or_error(
        buf,
        ERROR_RESPONSE,
        severity,
        sqlstate,
        message,
        detail,
        hint,
    )
}
/// NoticeResponse (N); fields as in [`error_response`].
pub fn notice_response(buf: &mut BytesMut, severity: &str, sqlstate: &str, message: &str) {
    notice_or_error(
        buf,
        NOTICE_RESPONSE,
        severity,
        sqlstate,
        message,
        None,
        None,
    )
}
fn notice_or_error(
    buf: &mut BytesMut,
    tag: u8,
    severity: &str,
    sqlstate: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    put_msg(buf, tag, |b| {
        b.put_u8(b'S');
        put_cstr(b, severity);
        b.put_u8(b'V');
        put_cstr(b, severity);
        b.put_u8(b'C');
        put_cstr(b, sqlstate);
        b.put_u8(b'M');
        put_cstr(b, message);
        if let Some(d) = detail {
            b.put_u8(b'D');
            put_cstr(b, d);
        }
        if let Some(h) = hint {
            b.put_u8(b'H');
            put_cstr(b, h);
        }
        b.put_u8(0);
    });
}

/// RowDescription (T) of text columns (type `text`, OID 25).
pub fn row_description_text(buf: &mut BytesMut, columns: &[&str]) {
    put_msg(buf, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for c in columns {
            put_cstr(b, c);
            b.put_i32(0); // table OID
            b.put_i16(0); // attribute number
            b.put_i32(25); // type OID: text
            b.put_i16(-1); // type size
            b.put_i32(-1); // type modifier
            b.put_i16(0); // text format
        }
    });
}
/// DataRow (D) of text values; `None` is SQL NULL.
pub fn data_row(buf: &mut BytesMut, values: &[Option<&str>]) {
    put_msg(buf, b'D', |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(s) => {
                    b.put_i32(s.len() as i32);
                    b.put_slice(s.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    });
}
/// CommandComplete (C) with its command tag, e.g. `SELECT 1`.
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    put_msg(buf, b'C', |b| put_cstr(b, tag));
}
/// EmptyQueryResponse (I).
pub fn empty_query_response(buf: &mut BytesMut) {
    put_msg(buf, b'I', |_| {});
}

// ---------------------------------------------------------------- frontend → backend

/// StartupMessage, protocol 3.0, with parameters in order.
pub fn startup_message(buf: &mut BytesMut, params: &[(&str, &str)]) {
    let at = buf.len();
    buf.put_i32(0);
    buf.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(buf, k);
        put_cstr(buf, v);
    }
    buf.put_u8(0);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}
/// CancelRequest for backend `pid` with `secret`.
pub fn cancel_request(buf: &mut BytesMut, pid: i32, secret: i32) {
    buf.put_i32(16);
    buf.put_i32(CANCEL_REQUEST_CODE);
    buf.put_i32(pid);
    buf.put_i32(secret);
}
/// PasswordMessage (p) carrying a cleartext password or an MD5 response.
pub fn password_message(buf: &mut BytesMut, password: &str) {
    put_msg(buf, PASSWORD, |b| put_cstr(b, password));
}
/// SASLInitialResponse (p): mechanism and initial client response.
pub fn sasl_initial_response(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    put_msg(buf, PASSWORD, |b| {
        put_cstr(b, mechanism);
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}
/// SASLResponse (p).
pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) {
    put_msg(buf, PASSWORD, |b| b.put_slice(data));
}
/// Query (Q), simple query protocol.
pub fn query(buf: &mut BytesMut, sql: &str) {
    put_msg(buf, QUERY, |b| put_cstr(b, sql));
}
/// Sync (S).
/// Query message with a SQL text in the client's encoding (not necessarily UTF-8).
pub fn query_bytes(buf: &mut BytesMut, sql: &[u8]) {
    put_msg(buf, QUERY, |b| {
        b.put_slice(sql);
        b.put_u8(0);
    });
}

pub fn sync(buf: &mut BytesMut) {
    put_msg(buf, SYNC, |_| {});
}
/// Terminate (X).
pub fn terminate(buf: &mut BytesMut) {
    put_msg(buf, TERMINATE, |_| {});
}

// ---------------------------------------------------------------- parsers

/// An Authentication request from the server (R).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    Ok,
    Cleartext,
    Md5 {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<&'a str>,
    },
    SaslContinue {
        data: &'a [u8],
    },
    SaslFinal {
        data: &'a [u8],
    },
    /// Kerberos, GSS, SSPI: not supported by pgshift toward a backend.
    Other(i32),
}

/// Parse an Authentication message body.
pub fn parse_auth(body: &[u8]) -> Result<AuthRequest<'_>, WireError> {
    let mut b = body;
    let code = take_i32(&mut b, "Authentication")?;
    Ok(match code {
        0 => AuthRequest::Ok,
        3 => AuthRequest::Cleartext,
        5 => {
            if b.len() != 4 {
                return Err(WireError::malformed(
                    "AuthenticationMD5Password",
                    "salt is not 4 bytes",
                ));
            }
            AuthRequest::Md5 {
                salt: [b[0], b[1], b[2], b[3]],
            }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = take_cstr(&mut b, "AuthenticationSASL")?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => AuthRequest::SaslContinue { data: b },
        12 => AuthRequest::SaslFinal { data: b },
        other => AuthRequest::Other(other),
    })
}

/// SASLInitialResponse body: mechanism and data (`None` when the length is -1).
pub fn parse_sasl_initial(body: &[u8]) -> Result<(&str, &[u8]), WireError> {
    let mut b = body;
    let mech = take_cstr(&mut b, "SASLInitialResponse")?;
    let len = take_i32(&mut b, "SASLInitialResponse")?;
    if len == -1 {
        return Ok((mech, &[]));
    }
    if len < 0 || len as usize != b.len() {
        return Err(WireError::malformed(
            "SASLInitialResponse",
            format!("data length {len} does not match the message"),
        ));
    }
    Ok((mech, b))
}

/// PasswordMessage body: the password string.
pub fn parse_password(body: &[u8]) -> Result<&str, WireError> {
    let mut b = body;
    let s = take_cstr(&mut b, "PasswordMessage")?;
    Ok(s)
}

/// Query body: the SQL text.
pub fn parse_query(body: &[u8]) -> Result<&str, WireError> {
    let mut b = body;
    take_cstr(&mut b, "Query")
}

/// Parse body: `(statement name, query text)`; parameter types are left unread.
pub fn parse_parse(body: &[u8]) -> Result<(&str, &str), WireError> {
    let mut b = body;
    let name = take_cstr(&mut b, "Parse")?;
    let q = take_cstr(&mut b, "Parse")?;
    let n = take_i16(&mut b, "Parse")?;
    if n < 0 || b.len() != n as usize * 4 {
        return Err(WireError::malformed(
            "Parse",
            "parameter type count does not match the message",
        ));
    }
    Ok((name, q))
}

/// Query body: the SQL text as sent, in the client's encoding (see
/// [`take_cbytes`](crate::frame::take_cbytes)).
pub fn query_text(body: &[u8]) -> Result<&[u8], WireError> {
    let mut b = body;
    crate::frame::take_cbytes(&mut b, "Query")
}

/// Parse body: `(statement name, query text)` as sent, in the client's encoding; parameter
/// types are left unread (53.7 Parse).
pub fn parse_text(body: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    let mut b = body;
    let name = crate::frame::take_cbytes(&mut b, "Parse")?;
    let q = crate::frame::take_cbytes(&mut b, "Parse")?;
    let n = take_i16(&mut b, "Parse")?;
    if n < 0 || b.len() != n as usize * 4 {
        return Err(WireError::malformed(
            "Parse",
            "parameter type count does not match the message",
        ));
    }
    Ok((name, q))
}

/// Close body as sent: `(kind, name)`, kind `S` (statement) or `P` (portal) (53.7 Close).
pub fn close_target(body: &[u8]) -> Result<(u8, &[u8]), WireError> {
    let Some((&kind, mut b)) = body.split_first() else {
        return Err(WireError::malformed("Close", "empty message"));
    };
    let name = crate::frame::take_cbytes(&mut b, "Close")?;
    Ok((kind, name))
}

/// Bind body: `(portal name, statement name)` as sent; the rest is left unread (53.7 Bind).
pub fn bind_names(body: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    let mut b = body;
    let portal = crate::frame::take_cbytes(&mut b, "Bind")?;
    let stmt = crate::frame::take_cbytes(&mut b, "Bind")?;
    Ok((portal, stmt))
}

/// Execute body: the portal name as sent (53.7 Execute).
pub fn execute_portal(body: &[u8]) -> Result<&[u8], WireError> {
    let mut b = body;
    crate::frame::take_cbytes(&mut b, "Execute")
}

/// CommandComplete body: the command tag, e.g. `SET` or `INSERT 0 1` (53.7 CommandComplete).
pub fn command_tag(body: &[u8]) -> Result<&[u8], WireError> {
    let mut b = body;
    crate::frame::take_cbytes(&mut b, "CommandComplete")
}

/// NotificationResponse body: `(process id of the notifying backend, the rest)` — the rest
/// being the channel and payload strings as sent (53.7 NotificationResponse).
pub fn notification_pid(body: &[u8]) -> Result<(i32, &[u8]), WireError> {
    let mut b = body;
    let pid = take_i32(&mut b, "NotificationResponse")?;
    Ok((pid, b))
}

/// Close body: `(kind, name)`, kind `S` (statement) or `P` (portal).
pub fn parse_close(body: &[u8]) -> Result<(u8, &str), WireError> {
    let mut b = body;
    if b.is_empty() {
        return Err(WireError::malformed("Close", "empty message"));
    }
    let kind = b[0];
    b = &b[1..];
    let name = take_cstr(&mut b, "Close")?;
    Ok((kind, name))
}

/// ParameterStatus body: `(name, value)`.
pub fn parse_parameter_status(body: &[u8]) -> Result<(&str, &str), WireError> {
    let mut b = body;
    let k = take_cstr(&mut b, "ParameterStatus")?;
    let v = take_cstr(&mut b, "ParameterStatus")?;
    Ok((k, v))
}

/// BackendKeyData body: `(pid, secret)`.
pub fn parse_backend_key_data(body: &[u8]) -> Result<(i32, i32), WireError> {
    let mut b = body;
    let pid = take_i32(&mut b, "BackendKeyData")?;
    let secret = take_i32(&mut b, "BackendKeyData")?;
    Ok((pid, secret))
}

/// The fields of an ErrorResponse or NoticeResponse (53.8).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.sqlstate
        )?;
        if let Some(d) = &self.detail {
            write!(f, " DETAIL: {d}")?;
        }
        Ok(())
    }
}

/// Parse an ErrorResponse/NoticeResponse body.
pub fn parse_error(body: &[u8]) -> Result<ErrorFields, WireError> {
    let mut b = body;
    let mut e = ErrorFields::default();
    loop {
        if b.is_empty() {
            return Err(WireError::malformed("ErrorResponse", "missing terminator"));
        }
        let code = b[0];
        b = &b[1..];
        if code == 0 {
            break;
        }
        // Message texts are in the client's encoding: read them lossily.
        let v = crate::frame::take_cbytes(&mut b, "ErrorResponse")?;
        let v = String::from_utf8_lossy(v);
        match code {
            b'S' if e.severity.is_empty() => e.severity = v.into_owned(),
            b'V' => e.severity = v.to_string(),
            b'C' => e.sqlstate = v.to_string(),
            b'M' => e.message = v.to_string(),
            b'D' => e.detail = Some(v.to_string()),
            b'H' => e.hint = Some(v.to_string()),
            _ => {}
        }
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameCodec, StartupCodec, StartupFrame};
    use tokio_util::codec::Decoder;

    #[test]
    fn error_roundtrip() {
        let mut b = BytesMut::new();
        error_response(
            &mut b,
            "FATAL",
            "28P01",
            "password authentication failed for user \"x\"",
            Some("d"),
            None,
        );
        let f = FrameCodec::new(1 << 20).decode(&mut b).unwrap().unwrap();
        assert_eq!(f.tag, b'E');
        let e = parse_error(&f.body).unwrap();
        assert_eq!(e.sqlstate, "28P01");
        assert_eq!(e.severity, "FATAL");
        assert_eq!(e.detail.as_deref(), Some("d"));
    }

    #[test]
    fn startup_builder_decodes() {
        let mut b = BytesMut::new();
        startup_message(&mut b, &[("user", "u"), ("database", "d")]);
        match StartupCodec.decode(&mut b).unwrap().unwrap() {
            StartupFrame::Startup { params, .. } => assert_eq!(params.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parse_messages() {
        let mut body = Vec::new();
        body.extend_from_slice(b"s1\0select $1\0");
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&23i32.to_be_bytes());
        assert_eq!(parse_parse(&body).unwrap(), ("s1", "select $1"));
        assert!(parse_parse(&body[..body.len() - 1]).is_err());
        assert_eq!(parse_close(b"Ss1\0").unwrap(), (b'S', "s1"));
        assert!(parse_close(b"").is_err());
        assert_eq!(parse_query(b"select 1\0").unwrap(), "select 1");
        assert!(parse_query(b"select 1").is_err());
        let mut sasl = Vec::new();
        sasl.extend_from_slice(b"SCRAM-SHA-256\0");
        sasl.extend_from_slice(&3i32.to_be_bytes());
        sasl.extend_from_slice(b"abc");
        assert_eq!(
            parse_sasl_initial(&sasl).unwrap(),
            ("SCRAM-SHA-256", &b"abc"[..])
        );
        sasl.push(b'x');
        assert!(parse_sasl_initial(&sasl).is_err());
        assert_eq!(
            parse_auth(&[0, 0, 0, 5, 1, 2, 3, 4]).unwrap(),
            AuthRequest::Md5 { salt: [1, 2, 3, 4] }
        );
        assert!(parse_auth(&[0, 0]).is_err());
    }
}
