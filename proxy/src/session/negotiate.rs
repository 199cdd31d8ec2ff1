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
    // Bytes read that begin the client's next packet.
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        if buf.is_empty() {
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
        }
        // Read until the packet is known not to be an 8-byte request, or is one.
        while buf.len() < 8 && !(buf.len() >= 4 && buf[..4] != [0, 0, 0, 8]) {
            match tcp.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Err(Negotiated::Closed),
                Ok(_) => {}
            }
        }
        let request = (buf.len() >= 8 && buf[..4] == [0, 0, 0, 8])
            .then(|| i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]));
        match request {
            Some(GSSENC_REQUEST_CODE) => {
                let _ = buf.split_to(8);
                tcp.write_all(b"N").await.map_err(|_| Negotiated::Closed)?;
                continue;
            }
            Some(SSL_REQUEST_CODE) => {
                let _ = buf.split_to(8);
            }
            _ => return Ok(conn(tls::Stream::Plain(tcp), buf, None)),
        }
        let Some(acceptor) = proxy.tls.as_ref() else {
            tcp.write_all(b"N").await.map_err(|_| Negotiated::Closed)?;
            continue;
        };
        // Data sent before our answer would be read as TLS by the handshake: refuse it,
        // as PostgreSQL does (CVE-2021-23214).
        if !buf.is_empty() {
            let c = conn(tls::Stream::Plain(tcp), BytesMut::new(), None);
            return Err(Negotiated::Fatal(
                c,
                "08P01",
                "received unencrypted data after SSL request".into(),
            ));
        }
        tcp.write_all(b"S").await.map_err(|_| Negotiated::Closed)?;
        let setup = acceptor.current();
        let stream = handshake(&setup, tcp, peer).await?;
        return Ok(conn(stream, BytesMut::new(), Some(setup)));
    }
}

async fn handshake(
    setup: &Arc<tls::ServerTls>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<tls::Stream, Negotiated> {
    match setup.acceptor.accept(tcp).await {
        Ok(s) => Ok(tls::Stream::accepted(s)),
        Err(e) => {
            crate::metrics::login_refused(crate::metrics::Refusal::from_sqlstate("08P01"));
            tracing::info!(client = %peer, error = %e, "TLS handshake failed; connection closed");
            Err(Negotiated::Closed)
        }
    }
}
