//! Backend connections: connecting and authenticating to a PostgreSQL server as a client
//! (PostgreSQL docs 53.2.1 "Start-up" and 53.3 "SASL Authentication"), retrying transient
//! refusals, and opening a session's connection with its state replayed ([`open`]).

use crate::routing::BackendAddr;
use crate::server::{Proxy, UserEntry};
use crate::session::End;
use bytes::BytesMut;
use config::ServerAuth;
use control::Side;
use std::collections::HashSet;
use std::time::Duration;
use tls::{ReadHalf, Stream, WriteHalf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::auth::{md5_password, ScramClient, SCRAM_SHA_256};
use wire::frame::header;
use wire::msg::{self, AuthRequest, ErrorFields};

/// Why a backend connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("could not connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out after {0} ms connecting to {1}")]
    Timeout(u64, String),
    /// The server refused us with an ErrorResponse (bad password, no such database, too many connections, ...).
    #[error("server {addr} refused the connection: {fields}")]
    Refused { addr: String, fields: ErrorFields },
    #[error("server {addr}: {why}")]
    Protocol { addr: String, why: String },
    /// The server asked for an authentication method `auth` does not allow, or skipped a
    /// step that proves it knows the password (no downgrade: nothing was sent).
    #[error("server {addr}: {why}")]
    AuthPolicy { addr: String, why: String },
    /// TLS could not be set up as `sslmode` demands (the server has no TLS, its certificate
    /// does not verify, the handshake failed).
    #[error("server {addr}: {why}")]
    Tls { addr: String, why: String },
}

impl BackendError {
    /// SQLSTATE to give the client: the server's own when it sent one, else 08006/08001.
    pub fn sqlstate(&self) -> String {
        match self {
            BackendError::Refused { fields, .. } if !fields.sqlstate.is_empty() => {
                fields.sqlstate.clone()
            }
            BackendError::Protocol { .. } => "08P01".into(),
            BackendError::AuthPolicy { .. } => "28000".into(),
            _ => "08001".into(),
        }
    }
}

/// An authenticated backend connection, positioned after its first ReadyForQuery.
pub struct BackendConn {
    /// Plain TCP, or TLS per the server's `sslmode`.
    pub stream: Stream,
    /// BackendKeyData of the server process.
    pub pid: i32,
    pub secret: i32,
    /// ParameterStatus values the server reported at start-up, in order.
    pub params: Vec<(String, String)>,
}

/// Connect to `addr`, log in as `user`, open `addr.dbname` with the client's other startup
/// parameters (`extra`, without `user` and `database`).
pub async fn connect(
    addr: &BackendAddr,
    user: &str,
    password: Option<&str>,
    extra: &[(String, String)],
    timeout_ms: u64,
) -> Result<BackendConn, BackendError> {
    let a = format!("{}:{}", addr.host, addr.port);
    match tokio::time::timeout(
        Duration::from_millis(timeout_ms),
        connect_inner(addr, &a, user, password, extra),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(BackendError::Timeout(timeout_ms, a)),
    }
}

async fn connect_inner(
    addr: &BackendAddr,
    a: &str,
    user: &str,
    password: Option<&str>,
    extra: &[(String, String)],
) -> Result<BackendConn, BackendError> {
    let proto = |why: String| BackendError::Protocol {
        addr: a.to_string(),
        why,
    };
    let tcp = TcpStream::connect((addr.host.as_str(), addr.port))
        .await
        .map_err(|source| BackendError::Connect {
            addr: a.to_string(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let mut stream = match &addr.tls.0 {
        None => Stream::Plain(tcp),
        Some(t) => t
            .negotiate(tcp, &addr.host)
            .await
            .map_err(|why| BackendError::Tls {
                addr: a.to_string(),
                why,
            })?,
    };
    // A cleartext password is sent only over TLS.
    let tls_in_use = stream.is_tls();
    let mut out = BytesMut::with_capacity(256);
    let mut params: Vec<(&str, &str)> = vec![("user", user), ("database", addr.dbname.as_str())];
    for (k, v) in extra {
        if k != "user" && k != "database" && k != "replication" {
            params.push((k, v));
        }
    }
    msg::startup_message(&mut out, &params);
    write(&mut stream, &mut out, a).await?;

    let mut buf = BytesMut::with_capacity(1024);
    let mut scram: Option<ScramClient> = None;
    // An authentication request was seen (AuthenticationOk alone means trust).
    let mut asked = false;
    let no_password = || {
        proto(format!(
            "server asks a password for user \"{user}\" and none is configured"
        ))
    };
    let policy = |why: String| BackendError::AuthPolicy {
        addr: a.to_string(),
        why,
    };
    let mut conn_params = Vec::new();
    let mut key = (0, 0);
    loop {
        let (tag, body) = read_frame(&mut stream, &mut buf, a).await?;
        match tag {
            msg::AUTHENTICATION => {
                let req = msg::parse_auth(&body).map_err(|e| proto(e.to_string()))?;
                #[allow(clippy::result_large_err)] // built once per login, not on the hot path
                let need = |method: ServerAuth| {
                    tls::check_auth(&addr.auth, method, tls_in_use, user).map_err(policy)
                };
                match req {
                    AuthRequest::Ok => {
                        if let Some(c) = &scram {
                            if !c.is_verified() {
                                return Err(policy("the server sent AuthenticationOk before proving it knows the password (no SCRAM server signature): refused".into()));
                            }
                        } else if !asked {
                            need(ServerAuth::None)?;
                        }
                    }
                    AuthRequest::Cleartext => {
                        asked = true;
                        need(ServerAuth::Password)?;
                        let pw = password.ok_or_else(no_password)?;
                        msg::password_message(&mut out, pw);
                        write(&mut stream, &mut out, a).await?;
                    }
                    AuthRequest::Md5 { salt } => {
                        asked = true;
                        need(ServerAuth::Md5)?;
                        let pw = password.ok_or_else(no_password)?;
                        msg::password_message(&mut out, &md5_password(user, pw, salt));
                        write(&mut stream, &mut out, a).await?;
                    }
                    AuthRequest::Sasl { mechanisms } => {
                        asked = true;
                        need(ServerAuth::ScramSha256)?;
                        if !mechanisms.contains(&SCRAM_SHA_256) {
                            return Err(proto(format!("server offers SASL mechanisms {mechanisms:?}; pgshift supports SCRAM-SHA-256")));
                        }
                        let pw = password.ok_or_else(no_password)?;
                        let mut c = ScramClient::new(pw);
                        let first = c.client_first();
                        msg::sasl_initial_response(&mut out, SCRAM_SHA_256, &first);
                        write(&mut stream, &mut out, a).await?;
                        scram = Some(c);
                    }
                    AuthRequest::SaslContinue { data } => {
                        let c = scram.as_mut().ok_or_else(|| proto("SASLContinue before SASL".into()))?;
                        let fin = c.server_first(data).map_err(|e| proto(format!("SCRAM: {e}")))?;
                        msg::sasl_response(&mut out, &fin);
                        write(&mut stream, &mut out, a).await?;
                    }
                    AuthRequest::SaslFinal { data } => {
                        let c = scram.as_mut().ok_or_else(|| proto("SASLFinal before SASL".into()))?;
                        c.server_final(data).map_err(|e| policy(format!("SCRAM: {e}: the server could not prove it knows the password of user \"{user}\"")))?;
                    }
                    AuthRequest::Other(code) => return Err(proto(format!("unsupported authentication request {code} (pgshift supports trust, password, md5, SCRAM-SHA-256)"))),
                }
            }
            msg::ERROR_RESPONSE => {
                let fields = msg::parse_error(&body).map_err(|e| proto(e.to_string()))?;
                return Err(BackendError::Refused {
                    addr: a.to_string(),
                    fields,
                });
            }
            msg::PARAMETER_STATUS => {
                let (k, v) =
                    msg::parse_parameter_status(&body).map_err(|e| proto(e.to_string()))?;
                conn_params.push((k.to_string(), v.to_string()));
            }
            msg::BACKEND_KEY_DATA => {
                key = msg::parse_backend_key_data(&body).map_err(|e| proto(e.to_string()))?
            }
            msg::READY_FOR_QUERY => {
                if !buf.is_empty() {
                    return Err(proto("unexpected data after ReadyForQuery".into()));
                }
                return Ok(BackendConn {
                    stream,
                    pid: key.0,
                    secret: key.1,
                    params: conn_params,
                });
            }
            msg::NOTICE_RESPONSE | msg::NEGOTIATE_PROTOCOL_VERSION => {}
            other => {
                return Err(proto(format!(
                    "unexpected message '{}' during start-up",
                    other as char
                )))
            }
        }
    }
}

async fn write(stream: &mut Stream, out: &mut BytesMut, a: &str) -> Result<(), BackendError> {
    let r = stream.write_all(out).await;
    out.clear();
    r.map_err(|source| BackendError::Connect {
        addr: a.to_string(),
        source,
    })
}

/// Read one whole message (tag, body) from a backend (a connection or its read half).
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    a: &str,
) -> Result<(u8, BytesMut), BackendError> {
    loop {
        match header(buf, 1 << 30) {
            Ok(Some((tag, total))) if buf.len() >= total => {
                let mut f = buf.split_to(total);
                let _ = f.split_to(5);
                return Ok((tag, f));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(BackendError::Protocol {
                    addr: a.to_string(),
                    why: e.to_string(),
                })
            }
        }
        buf.reserve(4096);
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|source| BackendError::Connect {
                addr: a.to_string(),
                source,
            })?;
        if n == 0 {
            return Err(BackendError::Protocol {
                addr: a.to_string(),
                why: "server closed the connection during start-up".into(),
            });
        }
    }
}

/// Send a CancelRequest for backend `pid`/`secret` to `addr` (53.2.7 "Canceling Requests in Progress").
pub async fn cancel(host: &str, port: u16, pid: i32, secret: i32) -> std::io::Result<()> {
    let mut s = TcpStream::connect((host, port)).await?;
    let mut out = BytesMut::with_capacity(16);
    msg::cancel_request(&mut out, pid, secret);
    s.write_all(&out).await?;
    // The server closes the connection when done; wait briefly for that.
    let mut b = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await;
    Ok(())
}

/// Connect to database `database` (the client's name for it) on `side`, retrying until the
/// connect timeout.
pub(crate) async fn connect_backend(
    proxy: &Proxy,
    user: &UserEntry,
    side: Side,
    database: &str,
    params: &[(String, String)],
) -> Result<BackendConn, End> {
    connect_backend_within(
        proxy,
        user,
        side,
        database,
        params,
        proxy.cfg.proxy.connect_timeout_ms,
    )
    .await
}

/// The name on `side` of the database a client calls `database`: the same name, but for
/// the configured database, which may be called otherwise on the target (`[source] dbname`
/// → `[target] dbname`).
pub fn database_on<'a>(proxy: &'a Proxy, side: Side, database: &'a str) -> &'a str {
    if side == Side::Target && database == proxy.cfg.source.dbname {
        &proxy.cfg.target.dbname
    } else {
        database
    }
}

/// The password pgshift gives the backends for `u`: the value of `server_password_secret`
/// held now (re-read after a rotation), else [`config::UserConfig::server_password`].
pub(crate) fn server_password(u: &config::UserConfig) -> Option<String> {
    u.server_password_secret
        .as_deref()
        .and_then(control::secrets::current)
        .or_else(|| u.server_password().map(str::to_string))
}

/// Like [`connect_backend`], giving up after `timeout` ms (connect, log-in and retries of
/// transient refusals all included). For optional connections (a shifted read-only
/// transaction, which can run on the serving side instead) that must not keep a client
/// waiting on a side that is going away.
pub(crate) async fn connect_backend_within(
    proxy: &Proxy,
    user: &UserEntry,
    side: Side,
    database: &str,
    params: &[(String, String)],
    timeout: u64,
) -> Result<BackendConn, End> {
    let mut addr = BackendAddr::clone(proxy.router.load().addr(side));
    addr.dbname = database_on(proxy, side, database).to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout);
    let mut wait = 10;
    let mut password = server_password(&user.cfg);
    let mut reread = false;
    loop {
        match connect(
            &addr,
            user.cfg.server_user(),
            password.as_deref(),
            params,
            timeout,
        )
        .await
        {
            Ok(b) => return Ok(b),
            // A password from Secrets Manager that the server refuses: the secret may have
            // rotated. Read it again once, and log in with the new value.
            Err(BackendError::Refused { ref fields, .. })
                if fields.sqlstate == "28P01"
                    && !reread
                    && user.cfg.server_password_secret.is_some() =>
            {
                reread = true;
                let id = user.cfg.server_password_secret.clone().unwrap_or_default();
                // On a task of its own: the AWS SDK's future is neither small nor Sync, and
                // the session's future must stay both.
                let read = id.clone();
                let fresh = tokio::spawn(async move { control::secrets::refresh(&read).await })
                    .await
                    .ok()
                    .flatten();
                match fresh {
                    Some(new) => {
                        password = Some(new);
                        continue;
                    }
                    None => {
                        crate::metrics::backend_connect_failed(side);
                        return Err(End::fatal(
                            &fields.sqlstate,
                            format!(
                                "the {} server refused pgshift's login as {} ({}); the password of secret {id} did not change",
                                side.as_str(),
                                user.cfg.server_user(),
                                fields.message
                            ),
                        ));
                    }
                }
            }
            // The server said no for a reason of its own: retrying will not help. What is
            // about the client's request (no such database, no CONNECT privilege, ...) it
            // hears in the server's words, as it would straight from PostgreSQL; a refused
            // log-in (class 28) is pgshift's credentials' problem and says so.
            Err(BackendError::Refused { fields, .. })
                if !is_transient_state(&fields.sqlstate) && !fields.sqlstate.starts_with("28") =>
            {
                crate::metrics::backend_connect_failed(side);
                return Err(End::fatal(&fields.sqlstate, fields.message));
            }
            // pgshift's own policy (auth, sslmode) refused the server: retrying cannot help.
            Err(e @ (BackendError::AuthPolicy { .. } | BackendError::Tls { .. })) => {
                crate::metrics::backend_connect_failed(side);
                return Err(End::Fatal {
                    sqlstate: e.sqlstate(),
                    message: format!("pgshift refused the {} server: {e}", side.as_str()),
                });
            }
            Err(e @ BackendError::Refused { .. }) if !is_transient(&e) => {
                crate::metrics::backend_connect_failed(side);
                return Err(End::Fatal {
                    sqlstate: e.sqlstate(),
                    message: format!(
                        "pgshift could not log in to the {} server: {e}",
                        side.as_str()
                    ),
                });
            }
            Err(e) => {
                if tokio::time::Instant::now() + Duration::from_millis(wait) >= deadline {
                    crate::metrics::backend_connect_failed(side);
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
    matches!(e, BackendError::Refused { fields, .. } if is_transient_state(&fields.sqlstate))
}

/// 57P03 cannot_connect_now (starting up / shutting down), 53300 too_many_connections.
fn is_transient_state(sqlstate: &str) -> bool {
    sqlstate == "57P03" || sqlstate == "53300"
}

/// One backend connection of a session, split for the relay (which reads and writes at once).
pub struct Conn {
    pub rd: ReadHalf,
    pub wr: WriteHalf,
    pub side: Side,
    /// BackendKeyData of the server process.
    pub pid: i32,
    pub secret: i32,
    /// What the session's scanners keep per connection.
    pub st: crate::session::scan::ConnState,
}

impl Conn {
    /// Wraps an authenticated connection to `side`.
    pub fn new(b: BackendConn, side: Side) -> Conn {
        let (rd, wr) = b.stream.into_split();
        Conn {
            rd,
            wr,
            side,
            pid: b.pid,
            secret: b.secret,
            st: Default::default(),
        }
    }

    /// Sends Terminate (53.2.9) without waiting and drops the connection.
    pub fn terminate(mut self) {
        let mut t = BytesMut::new();
        msg::terminate(&mut t);
        let _ = self.wr.try_write(&t);
    }
}

/// How long a shifted read-only transaction waits for a connection to the other side before
/// it runs on the serving side instead, in ms.
const SHIFT_CONNECT_TIMEOUT_MS: u64 = 1000;

/// What a new backend connection of a session is given: a snapshot of its
/// `SessionState` (see `SessionState::replay_plan`), owned so that a connection can be
/// opened while the session goes on (ahead of a switch).
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    /// Start-up parameters (with `default_transaction_read_only = on` for a read-only one).
    pub params: Vec<(String, String)>,
    /// The messages that put the backend into the session's state, and how many
    /// ReadyForQuery answers they bring.
    pub script: BytesMut,
    pub expected: usize,
    /// Named prepared statements the backend has once the script ran.
    pub statements: HashSet<Vec<u8>>,
    /// A read-only connection (a shifted unit's).
    pub read_only: bool,
}

/// Opens a connection to `database` (the client's name) on `side` carrying a session's
/// state (`plan`): its start-up parameters, then its SETs, role, LISTEN channels and named
/// prepared statements replayed (each answered before the connection is handed over). A
/// read-only plan gives up after at most [`SHIFT_CONNECT_TIMEOUT_MS`] (the unit can run on
/// the serving side instead). Returns the connection and the server's ParameterStatus
/// values. A statement of the state that fails to replay is logged and skipped; a
/// connection lost meanwhile is an error (08006). `pid` is the session's, for the log and
/// for [`Proxy::note_backend`].
pub async fn open(
    proxy: &Proxy,
    user: &UserEntry,
    side: Side,
    database: &str,
    plan: ReplayPlan,
    pid: i32,
) -> Result<(Conn, Vec<(String, String)>), End> {
    let ReplayPlan {
        params,
        script: out,
        expected,
        statements,
        read_only,
    } = plan;
    let mut b = if read_only {
        let t = proxy
            .cfg
            .proxy
            .connect_timeout_ms
            .min(SHIFT_CONNECT_TIMEOUT_MS);
        connect_backend_within(proxy, user, side, database, &params, t).await?
    } else {
        connect_backend(proxy, user, side, database, &params).await?
    };
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
            let (tag, body) = read_frame(&mut b.stream, &mut buf, &a)
                .await
                .map_err(|e| End::fatal("08006", format!("restoring session state: {e}")))?;
            match tag {
                msg::READY_FOR_QUERY => done += 1,
                msg::ERROR_RESPONSE => {
                    let e = msg::parse_error(&body)
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    tracing::warn!(
                        pid,
                        side = side.as_str(),
                        "replaying session state failed: {e}"
                    );
                }
                _ => {}
            }
        }
    }
    proxy.note_backend(side, b.pid, pid);
    let params = std::mem::take(&mut b.params);
    let mut c = Conn::new(b, side);
    c.st.known = statements;
    Ok((c, params))
}
