//! A connection socket, plain TCP or TLS, and the halves the relay reads and writes at once.
//!
//! The plain halves are tokio's owned TCP halves (no lock, readiness-based writes). The TLS
//! halves share the rustls session through `tokio::io::split`; their non-blocking write
//! ([`WriteHalf::try_write`]) hands plaintext to rustls and pushes what ciphertext the socket
//! takes, remembering what is left ([`WriteHalf::pending`]) so that the caller waits with
//! [`WriteHalf::writable`] until it is on the wire.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A socket: plain, or TLS (accepted by pgshift from a client, or opened by pgshift to a
/// server).
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Stream {
    /// A connection accepted and handshaken by pgshift's TLS server side.
    pub fn accepted(s: tokio_rustls::server::TlsStream<TcpStream>) -> Stream {
        Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(s)))
    }

    /// TLS is in use.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The TCP socket under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    /// The first certificate the peer presented (DER), if any: the client's certificate on
    /// an accepted connection, the server's on one pgshift opened.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => s
                .get_ref()
                .1
                .peer_certificates()?
                .first()
                .map(|c| c.as_ref()),
        }
    }

    /// The ALPN protocol agreed in the handshake.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }

    /// Splits for reading and writing at once.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (
                    ReadHalf::Plain(r),
                    WriteHalf {
                        inner: WriteInner::Plain(w),
                        pending: false,
                    },
                )
            }
            s => {
                let (r, w) = tokio::io::split(s);
                (
                    ReadHalf::Tls(r),
                    WriteHalf {
                        inner: WriteInner::Tls(w),
                        pending: false,
                    },
                )
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, b),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, b),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The read half of a [`Stream`].
pub enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Stream>),
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

enum WriteInner {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Stream>),
}

/// The write half of a [`Stream`].
pub struct WriteHalf {
    inner: WriteInner,
    /// TLS: ciphertext accepted by rustls is not all on the socket yet.
    pending: bool,
}

impl WriteHalf {
    /// Writes what the socket takes now, without waiting: bytes accepted, or `WouldBlock`.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            WriteInner::Plain(w) => w.try_write(buf),
            WriteInner::Tls(w) => {
                let mut cx = Context::from_waker(Waker::noop());
                match Pin::new(&mut *w).poll_write(&mut cx, buf) {
                    Poll::Ready(Ok(n)) => {
                        self.pending =
                            !matches!(Pin::new(&mut *w).poll_flush(&mut cx), Poll::Ready(Ok(())));
                        Ok(n)
                    }
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => {
                        self.pending = true;
                        Err(io::ErrorKind::WouldBlock.into())
                    }
                }
            }
        }
    }

    /// Ciphertext of earlier writes still waits for the socket: wait [`writable`](Self::writable).
    pub fn pending(&self) -> bool {
        self.pending
    }

    /// Waits until a write can make progress (TLS: until earlier ciphertext is on the socket).
    pub async fn writable(&mut self) -> io::Result<()> {
        match &mut self.inner {
            WriteInner::Plain(w) => w.writable().await,
            WriteInner::Tls(w) => {
                std::future::poll_fn(|cx| Pin::new(&mut *w).poll_flush(cx)).await?;
                self.pending = false;
                Ok(())
            }
        }
    }

    /// Puts the halves back together; `None` when they are of different streams.
    pub fn reunite(self, r: ReadHalf) -> Option<Stream> {
        match (r, self.inner) {
            (ReadHalf::Plain(r), WriteInner::Plain(w)) => r.reunite(w).map(Stream::Plain).ok(),
            (ReadHalf::Tls(r), WriteInner::Tls(w)) if r.is_pair_of(&w) => Some(r.unsplit(w)),
            _ => None,
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            WriteInner::Plain(s) => Pin::new(s).poll_write(cx, b),
            WriteInner::Tls(s) => Pin::new(s).poll_write(cx, b),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let r = match &mut me.inner {
            WriteInner::Plain(s) => Pin::new(s).poll_flush(cx),
            WriteInner::Tls(s) => Pin::new(s).poll_flush(cx),
        };
        if matches!(r, Poll::Ready(Ok(()))) {
            me.pending = false;
        }
        r
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            WriteInner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            WriteInner::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
