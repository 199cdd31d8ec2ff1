//! The HTTP server (`[http] listen`, axum on the control plane's runtime):
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text (see `metrics.rs`) |
//! | `GET /progress` | the upgrade status as JSON ([`Progress`]), from memory |
//! | `GET /health` | `200 ok` while the process serves |
//! | `GET /clients` | JSON array, the rows of `SHOW CLIENTS` |
//! | `GET /servers` | JSON array, the rows of `SHOW SERVERS` |
//! | `GET /databases` | JSON array, the rows of `SHOW UPGRADE DATABASES` |
//! | `POST /upgrade/start`, `/upgrade/cutover`, `/upgrade/rollback` | the admin console's `START UPGRADE`, `INITIATE CUTOVER`, `ROLLBACK UPGRADE`: `{"ok": bool, "message": "..."}`, 200, 409 when the controller refused, 400 for a bad argument, 500 when the command failed, 503 when a server could not be reached |
//!
//! Access ([`Access`], checked before any handler runs, in this order):
//!
//! | case | answer |
//! |---|---|
//! | path in `[http] public` (default `/metrics`, `/health`) | served |
//! | token configured, no `Authorization: Bearer` header | 401, `WWW-Authenticate: Bearer realm="pgshift"`, SQLSTATE 28000 |
//! | token configured, another token | 401, `WWW-Authenticate: Bearer realm="pgshift", error="invalid_token"` (RFC 6750 3.1), SQLSTATE 28P01 |
//! | no token configured, `/clients` or `/upgrade/*` | 403, SQLSTATE 42501 |
//! | `POST` without `Content-Type: application/json` | 415 |
//!
//! Refusals are JSON `{"ok": false, "sqlstate": "...", "message": "..."}` (the SQLSTATEs are
//! PostgreSQL's for a failed login and a missing privilege) and nothing else happens. The
//! JSON content type on POSTs means a web page cannot send the command with a plain form:
//! a browser sends `application/json` across origins only after a CORS preflight, which this
//! server never grants. Tokens are compared as SHA-256 digests in constant time and never
//! logged.
//!
//! With `[http.tls]` the same router is served over TLS only ([`TlsListener`]: rustls from
//! the `tls` crate, ALPN `http/1.1`, optional client certificates); the access rules above do
//! not change.

use crate::admin;
use crate::server::Proxy;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use control::Controller;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub proxy: Arc<Proxy>,
    /// `None` when the metrics recorder could not be installed: `/metrics` answers 503.
    pub prometheus: Option<PrometheusHandle>,
    /// Who may call what.
    pub access: Access,
}

/// The access rules of the HTTP server (see the module's table): the SHA-256 digest of the
/// token, if one is configured, and the paths served without it. `Debug` shows neither the
/// token nor its digest.
#[derive(Clone)]
pub struct Access {
    token: Option<[u8; 32]>,
    public: Arc<[String]>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.token.map(|_| "***"))
            .field("public", &self.public)
            .finish()
    }
}

impl Access {
    /// Rules for `token` (the configured one, `None` for none) and the `public` paths.
    pub fn new(token: Option<&str>, public: &[String]) -> Access {
        Access {
            token: token.map(|t| Sha256::digest(t.as_bytes()).into()),
            public: public.into(),
        }
    }

    /// Whether a token is required (one is configured).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// `Ok` when the request may reach its handler, else the refusal to send instead.
    pub fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), Refused> {
        if !self.public.iter().any(|p| p == path) {
            match &self.token {
                Some(want) => match bearer(headers) {
                    None => {
                        return Err(refusal(
                            StatusCode::UNAUTHORIZED,
                            Some("Bearer realm=\"pgshift\""),
                            "28000",
                            format!(
                                "{method} {path} needs a token: send Authorization: Bearer <token> \
                                 (the [http] token or token_file of pgshift's configuration)"
                            ),
                        ))
                    }
                    Some(got) => {
                        let got: [u8; 32] = Sha256::digest(got).into();
                        if !bool::from(got.ct_eq(want)) {
                            return Err(refusal(
                                StatusCode::UNAUTHORIZED,
                                Some("Bearer realm=\"pgshift\", error=\"invalid_token\""),
                                "28P01",
                                format!("{method} {path}: the bearer token is not valid"),
                            ));
                        }
                    }
                },
                None if config::SENSITIVE_ENDPOINTS.contains(&path) => {
                    return Err(refusal(
                        StatusCode::FORBIDDEN,
                        None,
                        "42501",
                        format!(
                            "{method} {path} is disabled: no [http] token or token_file is \
                             configured, and this endpoint changes the upgrade or shows who is \
                             connected; set a token to use it"
                        ),
                    ))
                }
                None => {}
            }
        }
        if method == Method::POST && !is_json(headers) {
            return Err(refusal(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                None,
                "0A000",
                format!("{method} {path} needs Content-Type: application/json"),
            ));
        }
        Ok(())
    }
}

/// The credentials of `Authorization: Bearer <token>` (the scheme case-insensitive, RFC 7235
/// 2.1), or `None` when the header is missing, repeated, not text or of another scheme.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let (v, None) = (all.next()?, all.next()) else {
        return None;
    };
    let v = v.as_bytes();
    let (scheme, rest) = v.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Whether the media type of `Content-Type` is `application/json` (parameters such as
/// `charset` allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// A refused request (see the module's table); answered as JSON
/// `{"ok": false, "sqlstate": ..., "message": ...}`, with `WWW-Authenticate` for a 401.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    /// The `WWW-Authenticate` challenge, for a 401.
    pub challenge: Option<&'static str>,
    /// PostgreSQL's SQLSTATE for the same refusal (28000, 28P01, 42501, 0A000).
    pub sqlstate: &'static str,
    /// What is wrong and what to do; never holds a token.
    pub message: String,
}

fn refusal(
    status: StatusCode,
    challenge: Option<&'static str>,
    sqlstate: &'static str,
    message: String,
) -> Refused {
    Refused {
        status,
        challenge,
        sqlstate,
        message,
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        tracing::info!(
            status = self.status.as_u16(),
            sqlstate = self.sqlstate,
            "HTTP request refused: {}",
            self.message
        );
        let mut r = (
            self.status,
            Json(RefusalBody {
                ok: false,
                sqlstate: self.sqlstate,
                message: self.message,
            }),
        )
            .into_response();
        if let Some(c) = self.challenge {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        r
    }
}

#[derive(Serialize)]
struct RefusalBody {
    ok: bool,
    sqlstate: &'static str,
    message: String,
}

/// Runs [`Access::check`] before every handler.
async fn guard(State(st): State<HttpState>, req: Request, next: Next) -> Response {
    match st
        .access
        .check(req.method(), req.uri().path(), req.headers())
    {
        Ok(()) => next.run(req).await,
        Err(refused) => refused.into_response(),
    }
}

/// Endpoints, as listed in a 404's message.
const ENDPOINTS: &str = "GET /metrics, GET /progress, GET /health, GET /clients, GET /servers, \
                         GET /databases, \
                         POST /upgrade/start, POST /upgrade/cutover, POST /upgrade/rollback";

/// The routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/progress", get(progress))
        .route("/health", get(health))
        .route("/clients", get(clients))
        .route("/servers", get(servers))
        .route("/databases", get(databases))
        .route("/upgrade/start", post(start))
        .route("/upgrade/cutover", post(cutover))
        .route("/upgrade/rollback", post(rollback))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Serve on `listener` until the runtime ends: plain HTTP, or only HTTPS with `tls`
/// (`[http.tls]`, see [`TlsListener`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    tls: Option<Arc<tls::Acceptor>>,
) {
    let app = router(state);
    let served = match tls {
        None => axum::serve(listener, app).await,
        Some(tls) => axum::serve(TlsListener::start(listener, tls), app).await,
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "the HTTP server stopped");
    }
}

/// Longest a client may take to complete its TLS handshake before it is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Most TLS handshakes under way at once; past it, accepting waits (the kernel's backlog
/// holds the next connections).
const MAX_HANDSHAKES: usize = 256;

/// The HTTPS side of [`serve`]: a task accepts TCP connections and runs each handshake in a
/// task of its own (with [`TLS_HANDSHAKE_TIMEOUT`]), so a slow or failing client holds up no
/// other; axum serves the connections whose handshake succeeded. A failed handshake (plain
/// HTTP, an untrusted or missing client certificate, garbage) is logged at `info` with the
/// peer and the reason, and only that connection is closed. Each handshake uses the
/// acceptor's set-up of the moment (a SIGHUP reload applies to the next ones).
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(tls::Stream, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener`.
    pub fn start(listener: tokio::net::TcpListener, tls: Arc<tls::Acceptor>) -> TlsListener {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(accept_tls(listener, tls, tx));
        TlsListener { ready, local }
    }
}

async fn accept_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<tls::Acceptor>,
    ready: tokio::sync::mpsc::Sender<(tls::Stream, std::net::SocketAddr)>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // As axum's own listener: out of file descriptors and the like pass; wait a
                // little instead of spinning.
                tracing::warn!(error = %e, "HTTP server: accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let setup = tls.current();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, setup.acceptor.accept(tcp)).await {
                Ok(Ok(s)) => {
                    let _ = ready.send((tls::Stream::accepted(s), peer)).await;
                }
                Ok(Err(e)) => tracing::info!(
                    client = %peer,
                    error = %e,
                    "HTTPS: TLS handshake failed ([http.tls]); connection closed"
                ),
                Err(_) => tracing::info!(
                    client = %peer,
                    "HTTPS: no TLS handshake within {TLS_HANDSHAKE_TIMEOUT:?} ([http.tls]); connection closed"
                ),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tls::Stream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task ended (the runtime is going down): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// `GET /progress`, and what `pgshift status` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub phase: String,
    pub state: String,
    /// Progress of the plan, 0-100.
    pub percent: u8,
    /// Plan step under way or waited at, if any.
    pub step: Option<String>,
    /// Initial table copy while `synchronizing`: tables synchronised, and tables; else null.
    pub tables_ready: Option<u64>,
    pub tables_total: Option<u64>,
    pub replication_lag_bytes: Option<i64>,
    pub lag_seconds: Option<f64>,
    pub source_weight: u32,
    pub target_weight: u32,
    pub epoch: u64,
    pub last_error: Option<String>,
    /// Latest health check verdict (`ok: ...` / `failing (...): ...`) while checks run.
    pub health: Option<String>,
    pub updated_at: String,
}

/// The order `pgshift status` prints the fields in.
pub const PROGRESS_FIELDS: &[&str] = &[
    "phase",
    "state",
    "percent",
    "step",
    "tables_ready",
    "tables_total",
    "replication_lag_bytes",
    "lag_seconds",
    "source_weight",
    "target_weight",
    "epoch",
    "last_error",
    "health",
    "updated_at",
];

impl Progress {
    /// From the controller's memory; never waits on I/O.
    pub fn of(controller: &Controller) -> Progress {
        let s = controller.status();
        let sync = controller.sync_progress();
        Progress {
            phase: s.phase.as_str().to_string(),
            state: s.state.as_str().to_string(),
            percent: s.percent,
            step: s.step,
            tables_ready: sync.map(|(r, _)| r),
            tables_total: sync.map(|(_, t)| t),
            replication_lag_bytes: s.replication_lag_bytes,
            lag_seconds: s.lag_seconds,
            source_weight: s.source_weight,
            target_weight: s.target_weight,
            epoch: s.epoch,
            last_error: s.last_error,
            health: s.health,
            updated_at: s.updated_at,
        }
    }
}

/// The answer to a command.
#[derive(Debug, Serialize)]
struct Reply {
    ok: bool,
    message: String,
}

fn reply(status: StatusCode, ok: bool, message: impl Into<String>) -> Response {
    (
        status,
        Json(Reply {
            ok,
            message: message.into(),
        }),
    )
        .into_response()
}

async fn metrics(State(st): State<HttpState>) -> Response {
    match &st.prometheus {
        Some(h) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::metrics::render(h, &st.proxy),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the metrics recorder is not installed (see pgshift's log at start-up)\n",
        )
            .into_response(),
    }
}

async fn progress(State(st): State<HttpState>) -> Json<Progress> {
    Json(Progress::of(&st.proxy.controller))
}

async fn health() -> &'static str {
    "ok"
}

async fn clients(State(st): State<HttpState>) -> Json<Vec<admin::ClientRow>> {
    Json(admin::client_rows(&st.proxy))
}

async fn servers(State(st): State<HttpState>) -> Json<Vec<admin::ServerRow>> {
    Json(admin::server_rows(&st.proxy))
}

async fn databases(State(st): State<HttpState>) -> Json<Vec<admin::DatabaseRow>> {
    Json(admin::database_rows(&st.proxy))
}

#[derive(Debug, Clone, Copy)]
enum Command {
    Start,
    Cutover,
    Rollback,
}

impl Command {
    fn as_str(self) -> &'static str {
        match self {
            Command::Start => "START UPGRADE",
            Command::Cutover => "INITIATE CUTOVER",
            Command::Rollback => "ROLLBACK UPGRADE",
        }
    }
}

async fn start(State(st): State<HttpState>) -> Response {
    command(&st.proxy, Command::Start).await
}

async fn cutover(State(st): State<HttpState>) -> Response {
    command(&st.proxy, Command::Cutover).await
}

async fn rollback(State(st): State<HttpState>) -> Response {
    command(&st.proxy, Command::Rollback).await
}

/// Runs a command in a task of its own on the control runtime, so that a client that hangs
/// up does not cancel a cutover half-way (dropping this future leaves the task running).
async fn command(proxy: &Proxy, cmd: Command) -> Response {
    let c = proxy.controller.clone();
    let r = proxy
        .control_rt
        .spawn(async move {
            match cmd {
                Command::Start => c.start_upgrade().await,
                Command::Cutover => c.initiate_cutover().await,
                Command::Rollback => c.rollback().await,
            }
        })
        .await;
    let phase = proxy.controller.status().phase;
    match r {
        Ok(Ok(m)) => {
            tracing::info!(command = cmd.as_str(), phase = %phase, via = "http", "{m}");
            reply(StatusCode::OK, true, m)
        }
        Ok(Err(e)) => {
            tracing::info!(command = cmd.as_str(), phase = %phase, via = "http", "refused: {e}");
            let code =
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            reply(code, false, e.to_string())
        }
        Err(e) => {
            tracing::error!(command = cmd.as_str(), phase = %phase, via = "http", error = %e, "the command's task failed");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                false,
                format!("{} failed: {e}", cmd.as_str()),
            )
        }
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    reply(
        StatusCode::NOT_FOUND,
        false,
        format!("no such endpoint: {method} {uri}; endpoints: {ENDPOINTS}"),
    )
}

// ----------------------------------------------------------------------------------------
// The client side, for `pgshift status`
// ----------------------------------------------------------------------------------------

/// The address to connect to for a server listening on `listen`: a wildcard host becomes
/// loopback. Fails for port 0 (the port is not known).
pub fn connect_addr(listen: &str) -> Result<String, String> {
    let (host, port) = listen
        .rsplit_once(':')
        .ok_or_else(|| format!("`{listen}` is not host:port"))?;
    if port == "0" {
        return Err(format!(
            "`{listen}` has port 0 (chosen by the OS at start-up): set a fixed port in [http] listen"
        ));
    }
    let host = match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "[::]" => "[::1]",
        h => h,
    };
    Ok(format!("{host}:{port}"))
}

/// One HTTP/1.1 GET to `addr` (`host:port`), over TLS with `tls` (the certificate must name
/// the host of `addr`), with `Authorization: Bearer <token>` when a token is given; returns
/// the status code and the body. A token holding anything but visible ASCII is refused before
/// connecting (it would not be one header line).
pub fn get_blocking(
    addr: &str,
    path: &str,
    token: Option<&str>,
    tls: Option<&tls::HttpsClient>,
    timeout: std::time::Duration,
) -> Result<(u16, String), String> {
    let auth = match token {
        Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()) => {
            format!("Authorization: Bearer {t}\r\n")
        }
        Some(_) => {
            return Err(
                "the token may only hold visible ASCII characters (`!` to `~`, no spaces) and \
                 must not be empty"
                    .into(),
            )
        }
        None => String::new(),
    };
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .collect();
    let mut last = format!("{addr} resolves to no address");
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {a}: {e}"),
        }
    }
    let tcp = stream.ok_or(last)?;
    tcp.set_read_timeout(Some(timeout))
        .and_then(|_| tcp.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("socket: {e}"))?;
    let mut s: Box<dyn ReadWrite> = match tls {
        None => Box::new(tcp),
        Some(t) => {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            Box::new(t.connect(tcp, host)?)
        }
    };
    let host = addr;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n{auth}Connection: close\r\n\r\n"
    )
    .and_then(|_| s.flush())
    .map_err(|e| format!("sending the request to {addr}: {e}"))?;
    let mut raw = Vec::new();
    match s.take(16 << 20).read_to_end(&mut raw) {
        Ok(_) => {}
        // A TLS peer that closes without close_notify: what came is judged by its length.
        Err(e) if tls.is_some() && e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(format!("reading the answer from {addr}: {e}")),
    }
    parse_response(&raw).map_err(|e| format!("bad HTTP answer from {addr}: {e}"))
}

/// A plain or TLS client socket.
trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// Status code and body of a whole HTTP/1.1 response (Content-Length, chunked, or to EOF).
fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let code: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line `{status_line}`"))?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().map_err(|_| "bad Content-Length")?);
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or("body shorter than Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    let body = String::from_utf8(body).map_err(|_| "body is not UTF-8")?;
    Ok((code, body))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&b[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).ok_or("truncated chunk")?);
        b = b.get(size + 2..).ok_or("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}";
        assert_eq!(parse_response(r).unwrap(), (200, "{\"a\":1}".into()));
        let r = b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(r).unwrap(), (409, "abcde".into()));
        let r = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil eof";
        assert_eq!(parse_response(r).unwrap(), (200, "until eof".into()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort").is_err());
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_static(k),
                HeaderValue::from_static(v),
            );
        }
        h
    }

    fn status(a: &Access, m: Method, path: &str, h: &[(&'static str, &'static str)]) -> u16 {
        match a.check(&m, path, &headers(h)) {
            Ok(()) => 200,
            Err(r) => r.status.as_u16(),
        }
    }

    #[test]
    fn access_rules() {
        let public = vec!["/metrics".to_string(), "/health".to_string()];
        let a = Access::new(Some("s3cret"), &public);
        assert!(!format!("{a:?}").contains("s3cret"));
        let json = ("content-type", "application/json; charset=utf-8");
        for (h, want) in [
            (vec![], 401),
            (vec![("authorization", "Bearer s3cret")], 200),
            (vec![("authorization", "BEARER s3cret")], 200),
            (vec![("authorization", "Bearer  s3cret ")], 200),
            (vec![("authorization", "Bearer s3cre")], 401),
            (vec![("authorization", "Bearer s3cretX")], 401),
            (vec![("authorization", "Bearers3cret")], 401),
            (vec![("authorization", "Basic s3cret")], 401),
            (vec![("authorization", "s3cret")], 401),
            (
                vec![
                    ("authorization", "Bearer s3cret"),
                    ("authorization", "Bearer s3cret"),
                ],
                401,
            ),
        ] {
            assert_eq!(status(&a, Method::GET, "/progress", &h), want, "{h:?}");
            let mut p = h.clone();
            p.push(json);
            assert_eq!(
                status(&a, Method::POST, "/upgrade/start", &p),
                want,
                "{p:?}"
            );
            // Authenticated or not, a POST without JSON is refused (auth first).
            let not_json = if want == 200 { 415 } else { 401 };
            assert_eq!(status(&a, Method::POST, "/upgrade/start", &h), not_json);
        }
        assert_eq!(status(&a, Method::GET, "/metrics", &[]), 200);
        assert_eq!(status(&a, Method::GET, "/health", &[]), 200);
        assert_eq!(status(&a, Method::GET, "/health/", &[]), 401);
        let ok = [("authorization", "Bearer s3cret")];
        for ctype in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "application/jsonx",
        ] {
            let h = [ok[0], ("content-type", ctype)];
            assert_eq!(
                status(&a, Method::POST, "/upgrade/cutover", &h),
                415,
                "{ctype}"
            );
        }
        let h = [ok[0], ("content-type", "Application/JSON")];
        assert_eq!(status(&a, Method::POST, "/upgrade/cutover", &h), 200);

        // No token: sensitive endpoints 403 whatever is sent, the others open.
        let none = Access::new(None, &public);
        for path in config::SENSITIVE_ENDPOINTS {
            for m in [Method::GET, Method::POST] {
                assert_eq!(status(&none, m, path, &[ok[0], json]), 403, "{path}");
            }
        }
        for path in ["/progress", "/servers", "/databases", "/metrics"] {
            assert_eq!(status(&none, Method::GET, path, &[]), 200, "{path}");
        }
    }

    #[test]
    fn get_blocking_refuses_a_token_that_is_not_one_header() {
        for bad in ["", "a b", "a\r\nX-Evil: 1", "caf\u{e9}"] {
            let e = get_blocking(
                "127.0.0.1:1",
                "/",
                Some(bad),
                None,
                std::time::Duration::from_secs(1),
            )
            .unwrap_err();
            assert!(e.contains("visible ASCII"), "{e}");
        }
    }

    #[test]
    fn connect_addresses() {
        assert_eq!(connect_addr("0.0.0.0:9187").unwrap(), "127.0.0.1:9187");
        assert_eq!(connect_addr("[::]:9187").unwrap(), "[::1]:9187");
        assert_eq!(connect_addr("localhost:1").unwrap(), "localhost:1");
        assert!(connect_addr("127.0.0.1:0").unwrap_err().contains("port 0"));
    }
}
