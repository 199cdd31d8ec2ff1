//! The blocking HTTPS client of `pgshift status` (GET /progress of a pgshift whose HTTP server
//! has `[http.tls]`): the server's certificate is checked against a CA file and the name or
//! address connected to (as curl's `--cacert`); a client certificate is shown when one is
//! given (for `[http.tls] client_ca`).

use crate::{load_certs, load_key, provider, ALPN_HTTP11};
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

/// A TLS client set-up for one HTTPS server.
pub struct HttpsClient {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient").finish_non_exhaustive()
    }
}

impl HttpsClient {
    /// Trusts the CA certificates of `cacert` (PEM); shows `client` (PEM certificate and
    /// key files) when given. Errors name the file, never a key's content.
    pub fn new(cacert: &Path, client: Option<(&Path, &Path)>) -> Result<HttpsClient, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in load_certs(cacert)? {
            roots
                .add(c)
                .map_err(|e| format!("bad CA certificate in {}: {e}", cacert.display()))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?
            .with_root_certificates(roots);
        let mut config = match client {
            Some((cert, key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| {
                    format!(
                        "client certificate {} and key {}: {e}",
                        cert.display(),
                        key.display()
                    )
                })?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        Ok(HttpsClient {
            config: Arc::new(config),
        })
    }

    /// Makes the handshake on `tcp` for `host` (a DNS name, or an IP address, in brackets or
    /// not), whose certificate must name it; the timeouts of `tcp` apply. Returns the stream
    /// to send the request on and read the answer from.
    pub fn connect(&self, mut tcp: TcpStream, host: &str) -> Result<impl Read + Write, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(bare.to_string())
            .map_err(|e| format!("`{host}` is no server name for TLS: {e}"))?;
        let mut conn = rustls::ClientConnection::new(self.config.clone(), name)
            .map_err(|e| format!("TLS set-up: {e}"))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)
                .map_err(|e| format!("TLS handshake with {host}: {e}"))?;
        }
        Ok(rustls::StreamOwned::new(conn, tcp))
    }
}
