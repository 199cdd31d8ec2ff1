//! One client connection: start-up, authentication, then either the admin console or the
//! relay to a backend, with backend switches at transaction boundaries.
//!
//! The relay moves bytes in whole chunks: it reads what the socket has, finds frame
//! boundaries with [`wire::frame::header`], and forwards the complete part in one write. It
//! reads only message tags, `ReadyForQuery`'s transaction status byte, and the text of
//! `Query`, `Parse` and `Close` (to track SETs and prepared statements). Both directions are
//! served by one task that never blocks one direction on the other (no deadlock when a client
//! pipelines without reading).

use crate::backend::{self, BackendConn, BackendError};
use crate::server::{Proxy, SessionInfo, UserEntry, STATE_ACTIVE, STATE_HELD, STATE_IDLE};
use bytes::{Buf, Bytes, BytesMut};
use config::AuthMethod;
use control::Side;
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::codec::Decoder;
use wire::auth::{md5_verify, ScramServer, SCRAM_SHA_256};
use wire::frame::{header, StartupCodec, StartupFrame, WireError, PROTOCOL_3_0};
use wire::msg;

/// How a session ends early: quietly, or with a FATAL ErrorResponse to the client.
pub enum End {
    Closed,
    Fatal { sqlstate: String, message: String },
}

impl End {
    pub fn fatal(sqlstate: &str, message: impl Into<String>) -> End {
        End::Fatal {
            sqlstate: sqlstate.to_string(),
            message: message.into(),
        }
    }
}

impl From<WireError> for End {
    fn from(e: WireError) -> End {
        match e {
            WireError::Io(_) | WireError::Truncated => End::Closed,
            e => End::fatal(e.sqlstate(), e.to_string()),
        }
    }
}

impl From<std::io::Error> for End {
    fn from(_: std::io::Error) -> End {
        End::Closed
    }
}

/// The client socket during start-up, with its read buffer.
pub struct ClientConn {
    pub stream: TcpStream,
    pub buf: BytesMut,
    pub out: BytesMut,
}

impl ClientConn {
    pub async fn flush(&mut self) -> Result<(), End> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    async fn fill(&mut self) -> Result<(), End> {
        self.buf.reserve(4096);
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(End::Closed);
        }
        Ok(())
    }

    /// Read one whole regular message, at most `max` bytes.
    pub async fn read_msg(&mut self, max: usize) -> Result<(u8, Bytes), End> {
        loop {
            if let Some((tag, total)) = header(&self.buf, max)? {
                if self.buf.len() >= total {
                    let mut f = self.buf.split_to(total);
                    f.advance(5);
                    return Ok((tag, f.freeze()));
                }
            }
            self.fill().await?;
        }
    }

    async fn read_startup(&mut self) -> Result<StartupFrame, End> {
        loop {
            if let Some(f) = StartupCodec.decode(&mut self.buf)? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// Send a FATAL ErrorResponse and stop.
    pub async fn fatal(&mut self, sqlstate: &str, message: &str) {
        msg::error_response(&mut self.out, "FATAL", sqlstate, message, None, None);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// Entry point for an accepted connection.
pub async fn run(proxy: Arc<Proxy>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut c = ClientConn {
        stream,
        buf: BytesMut::with_capacity(8192),
        out: BytesMut::with_capacity(1024),
    };
    let login_timeout = Duration::from_millis(proxy.cfg.proxy.client_login_timeout_ms);
    let login = match tokio::time::timeout(login_timeout, login(&proxy, &mut c)).await {
        Ok(Ok(l)) => l,
        Ok(Err(End::Closed)) => return,
        Ok(Err(End::Fatal { sqlstate, message })) => {
            tracing::info!(client = %peer, sqlstate = %sqlstate, "login refused: {message}");
            c.fatal(&sqlstate, &message).await;
            return;
        }
        Err(_) => {
            c.fatal("08006", "canceling authentication due to timeout")
                .await;
            return;
        }
    };
    match login {
        Login::Cancel { pid, secret } => proxy.cancel(pid, secret).await,
        Login::Admin { user } => {
            let info = proxy.register(&user.cfg.name, &proxy.cfg.proxy.admin_database, peer, true);
            crate::admin::run(&proxy, &mut c, &info).await;
            proxy.unregister(info.pid);
        }
        Login::Data {
            user,
            database,
            params,
        } => {
            let info = proxy.register(&user.cfg.name, &database, peer, false);
            let end = relay(&proxy, c, &info, user, params).await;
            if let Err((mut c, End::Fatal { sqlstate, message })) = end {
                tracing::warn!(client = %peer, pid = info.pid, sqlstate = %sqlstate, "session ended: {message}");
                c.fatal(&sqlstate, &message).await;
            }
            proxy.unregister(info.pid);
        }
    }
}

enum Login {
    Cancel {
        pid: i32,
        secret: i32,
    },
    Admin {
        user: Arc<UserEntry>,
    },
    Data {
        user: Arc<UserEntry>,
        database: String,
        params: Vec<(String, String)>,
    },
}

/// Start-up and authentication (53.2.1), up to but not including AuthenticationOk.
async fn login(proxy: &Proxy, c: &mut ClientConn) -> Result<Login, End> {
    let (version, params) = loop {
        match c.read_startup().await? {
            StartupFrame::SslRequest | StartupFrame::GssEncRequest => {
                if !c.buf.is_empty() {
                    return Err(End::fatal(
                        "08P01",
                        "received unencrypted data after SSL request",
                    ));
                }
                c.stream.write_all(b"N").await?;
            }
            StartupFrame::Cancel { pid, secret } => return Ok(Login::Cancel { pid, secret }),
            StartupFrame::Startup { version, params } => break (version, params),
        }
    };
    // Newer minor protocol versions or `_pq_.` options: say what we speak (53.2.1).
    let unknown: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.as_str())
        .collect();
    if version != PROTOCOL_3_0 || !unknown.is_empty() {
        msg::negotiate_protocol_version(&mut c.out, 0, &unknown);
    }
    let Some(user_name) = StartupFrame::param(&params, "user").filter(|u| !u.is_empty()) else {
        return Err(End::fatal(
            "28000",
            "no PostgreSQL user name specified in startup packet",
        ));
    };
    let database = StartupFrame::param(&params, "database")
        .filter(|d| !d.is_empty())
        .unwrap_or(user_name)
        .to_string();
    if StartupFrame::param(&params, "replication")
        .is_some_and(|v| v != "false" && v != "0" && v != "off")
    {
        return Err(End::fatal(
            "0A000",
            "pgshift does not proxy replication connections",
        ));
    }
    let user = proxy.users.get(user_name).cloned();
    authenticate(proxy, c, user_name, user.as_deref()).await?;
    let user = user.ok_or_else(|| {
        End::fatal(
            "28P01",
            format!("password authentication failed for user \"{user_name}\""),
        )
    })?;
    let admin_db = &proxy.cfg.proxy.admin_database;
    if &database == admin_db {
        if !user.cfg.admin {
            return Err(End::fatal("28000", format!("user \"{user_name}\" may not open the admin console (database \"{admin_db}\"): only users with admin = true may")));
        }
        return Ok(Login::Admin { user });
    }
    if user.cfg.admin {
        return Err(End::fatal("28000", format!("user \"{user_name}\" is an admin user: it may only open the admin console (database \"{admin_db}\")")));
    }
    let (src, tgt) = (&proxy.cfg.source.dbname, &proxy.cfg.target.dbname);
    if &database != src && &database != tgt {
        return Err(End::fatal(
            "3D000",
            format!("database \"{database}\" is not served by pgshift (it serves \"{src}\")"),
        ));
    }
    let params = params
        .into_iter()
        .filter(|(k, _)| k != "user" && k != "database")
        .collect();
    Ok(Login::Data {
        user,
        database,
        params,
    })
}

/// Authenticate the client per its configured method. Unknown users go through a mock
/// SCRAM exchange and fail like a wrong password, so their existence is not revealed.
async fn authenticate(
    proxy: &Proxy,
    c: &mut ClientConn,
    name: &str,
    user: Option<&UserEntry>,
) -> Result<(), End> {
    let failed = || {
        End::fatal(
            "28P01",
            format!("password authentication failed for user \"{name}\""),
        )
    };
    let method = user.map(|u| u.cfg.auth).unwrap_or(AuthMethod::ScramSha256);
    const AUTH_MSG_MAX: usize = 10_000;
    match method {
        AuthMethod::Trust => Ok(()),
        AuthMethod::Md5 => {
            let salt: [u8; 4] = rand::random();
            msg::auth_md5(&mut c.out, salt);
            c.flush().await?;
            let body = expect_password(c, AUTH_MSG_MAX).await?;
            let resp = msg::parse_password(&body)?;
            let pw = user
                .and_then(|u| u.cfg.password.as_deref())
                .ok_or_else(failed)?;
            if md5_verify(name, pw, salt, resp) {
                Ok(())
            } else {
                Err(failed())
            }
        }
        AuthMethod::ScramSha256 => {
            let verifier = user
                .and_then(|u| u.verifier.clone())
                .unwrap_or_else(|| proxy.mock_verifier.clone());
            let mut server = ScramServer::new(verifier);
            msg::auth_sasl(&mut c.out, &[SCRAM_SHA_256]);
            c.flush().await?;
            let body = expect_password(c, AUTH_MSG_MAX).await?;
            let (mech, data) = msg::parse_sasl_initial(&body)?;
            let first = server
                .client_first(mech, data)
                .map_err(|e| End::fatal("28000", format!("SCRAM authentication failed: {e}")))?;
            msg::auth_sasl_continue(&mut c.out, &first);
            c.flush().await?;
            let body = expect_password(c, AUTH_MSG_MAX).await?;
            let fin = server.client_final(&body).map_err(|_| failed())?;
            if user.is_none() {
                return Err(failed());
            }
            msg::auth_sasl_final(&mut c.out, &fin);
            Ok(())
        }
    }
}

async fn expect_password(c: &mut ClientConn, max: usize) -> Result<Bytes, End> {
    let (tag, body) = c.read_msg(max).await?;
    if tag != msg::PASSWORD {
        return Err(End::fatal(
            "08P01",
            format!(
                "expected password response, got message type '{}'",
                tag as char
            ),
        ));
    }
    Ok(body)
}

/// Connect to the side the routing table names, retrying until the connect timeout.
async fn connect_backend(
    proxy: &Proxy,
    user: &UserEntry,
    side: Side,
    params: &[(String, String)],
) -> Result<BackendConn, End> {
    let addr = proxy.router.load().addr(side).clone();
    let timeout = proxy.cfg.proxy.connect_timeout_ms;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout);
    let mut wait = 10;
    loop {
        match backend::connect(
            &addr,
            user.cfg.server_user(),
            user.cfg.server_password(),
            params,
            timeout,
        )
        .await
        {
            Ok(b) => return Ok(b),
            // The server said no for a reason of its own: retrying will not help.
            Err(e @ BackendError::Refused { .. }) if !is_transient(&e) => {
                return Err(End::Fatal {
                    sqlstate: e.sqlstate(),
                    message: format!(
                        "pgshift could not log in to the {} server: {e}",
                        side.as_str()
                    ),
                })
            }
            Err(e) => {
                if tokio::time::Instant::now() + Duration::from_millis(wait) >= deadline {
                    return Err(End::Fatal {
                        sqlstate: e.sqlstate(),
                        message: format!(
                            "pgshift could not reach the {} server: {e}",
                            side.as_str()
                        ),
                    });
                }
                tracing::debug!(side = side.as_str(), error = %e, "backend connect failed; retrying");
                tokio::time::sleep(Duration::from_millis(wait)).await;
                wait = (wait * 2).min(500);
            }
        }
    }
}

fn is_transient(e: &BackendError) -> bool {
    // 57P03 cannot_connect_now (starting up / shutting down), 53300 too_many_connections.
    matches!(e, BackendError::Refused { fields, .. } if fields.sqlstate == "57P03" || fields.sqlstate == "53300")
}

/// What a boundary check decided.
enum Stop {
    /// Traffic is paused: keep the message in the proxy until the table changes.
    Hold,
    /// The table points elsewhere (or the backend is gone): switch, then go on.
    Switch,
}

struct Relay<'p> {
    proxy: &'p Proxy,
    info: &'p SessionInfo,
    user: Arc<UserEntry>,
    /// Client start-up parameters other than user and database, replayed on every backend.
    params: Vec<(String, String)>,
    c_rd: OwnedReadHalf,
    c_wr: OwnedWriteHalf,
    cbuf: BytesMut,
    to_server: Bytes,
    /// The backend connection, split; `None` after it was lost while idle.
    backend: Option<(OwnedReadHalf, OwnedWriteHalf)>,
    sbuf: BytesMut,
    to_client: Bytes,
    side: Side,
    epoch: u64,
    /// Sync/Query/FunctionCall messages sent whose ReadyForQuery has not come back.
    in_flight: u32,
    /// Extended-protocol messages sent since the last Sync.
    unit_open: bool,
    /// Last ReadyForQuery transaction status.
    tx: u8,
    /// Counted in the router's busy sessions.
    busy: bool,
    held: bool,
    /// Bytes of the current (streamed) client / server message still to pass through.
    c_skip: usize,
    s_skip: usize,
    c_rescan: bool,
    s_rescan: bool,
    closing: bool,
    /// Named prepared statements: name → the whole Parse message.
    prepared: HashMap<String, Bytes>,
    /// Session SETs in effect: variable → statement text.
    sets: Vec<(String, String)>,
    pending: Vec<SessionChange>,
    unit_error: bool,
    /// ParameterStatus values the client has seen.
    client_params: HashMap<String, String>,
    max_msg: usize,
    rx: watch::Receiver<u64>,
}

/// A change to replayable session state, applied when its unit succeeds.
enum SessionChange {
    Set(String, String),
    Reset(String),
    ResetAll,
    DiscardAll,
    Deallocate(Option<String>),
}

async fn relay(
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
    info.set_backend(side, b.pid, b.secret);
    info.state.store(STATE_IDLE, Ordering::Relaxed);
    let b_params = std::mem::take(&mut b.params);
    msg::auth_ok(&mut c.out);
    let mut client_params = HashMap::new();
    for (k, v) in &b_params {
        msg::parameter_status(&mut c.out, k, v);
        client_params.insert(k.clone(), v.clone());
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
        backend: Some(b.stream.into_split()),
        sbuf: BytesMut::with_capacity(16 * 1024),
        to_client: Bytes::new(),
        side,
        epoch,
        in_flight: 0,
        unit_open: false,
        tx: msg::TX_IDLE,
        busy: false,
        held: false,
        c_skip: 0,
        s_skip: 0,
        c_rescan,
        s_rescan: false,
        closing: false,
        prepared: HashMap::new(),
        sets: Vec::new(),
        pending: Vec::new(),
        unit_error: false,
        client_params,
        max_msg: proxy.cfg.proxy.max_message_bytes,
        rx,
    };
    let res = r.run().await;
    if r.busy {
        proxy.router.leave();
    }
    if let Some((_, wr)) = r.backend.take() {
        let mut out = BytesMut::new();
        msg::terminate(&mut out);
        let _ = wr.try_write(&out);
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

enum Ev {
    ClientRead(std::io::Result<usize>),
    ServerRead(std::io::Result<usize>),
    Writable,
    RouteChanged,
    ClientGone,
}

impl Relay<'_> {
    async fn run(&mut self) -> Result<(), End> {
        loop {
            self.flush_some()?;
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
                    Some((r, w)) => (Some(r), Some(&*w)),
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
                Ev::ClientRead(Ok(_)) => self.scan_client().await?,
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
            if let Some((_, wr)) = &self.backend {
                match wr.try_write(&self.to_server) {
                    Ok(n) => self.to_server.advance(n),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => self.backend_lost(&e.to_string())?,
                }
            }
        }
        if !self.to_client.is_empty() {
            match self.c_wr.try_write(&self.to_client) {
                Ok(n) => self.to_client.advance(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return Err(End::Closed),
            }
        }
        Ok(())
    }

    fn idle(&self) -> bool {
        self.in_flight == 0 && !self.unit_open && self.tx == msg::TX_IDLE
    }

    /// The backend went away. Idle: drop it, the next transaction reconnects. Busy: the
    /// client loses its connection, as it would have with PostgreSQL directly.
    fn backend_lost(&mut self, why: &str) -> Result<(), End> {
        tracing::warn!(
            pid = self.info.pid,
            side = self.side.as_str(),
            idle = self.idle(),
            "backend {why}"
        );
        self.backend = None;
        self.sbuf.clear();
        self.s_skip = 0;
        self.to_server = Bytes::new();
        if self.idle() {
            return Ok(());
        }
        Err(End::fatal("08006", format!("the {} server closed the connection unexpectedly ({why}) while a query was in progress", self.side.as_str())))
    }

    /// Scan client bytes: track protocol state, stop at a transaction boundary when the
    /// routing table says so, queue the complete part for the backend.
    async fn scan_client(&mut self) -> Result<(), End> {
        loop {
            let mut fwd = 0;
            let mut stop = None;
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
                if !self.busy || self.backend.is_none() {
                    debug_assert_eq!(fwd, 0);
                    if let Some(s) = self.boundary() {
                        stop = Some(s);
                        break;
                    }
                }
                let avail = self.cbuf.len() - fwd;
                let inspect = matches!(tag, msg::QUERY | msg::PARSE | msg::CLOSE | msg::TERMINATE);
                if inspect && avail < total {
                    break;
                }
                match tag {
                    msg::QUERY => {
                        self.in_flight += 1;
                        self.unit_open = false;
                        if let Some(ch) =
                            session_change(msg::parse_query(&self.cbuf[fwd + 5..fwd + total])?)
                        {
                            self.pending.push(ch);
                        }
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
                            self.prepared.insert(name, frame);
                        }
                    }
                    msg::CLOSE => {
                        self.unit_open = true;
                        let (kind, name) = msg::parse_close(&self.cbuf[fwd + 5..fwd + total])?;
                        if kind == b'S' {
                            self.prepared.remove(name);
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
            if fwd > 0 {
                self.to_server = self.cbuf.split_to(fwd).freeze();
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
                Some(Stop::Switch) => {
                    self.switch().await?;
                    // Go on scanning what the client sent, now on the new backend.
                }
            }
        }
    }

    /// At a transaction boundary with a new message from the client: decide whether it may
    /// go to the current backend. Returns `None` to go on (the session is then busy).
    fn boundary(&mut self) -> Option<Stop> {
        if !self.busy {
            self.rx.borrow_and_update();
            if !self.proxy.router.try_enter() {
                return Some(Stop::Hold);
            }
            self.busy = true;
            self.unit_error = false;
            self.info.state.store(STATE_ACTIVE, Ordering::Relaxed);
        }
        let t = self.proxy.router.load();
        if t.epoch != self.epoch || t.side != self.side || self.backend.is_none() {
            return Some(Stop::Switch);
        }
        None
    }

    /// Move this session to the side the routing table names: connect, replay SETs and
    /// prepared statements, tell the client about changed ParameterStatus values.
    async fn switch(&mut self) -> Result<(), End> {
        let (side, epoch) = {
            let t = self.proxy.router.load();
            (t.side, t.epoch)
        };
        if side == self.side && self.backend.is_some() {
            self.epoch = epoch;
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut b = connect_backend(self.proxy, &self.user, side, &self.params).await?;
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
        // ParameterStatus values that differ on the new server (server_version at least).
        let mut note = BytesMut::new();
        for (k, v) in &b.params {
            if self.client_params.get(k) != Some(v) {
                msg::parameter_status(&mut note, k, v);
                self.client_params.insert(k.clone(), v.clone());
            }
        }
        if !note.is_empty() {
            if !self.to_client.is_empty() {
                let mut all = BytesMut::from(&self.to_client[..]);
                all.extend_from_slice(&note);
                note = all;
            }
            self.to_client = note.freeze();
        }
        if let Some((_, old)) = self.backend.take() {
            let mut t = BytesMut::new();
            msg::terminate(&mut t);
            let _ = old.try_write(&t);
        }
        self.info.set_backend(side, b.pid, b.secret);
        self.info.switches.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            pid = self.info.pid,
            from = self.side.as_str(),
            to = side.as_str(),
            ms = started.elapsed().as_millis() as u64,
            "session switched backend"
        );
        self.backend = Some(b.stream.into_split());
        self.side = side;
        self.epoch = epoch;
        self.sbuf.clear();
        self.s_skip = 0;
        self.in_flight = 0;
        Ok(())
    }

    /// Scan server bytes: ReadyForQuery ends units; queue the complete part for the client.
    fn scan_server(&mut self) -> Result<(), End> {
        let mut fwd = 0;
        let mut drop = 0;
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
                            self.side.as_str()
                        ),
                    ))
                }
            };
            let Some((tag, total)) = h else { break };
            let avail = self.sbuf.len() - fwd;
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
                        side = self.side.as_str(),
                        "idle backend said: {e}"
                    );
                    drop = total;
                    break;
                }
                msg::ERROR_RESPONSE => self.unit_error = true,
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
            if avail < total {
                self.s_skip = total - avail;
                fwd += avail;
            } else {
                fwd += total;
            }
        }
        if fwd > 0 {
            self.to_client = self.sbuf.split_to(fwd).freeze();
        }
        if drop > 0 {
            self.sbuf.advance(drop);
            self.s_rescan = true;
        }
        Ok(())
    }

    /// A unit of work ended with ReadyForQuery `I` and nothing in flight.
    fn unit_done(&mut self) {
        if !self.unit_error {
            for ch in std::mem::take(&mut self.pending) {
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
                    }
                    SessionChange::Deallocate(Some(name)) => {
                        self.prepared.remove(&name);
                    }
                    SessionChange::Deallocate(None) => self.prepared.clear(),
                }
            }
        } else {
            self.pending.clear();
        }
        if self.busy {
            self.busy = false;
            self.proxy.router.leave();
        }
        self.info.state.store(STATE_IDLE, Ordering::Relaxed);
    }
}

/// Note the statements of `sql` that change replayable session state (SET, RESET, DISCARD
/// ALL, DEALLOCATE). Cheap on the hot path: only a text starting with S, R or D is looked at;
/// then it is split into statements (quotes, dollar quotes and comments respected).
fn session_changes(sql: &str, out: &mut Vec<SessionChange>) {
    let first = sql
        .trim_start()
        .as_bytes()
        .first()
        .map(u8::to_ascii_uppercase);
    if !matches!(first, Some(b'S' | b'R' | b'D')) {
        return;
    }
    for stmt in split_statements(sql) {
        if let Some(ch) = session_change(stmt) {
            out.push(ch);
        }
    }
}

/// Split SQL text on top-level semicolons, skipping those inside '…', "…", $tag$…$tag$,
/// -- comments and /* */ comments (PostgreSQL docs 4.1 "Lexical Structure").
fn split_statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut start) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                // $tag$ … $tag$ (tag: letters, digits, underscores; not starting with a digit).
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
                    .map(|p| i + 1 + p);
                if let Some(e) = tag_end
                    .filter(|&e| b[e] == b'$' && !b.get(i + 1).is_some_and(u8::is_ascii_digit))
                {
                    let tag = &sql[i..=e];
                    match sql[e + 1..].find(tag) {
                        Some(p) => i = e + 1 + p + tag.len() - 1,
                        None => i = b.len(),
                    }
                }
            }
            b';' => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < b.len() {
        out.push(&sql[start..]);
    }
    out.retain(|s| !s.trim().is_empty());
    out
}

/// Recognise one statement that changes replayable session state.
fn session_change(stmt: &str) -> Option<SessionChange> {
    let mut s = stmt.trim();
    // Leading comments.
    loop {
        if let Some(r) = s.strip_prefix("--") {
            s = r.split_once('\n').map_or("", |(_, rest)| rest).trim_start();
        } else if let Some(r) = s.strip_prefix("/*") {
            s = r.split_once("*/").map_or("", |(_, rest)| rest).trim_start();
        } else {
            break;
        }
    }
    let mut words = s.split_whitespace();
    let w0 = words.next()?.to_ascii_uppercase();
    match w0.as_str() {
        "SET" => {
            let mut w1 = words.next()?.to_ascii_lowercase();
            if w1 == "session" {
                w1 = words.next()?.to_ascii_lowercase();
                if w1 == "characteristics" || w1 == "authorization" {
                    return None;
                }
            }
            if matches!(
                w1.as_str(),
                "local" | "transaction" | "constraints" | "role" | "authorization"
            ) {
                return None;
            }
            let var = w1.split(['=', ' ']).next()?.to_string();
            Some(SessionChange::Set(var, s.to_string()))
        }
        "RESET" => {
            let w1 = words.next()?.to_ascii_lowercase();
            if w1 == "all" {
                Some(SessionChange::ResetAll)
            } else {
                Some(SessionChange::Reset(w1))
            }
        }
        "DISCARD" => {
            let w1 = words.next()?.to_ascii_lowercase();
            (w1 == "all").then_some(SessionChange::DiscardAll)
        }
        "DEALLOCATE" => {
            let mut w1 = words.next()?.to_string();
            if w1.eq_ignore_ascii_case("prepare") {
                w1 = words.next()?.to_string();
            }
            if w1.eq_ignore_ascii_case("all") {
                Some(SessionChange::Deallocate(None))
            } else {
                Some(SessionChange::Deallocate(Some(
                    w1.trim_matches('"').to_string(),
                )))
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_session_changes() {
        assert!(
            matches!(session_change("SET search_path = a, b"), Some(SessionChange::Set(v, _)) if v == "search_path")
        );
        assert!(
            matches!(session_change("set application_name='x';"), Some(SessionChange::Set(v, _)) if v == "application_name='x'" || v == "application_name")
        );
        assert!(
            matches!(session_change("SET SESSION work_mem TO '64MB'"), Some(SessionChange::Set(v, _)) if v == "work_mem")
        );
        assert!(session_change("SET LOCAL work_mem = 1").is_none());
        assert!(session_change("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").is_none());
        assert!(matches!(
            session_change("reset all"),
            Some(SessionChange::ResetAll)
        ));
        assert!(
            matches!(session_change("RESET work_mem"), Some(SessionChange::Reset(v)) if v == "work_mem")
        );
        assert!(matches!(
            session_change("DISCARD ALL"),
            Some(SessionChange::DiscardAll)
        ));
        assert!(
            matches!(session_change("DEALLOCATE PREPARE s1"), Some(SessionChange::Deallocate(Some(n))) if n == "s1")
        );
        assert!(session_change("SELECT 1").is_none());
        let mut v = Vec::new();
        session_changes(
            "SET a = 1; SELECT ';'; set b to 'x;y' ; -- c;\n RESET c",
            &mut v,
        );
        assert_eq!(v.len(), 3, "two SETs and a RESET");
        assert!(matches!(&v[1], SessionChange::Set(n, t) if n == "b" && t == "set b to 'x;y'"));
        let mut v = Vec::new();
        session_changes("SELECT 1; SET a = 1", &mut v);
        assert_eq!(v.len(), 1, "SELECT is no change, the SET is");
        let mut v = Vec::new();
        session_changes("COMMIT; SET a = 1", &mut v);
        assert!(
            v.is_empty(),
            "only texts starting with S, R or D are looked at (documented limit)"
        );
        assert_eq!(
            split_statements("DO $x$ a; b $x$; SET c = 1"),
            vec!["DO $x$ a; b $x$", " SET c = 1"]
        );
        assert_eq!(
            split_statements("/* ; */ SET a = '1'"),
            vec!["/* ; */ SET a = '1'"]
        );
    }
}
