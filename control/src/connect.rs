//! The control plane's connections to the servers (tokio-postgres), made as pgshift's
//! sessions make theirs: TLS per the server's `sslmode` (the SSLRequest and handshake done by
//! [`tls::Connector`], so `verify-ca`/`verify-full` and client certificates work as in libpq),
//! and the login checked against the server's `auth` by [`tls::AuthGuard`] before
//! tokio-postgres answers it (no downgrade to MD5, cleartext or trust).

use crate::logical::{pg_error, DriverError};
use config::ServerConfig;
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

/// Connects to database `dbname` of `s` as `s.user` with `application_name =
/// pgshift-control` and `standard_conforming_strings = on`, within `timeout` (TCP, TLS and
/// login included), and spawns the connection's task. `context` starts every error message
/// (it names the server; never the password). Errors are temporary (retrying may help) but
/// for refusals of TLS or `auth` policy and permanent server refusals.
pub async fn connect(
    s: &ServerConfig,
    dbname: &str,
    timeout: Duration,
    context: &str,
) -> Result<Client, DriverError> {
    let attempt = async {
        // The password of `password_secret`: the value held now (it may have been re-read
        // since the start), and once more after a failed login if the secret rotated.
        let held = s
            .password_secret
            .as_deref()
            .and_then(crate::secrets::current);
        let first = connect_inner(s, held.as_deref(), dbname, context).await;
        match (first, s.password_secret.as_deref()) {
            (
                Err(Refused {
                    bad_password: true,
                    error,
                }),
                Some(id),
            ) => match Box::pin(crate::secrets::refresh(id)).await {
                Some(new) => connect_inner(s, Some(&new), dbname, context).await,
                None => Err(Refused {
                    bad_password: true,
                    error,
                }),
            },
            (r, _) => r,
        }
        .map_err(|r| r.error)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(DriverError::temporary(format!(
            "{context}: timed out after {} ms",
            timeout.as_millis()
        ))),
    }
}

/// A failed connection attempt; `bad_password`: the server refused the password (SQLSTATE
/// 28P01), which a re-read secret may cure.
struct Refused {
    error: DriverError,
    bad_password: bool,
}

impl From<DriverError> for Refused {
    fn from(error: DriverError) -> Refused {
        Refused {
            error,
            bad_password: false,
        }
    }
}

async fn connect_inner(
    s: &ServerConfig,
    password: Option<&str>,
    dbname: &str,
    context: &str,
) -> Result<Client, Refused> {
    let tcp = tokio::net::TcpStream::connect((s.host.as_str(), s.port))
        .await
        .map_err(|e| DriverError::temporary(format!("{context}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let stream =
        match tls::Connector::new(s).map_err(|e| DriverError::new(format!("{context}: {e}")))? {
            None => tls::Stream::Plain(tcp),
            Some(t) => t
                .negotiate(tcp, &s.host)
                .await
                .map_err(|e| DriverError::new(format!("{context}: {e}")))?,
        };
    let over_tls = stream.is_tls();
    let guarded = tls::AuthGuard::new(stream, &s.auth, &s.user, over_tls);
    let mut c = tokio_postgres::Config::new();
    c.dbname(dbname)
        .user(&s.user)
        .application_name("pgshift-control")
        .options("-c standard_conforming_strings=on")
        // The SSLRequest is done above, on the socket the guard watches.
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    if let Some(p) = password.or(s.password.as_deref()) {
        c.password(p.as_bytes());
    }
    let (client, conn) = c.connect_raw(guarded, NoTls).await.map_err(|e| {
        let bad_password = e
            .as_db_error()
            .is_some_and(|d| d.code() == &tokio_postgres::error::SqlState::INVALID_PASSWORD);
        let mut d = pg_error(context, &e);
        // The guard's refusal (PermissionDenied): pgshift's own policy, retrying cannot help.
        if std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
        {
            d.transient = false;
        }
        Refused {
            error: d,
            bad_password,
        }
    })?;
    let label = context.to_string();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(server = %label, error = %e, "control connection ended");
        }
    });
    Ok(client)
}
