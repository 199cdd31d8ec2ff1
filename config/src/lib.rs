//! Typed pgshift configuration (TOML).
//!
//! Shapes only here; loading (`${VAR:-default}` substitution, parsing, validation with
//! file:line errors) lives in [`load`].

use serde::Deserialize;
use std::path::PathBuf;

mod load;
pub use load::{load_file, load_str, ConfigError};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub journal: JournalConfig,
    /// The database being upgraded (old major).
    pub source: ServerConfig,
    /// The database being upgraded to (new major).
    pub target: ServerConfig,
    /// Users that clients log in as. At least one; admin users may open the admin console.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub upgrade: UpgradeConfig,
    #[serde(default)]
    pub replication: ReplicationConfig,
}

/// `[proxy]`: the listener and the data path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// `host:port` to accept PostgreSQL clients on. Default `127.0.0.1:6432`.
    pub listen: String,
    /// Database name that opens the admin console instead of a backend. Default `pgshift`.
    pub admin_database: String,
    /// Tokio worker threads; 0 = one per core. Default 0.
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
        JournalConfig { path: PathBuf::from("./data/pgshift.db") }
    }
}

/// `[source]` / `[target]`: one PostgreSQL server and database, with the control-plane
/// credentials (a superuser, or a role with REPLICATION and ownership of the tables).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    pub dbname: String,
    /// Control-plane user (replication setup, preflight, sequence sync).
    pub user: String,
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

/// How a client proves who it is to pgshift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthMethod {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "trust")]
    Trust,
}

/// `[[users]]`: one login accepted by pgshift.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
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
        UpgradeConfig { drain_timeout_ms: 10000, catchup_timeout_ms: 30000, poll_interval_ms: 500, auto_start: false }
    }
}

/// Replication drivers.
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
    pub driver: Driver,
    /// Prefix of every object pgshift creates (publications, subscriptions, slots). Default `pgshift`.
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
    /// (PostgreSQL docs, "Connection Strings", 34.1.1).
    pub fn conninfo(&self) -> String {
        fn q(v: &str) -> String {
            format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
        }
        let mut s = format!("host={} port={} dbname={} user={}", q(&self.host), self.port, q(&self.dbname), q(&self.user));
        if let Some(p) = &self.password {
            s.push_str(&format!(" password={}", q(p)));
        }
        s
    }

    /// The conninfo the other server uses to reach this one for replication.
    pub fn replication_conninfo(&self) -> String {
        self.replication_conninfo.clone().unwrap_or_else(|| self.conninfo())
    }
}

impl UserConfig {
    pub fn server_user(&self) -> &str {
        self.server_user.as_deref().unwrap_or(&self.name)
    }
    pub fn server_password(&self) -> Option<&str> {
        self.server_password.as_deref().or(self.password.as_deref())
    }
}
