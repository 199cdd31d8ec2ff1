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
use crate::server::{Proxy, UserEntry};
use bytes::{Buf, Bytes, BytesMut};
use config::AuthMethod;
use control::Side;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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
            crate::metrics::login_refused(crate::metrics::Refusal::from_sqlstate(&sqlstate));
            tracing::info!(client = %peer, sqlstate = %sqlstate, "login refused: {message}");
            c.fatal(&sqlstate, &message).await;
            return;
        }
        Err(_) => {
            crate::metrics::login_refused(crate::metrics::Refusal::Timeout);
            c.fatal("08006", "canceling authentication due to timeout")
                .await;
            return;
        }
    };
    match login {
        Login::Cancel { pid, secret } => proxy.cancel(pid, secret).await,
        Login::Admin { user } => {
            let info = proxy.register(&user.cfg.name, &proxy.cfg.proxy.admin_database, peer, true);
            crate::metrics::login_accepted(true);
            crate::admin::run(&proxy, &mut c, &info).await;
            proxy.unregister(info.pid);
        }
        Login::Data {
            user,
            database,
            params,
        } => {
            let info = proxy.register(&user.cfg.name, &database, peer, false);
            let end = crate::relay::relay(&proxy, c, &info, user, params).await;
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
pub(crate) async fn connect_backend(
    proxy: &Proxy,
    user: &UserEntry,
    side: Side,
    params: &[(String, String)],
) -> Result<BackendConn, End> {
    connect_backend_within(
        proxy,
        user,
        side,
        params,
        proxy.cfg.proxy.connect_timeout_ms,
    )
    .await
}

/// Like [`connect_backend`], giving up after `timeout` ms (connect, log-in and retries of
/// transient refusals all included). For optional connections (a shifted read-only
/// transaction, which can run on the serving side instead) that must not keep a client
/// waiting on a side that is going away.
pub(crate) async fn connect_backend_within(
    proxy: &Proxy,
    user: &UserEntry,
    side: Side,
    params: &[(String, String)],
    timeout: u64,
) -> Result<BackendConn, End> {
    let addr = proxy.router.load().addr(side).clone();
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
    // 57P03 cannot_connect_now (starting up / shutting down), 53300 too_many_connections.
    matches!(e, BackendError::Refused { fields, .. } if fields.sqlstate == "57P03" || fields.sqlstate == "53300")
}
