//! A pgbouncer (Debian's `/usr/sbin/pgbouncer`) in front of one server, session pooling, on a
//! port of its own, with its configuration in a directory of its own.

use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pgbench::Endpoint;

/// Where Debian installs pgbouncer.
pub const PGBOUNCER_BIN: &str = "/usr/sbin/pgbouncer";

/// A running pgbouncer; dropping it stops it.
pub struct Pgbouncer {
    child: Option<Child>,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// Its directory: configuration, auth file, log.
    pub dir: PathBuf,
    backend: Endpoint,
}

impl Pgbouncer {
    /// Start pgbouncer in `dir` (created) in front of `backend`'s database, letting in
    /// `backend`'s user with its password (`auth_type = scram-sha-256`, the plain password in
    /// the auth file, which pgbouncer also uses to log in to the server). PgBouncer refuses to
    /// run as root: as root it runs as the harness's server user
    /// ([`integration::PG_OS_USER`]). With `tls`, TLS both ways: clients must use TLS
    /// (`client_tls_sslmode = require`, this certificate and key, copied into `dir`) and the
    /// server connections use it (`server_tls_sslmode = require`).
    pub fn start(
        backend: &Endpoint,
        dir: &Path,
        tls: Option<&integration::certs::CertFiles>,
    ) -> Result<Pgbouncer> {
        if !Path::new(PGBOUNCER_BIN).exists() {
            bail!("{PGBOUNCER_BIN} not found: apt-get install pgbouncer");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = integration::free_port();
        let auth_file = dir.join("userlist.txt");
        std::fs::write(
            &auth_file,
            format!("\"{}\" \"{}\"\n", backend.user, backend.password),
        )
        .context("writing the pgbouncer auth file")?;
        let mut tls_ini = String::new();
        let mut tls_files = Vec::new();
        if let Some(t) = tls {
            let (cert, key) = (dir.join("client-tls.crt"), dir.join("client-tls.key"));
            std::fs::copy(&t.cert, &cert).context("copying the TLS certificate")?;
            integration::certs::write_private(&key, &std::fs::read(&t.key)?)?;
            tls_ini = format!(
                "client_tls_sslmode = require
client_tls_cert_file = {}
client_tls_key_file = {}
server_tls_sslmode = require
",
                cert.display(),
                key.display()
            );
            tls_files = vec![cert, key];
        }
        let config = dir.join("pgbouncer.ini");
        std::fs::write(
            &config,
            format!(
                "[databases]\n\
                 {db} = host={host} port={bport} dbname={db}\n\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = scram-sha-256\n\
                 auth_file = {auth}\n\
                 pool_mode = session\n\
                 max_client_conn = 200\n\
                 default_pool_size = 60\n\
                 ignore_startup_parameters = extra_float_digits\n\
                 logfile = {log}\n\
                 pidfile = {pid}\n\
                 {tls_ini}",
                db = backend.dbname,
                host = backend.host,
                bport = backend.port,
                auth = auth_file.display(),
                log = dir.join("pgbouncer.log").display(),
                pid = dir.join("pgbouncer.pid").display(),
            ),
        )
        .context("writing pgbouncer.ini")?;

        let mut cmd = Command::new(PGBOUNCER_BIN);
        cmd.arg(&config)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("pgbouncer.stderr"))?);
        // As root, pgbouncer (which refuses root) runs as the harness's server user.
        if let Some(user) = integration::run_as()? {
            for p in [dir, auth_file.as_path(), config.as_path()]
                .into_iter()
                .chain(tls_files.iter().map(|p| p.as_path()))
            {
                user.chown(p)?;
            }
            user.apply(&mut cmd);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {PGBOUNCER_BIN}"))?;
        let mut b = Pgbouncer {
            child: Some(child),
            port,
            dir: dir.to_path_buf(),
            backend: backend.clone(),
        };
        b.wait_listening(Duration::from_secs(10))?;
        Ok(b)
    }

    fn wait_listening(&mut self, timeout: Duration) -> Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "pgbouncer exited at start ({status}):\n{}\n{}",
                        integration::tail_file(&self.dir.join("pgbouncer.stderr"), 20),
                        integration::tail_file(&self.dir.join("pgbouncer.log"), 20)
                    );
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "pgbouncer does not listen on {addr} after {timeout:?}:\n{}",
                    integration::tail_file(&self.dir.join("pgbouncer.log"), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The endpoint of the backend's database through pgbouncer.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            name: "pgbouncer".into(),
            host: "127.0.0.1".into(),
            port: self.port,
            ..self.backend.clone()
        }
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
