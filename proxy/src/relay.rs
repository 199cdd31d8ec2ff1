//! The relay of one client session to its backends, with backend switches at transaction
//! boundaries.
//!
//! Bytes move in whole chunks: the relay reads what a socket has, finds frame boundaries with
//! [`wire::frame::header`], and forwards the complete part in one write. It reads only message
//! tags, `ReadyForQuery`'s transaction status byte, and the text of `Query`, `Parse`, `Bind`
//! and `Close` (session state, prepared statements, the read-only classifier). One task serves
//! both directions and never blocks one on the other (no deadlock when a client pipelines
//! without reading).
//!
//! A session follows the routing table's serving side. During a weighted shift it may also
//! hold a second, read-only connection to the other side: a unit of work (a transaction, or
//! an extended-protocol batch up to Sync) that the classifier proves read-only goes there with
//! the table's probability. That connection is opened with `default_transaction_read_only =
//! on`, so a misclassified write fails instead of diverging the replica.

use crate::backend::{self, BackendConn};
use crate::mirror::Capture;
use crate::server::{Proxy, SessionInfo, UserEntry, STATE_ACTIVE, STATE_HELD, STATE_IDLE};
use crate::session::{connect_backend, connect_backend_within, ClientConn, End};
use crate::tracking::{session_changes, SessionChange};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use control::Side;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use wire::frame::header;
use wire::msg;

/// ParseComplete (53.7).
const PARSE_COMPLETE: u8 = b'1';

/// One backend connection of a session.
struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    side: Side,
    pid: i32,
    secret: i32,
    /// Named prepared statements that exist on this connection.
    known: HashSet<String>,
    /// ParseComplete messages still to drop (answers to Parse messages pgshift injected).
    swallow: u32,
}

impl Conn {
    fn terminate(self) {
        let mut t = BytesMut::new();
        msg::terminate(&mut t);
        let _ = self.wr.try_write(&t);
    }
}

/// How long a shifted read-only transaction waits for a connection to the other side before
/// it runs on the serving side instead, in ms.
const SHIFT_CONNECT_TIMEOUT_MS: u64 = 1000;

/// Largest answer of a shifted read-only unit held back until its ReadyForQuery (see
/// `Relay::hold_shifted_answer`), in bytes. Larger answers stream, and can no longer run
/// again on the serving side if the other side fails in the middle of them.
const SHIFT_HOLD_BYTES: usize = 256 * 1024;

/// What a boundary check decided.
enum Stop {
    /// Traffic is paused: keep the message in the proxy until the table changes.
    Hold,
    /// The table's serving side changed (or the backend is gone): switch, then go on.
    Switch,
    /// This unit goes to the other side's read-only connection (weighted shift).
    Swap(Side),
}

pub(crate) struct Relay<'p> {
    proxy: &'p Proxy,
    info: &'p SessionInfo,
    user: Arc<UserEntry>,
    /// Client start-up parameters other than user and database, replayed on every backend.
    params: Vec<(String, String)>,
    c_rd: OwnedReadHalf,
    c_wr: OwnedWriteHalf,
    cbuf: BytesMut,
    to_server: Bytes,
    /// The connection the current unit runs on; `None` after it was lost while idle.
    backend: Option<Conn>,
    /// The other connection, idle: to the serving side while a unit runs on the read-only
    /// one, or the read-only one while units run on the serving side.
    spare: Option<Conn>,
    sbuf: BytesMut,
    to_client: Bytes,
    /// The serving side this session follows, and the table epoch it runs under.
    side: Side,
    epoch: u64,
    /// Sync/Query/FunctionCall messages sent whose ReadyForQuery has not come back.
    in_flight: u32,
    /// Extended-protocol messages sent since the last Sync.
    unit_open: bool,
    /// Last ReadyForQuery transaction status.
    tx: u8,
    /// Counted in the router's busy sessions; set from the unit's start to its end.
    busy: bool,
    unit_started: Instant,
    /// The unit runs on a backend connection opened for it: no latency sample.
    unit_cold: bool,
    held: bool,
    /// Bytes of the current (streamed) client / server message still to pass through.
    c_skip: usize,
    s_skip: usize,
    c_rescan: bool,
    s_rescan: bool,
    closing: bool,
    /// Named prepared statements: name → the whole Parse message.
    prepared: HashMap<String, Bytes>,
    /// Read-only verdicts of named prepared statements (computed on first need).
    read_only: HashMap<String, bool>,
    /// Session SETs in effect: variable → statement text.
    sets: Vec<(String, String)>,
    pending: Vec<SessionChange>,
    unit_error: bool,
    /// ParameterStatus values the client has seen.
    client_params: HashMap<String, String>,
    max_msg: usize,
    rx: watch::Receiver<u64>,
    /// The client bytes of the current unit while it runs on the other side (weighted shift),
    /// kept so that the unit can run again on the serving side if the other side fails it
    /// before answering; `None` for units on the serving side.
    unit_raw: Option<BytesMut>,
    /// Whether any byte of the current unit's answer was queued for the client.
    unit_answered: bool,
    /// Set when a shifted unit failed unanswered: [`Relay::replay_unit`] runs it again on the
    /// serving side.
    replay: bool,
    /// The side that failed the unit to replay.
    lost_side: Option<Side>,
    /// The current unit's bytes for the mirror, when it was sampled (`[mirror]`).
    capture: Option<Capture>,
    /// `[mirror] max_answer_bytes`.
    mirror_max: usize,
    /// The current unit's bytes for the `mirror` replication driver's capture, while it
    /// records the serving side (see `crate::capture`).
    wcap: Option<Capture>,
    /// Its id once it may write (an `OPEN` record was written).
    wcap_uid: Option<u64>,
    /// Every statement of the unit so far is read-only: nothing to record.
    wcap_ro: bool,
}

/// Serve a logged-in client: open the serving side, finish the start-up, relay.
pub(crate) async fn relay(
    proxy: &Proxy,
    mut c: ClientConn,
    info: &SessionInfo,
    user: Arc<UserEntry>,
    params: Vec<(String, String)>,
) -> Result<(), (ClientConn, End)> {
    let mut rx = proxy.router.subscribe();
    // New sessions wait while traffic is paused, then open the side in force.
    let (side, epoch) = loop {
        rx.borrow_and_update();
        let t = proxy.router.load();
        if !t.paused {
            break (t.side, t.epoch);
        }
        info.state.store(STATE_HELD, Ordering::Relaxed);
        if rx.changed().await.is_err() {
            return Ok(());
        }
    };
    let mut b = match connect_backend(proxy, &user, side, &params).await {
        Ok(b) => b,
        Err(e) => return Err((c, e)),
    };
    crate::metrics::login_accepted(false);
    info.set_backend(side, b.pid, b.secret);
    info.state.store(STATE_IDLE, Ordering::Relaxed);
    msg::auth_ok(&mut c.out);
    let mut client_params = HashMap::new();
    for (k, v) in std::mem::take(&mut b.params) {
        msg::parameter_status(&mut c.out, &k, &v);
        client_params.insert(k, v);
    }
    msg::backend_key_data(&mut c.out, info.pid, info.secret);
    msg::ready_for_query(&mut c.out, msg::TX_IDLE);
    if let Err(e) = c.flush().await {
        return Err((c, e));
    }
    let c_rescan = !c.buf.is_empty();
    let (c_rd, c_wr) = c.stream.into_split();
    let mut r = Relay {
        proxy,
        info,
        user,
        params,
        c_rd,
        c_wr,
        cbuf: c.buf,
        to_server: Bytes::new(),
        backend: Some(conn(b, side)),
        spare: None,
        sbuf: BytesMut::with_capacity(16 * 1024),
        to_client: Bytes::new(),
        side,
        epoch,
        in_flight: 0,
        unit_open: false,
        tx: msg::TX_IDLE,
        busy: false,
        unit_started: Instant::now(),
        unit_cold: false,
        held: false,
        c_skip: 0,
        s_skip: 0,
        c_rescan,
        s_rescan: false,
        closing: false,
        prepared: HashMap::new(),
        read_only: HashMap::new(),
        sets: Vec::new(),
        pending: Vec::new(),
        unit_error: false,
        client_params,
        max_msg: proxy.cfg.proxy.max_message_bytes,
        rx,
        unit_raw: None,
        unit_answered: false,
        replay: false,
        lost_side: None,
        capture: None,
        mirror_max: usize::try_from(proxy.cfg.mirror.max_answer_bytes).unwrap_or(usize::MAX),
        wcap: None,
        wcap_uid: None,
        wcap_ro: false,
    };
    let res = r.run().await;
    // A unit cut short: the server rolls an open transaction back when its connection
    // closes (a commit whose answer was lost is in doubt, as for the client).
    if let (Some(uid), Some(e)) = (r.wcap_uid.take(), proxy.capture.as_deref()) {
        e.close_unit(uid);
    }
    if r.busy {
        proxy.router.leave();
    }
    for c in [r.backend.take(), r.spare.take()].into_iter().flatten() {
        c.terminate();
    }
    match res {
        Ok(()) | Err(End::Closed) => Ok(()),
        Err(e) => match r.c_rd.reunite(r.c_wr) {
            Ok(stream) => Err((
                ClientConn {
                    stream,
                    buf: BytesMut::new(),
                    out: BytesMut::new(),
                },
                e,
            )),
            Err(_) => Ok(()),
        },
    }
}

fn conn(b: BackendConn, side: Side) -> Conn {
    let (rd, wr) = b.stream.into_split();
    Conn {
        rd,
        wr,
        side,
        pid: b.pid,
        secret: b.secret,
        known: HashSet::new(),
        swallow: 0,
    }
}

enum Ev {
    ClientRead(std::io::Result<usize>),
    ServerRead(std::io::Result<usize>),
    Writable,
    RouteChanged,
    ClientGone,
}

/// Can this unit, starting with message `tag`, be proven read-only?
fn unit_read_only(
    tag: u8,
    body: Option<&[u8]>,
    prepared: &HashMap<String, Bytes>,
    cache: &mut HashMap<String, bool>,
) -> bool {
    let Some(body) = body else { return false };
    match tag {
        msg::QUERY => match msg::parse_query(body) {
            Ok(sql) => {
                validator::is_read_only(sql)
                    || matches!(
                        validator::transaction_start(sql),
                        validator::TxStart::ReadOnly
                    )
            }
            Err(_) => false,
        },
        msg::PARSE => msg::parse_parse(body).is_ok_and(|(_, sql)| validator::is_read_only(sql)),
        msg::BIND => {
            let Some(name) = bind_statement(body).filter(|n| !n.is_empty()) else {
                return false;
            };
            if let Some(v) = cache.get(name) {
                return *v;
            }
            let v = prepared.get(name).is_some_and(|f| {
                msg::parse_parse(&f[5..]).is_ok_and(|(_, sql)| validator::is_read_only(sql))
            });
            cache.insert(name.to_string(), v);
            v
        }
        _ => false,
    }
}

/// Statement name of a Bind body (portal name first, then statement name; 53.7 Bind).
fn bind_statement(body: &[u8]) -> Option<&str> {
    let mut b = body;
    wire::frame::take_cstr(&mut b, "Bind").ok()?;
    wire::frame::take_cstr(&mut b, "Bind").ok()
}

impl Relay<'_> {
    async fn run(&mut self) -> Result<(), End> {
        loop {
            if self.replay {
                self.replay = false;
                self.replay_unit().await?;
            }
            self.flush_some()?;
            if self.replay {
                continue;
            }
            if self.closing && self.to_server.is_empty() {
                return Ok(());
            }
            if self.c_rescan && self.to_server.is_empty() && !self.held {
                self.c_rescan = false;
                self.scan_client().await?;
                continue;
            }
            if self.s_rescan && self.to_client.is_empty() {
                self.s_rescan = false;
                self.scan_server()?;
                continue;
            }
            let want_client = self.to_server.is_empty() && !self.held && !self.closing;
            let want_server = self.to_client.is_empty() && self.backend.is_some();
            // read_buf on a full buffer would read 0 bytes and look like EOF.
            if self.cbuf.capacity() - self.cbuf.len() < 4096 {
                self.cbuf.reserve(16 * 1024);
            }
            if self.sbuf.capacity() - self.sbuf.len() < 4096 {
                self.sbuf.reserve(16 * 1024);
            }
            let write_server = !self.to_server.is_empty() && self.backend.is_some();
            let ev = {
                let (b_rd, b_wr) = match self.backend.as_mut() {
                    Some(c) => (Some(&mut c.rd), Some(&c.wr)),
                    None => (None, None),
                };
                tokio::select! {
                    r = self.c_rd.read_buf(&mut self.cbuf), if want_client => Ev::ClientRead(r),
                    r = async { b_rd.expect("guarded").read_buf(&mut self.sbuf).await }, if want_server => Ev::ServerRead(r),
                    r = async { b_wr.expect("guarded").writable().await }, if write_server => r.map_or(Ev::Writable, |_| Ev::Writable),
                    r = self.c_wr.writable(), if !self.to_client.is_empty() => r.map_or(Ev::ClientGone, |_| Ev::Writable),
                    r = self.rx.changed(), if self.held => r.map_or(Ev::ClientGone, |_| Ev::RouteChanged),
                }
            };
            match ev {
                Ev::ClientRead(Ok(0)) | Ev::ClientRead(Err(_)) | Ev::ClientGone => {
                    return Err(End::Closed)
                }
                Ev::ClientRead(Ok(_)) => {
                    if self.backend.is_none() && self.busy && self.replay {
                        // The replay runs first (top of the loop); what the client sent
                        // meanwhile is scanned after it.
                        self.c_rescan = true;
                    } else {
                        self.scan_client().await?
                    }
                }
                Ev::ServerRead(Ok(0)) => self.backend_lost("closed the connection")?,
                Ev::ServerRead(Err(e)) => self.backend_lost(&e.to_string())?,
                Ev::ServerRead(Ok(_)) => self.scan_server()?,
                Ev::Writable => {}
                Ev::RouteChanged => {
                    self.held = false;
                    self.c_rescan = true;
                }
            }
        }
    }

    /// Write what is pending without waiting.
    fn flush_some(&mut self) -> Result<(), End> {
        if !self.to_server.is_empty() {
            if let Some(c) = &self.backend {
                match c.wr.try_write(&self.to_server) {
                    Ok(n) => self.to_server.advance(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => self.backend_lost(&e.to_string())?,
                }
            }
        }
        if !self.to_client.is_empty() {
            match self.c_wr.try_write(&self.to_client) {
                Ok(n) => self.to_client.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(End::Closed),
            }
        }
        Ok(())
    }

    fn idle(&self) -> bool {
        self.in_flight == 0 && !self.unit_open && self.tx == msg::TX_IDLE
    }

    fn active_side(&self) -> Side {
        self.backend.as_ref().map_or(self.side, |c| c.side)
    }

    /// The backend went away. Idle: drop it, the next transaction reconnects. Busy: the
    /// client loses its connection, as it would have with PostgreSQL directly.
    fn backend_lost(&mut self, why: &str) -> Result<(), End> {
        let side = self.active_side();
        tracing::warn!(
            pid = self.info.pid,
            side = side.as_str(),
            idle = self.idle(),
            shifted = self.unit_raw.is_some(),
            answered = self.unit_answered,
            "backend {why}"
        );
        self.backend = None;
        self.sbuf.clear();
        self.s_skip = 0;
        self.to_server = Bytes::new();
        if self.idle() {
            return Ok(());
        }
        if self.unit_raw.is_some() && !self.unit_answered {
            self.lost_side = Some(side);
            self.replay = true;
            return Ok(());
        }
        Err(End::fatal("08006", format!("the {} server closed the connection unexpectedly ({why}) while a query was in progress", side.as_str())))
    }

    /// Scan client bytes: track protocol state, stop at a transaction boundary when the
    /// routing table says so, queue the complete part for the backend.
    async fn scan_client(&mut self) -> Result<(), End> {
        loop {
            let mut fwd = 0;
            let mut stop = None;
            // Bytes already taken out of `cbuf` because pgshift inserted a message into them.
            let mut spliced: Option<BytesMut> = None;
            while fwd < self.cbuf.len() {
                if self.c_skip > 0 {
                    let n = self.c_skip.min(self.cbuf.len() - fwd);
                    self.c_skip -= n;
                    fwd += n;
                    continue;
                }
                let Some((tag, total)) = header(&self.cbuf[fwd..], self.max_msg)? else {
                    break;
                };
                let avail = self.cbuf.len() - fwd;
                let inspect = matches!(
                    tag,
                    msg::QUERY | msg::PARSE | msg::CLOSE | msg::TERMINATE | msg::BIND
                );
                if inspect && avail < total {
                    break;
                }
                let mut entered = false;
                if !self.busy || self.backend.is_none() {
                    let body = inspect.then_some(fwd + 5..fwd + total);
                    if let Some(s) = self.boundary(tag, body) {
                        stop = Some(s);
                        break;
                    }
                    entered = true;
                }
                // A unit that looked read-only at its start: a later statement may write.
                if self.wcap_ro
                    && !entered
                    && matches!(tag, msg::QUERY | msg::PARSE | msg::BIND)
                    && self.wcap.is_some()
                    && !unit_read_only(
                        tag,
                        Some(&self.cbuf[fwd + 5..fwd + total]),
                        &self.prepared,
                        &mut self.read_only,
                    )
                {
                    self.wcap_ro = false;
                    self.wcap_uid = self.proxy.capture.as_deref().map(|e| e.open_unit());
                }
                match tag {
                    msg::QUERY => {
                        self.in_flight += 1;
                        self.unit_open = false;
                        session_changes(
                            msg::parse_query(&self.cbuf[fwd + 5..fwd + total])?,
                            &mut self.pending,
                        );
                    }
                    msg::SYNC | msg::FUNCTION_CALL => {
                        self.in_flight += 1;
                        self.unit_open = false;
                    }
                    msg::PARSE => {
                        self.unit_open = true;
                        let (name, sql) = msg::parse_parse(&self.cbuf[fwd + 5..fwd + total])?;
                        session_changes(sql, &mut self.pending);
                        if !name.is_empty() {
                            let name = name.to_string();
                            let frame = Bytes::copy_from_slice(&self.cbuf[fwd..fwd + total]);
                            self.read_only.remove(&name);
                            if let Some(c) = self.backend.as_mut() {
                                c.known.insert(name.clone());
                            }
                            self.prepared.insert(name, frame);
                        }
                    }
                    msg::BIND => {
                        self.unit_open = true;
                        // A statement prepared on the other connection: prepare it here first.
                        let name = bind_statement(&self.cbuf[fwd + 5..fwd + total]).unwrap_or("");
                        for c in [self.capture.as_mut(), self.wcap.as_mut()]
                            .into_iter()
                            .flatten()
                        {
                            if !name.is_empty() && !c.used.iter().any(|u| u == name) {
                                c.used.push(name.to_string());
                            }
                        }
                        if !name.is_empty() {
                            if let (Some(c), Some(parse)) =
                                (self.backend.as_mut(), self.prepared.get(name))
                            {
                                if !c.known.contains(name) {
                                    c.known.insert(name.to_string());
                                    c.swallow += 1;
                                    let out = spliced.get_or_insert_with(BytesMut::new);
                                    let part = self.cbuf.split_to(fwd);
                                    if let Some(raw) = self.unit_raw.as_mut() {
                                        raw.extend_from_slice(&part);
                                    }
                                    if let Some(c) = self.capture.as_mut() {
                                        c.client_bytes(&part, self.mirror_max);
                                    }
                                    if let Some(c) = self.wcap.as_mut() {
                                        c.client_bytes(&part, crate::capture::MAX_UNIT_BYTES);
                                    }
                                    out.extend_from_slice(&part);
                                    out.extend_from_slice(parse);
                                    fwd = 0;
                                }
                            }
                        }
                    }
                    msg::CLOSE => {
                        self.unit_open = true;
                        let (kind, name) = msg::parse_close(&self.cbuf[fwd + 5..fwd + total])?;
                        if kind == b'S' {
                            let name = name.to_string();
                            self.forget_statement(&name);
                        }
                    }
                    msg::TERMINATE => {
                        self.closing = true;
                        fwd += total;
                        break;
                    }
                    msg::COPY_DATA | msg::COPY_DONE | msg::COPY_FAIL => {}
                    _ => self.unit_open = true,
                }
                if avail < total {
                    self.c_skip = total - avail;
                    fwd += avail;
                } else {
                    fwd += total;
                }
            }
            if fwd > 0 || spliced.is_some() {
                let head = self.cbuf.split_to(fwd);
                if let Some(raw) = self.unit_raw.as_mut() {
                    raw.extend_from_slice(&head);
                }
                if let Some(c) = self.capture.as_mut() {
                    c.client_bytes(&head, self.mirror_max);
                }
                if let Some(c) = self.wcap.as_mut() {
                    c.client_bytes(&head, crate::capture::MAX_UNIT_BYTES);
                }
                self.to_server = match spliced {
                    Some(mut out) => {
                        out.extend_from_slice(&head);
                        out.freeze()
                    }
                    None => head.freeze(),
                };
                if self.backend.is_none() {
                    return Err(End::fatal("08006", "no server connection"));
                }
            }
            match stop {
                None => return Ok(()),
                Some(Stop::Hold) => {
                    self.held = true;
                    self.info.state.store(STATE_HELD, Ordering::Relaxed);
                    return Ok(());
                }
                Some(Stop::Switch) => self.switch().await?,
                Some(Stop::Swap(side)) => self.swap(side).await?,
            }
            // Go on scanning what the client sent, now on the chosen backend.
        }
    }

    /// A named statement is closed: forget it everywhere. The idle connection may still hold
    /// it; rather than track that, it is dropped (it is reopened on demand).
    fn forget_statement(&mut self, name: &str) {
        self.prepared.remove(name);
        self.read_only.remove(name);
        if let Some(c) = self.backend.as_mut() {
            c.known.remove(name);
        }
        if let Some(s) = self.spare.take() {
            s.terminate();
        }
    }

    /// At a transaction boundary with a new message from the client (`body` given for Query,
    /// Parse, Bind and Close): decide where it goes. Returns `None` to go on (the session is
    /// then busy).
    fn boundary(&mut self, tag: u8, body: Option<std::ops::Range<usize>>) -> Option<Stop> {
        if !self.busy {
            self.rx.borrow_and_update();
            if !self.proxy.router.try_enter() {
                return Some(Stop::Hold);
            }
            self.busy = true;
            self.capture = None;
            if let Some(uid) = self.wcap_uid.take() {
                if let Some(e) = self.proxy.capture.as_deref() {
                    e.close_unit(uid);
                }
            }
            self.wcap = None;
            self.unit_error = false;
            self.unit_started = Instant::now();
            self.info.state.store(STATE_ACTIVE, Ordering::Relaxed);
            let t = self.proxy.router.load();
            if t.epoch != self.epoch || t.side != self.side || self.backend.is_none() {
                // The unit runs on the serving side once switched: record it there too.
                self.start_write_capture(t.side, tag, body);
                return Some(Stop::Switch);
            }
            // Weighted shift: a read-only unit may go to the other side.
            let shifted = t.weight > 0
                && rand::random::<u32>() % 100 < u32::from(t.weight)
                && unit_read_only(
                    tag,
                    body.clone().map(|r| &self.cbuf[r]),
                    &self.prepared,
                    &mut self.read_only,
                );
            let want = if shifted { t.side.other() } else { t.side };
            self.unit_answered = false;
            self.unit_raw = shifted.then(BytesMut::new);
            // The mirror driver's capture: every unit on the serving side.
            if !shifted {
                self.start_write_capture(t.side, tag, body.clone());
            }
            // Mirroring: a sample of the units that run on the serving side.
            if !shifted {
                if let Some(m) = self.proxy.mirror.as_deref() {
                    let (cbuf, prepared, cache) = (&self.cbuf, &self.prepared, &mut self.read_only);
                    if m.sample(|| unit_read_only(tag, body.map(|r| &cbuf[r]), prepared, cache)) {
                        self.capture = Some(Capture::default());
                    }
                }
            }
            if want != self.active_side() {
                return Some(Stop::Swap(want));
            }
            return None;
        }
        // Busy and no backend: it was lost while idle.
        Some(Stop::Switch)
    }

    /// A unit starts on the serving side `side`: while the mirror driver records that side,
    /// keep its bytes (`OPEN` first unless its first statement is read-only).
    fn start_write_capture(&mut self, side: Side, tag: u8, body: Option<std::ops::Range<usize>>) {
        if let Some(e) = self.proxy.capture.as_deref().filter(|e| e.capturing(side)) {
            let ro = unit_read_only(
                tag,
                body.map(|r| &self.cbuf[r]),
                &self.prepared,
                &mut self.read_only,
            );
            self.wcap = Some(Capture::default());
            self.wcap_ro = ro;
            self.wcap_uid = (!ro).then(|| e.open_unit());
        }
    }

    /// Open a connection to `side` carrying this session's state: startup parameters, SETs,
    /// prepared statements. `read_only` adds `default_transaction_read_only = on`.
    async fn open(
        &mut self,
        side: Side,
        read_only: bool,
    ) -> Result<(Conn, Vec<(String, String)>), End> {
        let mut params = self.params.clone();
        if read_only {
            params.push(("default_transaction_read_only".into(), "on".into()));
        }
        let mut b = if read_only {
            // Optional: the unit can run on the serving side instead (see `swap`).
            let t = self
                .proxy
                .cfg
                .proxy
                .connect_timeout_ms
                .min(SHIFT_CONNECT_TIMEOUT_MS);
            connect_backend_within(self.proxy, &self.user, side, &params, t).await?
        } else {
            connect_backend(self.proxy, &self.user, side, &params).await?
        };
        let mut out = BytesMut::new();
        let mut expected = 0;
        for (_, stmt) in &self.sets {
            msg::query(&mut out, stmt);
            expected += 1;
        }
        for frame in self.prepared.values() {
            out.extend_from_slice(frame);
            msg::sync(&mut out);
            expected += 1;
        }
        if expected > 0 {
            let a = format!("{} server", side.as_str());
            b.stream.write_all(&out).await.map_err(|e| {
                End::fatal(
                    "08006",
                    format!("lost the {a} while restoring session state: {e}"),
                )
            })?;
            let mut buf = BytesMut::new();
            let mut done = 0;
            while done < expected {
                let (tag, body) = backend::read_frame(&mut b.stream, &mut buf, &a)
                    .await
                    .map_err(|e| End::fatal("08006", format!("restoring session state: {e}")))?;
                match tag {
                    msg::READY_FOR_QUERY => done += 1,
                    msg::ERROR_RESPONSE => {
                        let e = msg::parse_error(&body)
                            .map(|e| e.to_string())
                            .unwrap_or_default();
                        tracing::warn!(
                            pid = self.info.pid,
                            side = side.as_str(),
                            "replaying session state failed: {e}"
                        );
                    }
                    _ => {}
                }
            }
        }
        let params = std::mem::take(&mut b.params);
        let mut c = conn(b, side);
        c.known = self.prepared.keys().cloned().collect();
        Ok((c, params))
    }

    /// Move this session to the serving side the routing table names.
    async fn switch(&mut self) -> Result<(), End> {
        let (side, epoch) = {
            let t = self.proxy.router.load();
            (t.side, t.epoch)
        };
        if let Some(s) = self.spare.take() {
            s.terminate();
        }
        if self.backend.as_ref().is_some_and(|c| c.side == side) {
            self.side = side;
            self.epoch = epoch;
            return Ok(());
        }
        let started = Instant::now();
        let (c, params) = self.open(side, false).await?;
        self.unit_cold = true;
        // ParameterStatus values that differ on the new server (server_version at least).
        let mut note = BytesMut::new();
        for (k, v) in params {
            if self.client_params.get(&k) != Some(&v) {
                msg::parameter_status(&mut note, &k, &v);
                self.client_params.insert(k, v);
            }
        }
        if !note.is_empty() {
            let mut all = BytesMut::from(&self.to_client[..]);
            all.put(note);
            self.to_client = all.freeze();
        }
        let from = self.active_side();
        self.install(c);
        self.info.switches.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            pid = self.info.pid,
            from = from.as_str(),
            to = side.as_str(),
            ms = started.elapsed().as_millis() as u64,
            "session switched backend"
        );
        self.side = side;
        self.epoch = epoch;
        Ok(())
    }

    /// Run this unit on `side`'s connection: the spare if it is there, else a new one (read-only
    /// unless `side` is the serving side).
    async fn swap(&mut self, side: Side) -> Result<(), End> {
        let next = match self.spare.take() {
            Some(s) if s.side == side => s,
            other => {
                if let Some(o) = other {
                    o.terminate();
                }
                match self.open(side, side != self.side).await {
                    Ok((c, _)) => {
                        // Its latency is not the server's answer time (see `unit_done`).
                        self.unit_cold = true;
                        c
                    }
                    Err(e) if side != self.side && self.backend.is_some() => {
                        // The other side is unreachable: this read-only unit stays on the
                        // serving side; the failure counts against the other side for the
                        // health checks, which take its weight away.
                        tracing::warn!(
                            pid = self.info.pid,
                            side = side.as_str(),
                            "cannot open a connection for a shifted read-only transaction ({}); it runs on the {} side",
                            match &e { End::Fatal { message, .. } => message.as_str(), End::Closed => "closed" },
                            self.side.as_str()
                        );
                        self.proxy.router.traffic.unit_done(side, true, None);
                        self.unit_raw = None;
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let prev = self.install(next);
        self.spare = prev;
        Ok(())
    }

    /// A unit shifted to the other side failed there before any answer reached the client:
    /// count the failure against that side (health checks see it), drop that connection, and
    /// run the unit again from its first byte on the serving side. The client sees only the
    /// serving side's answer.
    async fn replay_unit(&mut self) -> Result<(), End> {
        let Some(raw) = self.unit_raw.take() else {
            return Err(End::fatal(
                "08006",
                "lost the server connection during a query",
            ));
        };
        let failed = self.lost_side.take().unwrap_or_else(|| self.active_side());
        let us = self.unit_started.elapsed().as_micros() as u64;
        self.proxy.router.traffic.unit_done(failed, true, Some(us));
        crate::metrics::shift_replayed();
        if let Some(c) = self.backend.take() {
            if c.side == failed {
                c.terminate();
            } else {
                self.spare = Some(c);
            }
        }
        let serving = match self.spare.take() {
            Some(s) if s.side == self.side => s,
            other => {
                if let Some(o) = other {
                    o.terminate();
                }
                self.open(self.side, false).await?.0
            }
        };
        tracing::info!(
            pid = self.info.pid,
            failed = failed.as_str(),
            bytes = raw.len(),
            "running the shifted read-only transaction again on the {} side",
            self.side.as_str()
        );
        self.install(serving);
        self.unit_open = false;
        self.unit_error = false;
        self.tx = msg::TX_IDLE;
        self.pending.clear();
        self.c_skip = 0;
        self.to_server = Bytes::new();
        let mut again = raw;
        again.extend_from_slice(&self.cbuf);
        self.cbuf = again;
        self.c_rescan = true;
        Ok(())
    }

    /// Make `c` the active connection; returns the previous one.
    fn install(&mut self, c: Conn) -> Option<Conn> {
        self.info.set_backend(c.side, c.pid, c.secret);
        self.sbuf.clear();
        self.s_skip = 0;
        self.in_flight = 0;
        self.backend.replace(c)
    }

    /// Scan server bytes: ReadyForQuery ends units; queue the complete part for the client.
    fn scan_server(&mut self) -> Result<(), End> {
        if self.hold_shifted_answer() {
            return Ok(());
        }
        let mut fwd = 0;
        // Bytes taken out of `sbuf` because a message in them is not for the client.
        let mut kept: Option<BytesMut> = None;
        let mut dying = false;
        while fwd < self.sbuf.len() {
            if self.s_skip > 0 {
                let n = self.s_skip.min(self.sbuf.len() - fwd);
                self.s_skip -= n;
                fwd += n;
                continue;
            }
            let h = match header(&self.sbuf[fwd..], usize::MAX) {
                Ok(h) => h,
                Err(e) => {
                    return Err(End::fatal(
                        "08P01",
                        format!(
                            "invalid message from the {} server: {e}",
                            self.active_side().as_str()
                        ),
                    ))
                }
            };
            let Some((tag, total)) = h else { break };
            let avail = self.sbuf.len() - fwd;
            let mut drop = false;
            match tag {
                msg::READY_FOR_QUERY => {
                    if avail < 6 {
                        break;
                    }
                    self.tx = self.sbuf[fwd + 5];
                    self.in_flight = self.in_flight.saturating_sub(1);
                    if self.in_flight == 0 && !self.unit_open && self.tx == msg::TX_IDLE {
                        self.unit_done();
                    }
                }
                PARSE_COMPLETE if self.backend.as_ref().is_some_and(|c| c.swallow > 0) => {
                    if avail < total {
                        break;
                    }
                    if let Some(c) = self.backend.as_mut() {
                        c.swallow -= 1;
                    }
                    drop = true;
                }
                msg::ERROR_RESPONSE if self.idle() => {
                    // Unsolicited error while idle: the server is ending this connection
                    // (FATAL). Keep it from the client; the next transaction reconnects.
                    if avail < total {
                        break;
                    }
                    let e = msg::parse_error(&self.sbuf[fwd + 5..fwd + total])
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    tracing::warn!(
                        pid = self.info.pid,
                        side = self.active_side().as_str(),
                        "idle backend said: {e}"
                    );
                    drop = true;
                    dying = true;
                }
                // Nothing of an unanswered shifted unit reached the client (its answer is held
                // back, see hold_shifted_answer): what is in `sbuf` can all be thrown away.
                msg::ERROR_RESPONSE if self.unit_raw.is_some() && !self.unit_answered => {
                    if avail < total {
                        break;
                    }
                    let e = msg::parse_error(&self.sbuf[fwd + 5..fwd + total]).unwrap_or_default();
                    if matches!(e.severity.as_str(), "FATAL" | "PANIC") {
                        // The other side is ending this connection before answering a shifted
                        // unit (e.g. shutting down): run the unit on the serving side instead.
                        tracing::warn!(
                            pid = self.info.pid,
                            side = self.active_side().as_str(),
                            "shifted read-only transaction failed before any answer: {e}"
                        );
                        self.lost_side = Some(self.active_side());
                        self.replay = true;
                        return Ok(());
                    }
                    self.unit_error = true;
                }
                msg::ERROR_RESPONSE => self.unit_error = true,
                msg::NOTICE_RESPONSE if self.unit_raw.is_some() && !self.unit_answered => {
                    if avail < total {
                        break;
                    }
                    // Class 57 (operator intervention: "terminating connection due to
                    // immediate shutdown command" is a WARNING) from the other side while a
                    // shifted unit is unanswered: that server is going away and the unit will
                    // run on the serving side; the client never was on that server.
                    let n = msg::parse_error(&self.sbuf[fwd + 5..fwd + total]).unwrap_or_default();
                    if n.sqlstate.starts_with("57") {
                        tracing::warn!(
                            pid = self.info.pid,
                            side = self.active_side().as_str(),
                            "the other side is going away during a shifted read-only transaction: {n}"
                        );
                        self.lost_side = Some(self.active_side());
                        self.replay = true;
                        return Ok(());
                    }
                }
                msg::PARAMETER_STATUS => {
                    if avail < total {
                        break;
                    }
                    if let Ok((k, v)) =
                        msg::parse_parameter_status(&self.sbuf[fwd + 5..fwd + total])
                    {
                        self.client_params.insert(k.to_string(), v.to_string());
                    }
                }
                _ => {}
            }
            if drop {
                let out = kept.get_or_insert_with(BytesMut::new);
                out.extend_from_slice(&self.sbuf.split_to(fwd));
                self.sbuf.advance(total);
                fwd = 0;
                if dying {
                    break;
                }
                continue;
            }
            if avail < total {
                self.s_skip = total - avail;
                fwd += avail;
            } else {
                fwd += total;
            }
        }
        let head = self.sbuf.split_to(fwd);
        if fwd > 0 || kept.as_ref().is_some_and(|k| !k.is_empty()) {
            // Answered: the unit can no longer run again elsewhere; its bytes are not needed.
            self.unit_answered = true;
            self.unit_raw = None;
        }
        match kept {
            Some(mut out) => {
                out.extend_from_slice(&head);
                self.to_client = out.freeze();
                self.s_rescan = !self.sbuf.is_empty();
            }
            None if fwd > 0 => self.to_client = head.freeze(),
            None => {}
        }
        if let Some(c) = self.wcap.as_mut() {
            if fwd > 0 || !self.to_client.is_empty() {
                c.server_bytes(&self.to_client, crate::capture::MAX_UNIT_BYTES);
            }
            if c.done {
                self.record_unit();
            }
        }
        if let Some(c) = self.capture.as_mut() {
            if fwd > 0 || !self.to_client.is_empty() {
                c.server_bytes(&self.to_client, self.mirror_max);
            }
            if c.done {
                self.mirror_unit();
            }
        }
        Ok(())
    }

    /// The captured unit ended (its final ReadyForQuery is about to be forwarded): record it
    /// for the mirror driver, before the client can see it committed.
    fn record_unit(&mut self) {
        let Some(cap) = self.wcap.take() else { return };
        let uid = self.wcap_uid.take();
        let (Some(uid), Some(e)) = (uid, self.proxy.capture.as_deref()) else {
            return;
        };
        if cap.too_big {
            e.lost(uid, cap.client.len() + cap.server.len());
            return;
        }
        let statements = cap
            .used
            .iter()
            .filter_map(|n| self.prepared.get(n).map(|f| (n.clone(), f.to_vec())))
            .collect();
        e.record(&crate::capture::Unit {
            uid,
            user: self.user.cfg.server_user().to_string(),
            params: self.params.clone(),
            sets: self.sets.iter().map(|(_, stmt)| stmt.clone()).collect(),
            statements,
            client: cap.client.to_vec(),
            server: cap.server.to_vec(),
        });
    }

    /// The captured unit ended: hand it to the mirror (without waiting).
    fn mirror_unit(&mut self) {
        let (Some(cap), Some(m)) = (self.capture.take(), self.proxy.mirror.as_deref()) else {
            return;
        };
        if cap.too_big {
            m.too_big();
            return;
        }
        let statements = cap
            .used
            .iter()
            .filter_map(|n| self.prepared.get(n).map(|f| (n.clone(), f.clone())))
            .collect();
        m.offer(crate::mirror::Job {
            user: self.user.clone(),
            params: self.params.clone(),
            sets: self.sets.iter().map(|(_, stmt)| stmt.clone()).collect(),
            statements,
            client: cap.client.freeze(),
            server: cap.server.freeze(),
            at: std::time::SystemTime::now(),
        });
    }

    /// While a shifted unit is unanswered, its answer is held back (read on, not forwarded)
    /// until its first ReadyForQuery, so that the other side failing in the middle of it
    /// leaves nothing on the client's side and the unit can run again on the serving side.
    /// Not held: an ErrorResponse or NoticeResponse (handled by the scan), an answer of
    /// [`SHIFT_HOLD_BYTES`] or more, a message larger than the buffer (streamed), an answer
    /// to a Flush before any Sync.
    fn hold_shifted_answer(&self) -> bool {
        // in_flight > 0: a Sync or Query was sent, so a ReadyForQuery will come. (A client
        // that sent Describe + Flush waits for the answer before its Sync: never hold that.)
        if self.unit_raw.is_none() || self.unit_answered || self.s_skip > 0 || self.in_flight == 0 {
            return false;
        }
        if self.sbuf.len() >= SHIFT_HOLD_BYTES {
            return false;
        }
        let mut at = 0;
        while at < self.sbuf.len() {
            match header(&self.sbuf[at..], usize::MAX) {
                Ok(Some((tag, total))) => {
                    if matches!(
                        tag,
                        msg::READY_FOR_QUERY | msg::ERROR_RESPONSE | msg::NOTICE_RESPONSE
                    ) {
                        // Scanned once it is whole (the scan needs its fields).
                        return at + total > self.sbuf.len();
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

    /// A unit of work ended with ReadyForQuery `I` and nothing in flight.
    fn unit_done(&mut self) {
        self.unit_raw = None;
        if let Some(c) = self.capture.as_mut() {
            c.done = true;
        }
        if let Some(c) = self.wcap.as_mut() {
            c.done = true;
        }
        let mut state_changed = false;
        if !self.unit_error {
            for ch in std::mem::take(&mut self.pending) {
                state_changed = true;
                match ch {
                    SessionChange::Set(var, stmt) => {
                        self.sets.retain(|(v, _)| v != &var);
                        self.sets.push((var, stmt));
                    }
                    SessionChange::Reset(var) => self.sets.retain(|(v, _)| v != &var),
                    SessionChange::ResetAll => self.sets.clear(),
                    SessionChange::DiscardAll => {
                        self.sets.clear();
                        self.prepared.clear();
                        self.read_only.clear();
                    }
                    SessionChange::Deallocate(Some(name)) => self.forget_statement(&name),
                    SessionChange::Deallocate(None) => {
                        self.prepared.clear();
                        self.read_only.clear();
                    }
                }
            }
        } else {
            self.pending.clear();
        }
        // The idle connection did not see the change: drop it, it is reopened on demand.
        if state_changed {
            if let Some(s) = self.spare.take() {
                s.terminate();
            }
        }
        if self.busy {
            self.busy = false;
            self.proxy.router.leave();
            let us = self.unit_started.elapsed().as_micros() as u64;
            let side = self.active_side();
            // The first unit on a connection just opened pays for its cold catalog caches:
            // counted, but no sample for the health checks' p99.
            let cold = std::mem::take(&mut self.unit_cold);
            self.proxy
                .router
                .traffic
                .unit_done(side, self.unit_error, (!cold).then_some(us));
            crate::metrics::txn_done(side, self.unit_error, us);
        }
        self.info.state.store(STATE_IDLE, Ordering::Relaxed);
    }
}
