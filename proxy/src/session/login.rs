//! Start-up and authentication of a client (PostgreSQL docs 53.2.1 "Start-up", 53.3 "SASL
//! Authentication"), up to but not including AuthenticationOk.

use super::{ClientConn, End};
use crate::server::{Proxy, UserEntry};
use bytes::Bytes;
use config::AuthMethod;
use std::sync::Arc;
use wire::auth::{md5_verify, ScramServer};
use wire::frame::{StartupFrame, PROTOCOL_3_0};
use wire::msg;

/// What a logged-in connection is.
pub(crate) enum Login {
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
pub(crate) async fn login(proxy: &Proxy, c: &mut ClientConn) -> Result<Login, End> {
    let (version, params) = match c.read_startup().await? {
        // negotiate answered every request before the first other packet: one now comes
        // after TLS was set up.
        StartupFrame::SslRequest | StartupFrame::GssEncRequest => {
            return Err(End::fatal(
                "08P01",
                "unexpected encryption request: encryption is negotiated only before the start-up packet",
            ));
        }
        StartupFrame::Cancel { pid, secret } => return Ok(Login::Cancel { pid, secret }),
        StartupFrame::Startup { version, params } => (version, params),
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
    check_transport(proxy, c, user_name, &database)?;
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

/// `[proxy.tls] mode = "require"` refuses plain connections, with PostgreSQL's message for a
/// connection only a `hostssl` line would accept (21.1 "The pg_hba.conf File"); with
/// `client_ca` the client's certificate must name the user (`clientcert=verify-full`,
/// 21.12 "Certificate Authentication"). Both before any password is asked for.
fn check_transport(proxy: &Proxy, c: &ClientConn, user: &str, database: &str) -> Result<(), End> {
    if proxy.cfg.proxy.tls.mode == config::ClientTlsMode::Require && !c.stream.is_tls() {
        return Err(End::fatal(
            "28000",
            format!(
                "no pg_hba.conf entry for host \"{}\", user \"{user}\", database \"{database}\", no encryption",
                c.peer.ip()
            ),
        ));
    }
    if c.tls.as_ref().is_some_and(|t| t.client_ca) {
        let Some(cert) = c.stream.peer_certificate() else {
            return Err(End::fatal(
                "28000",
                "connection requires a valid client certificate",
            ));
        };
        if tls::endpoint::common_name(cert).as_deref() != Some(user) {
            return Err(End::fatal(
                "28000",
                format!("certificate validation (clientcert=verify-full) failed for user \"{user}\": CN mismatch"),
            ));
        }
    }
    Ok(())
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
                .unwrap_or_else(|| proxy.mock.verifier(name));
            let binding = c.tls.as_ref().and_then(|t| t.endpoint.clone());
            let mut server = match binding {
                Some(data) => ScramServer::with_channel_binding(verifier, data),
                None => ScramServer::new(verifier),
            };
            msg::auth_sasl(&mut c.out, server.mechanisms());
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
