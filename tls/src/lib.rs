//! TLS for pgshift's connections (rustls with the ring provider, one for the whole process).
//!
//! * [`Acceptor`]: the server side, for clients (`[proxy.tls]`) and for the HTTP server
//!   (`[http.tls]`, [`Acceptor::https`]): certificate, key and optional client CA read from
//!   PEM files, replaced as a whole by [`Acceptor::reload`] (SIGHUP) without touching
//!   connections already open. For clients ALPN `postgresql` is offered, as PostgreSQL 17
//!   does, so direct TLS negotiation works (PostgreSQL docs 53.2.11 "SSL Session
//!   Encryption"); for HTTP, `http/1.1`.
//! * [`HttpsClient`]: the blocking HTTPS client of `pgshift status`.
//! * [`Connector`]: the server-facing side (`[source]`/`[target]` `sslmode`, `sslrootcert`,
//!   client certificate): SSLRequest and handshake as libpq does them.
//! * [`check_auth`] / [`AuthGuard`]: the authentication methods a server may ask for
//!   (`auth`), checked before pgshift answers (no downgrade).
//! * [`Stream`]: a client or server socket, plain or TLS, and its halves
//!   ([`ReadHalf`]/[`WriteHalf`]) with the non-blocking write the relay uses.
//! * [`endpoint`]: `tls-server-end-point` channel binding data (RFC 5929 section 4.1) and
//!   the Common Name of a client certificate.

mod connect;
pub mod endpoint;
mod guard;
mod https;
mod stream;

pub use connect::{Connector, SSL_REQUEST};
pub use guard::{allowed, check_auth, AuthGuard};
pub use https::HttpsClient;
pub use stream::{ReadHalf, Stream, WriteHalf};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// ALPN protocol name of PostgreSQL (53.2.11; required for direct TLS negotiation).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The first byte of a TLS handshake record: a client that opens with it negotiates TLS
/// directly, without an SSLRequest (PostgreSQL 17 `sslnegotiation=direct`).
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// The process's crypto provider (ring), installed as rustls' default on first use.
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| {
        // ring, not aws-lc-rs: no C build of aws-lc-sys (see ../shared/notes/rust-stack.md).
        #[allow(deprecated)]
        let p = rustls::crypto::ring::default_provider();
        let _ = p.clone().install_default();
        Arc::new(p)
    })
    .clone()
}

/// Reads every certificate of a PEM file. Errors name the file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect();
    let certs = certs.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "no certificate (PEM \"BEGIN CERTIFICATE\") in {}",
            path.display()
        ));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1). Errors name the file, never
/// the key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

/// Reads a private key file that its group and others may not read (mode & 0o077 == 0, as
/// `[http] token_file`): opened once, so the mode checked is that of the file read. Errors
/// name `what` and the file, never the key.
pub fn load_private_key(what: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{what} {shown}: {e}"))?;
    let mode = file
        .metadata()
        .map_err(|e| format!("{what} {shown}: {e}"))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{what} {shown} has mode {:04o}: a private key must not be readable by its group or \
             others (chmod 600 it)",
            mode & 0o7777
        ));
    }
    let mut pem = Vec::new();
    file.take(1 << 20)
        .read_to_end(&mut pem)
        .map_err(|e| format!("{what} {shown}: {e}"))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{what} {shown}: cannot read a private key: {e}"))
}

/// ALPN protocol name of HTTP/1.1 (RFC 7301), the one protocol the HTTP server speaks.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// What one handshake uses: the rustls configuration and the channel binding data of its
/// certificate.
pub struct ServerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// `tls-server-end-point` data of the certificate shown, or `None` when its signature
    /// algorithm has no defined hash (then SCRAM-SHA-256-PLUS is not offered).
    pub endpoint: Option<Vec<u8>>,
    /// Clients must present a certificate signed by `client_ca`.
    pub client_ca: bool,
}

/// Where an [`Acceptor`] is built from, and what its handshakes demand.
#[derive(Debug, Clone)]
struct Spec {
    /// `[proxy.tls]` or `[http.tls]`: the start of every error message.
    section: &'static str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    /// ALPN protocols offered.
    alpn: &'static [u8],
    /// With `client_ca`: a client without a certificate still completes the handshake (and
    /// is refused later by the caller) instead of failing it.
    client_cert_optional: bool,
    /// The key file must not be readable by its group or others ([`load_private_key`]).
    private_key_mode: bool,
}

/// A server-side TLS set-up (`[proxy.tls]` or `[http.tls]`), swapped as a whole on reload.
pub struct Acceptor {
    spec: Spec,
    current: ArcSwap<ServerTls>,
}

impl Acceptor {
    /// Loads `[proxy.tls]`; `Ok(None)` when its mode is `disable`. Errors name the key and
    /// the file. ALPN `postgresql`; with `client_ca`, a client without a certificate passes
    /// the handshake so that it can be refused with PostgreSQL's FATAL after its start-up
    /// packet.
    pub fn new(cfg: &config::ClientTlsConfig) -> Result<Option<Acceptor>, String> {
        if cfg.mode == config::ClientTlsMode::Disable {
            return Ok(None);
        }
        Self::from_spec(Spec {
            section: "[proxy.tls]",
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            client_ca: cfg.client_ca.clone(),
            alpn: ALPN_POSTGRESQL,
            client_cert_optional: true,
            private_key_mode: false,
        })
        .map(Some)
    }

    /// Loads `[http.tls]`; `Ok(None)` when it is off (no `cert` and `key`). Errors name the
    /// key and the file, never the key's content; a key file readable by its group or others
    /// is refused. ALPN `http/1.1`; with `client_ca`, the handshake fails for a client that
    /// presents no certificate or one that `client_ca` did not sign.
    pub fn https(cfg: &config::HttpTlsConfig) -> Result<Option<Acceptor>, String> {
        if !cfg.enabled() {
            return Ok(None);
        }
        Self::from_spec(Spec {
            section: "[http.tls]",
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            client_ca: cfg.client_ca.clone(),
            alpn: ALPN_HTTP11,
            client_cert_optional: false,
            private_key_mode: true,
        })
        .map(Some)
    }

    fn from_spec(spec: Spec) -> Result<Acceptor, String> {
        let current = ArcSwap::from_pointee(build(&spec)?);
        Ok(Acceptor { spec, current })
    }

    /// The set-up for a new handshake.
    pub fn current(&self) -> Arc<ServerTls> {
        self.current.load_full()
    }

    /// Reads the files again; on an error the previous set-up stays in force.
    pub fn reload(&self) -> Result<(), String> {
        self.current.store(Arc::new(build(&self.spec)?));
        Ok(())
    }

    /// `[proxy.tls]` or `[http.tls]`, for log lines.
    pub fn section(&self) -> &'static str {
        self.spec.section
    }
}

fn build(spec: &Spec) -> Result<ServerTls, String> {
    let section = spec.section;
    let (Some(cert), Some(key)) = (&spec.cert, &spec.key) else {
        return Err(format!("{section} needs cert and key"));
    };
    let certs = load_certs(cert).map_err(|e| format!("{section} cert: {e}"))?;
    let key = if spec.private_key_mode {
        load_private_key(&format!("{section} key"), key)?
    } else {
        load_key(key).map_err(|e| format!("{section} key: {e}"))?
    };
    let endpoint = endpoint::server_end_point(&certs[0]);
    let p = provider();
    let builder = rustls::ServerConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let builder = match &spec.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(ca).map_err(|e| format!("{section} client_ca: {e}"))? {
                roots.add(c).map_err(|e| {
                    format!(
                        "{section} client_ca: bad CA certificate in {}: {e}",
                        ca.display()
                    )
                })?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), p);
            // [proxy.tls]: certificates are optional in the handshake, so that a client
            // without one is refused after its start-up packet with PostgreSQL's own FATAL,
            // not a TLS alert.
            let verifier = if spec.client_cert_optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("{section} client_ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut sc = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{section} cert and key {}: {e}", cert.display()))?;
    sc.alpn_protocols = vec![spec.alpn.to_vec()];
    Ok(ServerTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(sc)),
        endpoint,
        client_ca: spec.client_ca.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_key_files_others_may_read_are_refused() {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let dir = std::env::temp_dir().join(format!("pgshift-tls-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k.pem");
        let secret = "-----BEGIN PRIVATE KEY-----\nS3cretS3cret\n-----END PRIVATE KEY-----\n";
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&p)
            .unwrap();
        f.write_all(secret.as_bytes()).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = load_private_key("[http.tls] key", &p).unwrap_err();
            assert!(
                e.starts_with(&format!(
                    "[http.tls] key {} has mode {mode:04o}",
                    p.display()
                )) && e.contains("chmod 600"),
                "{e}"
            );
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(load_private_key("[http.tls] key", &p).is_ok(), "{mode:o}");
        }
        // Past the mode check, a file without a key: its content is never shown.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, "S3cretS3cret, no PEM here\n").unwrap();
        let e = load_private_key("[http.tls] key", &p).unwrap_err();
        assert!(e.contains("cannot read a private key"), "{e}");
        assert!(!e.contains("S3cret"), "{e}");
        let e = load_private_key("[http.tls] key", &dir.join("missing")).unwrap_err();
        assert!(e.contains("missing") && e.contains("No such file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
