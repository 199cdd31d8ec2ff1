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
    /// `[upgrade]`: timing of the cutover protocol.
    #[serde(default)]
    pub upgrade: UpgradeConfig,
    /// `[replication]`: how data moves between source and target.
    #[serde(default)]
    pub replication: ReplicationConfig,
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
        }
    }
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
    /// libpq conninfo the *other* server uses to reach this one for replication
    /// (subscriptions are made from it). Default: built from host, port, dbname, user, password.
    #[serde(default)]
    pub replication_conninfo: Option<String>,
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
    /// Plain-text password clients authenticate with (required unless `auth = "trust"`).
    #[serde(default)]
    pub password: Option<String>,
    /// Default `scram-sha-256`.
    #[serde(default = "default_auth")]
    pub auth: AuthMethod,
    /// User pgshift logs in as on the backends. Default: `name`.
    #[serde(default)]
    pub server_user: Option<String>,
    /// Password for `server_user` on the backends. Default: `password`.
    #[serde(default)]
    pub server_password: Option<String>,
    /// May open the admin console (database `proxy.admin_database`). Admin users never
    /// reach a backend. Default false.
    #[serde(default)]
    pub admin: bool,
}

fn default_auth() -> AuthMethod {
    AuthMethod::ScramSha256
}

/// `[upgrade]`: timing of the cutover protocol.
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
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        UpgradeConfig {
            drain_timeout_ms: 10000,
            catchup_timeout_ms: 30000,
            poll_interval_ms: 500,
            auto_start: false,
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
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            driver: Driver::Logical,
            object_prefix: "pgshift".into(),
            copy_schema: true,
            pg_dump: PathBuf::from("pg_dump"),
            psql: PathBuf::from("psql"),
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
        s
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
            .field(
                "replication_conninfo",
                &self.replication_conninfo.as_deref().map(redact_conninfo),
            )
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
            .field("server_password", &masked(&self.server_password))
            .field("admin", &self.admin)
            .finish()
    }
}
