//! The HTTP server (`[http] listen`, axum on the control plane's runtime):
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text (see `metrics.rs`) |
//! | `GET /progress` | the upgrade status as JSON ([`Progress`]), from memory |
//! | `GET /health` | `200 ok` while the process serves |
//! | `GET /clients` | JSON array, the rows of `SHOW CLIENTS` |
//! | `GET /servers` | JSON array, the rows of `SHOW SERVERS` |
//! | `POST /upgrade/start`, `/upgrade/cutover`, `/upgrade/rollback` | the admin console's `START UPGRADE`, `INITIATE CUTOVER`, `ROLLBACK UPGRADE`: `{"ok": bool, "message": "..."}`, 200, or 409 when the controller refused or the command failed |
//!
//! No authentication: the address should be loopback or a private network.

use crate::admin;
use crate::server::Proxy;
use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use control::Controller;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use std::sync::Arc;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub proxy: Arc<Proxy>,
    /// `None` when the metrics recorder could not be installed: `/metrics` answers 503.
    pub prometheus: Option<PrometheusHandle>,
}

/// Endpoints, as listed in a 404's message.
const ENDPOINTS: &str = "GET /metrics, GET /progress, GET /health, GET /clients, GET /servers, \
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
        .with_state(state)
}

/// Serve on `listener` until the runtime ends.
pub async fn serve(listener: tokio::net::TcpListener, state: HttpState) {
    if let Err(e) = axum::serve(listener, router(state)).await {
        tracing::error!(error = %e, "the HTTP server stopped");
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
            phase: s.phase,
            state: s.state,
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
            reply(StatusCode::CONFLICT, false, e.to_string())
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

/// One HTTP/1.1 GET to `addr` (`host:port`); returns the status code and the body.
pub fn get_blocking(
    addr: &str,
    path: &str,
    timeout: std::time::Duration,
) -> Result<(u16, String), String> {
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
    let mut s = stream.ok_or(last)?;
    s.set_read_timeout(Some(timeout))
        .and_then(|_| s.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("socket: {e}"))?;
    let host = addr;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("sending the request to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.take(16 << 20)
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the answer from {addr}: {e}"))?;
    parse_response(&raw).map_err(|e| format!("bad HTTP answer from {addr}: {e}"))
}

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

    #[test]
    fn connect_addresses() {
        assert_eq!(connect_addr("0.0.0.0:9187").unwrap(), "127.0.0.1:9187");
        assert_eq!(connect_addr("[::]:9187").unwrap(), "[::1]:9187");
        assert_eq!(connect_addr("localhost:1").unwrap(), "localhost:1");
        assert!(connect_addr("127.0.0.1:0").unwrap_err().contains("port 0"));
    }
}
