//! The protocol scanners of a session: functions over one frame at a time that keep the
//! protocol state ([`Proto`], [`ConnState`], [`SessionState`]) and say what the relay does
//! with the frame. No I/O: the relay reads and writes sockets, these decide.
//!
//! Message formats: PostgreSQL docs 53.7 "Message Formats"; the flow (units of work ending in
//! ReadyForQuery, the extended protocol's Sync, errors until Sync): 53.2 "Message Flow".

use super::state::SessionState;
use crate::routing::RoutingTable;
use bytes::Bytes;
use control::Side;
use std::collections::HashSet;
use wire::frame::{header, WireError};
use wire::msg;

/// ParseComplete (53.7).
pub const PARSE_COMPLETE: u8 = b'1';

/// Protocol state of a session's stream, both directions.
#[derive(Debug, Clone, Copy)]
pub struct Proto {
    /// Sync, Query and FunctionCall messages sent whose ReadyForQuery has not come back.
    pub in_flight: u32,
    /// Extended-protocol messages sent since the last Sync.
    pub unit_open: bool,
    /// Last ReadyForQuery transaction status (`I`, `T` or `E`).
    pub tx: u8,
    /// The server reported an error in the current unit of work.
    pub unit_error: bool,
    /// The client sent Terminate.
    pub closing: bool,
}

impl Default for Proto {
    fn default() -> Self {
        Proto {
            in_flight: 0,
            unit_open: false,
            tx: msg::TX_IDLE,
            unit_error: false,
            closing: false,
        }
    }
}

impl Proto {
    /// At a transaction boundary: nothing in flight, no extended-protocol batch open, and the
    /// last ReadyForQuery said idle.
    pub fn idle(&self) -> bool {
        self.in_flight == 0 && !self.unit_open && self.tx == msg::TX_IDLE
    }
}

/// What the scanners keep per backend connection.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Named prepared statements that exist on this connection.
    pub known: HashSet<Vec<u8>>,
    /// ParseComplete messages still to drop (answers to Parse messages pgshift injected).
    pub swallow: u32,
}

/// Whether the client scan reads the whole body of a message of type `tag` (the others are
/// forwarded as they stream through). Execute is read only while some portal changes the
/// session state when executed.
pub fn client_inspects(tag: u8, state: &SessionState) -> bool {
    match tag {
        msg::QUERY | msg::PARSE | msg::CLOSE | msg::TERMINATE | msg::BIND => true,
        msg::EXECUTE => state.watches_execute(),
        _ => false,
    }
}

/// What to do with one client frame.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientStep<'a> {
    /// Forward it.
    Forward,
    /// A Bind of named statement `statement`; forward it, after `prepare` (the statement's
    /// Parse message) when the connection does not have the statement yet.
    Bind {
        statement: &'a [u8],
        prepare: Option<Bytes>,
    },
    /// A statement was closed: forward it; an idle spare connection may still hold the
    /// statement and must be dropped.
    Closed,
    /// Terminate: forward it and read no more from the client.
    Terminate,
}

/// Scans one client frame of type `tag`: `frame` is the whole message (tag and length
/// included) when [`client_inspects`] the tag, else whatever part of it is buffered. Updates
/// the protocol state, the session state and `conn` (the connection it goes to). Texts are
/// bytes in the client's encoding, never required to be UTF-8.
///
/// Errors: a malformed Query, Parse, Bind, Execute or Close body (the session ends with
/// 08P01).
pub fn client_frame<'a>(
    tag: u8,
    frame: &'a [u8],
    p: &mut Proto,
    state: &mut SessionState,
    conn: Option<&mut ConnState>,
) -> Result<ClientStep<'a>, WireError> {
    let body = frame.get(5..).unwrap_or_default();
    match tag {
        msg::QUERY => {
            p.in_flight += 1;
            p.unit_open = false;
            state.on_query(msg::query_text(body)?);
        }
        msg::SYNC | msg::FUNCTION_CALL => {
            p.in_flight += 1;
            p.unit_open = false;
            state.on_sync();
        }
        msg::PARSE => {
            p.unit_open = true;
            let (name, sql) = msg::parse_text(body)?;
            state.on_parse(name, sql, frame);
            if !name.is_empty() {
                if let Some(c) = conn {
                    c.known.insert(name.to_vec());
                }
            }
        }
        msg::BIND => {
            p.unit_open = true;
            let (portal, name) = msg::bind_names(body)?;
            state.on_bind(portal, name);
            if name.is_empty() {
                return Ok(ClientStep::Forward);
            }
            // A statement prepared on another connection: prepare it here first.
            let mut prepare = None;
            if let (Some(c), Some(parse)) = (conn, state.statement(name)) {
                if !c.known.contains(name) {
                    c.known.insert(name.to_vec());
                    c.swallow += 1;
                    prepare = Some(parse.clone());
                }
            }
            return Ok(ClientStep::Bind {
                statement: name,
                prepare,
            });
        }
        msg::EXECUTE => {
            p.unit_open = true;
            if state.watches_execute() {
                state.on_execute(msg::execute_portal(body)?);
            }
        }
        msg::CLOSE => {
            p.unit_open = true;
            let (kind, name) = msg::close_target(body)?;
            state.on_close(kind, name);
            if kind == b'S' {
                if let Some(c) = conn {
                    c.known.remove(name);
                }
                return Ok(ClientStep::Closed);
            }
        }
        msg::TERMINATE => {
            p.closing = true;
            return Ok(ClientStep::Terminate);
        }
        msg::COPY_DATA | msg::COPY_DONE | msg::COPY_FAIL => {}
        _ => p.unit_open = true,
    }
    Ok(ClientStep::Forward)
}

/// Where a new unit of work goes, decided at its first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// On the connection in use.
    Go,
    /// Move the session to the table's serving side first (its side or epoch changed, or
    /// the backend is gone).
    Switch,
    /// Run it on `side`'s connection (a shifted read-only unit, or back to the serving side).
    Swap(Side),
}

/// Routes a unit of work under table `t` for a session that follows `side` at `epoch` and
/// whose unit would run on `active` (`None`: no backend). `carried`: the upgrade carries the
/// session's database (otherwise it stays on the source and is never shifted). `shift` says
/// whether the unit goes to the other side (asked only when the table shifts traffic: the
/// weight's roll and the read-only proof).
pub fn route(
    t: &RoutingTable,
    side: Side,
    epoch: u64,
    active: Option<Side>,
    carried: bool,
    shift: impl FnOnce(u8) -> bool,
) -> Route {
    let Some(active) = active else {
        return Route::Switch;
    };
    let serving = serving_side(t, carried);
    if t.epoch != epoch || serving != side {
        return Route::Switch;
    }
    let want = if carried && t.weight > 0 && shift(t.weight) {
        serving.other()
    } else {
        serving
    };
    if want != active {
        Route::Swap(want)
    } else {
        Route::Go
    }
}

/// Whether an extended-protocol batch may run shifted: `buf` starts at the batch's first
/// message, and every message up to its Sync is in it (else `false`: the rest is unknown),
/// each Parse, Bind and Query proven read-only and without a hint of what pins a session
/// (see `pins`); Describe, Execute, Close and Flush change nothing. A Bind of the unnamed
/// statement counts as read-only when the batch parsed it read-only.
pub fn batch_read_only(state: &mut SessionState, buf: &[u8], max_msg: usize) -> bool {
    let mut at = 0;
    let mut unnamed = false;
    while let Ok(Some((tag, total))) = header(&buf[at..], max_msg) {
        if buf.len() - at < total {
            return false;
        }
        let body = &buf[at + 5..at + total];
        at += total;
        match tag {
            msg::SYNC => return true,
            msg::DESCRIBE | msg::EXECUTE | msg::CLOSE | msg::FLUSH => {}
            msg::PARSE => {
                let Ok((name, sql)) = msg::parse_text(body) else {
                    return false;
                };
                if super::track::pin_hints(sql).any() || !state.unit_read_only(tag, Some(body)) {
                    return false;
                }
                if name.is_empty() {
                    unnamed = true;
                }
            }
            msg::BIND => {
                let unnamed_bind = msg::bind_names(body).is_ok_and(|(_, s)| s.is_empty());
                let ok = (unnamed_bind && unnamed) || state.unit_read_only(tag, Some(body));
                if !ok {
                    return false;
                }
            }
            _ => return false,
        }
    }
    false
}

/// The side serving a session under table `t`: the table's, or the source for a database
/// the upgrade does not carry.
pub fn serving_side(t: &RoutingTable, carried: bool) -> Side {
    if carried {
        t.side
    } else {
        Side::Source
    }
}

/// Whether the server scan reads the whole body of a message of type `tag`.
/// `shifted_unanswered`: a shifted unit runs and none of its answer reached the client.
pub fn server_inspects(
    tag: u8,
    conn: &ConnState,
    state: &SessionState,
    shifted_unanswered: bool,
) -> bool {
    match tag {
        msg::READY_FOR_QUERY
        | msg::ERROR_RESPONSE
        | msg::PARAMETER_STATUS
        | msg::NOTIFICATION_RESPONSE => true,
        PARSE_COMPLETE => conn.swallow > 0,
        msg::NOTICE_RESPONSE => shifted_unanswered,
        msg::COMMAND_COMPLETE => state.watches_answers(),
        _ => false,
    }
}

/// What to do with one server frame.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerStep {
    /// Forward it.
    Forward,
    /// Forward it; it is the ReadyForQuery that ends the unit of work (status `I`, nothing
    /// in flight).
    UnitDone,
    /// Keep it from the client: the answer to a message pgshift injected.
    Drop,
    /// Keep it from the client: an error while idle, the server is ending the connection
    /// (the next unit reconnects). The server's message.
    Dying(String),
    /// The shifted unit failed before any answer reached the client (a FATAL error, or a
    /// class 57 notice: that server is going away): run it again on the serving side.
    Replay(String),
    /// A NotificationResponse from the backend process `pid`: forward it, with the pid
    /// that process's client was given in BackendKeyData when it is a pgshift session (the
    /// session's own notifications included), so that clients recognise the sender.
    Notification { pid: i32 },
}

/// Scans one server frame of type `tag`; `frame` is the whole message when
/// [`server_inspects`] the tag (then at least its header otherwise).
pub fn server_frame(
    tag: u8,
    frame: &[u8],
    p: &mut Proto,
    conn: &mut ConnState,
    state: &mut SessionState,
    shifted_unanswered: bool,
) -> ServerStep {
    let body = frame.get(5..).unwrap_or_default();
    match tag {
        msg::READY_FOR_QUERY => {
            if let Some(&s) = body.first() {
                p.tx = s;
            }
            state.on_ready(p.tx);
            p.in_flight = p.in_flight.saturating_sub(1);
            if p.in_flight == 0 && !p.unit_open && p.tx == msg::TX_IDLE {
                return ServerStep::UnitDone;
            }
        }
        PARSE_COMPLETE if conn.swallow > 0 => {
            conn.swallow -= 1;
            return ServerStep::Drop;
        }
        msg::ERROR_RESPONSE if p.idle() => {
            let e = msg::parse_error(body)
                .map(|e| e.to_string())
                .unwrap_or_default();
            return ServerStep::Dying(e);
        }
        msg::ERROR_RESPONSE => {
            if shifted_unanswered {
                let e = msg::parse_error(body).unwrap_or_default();
                if matches!(e.severity.as_str(), "FATAL" | "PANIC") {
                    return ServerStep::Replay(e.to_string());
                }
            }
            p.unit_error = true;
            state.on_error();
        }
        msg::COMMAND_COMPLETE => {
            if let Ok(t) = msg::command_tag(body) {
                state.on_command_complete(t);
            }
        }
        msg::NOTIFICATION_RESPONSE => {
            if let Ok((pid, _)) = msg::notification_pid(body) {
                return ServerStep::Notification { pid };
            }
        }
        msg::NOTICE_RESPONSE if shifted_unanswered => {
            // "terminating connection due to immediate shutdown command" is a WARNING of
            // class 57 (operator intervention).
            let n = msg::parse_error(body).unwrap_or_default();
            if n.sqlstate.starts_with("57") {
                return ServerStep::Replay(n.to_string());
            }
        }
        msg::PARAMETER_STATUS => {
            if let Ok((k, v)) = msg::parse_parameter_status(body) {
                state.client_param(k, v);
            }
        }
        _ => {}
    }
    ServerStep::Forward
}

/// While a shifted unit is unanswered, its answer is held back (read on, not forwarded)
/// until its first ReadyForQuery, so that the other side failing in the middle of it leaves
/// nothing on the client's side and the unit can run again on the serving side. Whether to
/// keep holding `sbuf` (the server bytes read so far): not held are an ErrorResponse or
/// NoticeResponse once whole (the scan decides), an answer of `max` bytes or more, a message
/// that streams (`streaming`), an answer to a Flush before any Sync (`in_flight` 0).
pub fn hold_answer(sbuf: &[u8], streaming: bool, in_flight: u32, max: usize) -> bool {
    // in_flight > 0: a Sync or Query was sent, so a ReadyForQuery will come. (A client that
    // sent Describe + Flush waits for the answer before its Sync: never hold that.)
    if streaming || in_flight == 0 || sbuf.len() >= max {
        return false;
    }
    let mut at = 0;
    while at < sbuf.len() {
        match header(&sbuf[at..], usize::MAX) {
            Ok(Some((tag, total))) => {
                if matches!(
                    tag,
                    msg::READY_FOR_QUERY | msg::ERROR_RESPONSE | msg::NOTICE_RESPONSE
                ) {
                    // Scanned once it is whole (the scan needs its fields).
                    return at + total > sbuf.len();
                }
                at += total;
            }
            // Incomplete header or body: wait for more.
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
    // Whole messages so far, none that ends or breaks the unit: wait for more.
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::BackendAddr;
    use bytes::BytesMut;
    use std::sync::Arc;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        msg::put_msg(&mut b, tag, |b| b.extend_from_slice(body));
        b.to_vec()
    }

    fn parse(name: &str, sql: &str) -> Vec<u8> {
        frame(msg::PARSE, format!("{name}\0{sql}\0\0\0").as_bytes())
    }

    fn bind(stmt: &str) -> Vec<u8> {
        frame(msg::BIND, format!("\0{stmt}\0\0\0\0\0\0\0").as_bytes())
    }

    fn rfq(status: u8) -> Vec<u8> {
        frame(msg::READY_FOR_QUERY, &[status])
    }

    fn error(severity: &str, code: &str) -> Vec<u8> {
        frame(
            msg::ERROR_RESPONSE,
            format!("S{severity}\0V{severity}\0C{code}\0Mboom\0\0").as_bytes(),
        )
    }

    #[test]
    fn extended_protocol_unit_and_statement_replay() {
        let (mut p, mut s) = (Proto::default(), SessionState::new(Vec::new()));
        let mut a = ConnState::default();
        let f = parse("s1", "SELECT 1");
        assert_eq!(
            client_frame(msg::PARSE, &f, &mut p, &mut s, Some(&mut a)).unwrap(),
            ClientStep::Forward
        );
        assert!(p.unit_open && a.known.contains(&b"s1"[..]));
        let b = bind("s1");
        assert_eq!(
            client_frame(msg::BIND, &b, &mut p, &mut s, Some(&mut a)).unwrap(),
            ClientStep::Bind {
                statement: b"s1",
                prepare: None
            }
        );
        // The same Bind on a connection that never saw the Parse: the Parse goes first and
        // its ParseComplete is dropped.
        let mut other = ConnState::default();
        match client_frame(msg::BIND, &b, &mut p, &mut s, Some(&mut other)).unwrap() {
            ClientStep::Bind {
                prepare: Some(pf), ..
            } => assert_eq!(&pf[..], &f[..]),
            x => panic!("{x:?}"),
        }
        assert_eq!(other.swallow, 1);
        let pc = frame(PARSE_COMPLETE, b"");
        assert_eq!(
            server_frame(PARSE_COMPLETE, &pc, &mut p, &mut other, &mut s, false),
            ServerStep::Drop
        );
        assert_eq!(
            server_frame(PARSE_COMPLETE, &pc, &mut p, &mut other, &mut s, false),
            ServerStep::Forward,
            "only the injected one"
        );
        client_frame(
            msg::SYNC,
            &frame(msg::SYNC, b""),
            &mut p,
            &mut s,
            Some(&mut a),
        )
        .unwrap();
        assert!(!p.unit_open && p.in_flight == 1);
        assert_eq!(
            server_frame(
                msg::READY_FOR_QUERY,
                &rfq(b'I'),
                &mut p,
                &mut a,
                &mut s,
                false
            ),
            ServerStep::UnitDone
        );
        let close = frame(msg::CLOSE, b"Ss1\0");
        assert_eq!(
            client_frame(msg::CLOSE, &close, &mut p, &mut s, Some(&mut a)).unwrap(),
            ClientStep::Closed
        );
        assert!(s.statement(b"s1").is_none() && !a.known.contains(&b"s1"[..]));
    }

    #[test]
    fn transactions_end_units_only_when_idle() {
        let (mut p, mut s, mut a) = (
            Proto::default(),
            SessionState::new(Vec::new()),
            ConnState::default(),
        );
        let q = frame(msg::QUERY, b"BEGIN\0");
        client_frame(msg::QUERY, &q, &mut p, &mut s, Some(&mut a)).unwrap();
        assert_eq!(
            server_frame(
                msg::READY_FOR_QUERY,
                &rfq(b'T'),
                &mut p,
                &mut a,
                &mut s,
                false
            ),
            ServerStep::Forward
        );
        assert!(!p.idle());
        client_frame(msg::QUERY, &q, &mut p, &mut s, Some(&mut a)).unwrap();
        assert_eq!(
            server_frame(
                msg::ERROR_RESPONSE,
                &error("ERROR", "42601"),
                &mut p,
                &mut a,
                &mut s,
                false
            ),
            ServerStep::Forward
        );
        assert!(p.unit_error);
        server_frame(
            msg::READY_FOR_QUERY,
            &rfq(b'E'),
            &mut p,
            &mut a,
            &mut s,
            false,
        );
        client_frame(
            msg::QUERY,
            &frame(msg::QUERY, b"ROLLBACK\0"),
            &mut p,
            &mut s,
            None,
        )
        .unwrap();
        assert_eq!(
            server_frame(
                msg::READY_FOR_QUERY,
                &rfq(b'I'),
                &mut p,
                &mut a,
                &mut s,
                false
            ),
            ServerStep::UnitDone
        );
        // Idle now: an error is the server ending the connection.
        assert!(matches!(
            server_frame(
                msg::ERROR_RESPONSE,
                &error("FATAL", "57P01"),
                &mut p,
                &mut a,
                &mut s,
                false
            ),
            ServerStep::Dying(_)
        ));
        assert_eq!(
            client_frame(
                msg::TERMINATE,
                &frame(msg::TERMINATE, b""),
                &mut p,
                &mut s,
                None
            )
            .unwrap(),
            ClientStep::Terminate
        );
        assert!(p.closing);
        assert!(client_frame(
            msg::QUERY,
            &frame(msg::QUERY, b"no nul"),
            &mut p,
            &mut s,
            None
        )
        .is_err());
    }

    #[test]
    fn shifted_units_replay_when_the_other_side_goes_away() {
        let (mut p, mut s, mut a) = (
            Proto::default(),
            SessionState::new(Vec::new()),
            ConnState::default(),
        );
        p.in_flight = 1;
        assert!(matches!(
            server_frame(
                msg::ERROR_RESPONSE,
                &error("FATAL", "57P01"),
                &mut p,
                &mut a,
                &mut s,
                true
            ),
            ServerStep::Replay(_)
        ));
        let notice = frame(
            msg::NOTICE_RESPONSE,
            b"SWARNING\0VWARNING\0C57P01\0Mterminating connection\0\0",
        );
        assert!(server_inspects(msg::NOTICE_RESPONSE, &a, &s, true));
        assert!(!server_inspects(msg::NOTICE_RESPONSE, &a, &s, false));
        assert!(matches!(
            server_frame(msg::NOTICE_RESPONSE, &notice, &mut p, &mut a, &mut s, true),
            ServerStep::Replay(_)
        ));
        // An ordinary error of a shifted unit is the unit's answer.
        assert_eq!(
            server_frame(
                msg::ERROR_RESPONSE,
                &error("ERROR", "22012"),
                &mut p,
                &mut a,
                &mut s,
                true
            ),
            ServerStep::Forward
        );
        // Holding: rows are held until the ReadyForQuery is whole; an error is scanned.
        let mut answer = frame(b'T', b"\0\0");
        answer.extend(frame(b'D', b"\0\0"));
        assert!(hold_answer(&answer, false, 1, 1 << 20));
        answer.extend(&rfq(b'I')[..3]);
        assert!(
            hold_answer(&answer, false, 1, 1 << 20),
            "partial ReadyForQuery"
        );
        answer.extend(&rfq(b'I')[3..]);
        assert!(!hold_answer(&answer, false, 1, 1 << 20), "whole: scan it");
        assert!(
            !hold_answer(&answer[..5], false, 0, 1 << 20),
            "Flush before Sync"
        );
        assert!(!hold_answer(&answer, false, 1, 4), "too large");
        assert!(!hold_answer(&error("ERROR", "22012"), false, 1, 1 << 20));
    }

    #[test]
    fn notifications_and_tracked_answers() {
        let (mut p, mut s, mut a) = (
            Proto::default(),
            SessionState::new(Vec::new()),
            ConnState::default(),
        );
        let n = frame(msg::NOTIFICATION_RESPONSE, b"\0\0\x30\x39chan\0payload\0");
        assert!(server_inspects(msg::NOTIFICATION_RESPONSE, &a, &s, false));
        assert_eq!(
            server_frame(
                msg::NOTIFICATION_RESPONSE,
                &n,
                &mut p,
                &mut a,
                &mut s,
                false
            ),
            ServerStep::Notification { pid: 12345 }
        );
        // CommandComplete is read only while a tracked statement awaits its answer.
        assert!(!server_inspects(msg::COMMAND_COMPLETE, &a, &s, false));
        let q = frame(msg::QUERY, b"SET search_path = x\0");
        client_frame(msg::QUERY, &q, &mut p, &mut s, Some(&mut a)).unwrap();
        assert!(server_inspects(msg::COMMAND_COMPLETE, &a, &s, false));
        server_frame(
            msg::COMMAND_COMPLETE,
            &frame(msg::COMMAND_COMPLETE, b"SET\0"),
            &mut p,
            &mut a,
            &mut s,
            false,
        );
        server_frame(
            msg::READY_FOR_QUERY,
            &rfq(b'I'),
            &mut p,
            &mut a,
            &mut s,
            false,
        );
        assert!(s.take_changed());
        assert_eq!(
            s.set_statements().collect::<Vec<_>>(),
            [&b"SET search_path = x"[..]]
        );
        // A LATIN1 query text is no protocol error.
        let latin1 = frame(msg::QUERY, b"SELECT '\xe9'\0");
        assert_eq!(
            client_frame(msg::QUERY, &latin1, &mut p, &mut s, None).unwrap(),
            ClientStep::Forward
        );
    }

    #[test]
    fn shifts_a_batch_only_when_all_of_it_is_read_only_and_here() {
        let mut st = SessionState::new(Vec::new());
        let frame = |tag: u8, body: &[u8]| {
            let mut b = vec![tag];
            b.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            b.extend_from_slice(body);
            b
        };
        let parse = |sql: &str| frame(msg::PARSE, format!("\0{sql}\0\0\0").as_bytes());
        let bind = frame(msg::BIND, b"\0\0\0\0\0\0\0\0");
        let exec = frame(msg::EXECUTE, b"\0\0\0\0\0");
        let sync = frame(msg::SYNC, b"");
        let batch = |parts: &[&[u8]]| parts.concat();
        let sel = parse("SELECT 1");
        let ins = parse("INSERT INTO t VALUES (1)");
        let lock = parse("SELECT pg_advisory_lock(1)");
        let max = 1 << 20;
        assert!(batch_read_only(
            &mut st,
            &batch(&[&sel, &bind, &exec, &sync]),
            max
        ));
        // A write after a read: the whole batch stays on the serving side.
        assert!(!batch_read_only(
            &mut st,
            &batch(&[&sel, &bind, &exec, &ins, &bind, &exec, &sync]),
            max
        ));
        // Not all of it here yet.
        assert!(!batch_read_only(
            &mut st,
            &batch(&[&sel, &bind, &exec]),
            max
        ));
        let whole = batch(&[&sel, &bind, &exec, &sync]);
        assert!(!batch_read_only(&mut st, &whole[..whole.len() - 2], max));
        // What may pin the session.
        assert!(!batch_read_only(
            &mut st,
            &batch(&[&lock, &bind, &exec, &sync]),
            max
        ));
        // A Bind of an unnamed statement parsed in an earlier batch: unknown.
        assert!(!batch_read_only(
            &mut st,
            &batch(&[&bind, &exec, &sync]),
            max
        ));
    }

    #[test]
    fn routes_units() {
        let addr = Arc::new(BackendAddr {
            host: "h".into(),
            port: 1,
            dbname: "d".into(),
            auth: vec![config::ServerAuth::ScramSha256],
            tls: crate::routing::TlsTo(None),
        });
        let t = RoutingTable {
            epoch: 2,
            side: Side::Source,
            paused: false,
            next: None,
            weight: 0,
            source: addr.clone(),
            target: addr,
        };
        let never = |_: u8| -> bool { panic!("no shift without weight") };
        assert_eq!(
            route(&t, Side::Source, 2, Some(Side::Source), true, never),
            Route::Go
        );
        assert_eq!(
            route(&t, Side::Source, 1, Some(Side::Source), true, never),
            Route::Switch
        );
        assert_eq!(
            route(&t, Side::Target, 2, Some(Side::Target), true, never),
            Route::Switch
        );
        assert_eq!(route(&t, Side::Source, 2, None, true, never), Route::Switch);
        // A unit that ran shifted leaves the session on the other side's connection.
        assert_eq!(
            route(&t, Side::Source, 2, Some(Side::Target), true, never),
            Route::Swap(Side::Source)
        );
        let w = RoutingTable { weight: 25, ..t };
        assert_eq!(
            route(&w, Side::Source, 2, Some(Side::Source), true, |p| p == 25),
            Route::Swap(Side::Target)
        );
        // A database the upgrade does not carry stays on the source, unshifted.
        let cut = RoutingTable {
            side: Side::Target,
            epoch: 3,
            ..w.clone()
        };
        assert_eq!(
            route(&cut, Side::Source, 3, Some(Side::Source), false, never),
            Route::Go
        );
        assert_eq!(
            route(&cut, Side::Source, 2, Some(Side::Source), false, never),
            Route::Switch
        );
        assert_eq!(
            route(&w, Side::Source, 2, Some(Side::Source), true, |_| false),
            Route::Go
        );
    }
}
