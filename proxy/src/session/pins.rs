//! What pins a session to its server process: state PostgreSQL keeps there that pgshift
//! cannot replay on another one — temporary tables (and sequences, views), session-level
//! advisory locks, and holdable cursors (`DECLARE .. WITH HOLD`).
//!
//! The session's texts only give hints ([`super::track::pin_hints`]); the truth is asked
//! from the server after the unit, while the session is idle: one round trip of the extended
//! protocol with a named statement that is closed again, so nothing of the client's changes
//! (a simple Query would destroy the client's unnamed statement; PostgreSQL docs 55.2.3,
//! "Extended Query").

use crate::backend::{self, Conn};
use bytes::{BufMut, BytesMut};
use wire::msg;

/// What a session holds that cannot move, as bits (see [`describe`]).
pub const TEMP: u8 = 1;
pub const ADVISORY: u8 = 2;
pub const HOLD: u8 = 4;

/// The statement that counts them in the session's own process: temporary relations in its
/// temporary schema (`pg_my_temp_schema()` is 0 while it has none), its session-level
/// advisory locks (at ReadyForQuery `I` no transaction-level one is left), its holdable
/// cursors (`pg_cursors`; views and functions of PostgreSQL docs "System Catalogs", "System
/// Views", "System Information Functions"). Readable by every role.
const CHECK: &str = "SELECT (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema() AND pg_catalog.pg_my_temp_schema() <> 0), \
     (SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()), \
     (SELECT count(*) FROM pg_catalog.pg_cursors WHERE is_holdable)";

/// The name of the check's statement: closed in the same round trip.
const NAME: &str = "pgshift_pins_check";

/// A reason for people: e.g. `temporary tables, session advisory locks`.
pub fn describe(bits: u8) -> String {
    let mut v = Vec::new();
    if bits & TEMP != 0 {
        v.push("temporary tables");
    }
    if bits & ADVISORY != 0 {
        v.push("session advisory locks");
    }
    if bits & HOLD != 0 {
        v.push("WITH HOLD cursors");
    }
    v.join(", ")
}

fn cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

/// Parse, Bind, Execute, Close and Sync of the check (55.7, "Message Formats").
fn request() -> BytesMut {
    let mut b = BytesMut::with_capacity(CHECK.len() + 80);
    msg::put_msg(&mut b, b'P', |b| {
        cstr(b, NAME);
        cstr(b, CHECK);
        b.put_i16(0);
    });
    msg::put_msg(&mut b, b'B', |b| {
        cstr(b, "");
        cstr(b, NAME);
        b.put_i16(0);
        b.put_i16(0);
        b.put_i16(0);
    });
    msg::put_msg(&mut b, b'E', |b| {
        cstr(b, "");
        b.put_i32(0);
    });
    msg::put_msg(&mut b, b'C', |b| {
        b.put_u8(b'S');
        cstr(b, NAME);
    });
    msg::sync(&mut b);
    b
}

/// The three counts of a DataRow in text format.
fn counts(body: &[u8]) -> Option<[i64; 3]> {
    let mut out = [0i64; 3];
    let n = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    if n != 3 {
        return None;
    }
    let mut at = 2;
    for v in &mut out {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        let len = usize::try_from(len).ok()?;
        *v = std::str::from_utf8(body.get(at..at + len)?)
            .ok()?
            .parse()
            .ok()?;
        at += len;
    }
    Some(out)
}

/// Asks `c`'s server process what pins it. `buf` holds bytes already read from `c` (none
/// when idle) and keeps what follows the check's ReadyForQuery; asynchronous messages that
/// arrive meanwhile (NoticeResponse, NotificationResponse, ParameterStatus) are handed to
/// `forward` for the client. `Ok(bits)`; `Err(why)` when the server refused the check (the
/// session stays as it was) or the connection failed (the relay finds out on its next read).
pub async fn check(
    c: &mut Conn,
    buf: &mut BytesMut,
    mut forward: impl FnMut(u8, BytesMut),
) -> Result<u8, String> {
    use tokio::io::AsyncWriteExt;
    c.wr.write_all(&request())
        .await
        .map_err(|e| e.to_string())?;
    let mut bits = None;
    let mut refused = None;
    loop {
        let (tag, body) = backend::read_frame(&mut c.rd, buf, "pins check")
            .await
            .map_err(|e| e.to_string())?;
        match tag {
            msg::READY_FOR_QUERY => break,
            b'D' => {
                bits = counts(&body).map(|[t, a, h]| {
                    (if t > 0 { TEMP } else { 0 })
                        | (if a > 0 { ADVISORY } else { 0 })
                        | (if h > 0 { HOLD } else { 0 })
                });
            }
            b'E' => {
                refused = Some(
                    msg::parse_error(&body)
                        .map(|f| f.message)
                        .unwrap_or_else(|_| "malformed ErrorResponse".into()),
                )
            }
            msg::NOTIFICATION_RESPONSE | msg::NOTICE_RESPONSE | msg::PARAMETER_STATUS => {
                forward(tag, body)
            }
            _ => {}
        }
    }
    match (bits, refused) {
        (_, Some(e)) => Err(e),
        (Some(b), None) => Ok(b),
        (None, None) => Err("no row in the answer".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counts_and_names_the_reasons() {
        let mut b = BytesMut::new();
        msg::data_row(&mut b, &[Some("2"), Some("0"), Some("1")]);
        assert_eq!(counts(&b[5..]), Some([2, 0, 1]));
        msg::data_row(&mut b, &[Some("2")]);
        assert_eq!(counts(&b[b.len() - 11..]), None);
        assert_eq!(describe(TEMP | HOLD), "temporary tables, WITH HOLD cursors");
        assert_eq!(describe(ADVISORY), "session advisory locks");
        // Parse, Bind, Execute, Close, Sync.
        let r = request();
        let mut tags = Vec::new();
        let mut at = 0;
        while at < r.len() {
            tags.push(r[at]);
            at += 1 + u32::from_be_bytes(r[at + 1..at + 5].try_into().unwrap()) as usize;
        }
        assert_eq!(tags, b"PBECS");
    }
}
