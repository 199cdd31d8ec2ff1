//! TLS from pgshift to a PostgreSQL server, as libpq's `sslmode` (PostgreSQL docs 34.19.1
//! "Client Verification of Server Certificates", table 34.1 "SSL Mode Descriptions"):
//!
//! | sslmode      | SSLRequest answered `N`  | certificate checked                       |
//! |--------------|--------------------------|-------------------------------------------|
//! | `disable`    | (no SSLRequest is sent)  | -                                         |
//! | `prefer`     | plain TCP                | no                                        |
//! | `require`    | error                    | no (with `sslrootcert`: as `verify-ca`)   |
//! | `verify-ca`  | error                    | signed by `sslrootcert`                   |
//! | `verify-full`| error                    | signed by `sslrootcert` and naming `host` |
//!
//! The server's handshake signature is checked in every mode (so the channel is bound to the
//! key of the certificate shown). The SSLRequest (protocol 53.2.10, code 80877103) is answered
//! by one byte, `S` or `N`; anything else, or bytes after it before the handshake, is refused
//! (CVE-2021-23215's client side: no data may be read before TLS starts).

use crate::{load_certs, load_key, provider, Stream, ALPN_POSTGRESQL};
use config::{ServerConfig, SslMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// SSLRequest: length 8, request code 80877103 (PostgreSQL docs 53.7 "Message Formats").
pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// How pgshift opens TLS to one server: built once from `[source]`/`[target]` and shared by
/// every connection to it.
pub struct Connector {
    mode: SslMode,
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("mode", &self.mode)
            .finish()
    }
}

impl Connector {
    /// The TLS set-up of `server`; `Ok(None)` for `sslmode = "disable"`. Errors name the
    /// file that cannot be read (never a key's content).
    pub fn new(server: &ServerConfig) -> Result<Option<Connector>, String> {
        let mode = match (server.sslmode, &server.sslrootcert) {
            (SslMode::Disable, _) => return Ok(None),
            // libpq: require with a root certificate file behaves as verify-ca.
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (m, _) => m,
        };
        let p = provider();
        let builder = rustls::ClientConfig::builder_with_provider(p.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?;
        let roots = || -> Result<Arc<rustls::RootCertStore>, String> {
            let path = server
                .sslrootcert
                .as_ref()
                .ok_or_else(|| format!("sslmode {} needs sslrootcert", mode.as_str()))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(path)? {
                roots
                    .add(c)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
            }
            Ok(Arc::new(roots))
        };
        let builder = match mode {
            SslMode::VerifyFull => builder.with_root_certificates(roots()?),
            SslMode::VerifyCa => {
                let inner = WebPkiServerVerifier::builder_with_provider(roots()?, p.clone())
                    .build()
                    .map_err(|e| format!("TLS set-up: {e}"))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(CaOnly { inner }))
            }
            _ => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unchecked { provider: p })),
        };
        let mut config = match (&server.sslcert, &server.sslkey) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| {
                    format!(
                        "client certificate {} and key {}: {e}",
                        cert.display(),
                        key.display()
                    )
                })?,
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(Some(Connector {
            mode,
            config: Arc::new(config),
        }))
    }

    /// The effective mode (`require` with `sslrootcert` is `verify-ca`).
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Sends an SSLRequest on `tcp` and, when the server answers `S`, makes the handshake for
    /// `host` (checked per the mode). An `N` gives the plain stream under `prefer` and an
    /// error otherwise.
    pub async fn negotiate(&self, mut tcp: TcpStream, host: &str) -> Result<Stream, String> {
        tcp.write_all(&SSL_REQUEST)
            .await
            .map_err(|e| format!("sending SSLRequest: {e}"))?;
        let answer = tcp
            .read_u8()
            .await
            .map_err(|e| format!("reading the answer to SSLRequest: {e}"))?;
        match answer {
            b'S' => {}
            b'N' if self.mode == SslMode::Prefer => return Ok(Stream::Plain(tcp)),
            b'N' => {
                return Err(format!(
                "the server does not support TLS (it answered N to SSLRequest) and sslmode is {}",
                self.mode.as_str()
            ))
            }
            b'E' => {
                return Err(
                    "the server answered SSLRequest with an error (a server older than 7.0?)"
                        .into(),
                )
            }
            other => {
                return Err(format!(
                    "the server answered SSLRequest with byte 0x{other:02x}, not S or N"
                ))
            }
        }
        // Nothing may follow `S` before the handshake (it would be unencrypted data injected
        // by someone on the path).
        let mut probe = [0u8; 1];
        match tcp.try_read(&mut probe) {
            Ok(0) => return Err("the server closed the connection after answering S".into()),
            Ok(_) => {
                return Err(
                    "the server sent unencrypted data after answering S to SSLRequest".into(),
                )
            }
            Err(_) => {}
        }
        let s = self.handshake(tcp, host).await?;
        Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(s))))
    }

    /// The TLS handshake alone on `io` (after the SSLRequest), for `host`.
    pub async fn handshake<IO>(
        &self,
        io: IO,
        host: &str,
    ) -> Result<tokio_rustls::client::TlsStream<IO>, String>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("host {host:?} is not a valid TLS server name: {e}"))?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, io)
            .await
            .map_err(|e| format!("TLS handshake (sslmode {}): {e}", self.mode.as_str()))
    }
}

/// `prefer` / `require`: any certificate, but the handshake signature must be made by its key.
#[derive(Debug)]
struct Unchecked {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to `sslrootcert`; the name is not compared.
#[derive(Debug)]
struct CaOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for CaOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
