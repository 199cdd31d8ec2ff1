//! Typed pgshift configuration (TOML).
//!
//! The shapes live here; loading lives in [`load_file`] / [`load_str`], which run three
//! stages and stop at the first stage that finds problems:
//!
//! 1. **Substitution** of `${VAR}` and `${VAR:-default}` from the process environment,
//!    applied to the raw text *before* TOML parsing (comments excepted). Line numbers never
//!    change. `$${` writes a literal `${`. See [`load_str`] for the exact rules.
//! 2. **Parsing** into [`Config`]: TOML syntax, unknown keys, wrong types, missing required
//!    keys. The error reads `FILE:LINE:COL: reason`.
//! 3. **Validation** of values (addresses, limits, users, servers...). Every problem is
//!    reported, one per line, as `FILE:LINE: key.path: reason`.
//!
//! The file `config/pgshift.example.toml` documents every key with its default.
//!
//! Passwords never appear in a [`ConfigError`] nor in the `Debug` output of a [`Config`];
//! use [`redact_conninfo`] before logging a connection string.

use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;

mod load;
mod redact;
mod subst;
mod validate;

#[cfg(test)]
mod tests;

pub use load::{load_file, load_str, load_str_with_env, ConfigError, Problem};
pub use redact::redact_conninfo;

/// The whole configuration file. Only `[source]`, `[target]` and at least one `[[users]]`
/// entry are required; every other section has defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[proxy]`: listener and data path.
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// `[journal]`: where the upgrade state is kept.
    #[serde(default)]
    pub journal: JournalConfig,
    /// The database being upgraded (old major).
    pub source: ServerConfig,
    /// The database being upgraded to (new major).
    pub target: ServerConfig,
    /// Users that clients log in as. At least one; admin users may open the admin console.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// `[upgrade]`: the plan (shift steps, approvals, retries, timeouts) and the cutover protocol.
    #[serde(default)]
    pub upgrade: UpgradeConfig,
    /// `[health]`: the checks that guard the weighted shift and the time after cutover.
    #[serde(default)]
    pub health: HealthConfig,
    /// `[replication]`: how data moves between source and target.
    #[serde(default)]
    pub replication: ReplicationConfig,
    /// `[http]`: the HTTP server (Prometheus metrics, progress, upgrade commands).
    #[serde(default)]
    pub http: HttpConfig,
    /// `[mirror]`: copying client traffic to the target and comparing the answers.
    #[serde(default)]
    pub mirror: MirrorConfig,
    /// `[validation]`: how the comparison results gate the cutover.
    #[serde(default)]
    pub validation: ValidationConfig,
}

/// `[proxy]`: the listener and the data path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// `host:port` to accept PostgreSQL clients on: an IP address (IPv6 in brackets,
    /// `[::1]:6432`) or a host name such as `localhost`; port 0 lets the OS pick one.
    /// Default `127.0.0.1:6432`.
    pub listen: String,
    /// Database name that opens the admin console instead of a backend. Default `pgshift`.
    pub admin_database: String,
    /// I/O threads serving client sessions (each a single-threaded runtime; a session stays
    /// on one thread); 0 = half the CPU cores, at least 1 (the proxy usually shares the host
    /// with its clients or a server). Default 0.
    pub workers: usize,
    /// Largest client message accepted, in bytes (PostgreSQL's own limit is 1 GiB - 1).
    /// Larger ones get SQLSTATE 08P01 and the connection closes. Default 256 MiB.
    pub max_message_bytes: usize,
    /// Timeout for connecting and authenticating to a backend, in ms. Default 5000.
    pub connect_timeout_ms: u64,
    /// Timeout for a client to finish its startup and authentication, in ms. Default 15000.
    pub client_login_timeout_ms: u64,
    /// `[proxy.tls]`: TLS to clients. Default: off (`SSLRequest` answered `N`).
    pub tls: ClientTlsConfig,
    /// Most client sessions at once (admin console sessions not counted); past it a login
    /// is refused with SQLSTATE 53300 "sorry, too many clients already". Default 5000.
    pub max_client_connections: usize,
    /// One memory budget, in bytes, for what all client sessions together buffer beyond a
    /// fixed 64 KiB each: client messages that must be read whole (Query, Parse, Bind
    /// larger than 64 KiB), and the copies of units that features keep (the replay copy of
    /// a shifted unit, mirroring's copy, the `mirror` driver's copy). Past it a session
    /// waits (a large message is not read, a recorded write unit reads no more) and, after
    /// `memory_wait_ms`, is ended with SQLSTATE 53200 when that loses nothing; replay and
    /// mirroring copies are dropped instead of waiting. At least `max_message_bytes`.
    /// Default 1073741824 (1 GiB).
    pub session_memory_bytes: usize,
    /// How long a session waits for the memory budget before it is ended with SQLSTATE
    /// 53200 "out of memory", in ms. Default 10000.
    pub memory_wait_ms: u64,
}

/// How the proxy treats clients' TLS (`[proxy.tls] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientTlsMode {
    /// `SSLRequest` is answered `N`; direct TLS connections are closed.
    #[default]
    Disable,
    /// TLS when the client asks for it (`SSLRequest` or PostgreSQL 17's direct TLS), plain
    /// otherwise.
    Allow,
    /// Plain clients are refused with SQLSTATE 28000, as PostgreSQL refuses a connection that
    /// only a `hostssl` line of `pg_hba.conf` would accept.
    Require,
}

/// `[proxy.tls]`: TLS between clients and pgshift (PostgreSQL docs 19.9 "Secure TCP/IP
/// Connections with SSL", 53.2.10 "SSL Session Encryption"). Certificate and key are read at
/// start-up and again on SIGHUP; a bad file on reload keeps the previous ones.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTlsConfig {
    /// `disable` (default), `allow` or `require`. `allow` and `require` need `cert` and `key`.
    pub mode: ClientTlsMode,
    /// PEM file with the server certificate, then any intermediate certificates.
    pub cert: Option<PathBuf>,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1); keep it 0600.
    pub key: Option<PathBuf>,
    /// PEM file of the CA certificates that sign client certificates. When set, every client
    /// must present a certificate signed by one of them whose Common Name is the user name it
    /// logs in as (PostgreSQL's `clientcert=verify-full`), in addition to its password
    /// method; needs `mode = "require"`.
    pub client_ca: Option<PathBuf>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:6432".into(),
            admin_database: "pgshift".into(),
            workers: 0,
            max_message_bytes: 256 * 1024 * 1024,
            connect_timeout_ms: 5000,
            client_login_timeout_ms: 15000,
            tls: ClientTlsConfig::default(),
            max_client_connections: 5000,
            session_memory_bytes: 1 << 30,
            memory_wait_ms: 10_000,
        }
    }
}

/// `[http]`: the HTTP server: `GET /metrics` (Prometheus), `GET /progress`, `GET /health`,
/// `GET /clients`, `GET /servers`, `GET /databases`, `POST /upgrade/{start,cutover,rollback}`.
///
/// Every endpoint except those in [`public`](Self::public) needs `Authorization: Bearer
/// <token>` when a token is configured (`token` or `token_file`). Without a token the
/// endpoints that change or reveal anything ([`SENSITIVE_ENDPOINTS`]) answer 403, and the
/// server must listen on a loopback address (validation refuses any other).
///
/// `Debug` prints `token: Some("***")`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `host:port` to serve HTTP on, in the forms of `proxy.listen`; an empty string disables
    /// the HTTP server. Default `127.0.0.1:9187`.
    pub listen: String,
    /// The bearer token clients send (`Authorization: Bearer <token>`): visible ASCII
    /// (`!` to `~`, no spaces), not empty. Exclusive with `token_file`. Default: none.
    pub token: Option<String>,
    /// A file holding the token (surrounding white space, e.g. a final newline, is ignored).
    /// Read at start-up; start-up is refused when the file is readable by its group or by
    /// others (keep it 0600 or 0400). Exclusive with `token`. Default: none.
    pub token_file: Option<PathBuf>,
    /// Endpoints served without a token (exact paths). Default `["/metrics", "/health"]`;
    /// the endpoints of [`SENSITIVE_ENDPOINTS`] cannot be listed.
    pub public: Vec<String>,
    /// `[http.tls]`: HTTPS instead of HTTP on `listen`. Default: off (plain HTTP).
    pub tls: HttpTlsConfig,
}

/// `[http.tls]`: HTTPS for the HTTP server, with the same rustls set-up and PEM formats as
/// `[proxy.tls]`. With `cert` and `key` set, `listen` speaks only TLS (1.2 or 1.3, ALPN
/// `http/1.1`): a plain HTTP request there fails its handshake. The files are read at
/// start-up and again on SIGHUP (a file that does not load then keeps the previous set-up,
/// and connections already open keep theirs). TLS does not replace the token: the rules of
/// `[http]` (token, `public`, loopback without a token) are the same over HTTPS.
///
/// Errors: at validation, `cert` without `key` (or the reverse), `client_ca` without them,
/// or an empty path; at start-up (refused, naming the key and the file, never the key's
/// content), a file that cannot be read or parsed, a certificate that does not match its
/// key, and a `key` file that its group or others may read.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HttpTlsConfig {
    /// PEM file with the server certificate, then any intermediate certificates. Clients
    /// check it against the name or address they connect to (e.g. `127.0.0.1` or
    /// `localhost` for `pgshift status` on a wildcard `listen`). Default: none (plain HTTP).
    pub cert: Option<PathBuf>,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1). Start-up is
    /// refused when its group or others may read it (keep it 0600 or 0400, as `token_file`).
    /// Required with `cert`. Default: none.
    pub key: Option<PathBuf>,
    /// PEM file of the CA certificates that sign client certificates. When set, every
    /// client must present a certificate signed by one of them, else the TLS handshake is
    /// refused (mutual TLS; no name in the certificate is checked). Needs `cert` and `key`.
    /// Default: none (no client certificate asked for).
    pub client_ca: Option<PathBuf>,
}

impl HttpTlsConfig {
    /// Whether HTTPS is configured (`cert` and `key` set; validation refuses one alone).
    pub fn enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }
}

/// Every endpoint of the HTTP server, by path.
pub const HTTP_ENDPOINTS: &[&str] = &[
    "/metrics",
    "/progress",
    "/health",
    "/clients",
    "/servers",
    "/databases",
    "/upgrade/start",
    "/upgrade/cutover",
    "/upgrade/rollback",
];

/// The endpoints that change the upgrade or reveal who is connected: never public, and
/// answered 403 when no token is configured.
pub const SENSITIVE_ENDPOINTS: &[&str] = &[
    "/clients",
    "/upgrade/start",
    "/upgrade/cutover",
    "/upgrade/rollback",
];

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9187".into(),
            token: None,
            token_file: None,
            public: vec!["/metrics".into(), "/health".into()],
            tls: HttpTlsConfig::default(),
        }
    }
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field("token", &masked(&self.token))
            .field("token_file", &self.token_file)
            .field("public", &self.public)
            .field("tls", &self.tls)
            .finish()
    }
}

impl HttpConfig {
    /// The address to serve on, or `None` when the HTTP server is disabled (`listen = ""`).
    pub fn listen_addr(&self) -> Option<&str> {
        Some(self.listen.as_str()).filter(|l| !l.is_empty())
    }

    /// Whether a token is configured (`token` or `token_file`; the file is not read).
    pub fn has_token(&self) -> bool {
        self.token.is_some() || self.token_file.is_some()
    }

    /// The configured token: `token`, or the content of `token_file` (trimmed), or `None`.
    ///
    /// Errors (naming the file, never its content): the file cannot be read, is readable by
    /// its group or others (mode & 0o077 != 0), is empty, or holds a character outside
    /// visible ASCII.
    pub fn resolve_token(&self) -> Result<Option<String>, String> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        read_token_file(path).map(Some)
    }
}

/// Reads a token file: see [`HttpConfig::resolve_token`].
fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("[http] token_file {shown}: {e}"))?;
    let mode = file
        .metadata()
        .map_err(|e| format!("[http] token_file {shown}: {e}"))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "[http] token_file {shown} has mode {:04o}: it must not be readable by its group or \
             others (chmod 600 it)",
            mode & 0o7777
        ));
    }
    let mut text = String::new();
    file.take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| format!("[http] token_file {shown}: {e}"))?;
    let token = text.trim();
    check_token(token).map_err(|why| format!("[http] token_file {shown}: the token {why}"))?;
    Ok(token.to_string())
}

/// A token is one or more visible ASCII characters (`!` to `~`): it goes in an HTTP header.
pub(crate) fn check_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("is empty");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("may only hold visible ASCII characters (`!` to `~`, no spaces)");
    }
    Ok(())
}

/// `[journal]`: where the upgrade state is kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// SQLite file. Default `./data/pgshift.db`; its directory is created if missing.
    pub path: PathBuf,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            path: PathBuf::from("./data/pgshift.db"),
        }
    }
}

/// `[source]` / `[target]`: one PostgreSQL server and database, with the control-plane
/// credentials (a superuser, or a role with REPLICATION and ownership of the tables).
///
/// `Debug` prints `password: Some("***")` and redacts the password inside
/// `replication_conninfo`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Host name or IP address of the server. Required, non-empty.
    pub host: String,
    /// TCP port, 1-65535. Default 5432.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Database name. Required, non-empty.
    pub dbname: String,
    /// Control-plane user (replication setup, preflight, sequence sync). Required, non-empty.
    pub user: String,
    /// Password of `user`; none when the server trusts it (or uses a `.pgpass`). Default none.
    #[serde(default)]
    pub password: Option<String>,
    /// AWS Secrets Manager secret holding `password` instead (ARN or name): the secret
    /// string itself, or the `password` of a JSON secret such as the RDS-managed master
    /// secret (`{"username": ..., "password": ...}`). Read at start and again when a login
    /// with it fails (a rotation). Not with `password`. Default none.
    #[serde(default)]
    pub password_secret: Option<String>,
    /// libpq conninfo the *other* server uses to reach this one for replication
    /// (subscriptions are made from it). Default: built from host, port, dbname, user, password.
    #[serde(default)]
    pub replication_conninfo: Option<String>,
    /// TLS to this server, as libpq's `sslmode` (PostgreSQL docs 34.19 "SSL Support"):
    /// `disable`, `prefer` (default), `require`, `verify-ca`, `verify-full`. Used by every
    /// connection pgshift makes to it: sessions' backends, the control plane, the mirror
    /// workers and applier, `pg_dump`/`psql`, and the default `replication_conninfo`.
    #[serde(default)]
    pub sslmode: SslMode,
    /// PEM file of the CA certificates that sign the server's certificate. Needed by
    /// `verify-ca` and `verify-full`; with `require` it makes the mode `verify-ca`, as libpq.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// PEM client certificate to present to the server (with `sslkey`). Default none.
    #[serde(default)]
    pub sslcert: Option<PathBuf>,
    /// PEM private key of `sslcert`.
    #[serde(default)]
    pub sslkey: Option<PathBuf>,
    /// Authentication methods pgshift accepts when this server asks for one, as libpq's
    /// `require_auth`: `scram-sha-256`, `md5`, `password` (cleartext, and only over TLS),
    /// `none` (the server asks for nothing). Default `["scram-sha-256"]`: a server that asks
    /// for anything else is refused before any password is sent.
    #[serde(default = "default_server_auth")]
    pub auth: Vec<ServerAuth>,
    /// `[target.provision]`: pgshift makes this server (initdb, pg_ctl) before the upgrade.
    /// `[source.provision]`: where the source's data directory and binaries are, so that
    /// DecommissionSource can stop it. Default none.
    #[serde(default)]
    pub provision: Option<ProvisionConfig>,
}

/// libpq's `sslmode` (PostgreSQL docs 34.19.1, table 34.1 "SSL Mode Descriptions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server has it, plain TCP when it answers `N`; the certificate is not checked.
    #[default]
    Prefer,
    /// TLS or fail; the certificate is not checked (unless `sslrootcert` is given: verify-ca).
    Require,
    /// TLS, certificate signed by `sslrootcert`.
    VerifyCa,
    /// TLS, certificate signed by `sslrootcert` and naming the host.
    VerifyFull,
}

impl SslMode {
    /// The libpq keyword: `disable`, `prefer`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// An authentication method a server may ask for (`[source] auth`), as libpq's
/// `require_auth` names them (PostgreSQL docs 34.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerAuth {
    /// SCRAM-SHA-256.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5 password hash.
    Md5,
    /// Cleartext password; accepted only over TLS.
    Password,
    /// No authentication (`trust`).
    None,
}

impl ServerAuth {
    /// The `require_auth` keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerAuth::ScramSha256 => "scram-sha-256",
            ServerAuth::Md5 => "md5",
            ServerAuth::Password => "password",
            ServerAuth::None => "none",
        }
    }
}

fn default_server_auth() -> Vec<ServerAuth> {
    vec![ServerAuth::ScramSha256]
}

/// Server providers (TOML: lower-case name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// `initdb` / `pg_ctl` on this machine, with the binaries of the requested major.
    #[default]
    Local,
    /// An Amazon RDS for PostgreSQL instance, made with the RDS API (aws-sdk-rds).
    Rds,
}

/// One `postgresql.conf` value in `[*.provision] settings`: a string, an integer, a float or a
/// boolean (written to the file as PostgreSQL reads them).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SettingValue {
    /// `on` / `off`.
    Bool(bool),
    /// A number without unit.
    Int(i64),
    /// A number with a fraction.
    Float(f64),
    /// Anything else (`'256MB'`, `'pgoutput'`...), quoted in the file.
    Text(String),
}

impl SettingValue {
    /// The value as a `postgresql.conf` right-hand side (strings quoted, `'` doubled).
    pub fn to_conf(&self) -> String {
        match self {
            SettingValue::Bool(b) => if *b { "on" } else { "off" }.to_string(),
            SettingValue::Int(i) => i.to_string(),
            SettingValue::Float(f) => f.to_string(),
            SettingValue::Text(t) => format!("'{}'", t.replace('\\', "\\\\").replace('\'', "''")),
        }
    }

    /// The value unquoted, as an RDS parameter group takes it (`1`, `on`, `pgactive`).
    pub fn to_plain(&self) -> String {
        match self {
            SettingValue::Text(t) => t.clone(),
            SettingValue::Bool(b) => if *b { "1" } else { "0" }.to_string(),
            other => other.to_conf(),
        }
    }
}

/// `[target.provision]` / `[source.provision]`: a server pgshift makes or manages: on this
/// machine with the `local` provider, or an Amazon RDS instance with `rds`
/// (`[target.provision]` only).
///
/// The keys of one provider are refused with the other (validation names them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionConfig {
    /// Default `local`.
    #[serde(default)]
    pub provider: Provider,
    /// PostgreSQL major version of the server, 10 to 18. Required for `local`; for `rds` it
    /// is `engine_version`'s major (and must agree with it when given).
    #[serde(default)]
    pub major: Option<u32>,
    /// `local`: directory of `initdb`, `pg_ctl` and `postgres`. Default: the first of
    /// `PATH`, `/usr/lib/postgresql/<major>/bin`, `/usr/pgsql-<major>/bin` whose
    /// `postgres --version` is of `major`.
    #[serde(default)]
    pub bindir: Option<PathBuf>,
    /// `local`: data directory. For `[target.provision]` pgshift creates it (it must not
    /// exist, or be one pgshift made earlier); for `[source.provision]` it is the running
    /// source's. Required for `local`.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// `local`: operating-system user the server runs as (`initdb`, `pg_ctl`). Required when
    /// pgshift runs as root (PostgreSQL refuses root); otherwise default: pgshift's own user.
    #[serde(default)]
    pub run_as: Option<String>,
    /// `local`: extra `postgresql.conf` settings for a provisioned server, applied after
    /// pgshift's own (`listen_addresses`, `port`, `wal_level = logical`...). Default none.
    #[serde(default)]
    pub settings: std::collections::BTreeMap<String, SettingValue>,
    /// `rds`: the source's DB instance identifier (DescribeDBInstances). Every instance
    /// setting below defaults to this instance's own. Required for `rds`.
    #[serde(default)]
    pub source_db_instance_id: Option<String>,
    /// `rds`: the engine version to create, e.g. `"17.4"`. Required for `rds`.
    #[serde(default)]
    pub engine_version: Option<String>,
    /// `rds`: identifier of the new instance. Default `<source_db_instance_id>-pg<major>`.
    #[serde(default)]
    pub db_instance_id: Option<String>,
    /// `rds`: AWS region. Default: the usual AWS environment and configuration
    /// (`AWS_REGION`, the profile's `region`).
    #[serde(default)]
    pub region: Option<String>,
    /// `rds`: named profile of `~/.aws/config` for credentials and region. Default: the
    /// usual chain (`AWS_PROFILE`, environment keys, instance role...).
    #[serde(default)]
    pub profile: Option<String>,
    /// `rds`: the AWS API endpoint, `http://` or `https://` (for tests against moto, or a
    /// VPC endpoint). Default: the region's public endpoint (or `AWS_ENDPOINT_URL`).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// `rds`: instance class, e.g. `db.r6g.large`. Default: the source's.
    #[serde(default)]
    pub instance_class: Option<String>,
    /// `rds`: `gp2`, `gp3`, `io1`, `io2`... Default: the source's.
    #[serde(default)]
    pub storage_type: Option<String>,
    /// `rds`: allocated storage in GiB. Default: the source's.
    #[serde(default)]
    pub allocated_storage_gb: Option<i32>,
    /// `rds`: provisioned IOPS (io1, io2, gp3). Default: the source's.
    #[serde(default)]
    pub iops: Option<i32>,
    /// `rds`: storage throughput in MiB/s (gp3). Default: the source's.
    #[serde(default)]
    pub storage_throughput: Option<i32>,
    /// `rds`: DB subnet group name. Default: the source's.
    #[serde(default)]
    pub db_subnet_group: Option<String>,
    /// `rds`: VPC security group ids. Default: the source's.
    #[serde(default)]
    pub vpc_security_group_ids: Option<Vec<String>>,
    /// `rds`: Multi-AZ. Default: the source's.
    #[serde(default)]
    pub multi_az: Option<bool>,
    /// `rds`: automated backup retention in days (0-35). Default: the source's.
    #[serde(default)]
    pub backup_retention_days: Option<i32>,
    /// `rds`: KMS key for storage encryption (id, ARN or alias). Default: the source's
    /// (an encrypted source gives an encrypted target).
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// `rds`: tags of the new instance, added to the source's own. Default none.
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// `rds`: DB parameter group pgshift creates for the target (family
    /// `postgres<major>`). Default `pgshift-<db_instance_id>`.
    #[serde(default)]
    pub parameter_group: Option<String>,
    /// `rds`: extra parameters of that group, after the source's custom ones and the
    /// driver's. Default none.
    #[serde(default)]
    pub parameters: std::collections::BTreeMap<String, SettingValue>,
    /// `rds`: whether ConfigureParams may change the source's parameters (logical
    /// replication, pgactive) and reboot the source for them. Default false: preflight
    /// names the parameter group and the values to set.
    #[serde(default)]
    pub allow_source_reboot: bool,
    /// `rds`: whether ROLLBACK UPGRADE before the cutover takes a final snapshot of the
    /// instance it deletes. Default false.
    #[serde(default)]
    pub final_snapshot_on_rollback: bool,
    /// `rds`: first interval, in ms, between two DescribeDBInstances while waiting for
    /// `available` (doubled up to 6 times that). Default 10000.
    #[serde(default = "default_rds_poll_ms")]
    pub wait_poll_ms: u64,
    /// `rds`: longest wait, in ms, for an instance or snapshot to become available.
    /// Default 7200000 (2 h).
    #[serde(default = "default_rds_wait_ms")]
    pub wait_timeout_ms: u64,
    /// `rds`: attempts of one API call refused for throttling or capacity
    /// (`InsufficientDBInstanceCapacity`) before the step fails. Default 6.
    #[serde(default = "default_rds_attempts")]
    pub api_attempts: u32,
    /// `rds`: first backoff, in ms, between two such attempts (doubled each time).
    /// Default 2000.
    #[serde(default = "default_rds_backoff_ms")]
    pub api_backoff_ms: u64,
}

/// Defaults of `wait_poll_ms`, `wait_timeout_ms`, `api_attempts`, `api_backoff_ms`.
pub(crate) const RDS_POLL_MS: u64 = 10_000;
pub(crate) const RDS_WAIT_MS: u64 = 7_200_000;
pub(crate) const RDS_ATTEMPTS: u32 = 6;
pub(crate) const RDS_BACKOFF_MS: u64 = 2_000;

fn default_rds_poll_ms() -> u64 {
    RDS_POLL_MS
}
fn default_rds_wait_ms() -> u64 {
    RDS_WAIT_MS
}
fn default_rds_attempts() -> u32 {
    RDS_ATTEMPTS
}
fn default_rds_backoff_ms() -> u64 {
    RDS_BACKOFF_MS
}

impl ProvisionConfig {
    /// The server's major: `major`, else `engine_version`'s (`"17.4"` → 17); 0 when neither
    /// says (refused by validation).
    pub fn major(&self) -> u32 {
        self.major
            .or_else(|| {
                self.engine_version
                    .as_deref()
                    .and_then(|v| v.split('.').next()?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// `data_dir`, or an empty path when not given (refused by validation for `local`).
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_default()
    }
}

fn default_pg_port() -> u16 {
    5432
}

/// How a client proves who it is to pgshift (TOML: `"scram-sha-256"`, `"md5"`, `"trust"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthMethod {
    /// `"scram-sha-256"`: SCRAM-SHA-256 (the default, and PostgreSQL's).
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// `"md5"`: the legacy MD5 challenge.
    #[serde(rename = "md5")]
    Md5,
    /// `"trust"`: no password asked.
    #[serde(rename = "trust")]
    Trust,
}

/// `[[users]]`: one login accepted by pgshift.
///
/// `Debug` prints `password: Some("***")` / `server_password: Some("***")`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Login name clients give in their startup message. Required, non-empty, unique.
    pub name: String,
    /// Plain-text password clients authenticate with (required unless `auth = "trust"`, or
    /// given by `password_secret`).
    #[serde(default)]
    pub password: Option<String>,
    /// AWS Secrets Manager secret (ARN or name) holding `password` (its string, or the
    /// `password` of a JSON secret), read at start. Not with `password`. Default none.
    #[serde(default)]
    pub password_secret: Option<String>,
    /// Default `scram-sha-256`.
    #[serde(default = "default_auth")]
    pub auth: AuthMethod,
    /// User pgshift logs in as on the backends. Default: `name`.
    #[serde(default)]
    pub server_user: Option<String>,
    /// Password for `server_user` on the backends. Default: `password`.
    #[serde(default)]
    pub server_password: Option<String>,
    /// AWS Secrets Manager secret (ARN or name) holding `server_password`, as
    /// `[source] password_secret`: read at start and again when a backend login with it
    /// fails (a rotation). Not with `server_password`. Default none.
    #[serde(default)]
    pub server_password_secret: Option<String>,
    /// May open the admin console (database `proxy.admin_database`). Admin users never
    /// reach a backend. Default false.
    #[serde(default)]
    pub admin: bool,
    /// Most sessions of this user at once (as a role's CONNECTION LIMIT); past it a login is
    /// refused with SQLSTATE 53300. Default: no limit of its own.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

fn default_auth() -> AuthMethod {
    AuthMethod::ScramSha256
}

/// `[upgrade]`: the plan (ValidateInput → ProvisionTarget → ConfigureParams →
/// InstallExtension → InitReplication → WaitForSync → (ShiftTraffic n → HealthCheck n)* →
/// Cutover → DetachOld → DecommissionSource) and the cutover protocol.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpgradeConfig {
    /// How long a cutover or rollback waits for open transactions to finish, in ms. When it
    /// passes, the switch is abandoned and traffic resumes on the side it was on. Default 10000.
    pub drain_timeout_ms: u64,
    /// How long a switch waits for the new side to apply the old side's current LSN, in ms.
    /// Default 30000.
    pub catchup_timeout_ms: u64,
    /// Interval of replication state polls (sync, lag), in ms. Default 500.
    pub poll_interval_ms: u64,
    /// Start the upgrade (replication setup) as soon as `pgshift serve` starts. Default false.
    pub auto_start: bool,
    /// Weighted shift steps before the cutover, in percent of eligible traffic; each step adds
    /// to the previous (`[25, 25, 50]` = 25, 50, then 100 % on the target). Each 1-100, sum at
    /// most 100. Default `[]`: no shift steps.
    pub shift: Vec<u32>,
    /// How long each shift step holds (health checks running) before its HealthCheck passes,
    /// in ms. Also the time after the cutover during which a failing check rolls back to the
    /// source. Default 60000.
    pub shift_hold_ms: u64,
    /// Stop before the Cutover step until `INITIATE CUTOVER`. Default false: the plan runs to
    /// the end unattended.
    pub approve_cutover: bool,
    /// DecommissionSource stops the source server (`pg_ctl stop`, needs `[source.provision]`).
    /// Never deletes data. Default false: the step records that it skipped.
    pub decommission_source: bool,
    /// Where DecommissionSource writes a `pg_dump -Fc` of the source before stopping it (each
    /// other carried database to `<final_dump>.<database>`).
    /// Default none.
    pub final_dump: Option<PathBuf>,
    /// Days the upgrade history (steps, signals, errors) is kept in the journal. Default 90.
    pub history_retention_days: u32,
    /// Attempts of a plan step whose failure may pass (lost connection, timeout) before the
    /// plan stops in state `error`. Default 5.
    pub max_attempts: u32,
    /// First retry delay, in ms; doubled per attempt (with jitter) up to `backoff_max_ms`.
    /// Default 1000.
    pub backoff_initial_ms: u64,
    /// Largest retry delay, in ms. Default 60000.
    pub backoff_max_ms: u64,
    /// What a switch does about client sessions that hold state it cannot carry to another
    /// server (temporary tables, session advisory locks, `WITH HOLD` cursors) once they
    /// still do after `drain_timeout_ms`: `"refuse"` (default: the switch is abandoned,
    /// naming them) or `"terminate"` (they end with FATAL 57P01 when they move).
    pub pinned: PinnedPolicy,
    /// A switch pauses traffic only once the new side is at most this many bytes of WAL
    /// behind the old one (waiting up to `catchup_timeout_ms`), so the catch-up inside the
    /// pause is short. Default 262144 (256 KiB).
    pub pause_lag_bytes: u64,
    /// START UPGRADE refuses while a transaction has been open on the source for longer
    /// than this, in ms (or a prepared transaction waits that long): creating a logical
    /// replication slot waits for every transaction running at that moment. Default 300000.
    pub long_transaction_ms: u64,
    /// What pgshift does with DDL (`CREATE`, `ALTER`, `DROP`, `COMMENT`, `GRANT`, `REVOKE`,
    /// ...; `TRUNCATE` too with the pgactive driver) sent through it while a logical-decoding
    /// driver replicates (from the schema copy until DetachOld or a rollback removes the
    /// replication): `"block"` (default: refused with SQLSTATE 55000 and the reason; logical
    /// replication carries no DDL, so a schema change on one side would stop the apply or
    /// leave a table unreplicated), `"replicate"` (pgactive driver with
    /// `pgactive.skip_ddl_replication = off` on both nodes: pgactive runs each DDL statement
    /// on every node; blocked until the target has joined) or `"allow"` (forwarded, with a warning in
    /// the log). The `mirror` driver replays DDL with the rest and ignores this.
    pub ddl: DdlPolicy,
    /// The source databases the upgrade carries (each with its own schema copy, publication
    /// and subscription, switched together under one pause). `[source] dbname` is always
    /// carried (added when the list leaves it out). Default: absent = every database of the
    /// source instance that accepts connections (`datallowconn`), except templates and
    /// `rdsadmin`; only `[source] dbname` when source and target are the same host and port
    /// (two databases of one server). On the target each database keeps its name, except
    /// `[source] dbname`, which becomes `[target] dbname`. The `mirror` driver carries
    /// `[source] dbname` only.
    pub databases: Option<Vec<String>>,
    /// `[upgrade.timeouts]`: how long each plan step may take.
    pub timeouts: StepTimeouts,
}

/// `[upgrade] pinned` (TOML: `"refuse"`, `"terminate"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PinnedPolicy {
    /// The switch waits for them, then is abandoned; traffic stays where it is.
    #[default]
    Refuse,
    /// The switch waits for them, then goes on; they end when they would move.
    Terminate,
}

/// `[upgrade] ddl` (TOML: `"block"`, `"replicate"`, `"allow"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DdlPolicy {
    /// Refused (SQLSTATE 55000) while replication runs.
    #[default]
    Block,
    /// Run on every node by the pgactive driver's DDL replication.
    Replicate,
    /// Forwarded to the serving side only, with a warning in the log.
    Allow,
}

impl DdlPolicy {
    /// The TOML word.
    pub fn as_str(self) -> &'static str {
        match self {
            DdlPolicy::Block => "block",
            DdlPolicy::Replicate => "replicate",
            DdlPolicy::Allow => "allow",
        }
    }
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        UpgradeConfig {
            drain_timeout_ms: 10000,
            catchup_timeout_ms: 30000,
            poll_interval_ms: 500,
            auto_start: false,
            shift: Vec::new(),
            shift_hold_ms: 60000,
            approve_cutover: false,
            decommission_source: false,
            final_dump: None,
            history_retention_days: 90,
            max_attempts: 5,
            backoff_initial_ms: 1000,
            backoff_max_ms: 60000,
            pinned: PinnedPolicy::Refuse,
            pause_lag_bytes: 256 * 1024,
            long_transaction_ms: 300_000,
            ddl: DdlPolicy::Block,
            databases: None,
            timeouts: StepTimeouts::default(),
        }
    }
}

/// `[upgrade.timeouts]`: the longest each plan step may take, in ms, retries included.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StepTimeouts {
    /// ValidateInput. Default 30000 (30 s).
    pub validate_input_ms: u64,
    /// ProvisionTarget. Default 900000 (15 min).
    pub provision_target_ms: u64,
    /// ConfigureParams. Default 300000 (5 min).
    pub configure_params_ms: u64,
    /// InstallExtension. Default 180000 (3 min).
    pub install_extension_ms: u64,
    /// InitReplication (schema copy, publications, subscription). Default 1800000 (30 min).
    pub init_replication_ms: u64,
    /// WaitForSync (initial copy). Default 86400000 (24 h).
    pub wait_for_sync_ms: u64,
    /// One ShiftTraffic step. Default 600000 (10 min).
    pub shift_traffic_ms: u64,
    /// One HealthCheck step (on top of its hold). Default 300000 (5 min).
    pub health_check_ms: u64,
    /// Cutover. Default 60000 (1 min).
    pub cutover_ms: u64,
    /// DetachOld. Default 300000 (5 min).
    pub detach_old_ms: u64,
    /// DecommissionSource (final dump included). Default 600000 (10 min).
    pub decommission_source_ms: u64,
}

impl Default for StepTimeouts {
    fn default() -> Self {
        StepTimeouts {
            validate_input_ms: 30_000,
            provision_target_ms: 900_000,
            configure_params_ms: 300_000,
            install_extension_ms: 180_000,
            init_replication_ms: 1_800_000,
            wait_for_sync_ms: 86_400_000,
            shift_traffic_ms: 600_000,
            health_check_ms: 300_000,
            cutover_ms: 60_000,
            detach_old_ms: 300_000,
            decommission_source_ms: 600_000,
        }
    }
}

/// What a failing health check does to traffic before the cutover (TOML: `"previous"`,
/// `"source"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Back to the previous shift step's weight.
    #[default]
    Previous,
    /// Everything back on the source (weight 0).
    Source,
}

/// `[health]`: checks run while traffic is shifted to the target and for `shift_hold_ms`
/// after the cutover.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// How often the checks run, in ms. Default 1000.
    pub interval_ms: u64,
    /// Window the rates are computed over, in ms. Default 10000.
    pub window_ms: u64,
    /// Fewer target transactions than this in the window: no verdict on rates. Default 20.
    pub min_transactions: u64,
    /// Largest fraction (0-1) of target transactions ending in an error. Default 0.01.
    pub max_error_rate: f64,
    /// Largest target p99 latency / source p99 latency (judged only with at least 100
    /// transactions per side in the window). Default 3.0.
    pub max_p99_ratio: f64,
    /// Largest replication lag in bytes. Default 67108864 (64 MiB).
    pub max_lag_bytes: u64,
    /// Largest replication lag in seconds. Default 30.0.
    pub max_lag_seconds: f64,
    /// How long the lag may stay above a limit before the plan stops shifting (state
    /// `alert`), in ms. Default 30000.
    pub lag_grace_ms: u64,
    /// Where traffic goes when a check fails before the cutover: `previous` step's weight
    /// (default) or all on the `source`. After the cutover a failing check rolls back to the
    /// source.
    pub on_failure: OnFailure,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: 1000,
            window_ms: 10000,
            min_transactions: 20,
            max_error_rate: 0.01,
            max_p99_ratio: 3.0,
            max_lag_bytes: 67_108_864,
            max_lag_seconds: 30.0,
            lag_grace_ms: 30000,
            on_failure: OnFailure::Previous,
        }
    }
}

/// Which statements the mirror copies to the target (TOML: `"reads"`, `"dml"`, `"all"`).
/// Each level includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MirrorLevel {
    /// Read-only statements: replayed on the target, results compared.
    #[default]
    Reads,
    /// Reads, plus DML (`INSERT`, `UPDATE`, `DELETE`, `MERGE`): dry-run on the target
    /// (`BEGIN; statement; ROLLBACK`) while replication carries the data, and compared on
    /// command tag, rows affected and `RETURNING` rows.
    Dml,
    /// Every statement, DDL and utility statements included (dry-run where PostgreSQL allows
    /// the statement in a transaction block).
    All,
}

impl MirrorLevel {
    /// The TOML spelling: `reads`, `dml`, `all`.
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorLevel::Reads => "reads",
            MirrorLevel::Dml => "dml",
            MirrorLevel::All => "all",
        }
    }
}

/// `[mirror]`: copies client traffic to the target off the client's path, through a bounded
/// queue, and compares what the target answers with what the source answered. A full queue,
/// or a slow or dead target, never slows or fails a client: the mirror sheds work and counts
/// what it shed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorConfig {
    /// Copy traffic to the target and compare the results. Default false.
    pub enabled: bool,
    /// Fraction (0-1) of transactions mirrored, decided once per transaction. Default 1.0.
    pub sample_rate: f64,
    /// Which statements are mirrored. Default `reads`.
    pub level: MirrorLevel,
    /// Capacity of the bounded queue between client sessions and the mirror workers, in
    /// statements (at least 1). When it is full, new work is shed (counted), never waited
    /// for. Default 1000.
    pub queue_length: usize,
    /// Connections to the target that the mirror keeps (one per worker), 1-64. Default 2.
    pub connections: u32,
    /// `lock_timeout` of the mirror's dry-runs on the target, in ms: a dry-run never waits
    /// longer than this on a lock, so it never holds up replication apply. Default 100.
    pub lock_timeout_ms: u64,
    /// `statement_timeout` of mirrored statements on the target, in ms. Default 5000.
    pub statement_timeout_ms: u64,
    /// A difference is checked again once the target has applied the source's WAL position
    /// (LSN) of the moment the statement ran; how long to wait for that, at most, in ms.
    /// Default 5000.
    pub recheck_timeout_ms: u64,
    /// Answers larger than this, in bytes, on either side are not compared (skipped,
    /// counted). 1 to 1073741824 (1 GiB). Default 1048576 (1 MiB).
    pub max_answer_bytes: u64,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            enabled: false,
            sample_rate: 1.0,
            level: MirrorLevel::Reads,
            queue_length: 1000,
            connections: 2,
            lock_timeout_ms: 100,
            statement_timeout_ms: 5000,
            recheck_timeout_ms: 5000,
            max_answer_bytes: 1_048_576,
        }
    }
}

/// `[validation]`: how the mirror's comparison results gate the cutover. The cutover
/// (`INITIATE CUTOVER`, or the plan's Cutover step, which waits) is refused while the
/// validation error rate is above `error_threshold`, or before `min_duration_ms` of clean
/// mirrored traffic. Only with `[mirror] enabled`: without mirrored traffic there is nothing
/// to judge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Largest fraction (0-1) of compared statements that may differ or fail only on the
    /// target (0.001 = 0.1 %) for a cutover to start. Default 0.001.
    pub error_threshold: f64,
    /// Mirrored traffic with the error rate at or below `error_threshold` needed before a
    /// cutover, in ms; 0 = no minimum. Default 300000 (5 min).
    pub min_duration_ms: u64,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            error_threshold: 0.001,
            min_duration_ms: 300_000,
        }
    }
}

/// Replication drivers (TOML: lower-case name, e.g. `"logical"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// Native logical replication (publication / subscription).
    #[default]
    Logical,
    /// Proxy-side capture, for sources without logical decoding (older than 9.4, or
    /// `wal_level` below `logical`): a snapshot-consistent parallel `COPY`
    /// (`pg_export_snapshot`) started at the instant the proxy starts recording every
    /// committed write transaction into an on-disk queue (`queue_dir`), which pgshift then
    /// applies on the other side in the source's commit order, exactly once.
    Mirror,
    /// Native logical replication both ways at once (PostgreSQL 16 or later on both
    /// servers): publications on both, the forward subscription with `origin = none` and
    /// `copy_data = true`, the reverse one with `origin = none` and `copy_data = false`
    /// once the initial copy is done (PostgreSQL docs, "CREATE SUBSCRIPTION", `origin`).
    /// Writes may reach either server; each target sequence draws from a range of its own
    /// ([`ReplicationConfig::sequence_gap`]); a switch needs no reverse set-up.
    Bidirectional,
    /// AWS's pgactive extension (active-active logical replication, github.com/aws/pgactive):
    /// a group created on the source, the target joined to it
    /// ([`ReplicationConfig::pgactive_join`]); both directions replicate at once, so writes
    /// may reach either server, each target sequence draws from a range of its own
    /// ([`ReplicationConfig::sequence_gap`]) and a switch needs no reverse set-up. Both
    /// servers need `shared_preload_libraries` with `pgactive` and
    /// `track_commit_timestamp = on`; pgshift connects to them as a superuser (on Amazon RDS
    /// `rds_superuser`, with `rds.enable_pgactive = 1`).
    Pgactive,
}

impl Driver {
    /// The TOML name: `logical`, `mirror`, `bidirectional` or `pgactive`.
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Logical => "logical",
            Driver::Mirror => "mirror",
            Driver::Bidirectional => "bidirectional",
            Driver::Pgactive => "pgactive",
        }
    }

    /// Whether both directions replicate at once (writes may go to either server).
    pub fn both_ways(self) -> bool {
        matches!(self, Driver::Bidirectional | Driver::Pgactive)
    }
}

/// How the target joins the source's pgactive group (`[replication] pgactive_join`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PgactiveJoin {
    /// `pgactive_join_group(..., data_only_node_init := true)` after pgshift's own schema
    /// copy (`pg_dump --schema-only` of the configured `pg_dump`): pgactive copies only the
    /// rows. The default: pgactive's bundled dump of the schema copies server-internal
    /// column options (`pg_attver`) that a newer major rejects at restore, and a failed
    /// join leaves the target needing manual clean-up.
    #[default]
    DataOnly,
    /// A full logical join: pgactive dumps and restores schema and rows itself (the
    /// target's database must hold no user tables; pgshift's schema copy is skipped).
    Full,
}

impl PgactiveJoin {
    /// The TOML name: `data_only` or `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            PgactiveJoin::DataOnly => "data_only",
            PgactiveJoin::Full => "full",
        }
    }
}

/// `[replication]`: how data moves between source and target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Which driver moves the data. Default `logical`.
    pub driver: Driver,
    /// Prefix of every object pgshift creates (publications, subscriptions, slots): a
    /// lower-case SQL identifier, `[a-z_][a-z0-9_]*`, at most 40 characters (PostgreSQL names
    /// are limited to 63 bytes and pgshift appends suffixes). Default `pgshift`.
    pub object_prefix: String,
    /// Copy the schema (`pg_dump --schema-only` | `psql`) before subscribing. Default true.
    pub copy_schema: bool,
    /// `pg_dump` binary; must be of the source's major or newer. Default `pg_dump`.
    pub pg_dump: PathBuf,
    /// `psql` binary used to restore the schema. Default `psql`.
    pub psql: PathBuf,
    /// `mirror` driver: parallel `COPY` jobs of the initial copy (1 to 64). Default 4.
    pub copy_jobs: u32,
    /// `mirror` driver: directory of the on-disk queue of captured write transactions
    /// (segments of 64 MiB, removed once applied). Default `./data/mirror-queue`.
    pub queue_dir: PathBuf,
    /// `mirror` driver: most captured transactions the applier sends before reading their
    /// answers, ended by one commit that waits for the WAL flush (1 to 1024; 1: one round
    /// trip and one flush per transaction). Default 64.
    pub apply_batch: u32,
    /// `bidirectional` and `pgactive` drivers: how far ahead of the source's position each target sequence
    /// is moved before any write can reach the target (after the initial copy), so that the
    /// two servers draw from ranges of their own and no value is drawn twice. Must exceed
    /// what the source draws until the cutover; checked against the draw rate seen during
    /// the initial copy. 1000 to 2^62. Default 100000000.
    pub sequence_gap: i64,
    /// `bidirectional` and `pgactive` drivers: a conflict or apply error on either side
    /// (`pg_stat_subscription_stats.apply_error_count`; pgactive's conflict history and its
    /// workers' last error) halts the plan (traffic back to the previous weight, plan
    /// paused, the reason shown). `false` only logs it. Default true.
    pub halt_on_conflict: bool,
    /// `pgactive` driver: how the target joins the group. Default `data_only`.
    pub pgactive_join: PgactiveJoin,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            driver: Driver::Logical,
            object_prefix: "pgshift".into(),
            copy_schema: true,
            pg_dump: PathBuf::from("pg_dump"),
            psql: PathBuf::from("psql"),
            copy_jobs: 4,
            queue_dir: PathBuf::from("./data/mirror-queue"),
            apply_batch: 64,
            sequence_gap: 100_000_000,
            halt_on_conflict: true,
            pgactive_join: PgactiveJoin::DataOnly,
        }
    }
}

impl ServerConfig {
    /// libpq key/value conninfo for this server, quoting values as libpq requires
    /// (PostgreSQL docs, "Connection Strings", 34.1.1). Contains the password: pass it
    /// through [`redact_conninfo`] before logging it.
    pub fn conninfo(&self) -> String {
        fn q(v: &str) -> String {
            format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
        }
        let mut s = format!(
            "host={} port={} dbname={} user={}",
            q(&self.host),
            self.port,
            q(&self.dbname),
            q(&self.user)
        );
        if let Some(p) = &self.password {
            s.push_str(&format!(" password={}", q(p)));
        }
        s.push_str(&format!(" sslmode={}", self.sslmode.as_str()));
        for (k, v) in [
            ("sslrootcert", &self.sslrootcert),
            ("sslcert", &self.sslcert),
            ("sslkey", &self.sslkey),
        ] {
            if let Some(v) = v {
                s.push_str(&format!(" {k}={}", q(&v.to_string_lossy())));
            }
        }
        s
    }

    /// libpq's environment for `pg_dump`/`psql` run against this server (PostgreSQL docs
    /// 34.15 "Environment Variables"): `PGSSLMODE`, and `PGSSLROOTCERT`, `PGSSLCERT`,
    /// `PGSSLKEY` when set. No password: that goes in `PGPASSWORD` by the caller.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("PGSSLMODE", self.sslmode.as_str().to_string())];
        for (k, v) in [
            ("PGSSLROOTCERT", &self.sslrootcert),
            ("PGSSLCERT", &self.sslcert),
            ("PGSSLKEY", &self.sslkey),
        ] {
            if let Some(v) = v {
                env.push((k, v.to_string_lossy().into_owned()));
            }
        }
        env
    }

    /// The conninfo the other server uses to reach this one for replication
    /// (`replication_conninfo`, else [`ServerConfig::conninfo`]). May contain the password.
    pub fn replication_conninfo(&self) -> String {
        self.replication_conninfo
            .clone()
            .unwrap_or_else(|| self.conninfo())
    }
}

impl UserConfig {
    /// The user pgshift logs in as on the backends: `server_user`, else `name`.
    pub fn server_user(&self) -> &str {
        self.server_user.as_deref().unwrap_or(&self.name)
    }
    /// The password pgshift gives the backends: `server_password`, else `password`.
    pub fn server_password(&self) -> Option<&str> {
        self.server_password.as_deref().or(self.password.as_deref())
    }
}

/// `Some("***")` for a present secret, `None` otherwise: what `Debug` shows of a password.
fn masked(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "***")
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &masked(&self.password))
            .field("password_secret", &self.password_secret)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("sslcert", &self.sslcert)
            .field("sslkey", &self.sslkey)
            .field("auth", &self.auth)
            .field(
                "replication_conninfo",
                &self.replication_conninfo.as_deref().map(redact_conninfo),
            )
            .field("provision", &self.provision)
            .finish()
    }
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password", &masked(&self.password))
            .field("auth", &self.auth)
            .field("server_user", &self.server_user)
            .field("password_secret", &self.password_secret)
            .field("server_password", &masked(&self.server_password))
            .field("server_password_secret", &self.server_password_secret)
            .field("admin", &self.admin)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}
