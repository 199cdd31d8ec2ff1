//! A throw-away certificate authority for TLS tests: a CA, server certificates for
//! `localhost` / `127.0.0.1`, and client certificates whose CN is a user name, written as PEM
//! files (keys mode 0600) into a directory the test owns.
//!
//! PostgreSQL's client-certificate check (`clientcert=verify-full`, PostgreSQL docs 21.12
//! "Certificate Authentication") compares the certificate's CN with the user name; pgshift
//! does the same, so [`TestCa::client`] puts the user name in the CN.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// A certificate and its private key on disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8), mode 0600.
    pub key: PathBuf,
}

/// A test CA: its certificate (`ca.pem` in `dir`) signs the server and client certificates.
pub struct TestCa {
    /// Where the files go.
    pub dir: PathBuf,
    /// The CA certificate (PEM), for `sslrootcert` and `[proxy.tls] client_ca`.
    pub ca_pem: PathBuf,
    cert: Certificate,
    key: KeyPair,
}

impl TestCa {
    /// A new CA named `name`, written to `dir/<name>.pem` (the directory is created).
    pub fn new(dir: &Path, name: &str) -> Result<TestCa> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("pgshift test CA {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).context("signing the CA")?;
        let ca_pem = dir.join(format!("{name}.pem"));
        std::fs::write(&ca_pem, cert.pem())?;
        Ok(TestCa {
            dir: dir.to_path_buf(),
            ca_pem,
            cert,
            key,
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses, e.g. `localhost`,
    /// `127.0.0.1`), written as `<file>.crt` / `<file>.key`.
    pub fn server(&self, file: &str, names: &[&str]) -> Result<CertFiles> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(file, params)
    }

    /// A client certificate whose CN is `user`, written as `<file>.crt` / `<file>.key`.
    pub fn client(&self, file: &str, user: &str) -> Result<CertFiles> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(file, params)
    }

    fn issue(&self, file: &str, mut params: CertificateParams) -> Result<CertFiles> {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().context("generating a key")?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .context("signing a certificate")?;
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&files.cert, cert.pem())?;
        write_private(&files.key, key.serialize_pem().as_bytes())?;
        Ok(files)
    }
}

/// Writes `data` to `path` created with mode 0600 (libpq and PostgreSQL refuse private keys
/// readable by others).
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}
