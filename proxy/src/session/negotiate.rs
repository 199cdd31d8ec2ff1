//! Encryption negotiation before the start-up packet (PostgreSQL docs 53.2.10 "SSL Session
//! Encryption", 53.2.11 "GSSAPI Session Encryption"):
//!
//! * `SSLRequest` is answered `S` and the TLS handshake follows when `[proxy.tls]` is on,
//!   `N` otherwise; `GSSENCRequest` is always answered `N` (libpq then tries SSL or plain).
//! * PostgreSQL 17's direct TLS (`sslnegotiation=direct`): the client opens with a TLS
//!   ClientHello (first byte 0x16) instead of an SSLRequest. The handshake must agree on ALPN
//!   `postgresql`, as PostgreSQL requires; without TLS configured the connection is closed,
//!   as PostgreSQL closes one whose first bytes are no start-up packet.
//!
//! What comes next (the start-up or cancel packet) is read by [`super::login`]; the bytes
//! read here that turned out to begin it are handed over in [`ClientConn::buf`].

use super::ClientConn;
use crate::server::Proxy;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::frame::{GSSENC_REQUEST_CODE, SSL_REQUEST_CODE};

/// How a negotiation ends without a connection to log in on.
pub(crate) enum Negotiated {
    /// Closed, or closed by us without a reply.
    Closed,
    /// Refuse with a FATAL (sent over TLS when the handshake was made).
    Fatal(ClientConn, &'static str, String),
}

/// Answers encryption requests until the client sends something else; returns the connection
/// (plain or TLS) with the first bytes of its next packet in `buf`.
pub(crate) async fn negotiate(
    proxy: &Proxy,
    mut tcp: TcpStream,
    peer: SocketAddr,
) -> Result<ClientConn, Negotiated> {
    let conn = |stream, buf, tls| ClientConn {
        stream,
        buf,
        out: BytesMut::with_capacity(1024),
        peer,
        tls,
    };
    loop {
        let mut first = [0u8; 1];
        match tcp.peek(&mut first).await {
            Ok(0) | Err(_) => return Err(Negotiated::Closed),
            Ok(_) => {}
        }
        if first[0] == tls::TLS_HANDSHAKE_BYTE {
            let Some(acceptor) = proxy.tls.as_ref() else {
                tracing::info!(client = %peer, "direct TLS connection but [proxy.tls] is disabled; connection closed");
                return Err(Negotiated::Closed);
            };
            let setup = acceptor.current();
            let stream = handshake(&setup, tcp, peer).await?;
            let c = conn(stream, BytesMut::new(), Some(setup));
            if c.stream.alpn() != Some(tls::ALPN_POSTGRESQL) {
                return Err(Negotiated::Fatal(
                    c,
                    "08P01",
                    "received direct SSL connection request without ALPN protocol negotiation extension".into(),
                ));
            }
            return Ok(c);
        }
        let mut head = [0u8; 8];
        if tcp.read_exact(&mut head).await.is_err() {
            return Err(Negotiated::Closed);
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let code = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if len == 8 && code == GSSENC_REQUEST_CODE {
            tcp.write_all(b"N").await.map_err(|_| Negotiated::Closed)?;
            continue;
        }
        if len == 8 && code == SSL_REQUEST_CODE {
            let Some(acceptor) = proxy.tls.as_ref() else {
                tcp.write_all(b"N").await.map_err(|_| Negotiated::Closed)?;
                continue;
            };
            // Data sent before our answer would be read as TLS by the handshake: refuse it,
            // as PostgreSQL does (CVE-2021-23214).
            let mut extra = [0u8; 1];
            if let Ok(Ok(n)) =
                tokio::time::timeout(std::time::Duration::ZERO, tcp.peek(&mut extra)).await
            {
                if n > 0 {
                    let c = conn(tls::Stream::Plain(tcp), BytesMut::new(), None);
                    return Err(Negotiated::Fatal(
                        c,
                        "08P01",
                        "received unencrypted data after SSL request".into(),
                    ));
                }
            }
            tcp.write_all(b"S").await.map_err(|_| Negotiated::Closed)?;
            let setup = acceptor.current();
            let stream = handshake(&setup, tcp, peer).await?;
            return Ok(conn(stream, BytesMut::new(), Some(setup)));
        }
        let mut buf = BytesMut::with_capacity(8192);
        buf.extend_from_slice(&head);
        return Ok(conn(tls::Stream::Plain(tcp), buf, None));
    }
}

async fn handshake(
    setup: &Arc<tls::ServerTls>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<tls::Stream, Negotiated> {
    match setup.acceptor.accept(tcp).await {
        Ok(s) => Ok(tls::Stream::Tls(Box::new(s))),
        Err(e) => {
            crate::metrics::login_refused(crate::metrics::Refusal::from_sqlstate("08P01"));
            tracing::info!(client = %peer, error = %e, "TLS handshake failed; connection closed");
            Err(Negotiated::Closed)
        }
    }
}
