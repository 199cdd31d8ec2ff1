//! No downgrade of the login to a server: the methods `[source]`/`[target] auth` accepts
//! (as libpq's `require_auth`, PostgreSQL docs 34.1.2), checked before anything answers the
//! server's authentication request.
//!
//! [`check_auth`] is the rule; pgshift's own backend login (the proxy) calls it directly, and
//! [`AuthGuard`] applies it under a client library that does its own login (tokio-postgres in
//! the control plane): it reads the server's messages as they pass, until AuthenticationOk,
//! and fails the read that brings a request the rule refuses, so the library never sees it
//! and never answers (no password or hash is sent).

use config::ServerAuth;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `auth`'s methods, for messages: `scram-sha-256, md5`.
pub fn allowed(auth: &[ServerAuth]) -> String {
    auth.iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a server may make pgshift log in as `user` with `method`: `method` is listed in
/// `auth`, and a cleartext password goes only over TLS. The error says what was asked, what
/// is allowed and which setting to change.
pub fn check_auth(
    auth: &[ServerAuth],
    method: ServerAuth,
    over_tls: bool,
    user: &str,
) -> Result<(), String> {
    let what = match method {
        ServerAuth::ScramSha256 => "SCRAM-SHA-256 authentication",
        ServerAuth::Md5 => "MD5 password authentication",
        ServerAuth::Password => "a cleartext password",
        ServerAuth::None => "no authentication (trust)",
    };
    if !auth.contains(&method) {
        return Err(format!(
            "the server asks for {what} for user \"{user}\", which its `auth` setting does not allow ({}): nothing was sent; list \"{}\" in `auth` of [source] or [target] to accept it",
            allowed(auth),
            method.as_str()
        ));
    }
    if method == ServerAuth::Password && !over_tls {
        return Err(format!(
            "the server asks for a cleartext password for user \"{user}\" on a connection without TLS: pgshift sends cleartext passwords only over TLS (set sslmode)"
        ));
    }
    Ok(())
}

/// A server connection whose start-up is checked by [`check_auth`] as it is read.
pub struct AuthGuard<S> {
    inner: S,
    auth: Vec<ServerAuth>,
    user: String,
    over_tls: bool,
    /// Bytes of the server's start-up messages not yet complete.
    scan: Vec<u8>,
    /// An authentication request was seen (AuthenticationOk alone means trust).
    asked: bool,
    /// AuthenticationOk passed: nothing more to check.
    done: bool,
}

impl<S> AuthGuard<S> {
    /// Guards `inner`, a connection on which the login of `user` is about to start.
    pub fn new(inner: S, auth: &[ServerAuth], user: &str, over_tls: bool) -> AuthGuard<S> {
        AuthGuard {
            inner,
            auth: auth.to_vec(),
            user: user.to_string(),
            over_tls,
            scan: Vec::new(),
            asked: false,
            done: false,
        }
    }

    /// Checks the complete messages in `scan`.
    fn check(&mut self) -> Result<(), String> {
        loop {
            if self.scan.len() < 5 {
                return Ok(());
            }
            let len = u32::from_be_bytes([self.scan[1], self.scan[2], self.scan[3], self.scan[4]])
                as usize;
            if !(4..=1 << 20).contains(&len) {
                // Not PostgreSQL start-up traffic; the library will say what is wrong.
                self.done = true;
                return Ok(());
            }
            if self.scan.len() < 1 + len {
                return Ok(());
            }
            let tag = self.scan[0];
            let code = (len >= 8).then(|| {
                i32::from_be_bytes([self.scan[5], self.scan[6], self.scan[7], self.scan[8]])
            });
            self.scan.drain(..1 + len);
            if tag != b'R' {
                continue;
            }
            // Authentication request codes: PostgreSQL docs 53.7 "Message Formats".
            let method = match code {
                Some(0) => {
                    if !self.asked {
                        check_auth(&self.auth, ServerAuth::None, self.over_tls, &self.user)?;
                    }
                    self.done = true;
                    self.scan.clear();
                    return Ok(());
                }
                Some(3) => ServerAuth::Password,
                Some(5) => ServerAuth::Md5,
                Some(10) => ServerAuth::ScramSha256,
                // SASLContinue / SASLFinal of a started exchange; others the library refuses.
                _ => continue,
            };
            self.asked = true;
            check_auth(&self.auth, method, self.over_tls, &self.user)?;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.done {
            return Pin::new(&mut me.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            me.scan.extend_from_slice(&buf.filled()[before..]);
            if let Err(why) = me.check() {
                buf.set_filled(before);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::PermissionDenied, why)));
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthGuard<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn auth_request(code: i32) -> Vec<u8> {
        let mut m = vec![b'R', 0, 0, 0, 8];
        m.extend_from_slice(&code.to_be_bytes());
        m
    }

    async fn read_through(
        auth: &[ServerAuth],
        over_tls: bool,
        server: Vec<u8>,
    ) -> io::Result<Vec<u8>> {
        let (mut srv, cli) = tokio::io::duplex(1024);
        srv.write_all(&server).await.unwrap();
        drop(srv);
        let mut g = AuthGuard::new(cli, auth, "app", over_tls);
        let mut out = Vec::new();
        g.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn refuses_what_auth_does_not_list_before_the_library_sees_it() {
        let scram = [ServerAuth::ScramSha256];
        let e = read_through(&scram, false, auth_request(5))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            e.to_string().contains("MD5") && e.to_string().contains("`auth`"),
            "{e}"
        );
        // Trust: AuthenticationOk without a request.
        let e = read_through(&scram, false, auth_request(0))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("trust"), "{e}");
        // Cleartext, listed, but not over TLS.
        let pw = [ServerAuth::Password];
        let e = read_through(&pw, false, auth_request(3)).await.unwrap_err();
        assert!(e.to_string().contains("only over TLS"), "{e}");
        assert!(read_through(&pw, true, auth_request(3)).await.is_ok());
    }

    #[tokio::test]
    async fn passes_allowed_logins_and_everything_after_them() {
        let mut server = auth_request(5);
        server.extend(auth_request(0));
        // A ParameterStatus split into odd pieces by the duplex is passed as is.
        server.extend_from_slice(b"S\0\0\0\x08a\0b\0");
        let out = read_through(&[ServerAuth::Md5], false, server.clone())
            .await
            .unwrap();
        assert_eq!(out, server);
        // After AuthenticationOk nothing is checked (an 'R'-tagged byte pattern in data).
        let mut server = auth_request(10);
        server.extend(auth_request(0));
        server.extend(auth_request(5));
        assert!(read_through(&[ServerAuth::ScramSha256], false, server)
            .await
            .is_ok());
    }
}
