//! The relay of one client session to its backends, with backend switches at transaction
//! boundaries: the I/O loop. What to do with each frame is decided by [`super::scan`]; what
//! moves with the session lives in [`SessionState`]; copies of a unit's bytes go to
//! [`Recorders`].
//!
//! Bytes move in whole chunks: the relay reads what a socket has, finds frame boundaries with
//! [`wire::frame::header`], and forwards the complete part in one write. One task serves
//! both directions and never blocks one on the other (no deadlock when a client pipelines
//! without reading).
//!
//! A session follows the routing table's serving side. During a weighted shift it may also
//! hold a second, read-only connection to the other side: a unit of work (a transaction, or
//! an extended-protocol batch up to Sync) that the classifier proves read-only goes there with
//! the table's probability. That connection is opened with `default_transaction_read_only =
//! on`, so a misclassified write fails instead of diverging the replica.
//!
//! With a replication driver that runs both ways (`bidirectional`) the weight applies to
//! whole sessions instead, writes included ([`crate::routing::Placement`]): at each
//! transaction boundary the session runs on the side its place says, which changes only
//! when the share requires it; the connection there is read-write, and a unit that fails on
//! it is not run again (it may have written): the session ends with the error.

use super::ddl;
use super::memory::{Share, FREE_BYTES};
use super::pins;
use super::record::{Recorders, WriteCapture};
use super::scan::{self, ClientStep, Proto, Route, ServerStep};
use super::state::SessionState;
use super::{ClientConn, End};
use crate::backend::{self, Conn};
use crate::mirror::Capture;
use crate::routing::RoutingTable;
use crate::server::{Proxy, SessionInfo, UserEntry, STATE_ACTIVE, STATE_HELD, STATE_IDLE};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use control::Side;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use wire::frame::header;
use wire::msg;

/// Largest answer of a shifted read-only unit held back until its ReadyForQuery (see
/// [`scan::hold_answer`]), in bytes. Larger answers stream, and can no longer run again on
/// the serving side if the other side fails in the middle of them.
const SHIFT_HOLD_BYTES: usize = 256 * 1024;

/// A backend connection being opened while the session goes on (ahead of a switch).
type Opening<'p> = Pin<Box<dyn Future<Output = Result<Opened, End>> + Send + Sync + 'p>>;

/// An opened connection and the server's ParameterStatus values.
type Opened = (Conn, Vec<(String, String)>);

/// How long a listening session waits for its old backend's last notifications when it
/// moves, in ms.
const NOTIFY_FLUSH_MS: u64 = 1000;

/// What a boundary check decided.
enum Stop {
    /// Traffic is paused: keep the message in the proxy until the table changes.
    Hold,
    /// The table's serving side changed (or the backend is gone): switch, then go on.
    Switch,
    /// This unit goes to `side`'s connection (weighted shift).
    Swap(Side),
}

/// The unit of work in progress, as the relay accounts for it.
struct Unit<'p> {
    /// Counted in the router's busy sessions; set from the unit's start to its end.
    busy: Option<crate::routing::Busy<'p>>,
    started: Instant,
    /// The unit runs on a backend connection opened for it: no latency sample.
    cold: bool,
    /// Whether any byte of the unit's answer was queued for the client.
    answered: bool,
    /// Set when a shifted unit failed unanswered: [`Relay::replay_unit`] runs it again on
    /// the serving side.
    replay: bool,
    /// The side that failed the unit to replay.
    lost_side: Option<Side>,
}

pub(crate) struct Relay<'p> {
    proxy: &'p Proxy,
    info: &'p SessionInfo,
    user: Arc<UserEntry>,
    state: SessionState,
    proto: Proto,
    unit: Unit<'p>,
    rec: Recorders,
    c_rd: tls::ReadHalf,
    c_wr: tls::WriteHalf,
    /// The client's address and TLS set-up, to rebuild its [`ClientConn`] for a FATAL.
    c_peer: std::net::SocketAddr,
    c_tls: Option<Arc<tls::ServerTls>>,
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
    /// The upgrade carries the session's database (asked again at each new epoch); if not,
    /// the session stays on the source.
    carried: bool,
    /// The session's database is the configured one (`[source] dbname`), the only one that
    /// mirroring and the mirror driver's capture know.
    home: bool,
    epoch: u64,
    held: bool,
    /// Bytes of the current (streamed) client / server message still to pass through.
    c_skip: usize,
    s_skip: usize,
    c_rescan: bool,
    /// Seq of the capture queue's `UNIT` record whose ReadyForQuery waits in `to_client`
    /// until it is on disk ([`crate::capture::Engine::durable`]).
    durable: Option<u64>,
    s_rescan: bool,
    max_msg: usize,
    rx: watch::Receiver<u64>,
    /// A connection being opened to the side a paused table names next (see
    /// [`Relay::prepare_ahead`]).
    opening: Option<(Side, Opening<'p>)>,
    /// A connection opened ahead of a switch, ready to be installed.
    ready: Option<Opened>,
    /// ParameterStatus messages of a switch made while idle, for the next unit's answer.
    status_note: BytesMut,
    /// Ask the server what pins the session once it is idle (see [`pins`]).
    check_pins: bool,
    /// What pins it, as [`pins`] bits, from the last check.
    pins: u8,
    /// The weight applies to whole sessions, writes included (a both-ways replication
    /// driver): this session's place ([`crate::routing::Placement`]), from its first unit.
    placement: Option<crate::routing::Placement<'p>>,
    /// Whether the session-level shift is on (`[replication] driver` replicates both ways).
    by_session: bool,
    /// What it takes from the sessions' memory budget ([`super::memory`]).
    mem: Share<'p>,
    /// A large client message waits for room in the budget: its length.
    mem_wait: Option<usize>,
    /// Since when the session has been waiting for the budget.
    mem_since: Option<Instant>,
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
    let carried = proxy.controller.carries(&info.database);
    let (side, epoch) = loop {
        rx.borrow_and_update();
        let t = proxy.router.load();
        if !t.paused {
            break (scan::serving_side(&t, carried), t.epoch);
        }
        info.state.store(STATE_HELD, Ordering::Relaxed);
        if rx.changed().await.is_err() {
            return Ok(());
        }
    };
    let mut state = SessionState::new(params);
    let mut b =
        match backend::connect_backend(proxy, &user, side, &info.database, &state.params).await {
            Ok(b) => b,
            Err(e) => return Err((c, e)),
        };
    crate::metrics::login_accepted(false);
    proxy.note_backend(side, b.pid, info.pid);
    info.set_backend(side, b.pid, b.secret);
    info.state.store(STATE_IDLE, Ordering::Relaxed);
    msg::auth_ok(&mut c.out);
    for (k, v) in std::mem::take(&mut b.params) {
        msg::parameter_status(&mut c.out, &k, &v);
        state.client_param(&k, &v);
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
        state,
        proto: Proto::default(),
        unit: Unit {
            busy: None,
            started: Instant::now(),
            cold: false,
            answered: false,
            replay: false,
            lost_side: None,
        },
        rec: Recorders {
            mirror_max: usize::try_from(proxy.cfg.mirror.max_answer_bytes).unwrap_or(usize::MAX),
            ..Default::default()
        },
        c_rd,
        c_wr,
        c_peer: c.peer,
        c_tls: c.tls,
        cbuf: c.buf,
        to_server: Bytes::new(),
        backend: Some(Conn::new(b, side)),
        spare: None,
        sbuf: BytesMut::with_capacity(16 * 1024),
        to_client: Bytes::new(),
        side,
        carried,
        home: info.database == proxy.cfg.source.dbname,
        placement: None,
        by_session: proxy.cfg.replication.driver.both_ways(),
        epoch,
        held: false,
        c_skip: 0,
        s_skip: 0,
        c_rescan,
        s_rescan: false,
        durable: None,
        max_msg: proxy.cfg.proxy.max_message_bytes,
        rx,
        opening: None,
        ready: None,
        status_note: BytesMut::new(),
        check_pins: false,
        pins: 0,
        mem: Share::new(&proxy.memory),
        mem_wait: None,
        mem_since: None,
    };
    let res = r.run().await;
    if r.pins != 0 {
        proxy.router.set_pinned(info.pid, None);
    }
    // A unit cut short: the server rolls an open transaction back when its connection
    // closes. One of the mirror driver's units that may have committed something is
    // finished without the client and recorded first.
    r.finish_cut_unit().await;
    r.close_write_capture();
    drop(r.unit.busy.take());
    let ready = r.ready.take().map(|(c, _)| c);
    for c in [r.backend.take(), r.spare.take(), ready]
        .into_iter()
        .flatten()
    {
        c.terminate();
    }
    match res {
        Ok(()) | Err(End::Closed) => Ok(()),
        Err(e) => match r.c_wr.reunite(r.c_rd) {
            Some(stream) => Err((
                ClientConn {
                    stream,
                    buf: BytesMut::new(),
                    out: BytesMut::new(),
                    peer: r.c_peer,
                    tls: r.c_tls,
                },
                e,
            )),
            None => Ok(()),
        },
    }
}

/// How often a session waiting for the memory budget looks again (besides being woken when
/// another session gives memory back).
const MEMORY_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// How long the check of what pins a session may take, in ms; a server that does not answer
/// in time counts as lost.
const PINS_CHECK_MS: u64 = 10_000;

/// A NotificationResponse body from `side`'s server process `backend_pid` (the session
/// `pid`'s): its sender pid becomes the pid the sender's client was given, when the sender is
/// a pgshift session (its own or another).
fn rewrite_notification_pid(
    proxy: &Proxy,
    side: Side,
    backend_pid: i32,
    pid: i32,
    body: &mut [u8],
) {
    if let Ok((sender, _)) = msg::notification_pid(body) {
        let mine = if sender == backend_pid {
            Some(pid)
        } else {
            proxy.session_of_backend(side, sender)
        };
        if let Some(p) = mine {
            body[..4].copy_from_slice(&p.to_be_bytes());
        }
    }
}

/// What an [`End`] says, for a log line.
fn end_text(e: &End) -> &str {
    match e {
        End::Fatal { message, .. } => message,
        End::Closed => "closed",
    }
}

enum Ev {
    ClientRead(std::io::Result<usize>),
    ServerRead(std::io::Result<usize>),
    Writable,
    RouteChanged,
    Opened(Result<Opened, End>),
    ClientGone,
}

impl<'p> Relay<'p> {
    async fn run(&mut self) -> Result<(), End> {
        loop {
            if self.unit.replay {
                self.unit.replay = false;
                self.replay_unit().await?;
            }
            // Durable before acknowledged: the unit's final ReadyForQuery (in to_client) goes
            // out once its queue record is on disk.
            if let (Some(seq), Some(e)) = (self.durable.take(), self.proxy.capture.as_deref()) {
                e.durable(seq).await;
            }
            self.flush_some()?;
            if self.unit.replay {
                continue;
            }
            self.settle_memory()?;
            if self.proto.closing && self.to_server.is_empty() {
                return Ok(());
            }
            if self.check_pins
                && self.unit.busy.is_none()
                && self.proto.idle()
                && self.to_server.is_empty()
                && self.to_client.is_empty()
                && self.sbuf.is_empty()
            {
                self.check_pins = false;
                self.check_pins_now().await?;
                continue;
            }
            if self.c_rescan && self.to_server.is_empty() && !self.held && self.mem_since.is_none()
            {
                self.c_rescan = false;
                self.scan_client().await?;
                continue;
            }
            if self.s_rescan && self.to_client.is_empty() {
                self.s_rescan = false;
                self.scan_server()?;
                continue;
            }
            let mem_gated = self.mem_since.is_some();
            let want_client =
                self.to_server.is_empty() && !self.held && !self.proto.closing && !mem_gated;
            let want_server = self.to_client.is_empty() && self.backend.is_some();
            // read_buf on a full buffer would read 0 bytes and look like EOF.
            if self.cbuf.capacity() - self.cbuf.len() < 4096 {
                self.cbuf.reserve(16 * 1024);
            }
            if self.sbuf.capacity() - self.sbuf.len() < 4096 {
                self.sbuf.reserve(16 * 1024);
            }
            // TLS: also while ciphertext of an earlier write still waits for the socket.
            let write_server = self
                .backend
                .as_ref()
                .is_some_and(|c| !self.to_server.is_empty() || c.wr.pending());
            // Held sessions, and idle ones that listen (they move as soon as the table does),
            // follow the routing table.
            let watch =
                self.held || (self.unit.busy.is_none() && !self.state.channels().is_empty());
            let ev = {
                let (b_rd, b_wr) = match self.backend.as_mut() {
                    Some(c) => (Some(&mut c.rd), Some(&mut c.wr)),
                    None => (None, None),
                };
                let opening = self.opening.as_mut().map(|(_, f)| f);
                let is_opening = opening.is_some();
                tokio::select! {
                    r = self.c_rd.read_buf(&mut self.cbuf), if want_client => Ev::ClientRead(r),
                    r = async { b_rd.expect("guarded").read_buf(&mut self.sbuf).await }, if want_server => Ev::ServerRead(r),
                    r = async { b_wr.expect("guarded").writable().await }, if write_server => r.map_or(Ev::Writable, |_| Ev::Writable),
                    r = self.c_wr.writable(), if !self.to_client.is_empty() || self.c_wr.pending() => r.map_or(Ev::ClientGone, |_| Ev::Writable),
                    r = self.rx.changed(), if watch => r.map_or(Ev::ClientGone, |_| Ev::RouteChanged),
                    r = async { opening.expect("guarded").as_mut().await }, if is_opening => Ev::Opened(r),
                    _ = self.proxy.memory.wait_freed(MEMORY_POLL), if mem_gated => Ev::Writable,
                }
            };
            match ev {
                Ev::ClientRead(Ok(0)) | Ev::ClientRead(Err(_)) | Ev::ClientGone => {
                    return Err(End::Closed)
                }
                Ev::ClientRead(Ok(_)) => {
                    if self.backend.is_none() && self.unit.busy.is_some() && self.unit.replay {
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
                    if self.held {
                        self.held = false;
                        self.c_rescan = true;
                    }
                    self.route_changed().await?;
                }
                Ev::Opened(r) => {
                    let side = self.opening.take().map(|(s, _)| s);
                    match r {
                        Ok(c) if side.is_some_and(|s| self.still_ahead(s)) => self.ready = Some(c),
                        Ok((c, _)) => c.terminate(),
                        Err(e) => tracing::debug!(
                            pid = self.info.pid,
                            "opening a connection ahead of the switch failed ({}); it is opened at the switch",
                            end_text(&e)
                        ),
                    }
                }
            }
        }
    }

    /// Copies of a client message that must be kept (the mirror driver's, while it
    /// records the side this session runs on).
    fn kept_copies(&self) -> usize {
        let side = self.active_side();
        usize::from(
            self.home
                && self
                    .proxy
                    .capture
                    .as_deref()
                    .is_some_and(|e| e.capturing(side)),
        )
    }

    /// The session's side of the memory budget, at the top of each turn: gives back what
    /// its buffers no longer hold, takes what a waiting large message needs, decides whether
    /// it may read from its client (not while it waits, nor while the budget is spent and it
    /// keeps a copy that must be kept), and ends it with SQLSTATE 53200 once it waited
    /// `memory_wait_ms` if that loses nothing.
    fn settle_memory(&mut self) -> Result<(), End> {
        if self.mem.copies() > 0 && self.rec.idle() {
            self.mem.release_copies();
        }
        if self.mem.msg() > 0
            && self.mem_wait.is_none()
            && self.to_server.is_empty()
            && self.c_skip == 0
            && self.cbuf.len() <= FREE_BYTES
        {
            // The large message went out: a buffer of the usual size again (what is left
            // of the old one still holds the whole allocation).
            let mut fresh = BytesMut::with_capacity(16 * 1024);
            fresh.extend_from_slice(&self.cbuf);
            self.cbuf = fresh;
            self.mem.release_msg();
        }
        if let Some(n) = self.mem_wait {
            if self.mem.hold_msg(n, self.kept_copies()) {
                self.mem_wait = None;
                self.c_rescan = true;
            }
        }
        let gated = self.mem_wait.is_some()
            || (self.rec.write.is_some() && self.mem.copies() > 0 && self.mem.budget().over());
        if !gated {
            self.mem_since = None;
            return Ok(());
        }
        let since = *self.mem_since.get_or_insert_with(|| {
            self.proxy.memory.waits.fetch_add(1, Ordering::Relaxed);
            Instant::now()
        });
        let waited = since.elapsed().as_millis() as u64;
        let answered = self.proto.in_flight == 0 && !self.proto.unit_open;
        let lossless = self
            .rec
            .write
            .as_ref()
            .is_none_or(|w| w.nothing_committed(answered));
        if waited >= self.proxy.cfg.proxy.memory_wait_ms && lossless {
            self.proxy
                .memory
                .shed_sessions
                .fetch_add(1, Ordering::Relaxed);
            let what = match self.mem_wait {
                Some(n) => format!("a message of {n} bytes could not be read"),
                None => "the transaction's copy for the mirror driver could not grow".into(),
            };
            tracing::warn!(
                pid = self.info.pid,
                used = self.mem.budget().used(),
                "session ended: memory budget spent for {waited} ms; {what}"
            );
            return Err(End::fatal(
                "53200",
                format!(
                    "out of memory: the sessions' memory budget ([proxy] session_memory_bytes = {} bytes) stayed spent for {waited} ms; {what}",
                    self.mem.budget().limit()
                ),
            ));
        }
        Ok(())
    }

    /// Write what is pending without waiting.
    fn flush_some(&mut self) -> Result<(), End> {
        if !self.to_server.is_empty() {
            if let Some(c) = &mut self.backend {
                match c.wr.try_write(&self.to_server) {
                    Ok(n) => {
                        self.to_server.advance(n);
                        if self.to_server.is_empty() {
                            // Frees a large message's buffer (a `Bytes` keeps it).
                            self.to_server = Bytes::new();
                        }
                    }
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

    fn active_side(&self) -> Side {
        self.backend.as_ref().map_or(self.side, |c| c.side)
    }

    /// A shifted unit runs and none of its answer reached the client yet.
    fn shifted_unanswered(&self) -> bool {
        self.rec.replay.is_some() && !self.unit.answered
    }

    /// The backend went away. Idle: drop it, the next transaction reconnects. Busy: the
    /// client loses its connection, as it would have with PostgreSQL directly.
    fn backend_lost(&mut self, why: &str) -> Result<(), End> {
        let side = self.active_side();
        tracing::warn!(
            pid = self.info.pid,
            side = side.as_str(),
            idle = self.proto.idle(),
            shifted = self.rec.replay.is_some(),
            answered = self.unit.answered,
            "backend {why}"
        );
        self.backend = None;
        self.sbuf.clear();
        self.s_skip = 0;
        self.to_server = Bytes::new();
        if self.proto.idle() {
            if self.pins != 0 && side == self.side {
                // What pinned the session is gone with its server process.
                return Err(End::fatal(
                    "08006",
                    format!(
                        "the {} server closed the connection unexpectedly ({why}); the session's {} are lost",
                        side.as_str(),
                        pins::describe(self.pins)
                    ),
                ));
            }
            return Ok(());
        }
        if self.shifted_unanswered() {
            self.unit.lost_side = Some(side);
            self.unit.replay = true;
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
                let inspect = scan::client_inspects(tag, &self.state);
                if inspect && avail < total {
                    // Read whole: past the session's own allowance, from the budget (and as
                    // much again for the mirror driver's copy of it), or wait.
                    if total > FREE_BYTES && !self.mem.hold_msg(total, self.kept_copies()) {
                        self.mem_wait = Some(total);
                    } else if total > FREE_BYTES {
                        // One allocation of the whole message rather than doublings (and
                        // room for the read loop's spare, so it does not grow it again).
                        self.cbuf.reserve(total - avail + 16 * 1024);
                    }
                    break;
                }
                let end = fwd + total.min(avail);
                let mut entered = false;
                if self.unit.busy.is_none() || self.backend.is_none() {
                    let body = inspect.then_some(fwd + 5..end);
                    if let Some(s) = self.boundary(tag, body) {
                        stop = Some(s);
                        break;
                    }
                    entered = true;
                }
                // A unit that looked read-only at its start: a later statement may write.
                if !entered
                    && matches!(tag, msg::QUERY | msg::PARSE | msg::BIND)
                    && self.rec.write.as_ref().is_some_and(|w| w.read_only)
                    && !self
                        .state
                        .unit_read_only(tag, Some(&self.cbuf[fwd + 5..end]))
                {
                    if let Some(w) = self.rec.write.as_mut() {
                        w.read_only = false;
                        w.uid = self.proxy.capture.as_deref().map(|e| e.open_unit());
                    }
                }
                if matches!(tag, msg::QUERY | msg::PARSE) && avail >= total {
                    if let Some(new) = self.ddl_gate(tag, fwd + 5..end)? {
                        // The statement goes to the server rewritten: what precedes it as
                        // it was, then the new message in place of the client's.
                        let out = spliced.get_or_insert_with(BytesMut::new);
                        let part = self.cbuf.split_to(fwd);
                        self.rec.client(&part, &mut self.mem);
                        out.extend_from_slice(&part);
                        self.cbuf.advance(total);
                        scan::client_frame(
                            tag,
                            &new,
                            &mut self.proto,
                            &mut self.state,
                            self.backend.as_mut().map(|c| &mut c.st),
                        )?;
                        self.rec.client(&new, &mut self.mem);
                        out.extend_from_slice(&new);
                        fwd = 0;
                        continue;
                    }
                }
                let step = scan::client_frame(
                    tag,
                    &self.cbuf[fwd..end],
                    &mut self.proto,
                    &mut self.state,
                    self.backend.as_mut().map(|c| &mut c.st),
                )?;
                match step {
                    ClientStep::Forward => {}
                    ClientStep::Bind { statement, prepare } => {
                        self.rec.bound(statement);
                        if let Some(parse) = prepare {
                            // The statement goes first: take what precedes the Bind out of
                            // the buffer and put the Parse after it.
                            let out = spliced.get_or_insert_with(BytesMut::new);
                            let part = self.cbuf.split_to(fwd);
                            self.rec.client(&part, &mut self.mem);
                            out.extend_from_slice(&part);
                            out.extend_from_slice(&parse);
                            fwd = 0;
                        }
                    }
                    ClientStep::Closed => self.drop_spare(),
                    ClientStep::Terminate => {
                        fwd += total;
                        break;
                    }
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
                self.rec.client(&head, &mut self.mem);
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
                    let t = self.proxy.router.load();
                    self.prepare_ahead(&t);
                    return Ok(());
                }
                Some(Stop::Switch) => self.switch().await?,
                Some(Stop::Swap(side)) => self.swap(side).await?,
            }
            // Go on scanning what the client sent, now on the chosen backend.
        }
    }

    /// `[upgrade] ddl` on a Query or Parse whose body is `cbuf[body]` (see [`ddl`]):
    /// `Some(message)` to send instead (the refusal), `None` to forward it as it is (after
    /// the warning, under `allow`). Errors: a malformed body (08P01).
    fn ddl_gate(&mut self, tag: u8, body: std::ops::Range<usize>) -> Result<Option<Bytes>, End> {
        let gate = self.proxy.router.ddl();
        // A database the upgrade does not carry is not replicated: its DDL is its own.
        if gate.action == control::DdlAction::Off || !self.carried {
            return Ok(None);
        }
        let body = &self.cbuf[body];
        let sql = if tag == msg::QUERY {
            msg::query_text(body)?
        } else {
            msg::parse_text(body)?.1
        };
        let held = self.pins & pins::TEMP != 0 || self.state.suspect.temp;
        let temp = || held || super::track::pin_hints(sql).temp;
        let Some(found) = ddl::find(sql, gate.truncate, temp) else {
            return Ok(None);
        };
        crate::metrics::ddl_statement(gate.action);
        if gate.action == control::DdlAction::Warn {
            tracing::warn!(
                pid = self.info.pid,
                user = %self.info.user,
                database = %self.info.database,
                command = %found.command,
                "DDL through pgshift while replication runs ([upgrade] ddl = \"allow\"): only the server it runs on gets it"
            );
            return Ok(None);
        }
        tracing::info!(
            pid = self.info.pid,
            user = %self.info.user,
            database = %self.info.database,
            command = %found.command,
            "DDL refused while replication runs ([upgrade] ddl = \"block\")"
        );
        let refusal = ddl::refusal(&found.command);
        Ok(Some(if tag == msg::QUERY {
            ddl::query_with(sql, found.at, &refusal)
        } else {
            ddl::parse_with(body, found.at, &refusal)?
        }))
    }

    /// The idle connection may hold a statement or setting the session no longer has: drop
    /// it (it is reopened on demand).
    fn drop_spare(&mut self) {
        if let Some(s) = self.spare.take() {
            s.terminate();
        }
    }

    /// At a transaction boundary with a new message from the client (`body` given for the
    /// inspected messages): decide where it goes. Returns `None` to go on (the session is
    /// then busy).
    fn boundary(&mut self, tag: u8, body: Option<std::ops::Range<usize>>) -> Option<Stop> {
        if self.unit.busy.is_some() {
            // Busy and no backend: it was lost while idle.
            return Some(Stop::Switch);
        }
        self.rx.borrow_and_update();
        let Some(busy) = self.proxy.router.enter() else {
            return Some(Stop::Hold);
        };
        let t = self.proxy.router.load();
        if t.paused {
            // Entered as the pause was being published: hold like the sessions after it
            // (dropping `busy` leaves).
            return Some(Stop::Hold);
        }
        if t.epoch != self.epoch {
            self.carried = self.proxy.controller.carries(&self.info.database);
        }
        let serving = scan::serving_side(&t, self.carried);
        if !self.status_note.is_empty() {
            let mut all = BytesMut::from(&self.to_client[..]);
            all.put(std::mem::take(&mut self.status_note));
            self.to_client = all.freeze();
        }
        self.unit.busy = Some(busy);
        self.rec.mirror = None;
        self.close_write_capture();
        self.proto.unit_error = false;
        self.unit.started = Instant::now();
        self.info.state.store(STATE_ACTIVE, Ordering::Relaxed);
        // A session that holds (or may hold) what cannot move never runs a unit elsewhere.
        let movable = self.pins == 0 && !self.state.suspect.any();
        // Session-level shift: where the whole session runs, decided before the unit.
        let by_session = self.by_session && self.carried;
        let session_other = if by_session {
            let router = &self.proxy.router;
            let place = self.placement.get_or_insert_with(|| router.place());
            place.decide(t.weight, movable)
        } else {
            false
        };
        let max_msg = self.max_msg;
        let (cbuf, state) = (&self.cbuf, &mut self.state);
        let body_of = |r: &Option<std::ops::Range<usize>>| r.clone().map(|r| &cbuf[r]);
        let route = scan::route(
            &t,
            self.side,
            self.epoch,
            self.backend.as_ref().map(|c| c.side),
            self.carried,
            |w| {
                if by_session {
                    return session_other;
                }
                movable
                    && rand::random::<u32>() % 100 < u32::from(w)
                    && match &body {
                        // An extended batch: all of it, up to its Sync.
                        Some(r) if matches!(tag, msg::PARSE | msg::BIND) => {
                            scan::batch_read_only(state, &cbuf[r.start - 5..], max_msg)
                        }
                        _ => {
                            !body_of(&body).is_some_and(|b| super::track::pin_hints(b).any())
                                && state.unit_read_only(tag, body_of(&body))
                        }
                    }
            },
        );
        // The side the unit runs on: other than the serving side for a shifted unit (which
        // may find the session's connection there already, after a shifted unit before it).
        let runs_on = match route {
            Route::Go => self.active_side(),
            Route::Swap(s) => s,
            Route::Switch => serving,
        };
        let shifted = runs_on != serving;
        self.unit.answered = false;
        // A unit that may write is never run twice: with the session-level shift its
        // failure on the other side ends the session instead of a replay.
        self.rec.replay = (shifted && !by_session).then(BytesMut::new);
        if !shifted && self.home {
            // The mirror driver's capture: every unit on the serving side (once switched).
            self.start_write_capture(serving, tag, body.clone());
        }
        if matches!(route, Route::Switch) {
            return Some(Stop::Switch);
        }
        // Mirroring: a sample of the units that run on the serving side.
        if !shifted && self.home {
            if let Some(m) = self.proxy.mirror.as_deref() {
                let (cbuf, state) = (&self.cbuf, &mut self.state);
                if m.sample(|| state.unit_read_only(tag, body.map(|r| &cbuf[r]))) {
                    self.rec.mirror = Some(Capture::default());
                }
            }
        }
        match route {
            Route::Swap(side) => Some(Stop::Swap(side)),
            _ => None,
        }
    }

    /// A unit starts on the serving side `side`: while the mirror driver records that side,
    /// keep its bytes (`OPEN` first unless its first statement is read-only).
    fn start_write_capture(&mut self, side: Side, tag: u8, body: Option<std::ops::Range<usize>>) {
        if let Some(e) = self.proxy.capture.as_deref().filter(|e| e.capturing(side)) {
            let ro = self.state.unit_read_only(tag, body.map(|r| &self.cbuf[r]));
            self.rec.write = Some(WriteCapture {
                cap: Capture::default(),
                uid: (!ro).then(|| e.open_unit()),
                read_only: ro,
                skel: Default::default(),
            });
        }
    }

    /// The session ended inside a unit the mirror driver records, and something of it may
    /// have committed on the server (a request was in flight, or a transaction of the unit
    /// already ended): the unit is finished without the client and recorded as it
    /// happened. Its answers are read to the end (a Sync is sent for an open
    /// extended-protocol batch), a transaction left open is rolled back by a `ROLLBACK`
    /// that becomes part of the unit, and the unit is recorded like any other. When the
    /// server is gone or does not finish within `connect_timeout_ms`, the unit is recorded
    /// as in doubt (`LOST`): applying stops and says so, rather than go on without a write
    /// the source may have.
    async fn finish_cut_unit(&mut self) {
        let Some(w) = self.rec.write.as_ref() else {
            return;
        };
        let answered = self.proto.in_flight == 0 && !self.proto.unit_open;
        if w.nothing_committed(answered) {
            return;
        }
        let Some(e) = self.proxy.capture.clone() else {
            return;
        };
        let uid = w.uid.unwrap_or_default();
        let timeout = std::time::Duration::from_millis(self.proxy.cfg.proxy.connect_timeout_ms);
        let finished = tokio::time::timeout(timeout, self.finish_unit_alone()).await;
        if !matches!(finished, Ok(true)) {
            tracing::warn!(
                pid = self.info.pid,
                "the client left during a write transaction that may have committed, and the server did not finish it: recorded as in doubt"
            );
            self.rec.write = None;
            e.lost(uid, 0);
        }
    }

    /// [`Relay::finish_cut_unit`]'s work: `true` once the unit was recorded.
    async fn finish_unit_alone(&mut self) -> bool {
        let c_skip = std::mem::take(&mut self.c_skip);
        if c_skip > 0 {
            // A message cut in the middle: what reached the server cannot be completed.
            return false;
        }
        // What was taken from the client is recorded: it goes to the server too.
        let pending = std::mem::take(&mut self.to_server);
        if !pending.is_empty() {
            let Some(conn) = self.backend.as_mut() else {
                return false;
            };
            if conn.wr.write_all(&pending).await.is_err() {
                return false;
            }
        }
        loop {
            if self.rec.write.is_none() {
                // record_unit took it (ReadyForQuery `I` with nothing in flight).
                return true;
            }
            let Some(conn) = self.backend.as_mut() else {
                return false;
            };
            if self.proto.in_flight == 0 {
                let mut out = BytesMut::new();
                if self.proto.unit_open {
                    msg::sync(&mut out);
                } else {
                    // In a transaction block of the unit's: end it as the server would.
                    msg::query(&mut out, "ROLLBACK");
                }
                let mut at = 0;
                while let Ok(Some((tag, total))) = header(&out[at..], usize::MAX) {
                    if scan::client_frame(
                        tag,
                        &out[at..at + total],
                        &mut self.proto,
                        &mut self.state,
                        Some(&mut conn.st),
                    )
                    .is_err()
                    {
                        return false;
                    }
                    at += total;
                }
                self.rec.client(&out, &mut self.mem);
                if conn.wr.write_all(&out).await.is_err() {
                    return false;
                }
            }
            let Some(conn) = self.backend.as_mut() else {
                return false;
            };
            if self.sbuf.capacity() - self.sbuf.len() < 4096 {
                self.sbuf.reserve(16 * 1024);
            }
            match conn.rd.read_buf(&mut self.sbuf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
            if self.scan_server().is_err() {
                return false;
            }
            // Nobody to answer.
            self.to_client = Bytes::new();
            self.durable = None;
        }
    }

    /// The mirror driver's recording of a unit that did not complete: close its `OPEN`.
    fn close_write_capture(&mut self) {
        if let Some(uid) = self.rec.write.take().and_then(|w| w.uid) {
            if let Some(e) = self.proxy.capture.as_deref() {
                e.close_unit(uid);
            }
        }
    }

    /// Opens a connection to `side` with this session's state (see [`backend::open`]).
    async fn open(
        &self,
        side: Side,
        read_only: bool,
    ) -> Result<(Conn, Vec<(String, String)>), End> {
        let plan = self.state.replay_plan(read_only);
        backend::open(
            self.proxy,
            &self.user,
            side,
            &self.info.database,
            plan,
            self.info.pid,
        )
        .await
    }

    /// Move this session to the serving side the routing table names.
    async fn switch(&mut self) -> Result<(), End> {
        let (side, epoch) = {
            let t = self.proxy.router.load();
            (scan::serving_side(&t, self.carried), t.epoch)
        };
        self.drop_spare();
        if self.backend.as_ref().is_some_and(|c| c.side == side) {
            self.side = side;
            self.epoch = epoch;
            return Ok(());
        }
        if self.pins != 0 && self.backend.is_some() {
            // Never moved silently without what it holds: the client is told and reconnects.
            let why = pins::describe(self.pins);
            tracing::warn!(
                pid = self.info.pid,
                to = side.as_str(),
                "session ended at the switch: it holds {why}, which cannot move to another server"
            );
            crate::metrics::pinned_ended();
            return Err(End::fatal(
                "57P01",
                format!(
                    "terminating connection: the upgrade moved traffic to the {} server and this session holds {why}, which cannot move with it",
                    side.as_str()
                ),
            ));
        }
        let started = Instant::now();
        let (c, params) = match self.take_ahead(side).await {
            Some(c) => c,
            None => self.open(side, false).await?,
        };
        if !self.state.channels().is_empty() {
            self.flush_notifications().await;
        }
        self.unit.cold = true;
        // ParameterStatus values that differ on the new server (server_version at least).
        let mut note = BytesMut::new();
        for (k, v) in params {
            if self.state.client_param(&k, &v) {
                msg::parameter_status(&mut note, &k, &v);
            }
        }
        if !note.is_empty() {
            if self.unit.busy.is_some() {
                let mut all = BytesMut::from(&self.to_client[..]);
                all.put(note);
                self.to_client = all.freeze();
            } else {
                // Moved while idle (a listening session): PostgreSQL reports changed
                // parameters only while answering a query, and drivers take a
                // ParameterStatus among idle notifications for a protocol error; it goes
                // with the session's next unit.
                self.status_note.put(note);
            }
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

    /// The routing table changed. While it is paused for a switch, open the connection to
    /// the side it names next; once it is not, drop a connection opened for nothing, and move
    /// an idle listening session at once: notifications come from the new side now.
    async fn route_changed(&mut self) -> Result<(), End> {
        let t = self.proxy.router.load_full();
        if t.paused {
            self.prepare_ahead(&t);
            return Ok(());
        }
        if t.epoch != self.epoch {
            self.carried = self.proxy.controller.carries(&self.info.database);
        }
        let serving = scan::serving_side(&t, self.carried);
        if self.ready.as_ref().is_some_and(|(c, _)| c.side != serving) {
            if let Some((c, _)) = self.ready.take() {
                c.terminate();
            }
        }
        let moved = t.epoch != self.epoch || serving != self.side;
        if moved
            && self.unit.busy.is_none()
            && self.proto.idle()
            && !self.state.channels().is_empty()
        {
            self.switch().await?;
        }
        Ok(())
    }

    /// While the table is paused for a switch to another side, start opening this session's
    /// connection there, its state replayed, so that it goes on the moment the switch is
    /// published (the session is held or idle: its state cannot change meanwhile).
    fn prepare_ahead(&mut self, t: &RoutingTable) {
        let Some(to) = t.next.filter(|_| t.paused && self.carried) else {
            return;
        };
        // Nothing to open for a session already on `to` (shifted there by the session-level
        // shift): the switch keeps that connection.
        if to == self.side
            || self.pins != 0
            || self.opening.is_some()
            || self.backend.as_ref().is_some_and(|c| c.side == to)
            || self.ready.as_ref().is_some_and(|(c, _)| c.side == to)
        {
            return;
        }
        let plan = self.state.replay_plan(false);
        let (proxy, info, user) = (self.proxy, self.info, self.user.clone());
        self.opening = Some((
            to,
            Box::pin(async move {
                backend::open(proxy, &user, to, &info.database, plan, info.pid).await
            }),
        ));
    }

    /// Whether a connection opened ahead to `side` is still wanted.
    fn still_ahead(&self, side: Side) -> bool {
        let t = self.proxy.router.load();
        side != self.side
            && if t.paused {
                t.next == Some(side)
            } else {
                scan::serving_side(&t, self.carried) == side
            }
    }

    /// The connection to `side` opened ahead of this switch, if there is one (waiting for
    /// it when it is still being opened); others are dropped.
    async fn take_ahead(&mut self, side: Side) -> Option<Opened> {
        if let Some((c, p)) = self.ready.take() {
            if c.side == side {
                return Some((c, p));
            }
            c.terminate();
        }
        let (s, opening) = self.opening.take()?;
        if s != side {
            return None;
        }
        match opening.await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::debug!(
                    pid = self.info.pid,
                    "opening ahead failed ({}); opening again",
                    end_text(&e)
                );
                None
            }
        }
    }

    /// A listening session leaves its backend: forward the notifications it still holds.
    /// A Sync is answered only after the notifications signalled before it have been sent
    /// (the backend delivers them when idle), so everything up to its ReadyForQuery is read,
    /// for at most [`NOTIFY_FLUSH_MS`].
    async fn flush_notifications(&mut self) {
        let Some(c) = self.backend.as_mut() else {
            return;
        };
        let (side, backend_pid) = (c.side, c.pid);
        let mut sync = BytesMut::new();
        msg::sync(&mut sync);
        let mut buf = std::mem::take(&mut self.sbuf);
        self.s_skip = 0;
        let mut out = BytesMut::from(&self.to_client[..]);
        let read = async {
            c.wr.write_all(&sync).await.ok()?;
            loop {
                let (tag, body) = backend::read_frame(&mut c.rd, &mut buf, "flush")
                    .await
                    .ok()?;
                match tag {
                    msg::READY_FOR_QUERY => return Some(()),
                    msg::NOTIFICATION_RESPONSE => {
                        let mut body = body;
                        rewrite_notification_pid(
                            self.proxy,
                            side,
                            backend_pid,
                            self.info.pid,
                            &mut body,
                        );
                        msg::put_msg(&mut out, tag, |b| b.extend_from_slice(&body));
                    }
                    _ => {}
                }
            }
        };
        let done =
            tokio::time::timeout(std::time::Duration::from_millis(NOTIFY_FLUSH_MS), read).await;
        if !matches!(done, Ok(Some(()))) {
            tracing::debug!(
                pid = self.info.pid,
                "the old backend did not answer the notification flush"
            );
        }
        self.to_client = out.freeze();
        self.sbuf = BytesMut::with_capacity(16 * 1024);
    }

    /// Asks the session's server process what pins it ([`pins::check`]), bounded by
    /// [`PINS_CHECK_MS`]; publishes the answer for the admin console and the control plane.
    async fn check_pins_now(&mut self) -> Result<(), End> {
        let Some(c) = self.backend.as_mut() else {
            return Ok(());
        };
        if c.side != self.side {
            return Ok(());
        }
        let (side, backend_pid, pid) = (c.side, c.pid, self.info.pid);
        let proxy = self.proxy;
        let mut buf = std::mem::take(&mut self.sbuf);
        let mut out = BytesMut::new();
        let mut status = BytesMut::new();
        let r = tokio::time::timeout(
            std::time::Duration::from_millis(PINS_CHECK_MS),
            pins::check(c, &mut buf, |tag, mut body| {
                if tag == msg::PARAMETER_STATUS {
                    msg::put_msg(&mut status, tag, |b| b.extend_from_slice(&body));
                    return;
                }
                if tag == msg::NOTIFICATION_RESPONSE {
                    rewrite_notification_pid(proxy, side, backend_pid, pid, &mut body);
                }
                msg::put_msg(&mut out, tag, |b| b.extend_from_slice(&body));
            }),
        )
        .await;
        self.sbuf = buf;
        if !out.is_empty() {
            self.to_client = out.freeze();
        }
        self.status_note.put(status);
        self.state.suspect = Default::default();
        match r {
            Ok(Ok(bits)) => {
                if bits != self.pins {
                    tracing::debug!(pid, pinned = %pins::describe(bits), "session pins changed");
                    self.pins = bits;
                    self.info.pinned.store(bits, Ordering::Relaxed);
                    self.proxy.router.set_pinned(
                        pid,
                        (bits != 0).then(|| control::PinnedSession {
                            pid,
                            user: self.info.user.clone(),
                            database: self.info.database.clone(),
                            reason: pins::describe(bits),
                        }),
                    );
                }
                Ok(())
            }
            Ok(Err(why)) if self.backend.is_some() && !why.contains("closed") => {
                tracing::debug!(pid, "the server refused the pins check: {why}");
                Ok(())
            }
            Ok(Err(why)) => self.backend_lost(&why),
            Err(_) => self.backend_lost(&format!(
                "did not answer pgshift's check of the session's temporary objects within {PINS_CHECK_MS} ms"
            )),
        }
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
                // Read-only for a shifted read-only unit; the session-level shift writes there.
                match self.open(side, side != self.side && !self.by_session).await {
                    Ok((c, _)) => {
                        // Its latency is not the server's answer time (see `unit_done`).
                        self.unit.cold = true;
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
                            end_text(&e),
                            self.side.as_str()
                        );
                        self.proxy.router.traffic.unit_done(side, true, None);
                        self.rec.replay = None;
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
        let Some(raw) = self.rec.replay.take() else {
            return Err(End::fatal(
                "08006",
                "lost the server connection during a query",
            ));
        };
        let failed = self
            .unit
            .lost_side
            .take()
            .unwrap_or_else(|| self.active_side());
        let us = self.unit.started.elapsed().as_micros() as u64;
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
        self.proto.unit_open = false;
        self.proto.unit_error = false;
        self.proto.tx = msg::TX_IDLE;
        self.state.unit_restart();
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
        self.proto.in_flight = 0;
        self.backend.replace(c)
    }

    /// Scan server bytes: ReadyForQuery ends units; queue the complete part for the client.
    fn scan_server(&mut self) -> Result<(), End> {
        let shifted = self.shifted_unanswered();
        if shifted
            && scan::hold_answer(
                &self.sbuf,
                self.s_skip > 0,
                self.proto.in_flight,
                SHIFT_HOLD_BYTES,
            )
        {
            return Ok(());
        }
        let mut fwd = 0;
        // Bytes taken out of `sbuf` because a message in them is not for the client.
        let mut kept: Option<BytesMut> = None;
        while fwd < self.sbuf.len() {
            if self.s_skip > 0 {
                let n = self.s_skip.min(self.sbuf.len() - fwd);
                self.s_skip -= n;
                fwd += n;
                continue;
            }
            // A unit done earlier in this buffer ends the shift: ask again per message.
            let shifted = self.shifted_unanswered();
            let Some(conn) = self.backend.as_mut() else {
                break;
            };
            let side = conn.side;
            let (tag, total) = match header(&self.sbuf[fwd..], usize::MAX) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    return Err(End::fatal(
                        "08P01",
                        format!("invalid message from the {} server: {e}", side.as_str()),
                    ))
                }
            };
            let avail = self.sbuf.len() - fwd;
            if avail < total && scan::server_inspects(tag, &conn.st, &self.state, shifted) {
                break;
            }
            let end = fwd + total.min(avail);
            let step = scan::server_frame(
                tag,
                &self.sbuf[fwd..end],
                &mut self.proto,
                &mut conn.st,
                &mut self.state,
                shifted,
            );
            let drop = matches!(step, ServerStep::Drop | ServerStep::Dying(_));
            let dying = match step {
                ServerStep::Forward => false,
                ServerStep::UnitDone => {
                    self.unit_done(side);
                    false
                }
                ServerStep::Drop => false,
                ServerStep::Notification { pid } => {
                    let client_pid = if pid == conn.pid {
                        Some(self.info.pid)
                    } else {
                        self.proxy.session_of_backend(side, pid)
                    };
                    if let Some(p) = client_pid {
                        self.sbuf[fwd + 5..fwd + 9].copy_from_slice(&p.to_be_bytes());
                    }
                    false
                }
                ServerStep::Dying(e) => {
                    // Unsolicited error while idle: the server is ending this connection
                    // (FATAL). Keep it from the client; the next transaction reconnects.
                    tracing::warn!(
                        pid = self.info.pid,
                        side = side.as_str(),
                        "idle backend said: {e}"
                    );
                    true
                }
                ServerStep::Replay(e) => {
                    // Nothing of the unanswered shifted unit reached the client (its answer
                    // is held back): what is in `sbuf` can all be thrown away.
                    tracing::warn!(
                        pid = self.info.pid,
                        side = side.as_str(),
                        "shifted read-only transaction failed before any answer: {e}"
                    );
                    self.unit.lost_side = Some(side);
                    self.unit.replay = true;
                    return Ok(());
                }
            };
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
            self.unit.answered = true;
            self.rec.replay = None;
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
        if !self.rec.idle() {
            if fwd > 0 || !self.to_client.is_empty() {
                self.rec.server(&self.to_client, &mut self.mem);
            }
            if self.rec.write.as_ref().is_some_and(|w| w.cap.done) {
                self.record_unit();
            }
            if self.rec.mirror.as_ref().is_some_and(|c| c.done) {
                self.mirror_unit();
            }
        }
        Ok(())
    }

    /// The captured unit ended (its final ReadyForQuery is about to be forwarded): record it
    /// for the mirror driver, before the client can see it committed.
    fn record_unit(&mut self) {
        let Some(w) = self.rec.write.take() else {
            return;
        };
        let (Some(uid), Some(e)) = (w.uid, self.proxy.capture.as_deref()) else {
            return;
        };
        let cap = w.cap;
        if cap.too_big {
            // Its copies were dropped when it grew past the limit.
            e.lost(uid, crate::capture::MAX_UNIT_BYTES + 1);
            return;
        }
        let statements = cap
            .used
            .iter()
            .filter_map(|n| {
                self.state
                    .statement(n.as_bytes())
                    .map(|f| (n.clone(), f.to_vec()))
            })
            .collect();
        self.durable = e.record(&crate::capture::Unit {
            uid,
            user: self.user.cfg.server_user().to_string(),
            params: self.state.params.clone(),
            sets: self
                .state
                .set_statements()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect(),
            statements,
            client: cap.client.into(),
            server: cap.server.into(),
        });
    }

    /// The captured unit ended: hand it to the mirror (without waiting).
    fn mirror_unit(&mut self) {
        let (Some(cap), Some(m)) = (self.rec.mirror.take(), self.proxy.mirror.as_deref()) else {
            return;
        };
        if cap.too_big {
            m.too_big();
            return;
        }
        let statements = cap
            .used
            .iter()
            .filter_map(|n| {
                self.state
                    .statement(n.as_bytes())
                    .map(|f| (n.clone(), f.clone()))
            })
            .collect();
        m.offer(crate::mirror::Job {
            user: self.user.clone(),
            params: self.state.params.clone(),
            sets: self
                .state
                .set_statements()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect(),
            statements,
            client: cap.client.freeze(),
            server: cap.server.freeze(),
            at: std::time::SystemTime::now(),
        });
    }

    /// A unit of work ended with ReadyForQuery `I` and nothing in flight, on `side`.
    fn unit_done(&mut self, side: Side) {
        self.rec.unit_done();
        // Pinned, or hints that it may now be: ask the server once idle. On the serving
        // side only (a shifted unit never carries a hint, see `boundary`).
        if (self.pins != 0 || self.state.suspect.any()) && side == self.side {
            self.check_pins = true;
        }
        // The idle connection did not see a change of the state: drop it, it is reopened on
        // demand.
        if self.state.take_changed() {
            self.drop_spare();
        }
        if let Some(busy) = self.unit.busy.take() {
            drop(busy);
            let us = self.unit.started.elapsed().as_micros() as u64;
            // The first unit on a connection just opened pays for its cold catalog caches:
            // counted, but no sample for the health checks' p99.
            let cold = std::mem::take(&mut self.unit.cold);
            self.proxy
                .router
                .traffic
                .unit_done(side, self.proto.unit_error, (!cold).then_some(us));
            crate::metrics::txn_done(side, self.proto.unit_error, us);
        }
        self.info.state.store(STATE_IDLE, Ordering::Relaxed);
    }
}
