//! TLS for pgshift's connections (rustls with the ring provider, one for the whole process).
//!
//! * [`Acceptor`]: the client-facing side (`[proxy.tls]`): certificate, key and optional
//!   client CA read from PEM files, replaced as a whole by [`Acceptor::reload`] (SIGHUP)
//!   without touching sessions already open. ALPN `postgresql` is offered, as PostgreSQL 17
//!   does, so direct TLS negotiation works (PostgreSQL docs 53.2.11 "SSL Session Encryption").
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
mod stream;

pub use connect::{Connector, SSL_REQUEST};
pub use guard::{allowed, check_auth, AuthGuard};
pub use stream::{ReadHalf, Stream, WriteHalf};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
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

/// What one handshake uses: the rustls configuration and the channel binding data of its
/// certificate.
pub struct ServerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// `tls-server-end-point` data of the certificate shown, or `None` when its signature
    /// algorithm has no defined hash (then SCRAM-SHA-256-PLUS is not offered).
    pub endpoint: Option<Vec<u8>>,
    /// Clients must present a certificate signed by `[proxy.tls] client_ca`.
    pub client_ca: bool,
}

/// The client-facing TLS set-up, swapped as a whole on reload.
pub struct Acceptor {
    cfg: config::ClientTlsConfig,
    current: ArcSwap<ServerTls>,
}

impl Acceptor {
    /// Loads `[proxy.tls]`; `Ok(None)` when its mode is `disable`. Errors name the file.
    pub fn new(cfg: &config::ClientTlsConfig) -> Result<Option<Acceptor>, String> {
        if cfg.mode == config::ClientTlsMode::Disable {
            return Ok(None);
        }
        let current = ArcSwap::from_pointee(build(cfg)?);
        Ok(Some(Acceptor {
            cfg: cfg.clone(),
            current,
        }))
    }

    /// The set-up for a new handshake.
    pub fn current(&self) -> Arc<ServerTls> {
        self.current.load_full()
    }

    /// Reads the files again; on an error the previous set-up stays in force.
    pub fn reload(&self) -> Result<(), String> {
        self.current.store(Arc::new(build(&self.cfg)?));
        Ok(())
    }
}

fn build(cfg: &config::ClientTlsConfig) -> Result<ServerTls, String> {
    let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else {
        return Err("[proxy.tls] needs cert and key".into());
    };
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    let endpoint = endpoint::server_end_point(&certs[0]);
    let p = provider();
    let builder = rustls::ServerConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
            }
            // Certificates are optional in the handshake: a client without one is refused
            // after its start-up packet with PostgreSQL's own FATAL, not a TLS alert.
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), p)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| format!("[proxy.tls] client_ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut sc = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("[proxy.tls] cert and key {}: {e}", cert.display()))?;
    sc.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(ServerTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(sc)),
        endpoint,
        client_ca: cfg.client_ca.is_some(),
    })
}
