//! One client connection: start-up and authentication ([`login`]), then either the admin
//! console or the relay to a backend ([`relay`]), with backend switches at transaction
//! boundaries.
//!
//! The parts of a session, each in its own file:
//! * [`negotiate`]: SSLRequest / GSSENCRequest and direct TLS, before the start-up packet
//!   (53.2.10-53.2.11).
//! * [`login`]: the start-up packet, CancelRequest, authentication (53.2.1).
//! * [`state`]: [`state::SessionState`], what a session carries to a new backend (start-up
//!   parameters, SETs, prepared statements) and replays there.
//! * [`track`]: recognising the statements that change that state in SQL text.
//! * [`scan`]: the protocol scanners: functions over client and server frames that say what
//!   to do with each (forward, hold, switch, swap, drop, replay), unit-tested without sockets.
//! * [`record`]: the recorders of a unit of work's bytes (a shifted unit's replay buffer,
//!   mirroring, the mirror driver's write capture), one list instead of three copies.
//! * [`relay`]: the I/O loop that moves bytes between the client and its backends.

pub mod ddl;
pub mod limits;
pub mod login;
pub mod memory;
pub mod negotiate;
pub mod pins;
pub mod record;
pub mod relay;
pub mod scan;
pub mod state;
pub mod track;

use crate::server::Proxy;
use bytes::{Buf, Bytes, BytesMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;
use wire::frame::{header, StartupCodec, StartupFrame, WireError};
use wire::msg;

pub(crate) use negotiate::Negotiated;

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
    pub stream: tls::Stream,
    pub buf: BytesMut,
    pub out: BytesMut,
    pub peer: SocketAddr,
    /// The TLS set-up of the handshake, when the client negotiated TLS.
    pub tls: Option<Arc<tls::ServerTls>>,
}

impl ClientConn {
    pub async fn flush(&mut self) -> Result<(), End> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    pub(crate) async fn fill(&mut self) -> Result<(), End> {
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

    /// Reads one start-up packet. A packet whose length cannot be one (what a client that
    /// sends a regular message first, a Terminate say, or garbage, sends) is logged and the
    /// connection closed without a reply, as PostgreSQL does ("invalid length of startup
    /// packet", logged as COMMERROR: 53.2.1, and the server's ProcessStartupPacket); so is
    /// a connection closed before a whole packet.
    pub(crate) async fn read_startup(&mut self) -> Result<StartupFrame, End> {
        loop {
            match StartupCodec.decode(&mut self.buf) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(WireError::BadStartupLength(n)) => {
                    tracing::info!(
                        client = %self.peer,
                        length = n,
                        "invalid length of startup packet; connection closed"
                    );
                    return Err(End::Closed);
                }
                Err(e) => return Err(e.into()),
            }
            match self.fill().await {
                Err(End::Closed) if !self.buf.is_empty() => {
                    tracing::info!("incomplete startup packet; connection closed");
                    return Err(End::Closed);
                }
                r => r?,
            }
        }
    }

    /// Send a FATAL ErrorResponse and stop.
    pub async fn fatal(&mut self, sqlstate: &str, message: &str) {
        msg::error_response(&mut self.out, "FATAL", sqlstate, message, None, None);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// A login refused before it ended: counted, logged, and the client told with a FATAL.
async fn refuse(c: &mut ClientConn, sqlstate: &str, message: &str) {
    crate::metrics::login_refused(crate::metrics::Refusal::from_sqlstate(sqlstate));
    tracing::info!(client = %c.peer, sqlstate = %sqlstate, "login refused: {message}");
    c.fatal(sqlstate, message).await;
}

/// Entry point for an accepted connection.
pub async fn run(proxy: Arc<Proxy>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let login_timeout = Duration::from_millis(proxy.cfg.proxy.client_login_timeout_ms);
    let deadline = tokio::time::Instant::now() + login_timeout;
    let mut c =
        match tokio::time::timeout_at(deadline, negotiate::negotiate(&proxy, stream, peer)).await {
            Ok(Ok(c)) => c,
            Ok(Err(Negotiated::Closed)) => return,
            Ok(Err(Negotiated::Fatal(mut c, sqlstate, message))) => {
                return refuse(&mut c, sqlstate, &message).await
            }
            Err(_) => {
                crate::metrics::login_refused(crate::metrics::Refusal::Timeout);
                tracing::info!(client = %peer, "TLS negotiation timed out; connection closed");
                return;
            }
        };
    let login = match tokio::time::timeout_at(deadline, login::login(&proxy, &mut c)).await {
        Ok(Ok(l)) => l,
        Ok(Err(End::Closed)) => return,
        Ok(Err(End::Fatal { sqlstate, message })) => {
            return refuse(&mut c, &sqlstate, &message).await
        }
        Err(_) => {
            crate::metrics::login_refused(crate::metrics::Refusal::Timeout);
            c.fatal("08006", "canceling authentication due to timeout")
                .await;
            return;
        }
    };
    let slot = match &login {
        login::Login::Cancel { .. } => None,
        login::Login::Admin { user } | login::Login::Data { user, .. } => {
            match proxy.limits.acquire(
                &user.cfg.name,
                user.cfg.admin,
                proxy.cfg.proxy.max_client_connections,
                user.cfg.max_connections,
            ) {
                Ok(s) => Some(s),
                Err(message) => return refuse(&mut c, "53300", &message).await,
            }
        }
    };
    match login {
        login::Login::Cancel { pid, secret } => proxy.cancel(pid, secret).await,
        login::Login::Admin { user } => {
            let info = proxy.register(&user.cfg.name, &proxy.cfg.proxy.admin_database, peer, true);
            let _registered = Registered(&proxy, info.pid);
            crate::metrics::login_accepted(true);
            crate::admin::run(&proxy, &mut c, &info).await;
        }
        login::Login::Data {
            user,
            database,
            params,
        } => {
            let info = proxy.register(&user.cfg.name, &database, peer, false);
            let _registered = Registered(&proxy, info.pid);
            let end = relay::relay(&proxy, c, &info, user, params).await;
            if let Err((mut c, End::Fatal { sqlstate, message })) = end {
                tracing::warn!(client = %peer, pid = info.pid, sqlstate = %sqlstate, "session ended: {message}");
                c.fatal(&sqlstate, &message).await;
            }
        }
    }
    drop(slot);
}

/// Removes a session from the client registry ([`Proxy::unregister`]) when dropped: at the
/// session's end, or while its task unwinds from a panic.
struct Registered<'a>(&'a Proxy, i32);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.unregister(self.1);
    }
}
