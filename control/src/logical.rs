//! The `logical` replication driver: native PostgreSQL logical replication (publications,
//! subscriptions, replication slots) between the source and the target, plus the schema copy
//! (`pg_dump | psql`) and the sequence sync that logical replication does not do.
//!
//! Objects (all named from `replication.object_prefix`, `<p>` below, default `pgshift`):
//!
//! | direction | publication (on publisher) | subscription (on subscriber) | slot (on publisher) |
//! |-----------|----------------------------|------------------------------|---------------------|
//! | forward: source → target | `<p>_pub` on source | `<p>_fwd` on target | `<p>_fwd` on source |
//! | reverse: target → source | `<p>_rev_pub` on target | `<p>_rev` on source | `<p>_rev` on target |
//!
//! FORCE RESYNC TABLE adds, for the time it runs, publication `<p>_resync_pub` on the source
//! (see [`Logical::resync_exclude`] for the method).
//!
//! Every operation looks first (`pg_publication`, `pg_subscription`, `pg_replication_slots`), so
//! repeating it after a crash does no harm and never meets a duplicate-object error.
//!
//! Forward and reverse replication never run at the same time: PostgreSQL 13 cannot filter
//! changes by origin, so a change applied by one subscription would be sent back by the other.
//!
//! Connections: tokio-postgres over TCP without TLS, as the control-plane user of
//! [`config::ServerConfig`] (a superuser: publications `FOR ALL TABLES`, subscriptions and
//! `pg_terminate_backend` of replication workers need it).

use crate::Side;
use config::{Config, ServerConfig};
use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;

/// A driver failure. `transient` marks failures worth retrying unchanged (lost connection,
/// server starting or shutting down, an object briefly in use); the rest need a change first.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DriverError {
    /// What failed, naming the server and the object.
    pub message: String,
    /// Retrying the same operation later may succeed.
    pub transient: bool,
}

impl DriverError {
    /// A permanent failure.
    pub fn new(message: impl Into<String>) -> DriverError {
        DriverError {
            message: message.into(),
            transient: false,
        }
    }
    /// A failure worth retrying unchanged.
    pub fn temporary(message: impl Into<String>) -> DriverError {
        DriverError {
            message: message.into(),
            transient: true,
        }
    }
}

type Result<T, E = DriverError> = std::result::Result<T, E>;

mod checks;
mod pgactive;
mod resync;
mod snapshot;
pub use pgactive::{status_words, Health as PgactiveHealth, NodeState, Requirement};
pub use resync::ResyncPlan;
pub use snapshot::{CopyReport, ExportedSnapshot};

/// Formats a tokio-postgres error with the server's message, SQLSTATE, detail and hint, and
/// classifies it (see [`DriverError::transient`]).
pub fn pg_error(context: &str, e: &tokio_postgres::Error) -> DriverError {
    match e.as_db_error() {
        Some(db) => {
            let mut m = format!(
                "{context}: {} (SQLSTATE {})",
                db.message(),
                db.code().code()
            );
            if let Some(d) = db.detail() {
                m.push_str(&format!("; detail: {d}"));
            }
            if let Some(h) = db.hint() {
                m.push_str(&format!("; hint: {h}"));
            }
            let code = db.code().code();
            // Class 08 connection exception, 57P01-57P03 shutdown/cannot connect now,
            // 53300 too many connections, 55006 object in use (e.g. a slot still held by an
            // exiting walsender), 40001/40P01 serialization failure/deadlock.
            let transient = code.starts_with("08")
                || matches!(
                    code,
                    "57P01" | "57P02" | "57P03" | "53300" | "55006" | "40001" | "40P01"
                );
            DriverError {
                message: m,
                transient,
            }
        }
        None => {
            let mut m = format!("{context}: {e}");
            let mut src = std::error::Error::source(e);
            while let Some(s) = src {
                m.push_str(&format!(": {s}"));
                src = s.source();
            }
            DriverError::temporary(m)
        }
    }
}

/// Replication direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Source → target (before cutover).
    Forward,
    /// Target → source (after cutover, so a rollback loses nothing).
    Reverse,
}

impl Direction {
    /// The side whose changes are sent (holds the publication and the slot).
    pub fn publisher(self) -> Side {
        match self {
            Direction::Forward => Side::Source,
            Direction::Reverse => Side::Target,
        }
    }
    /// The side that applies them (holds the subscription).
    pub fn subscriber(self) -> Side {
        self.publisher().other()
    }
    /// The other direction.
    pub fn reverse(self) -> Direction {
        match self {
            Direction::Forward => Direction::Reverse,
            Direction::Reverse => Direction::Forward,
        }
    }
    /// The journal's spelling: `forward` / `reverse`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        }
    }
    /// Parses the journal's spelling; `none` and anything else give `None`.
    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "forward" => Some(Direction::Forward),
            "reverse" => Some(Direction::Reverse),
            _ => None,
        }
    }
}

/// The first `n` of `items`, comma-separated, then `(and k more)`: a list in a message.
pub fn summarise(items: &[String], n: usize) -> String {
    let mut s = items.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > n {
        s.push_str(&format!(" (and {} more)", items.len() - n));
    }
    s
}

/// Names of the objects pgshift creates, from `replication.object_prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// `<p>` itself (node names of the `pgactive` driver: `<p>_source`, `<p>_target`).
    pub prefix: String,
    /// `<p>_pub`: publication FOR ALL TABLES on the source.
    pub publication: String,
    /// `<p>_fwd`: subscription on the target, and its slot on the source.
    pub forward: String,
    /// `<p>_rev_pub`: publication FOR ALL TABLES on the target.
    pub reverse_publication: String,
    /// `<p>_rev`: subscription on the source, and its slot on the target.
    pub reverse: String,
    /// `<p>_resync_pub`: publication on the source that FORCE RESYNC TABLE points the forward
    /// subscription at for a moment: every table of `<p>_pub` except the ones re-copied (see
    /// [`Logical::resync_exclude`]). Dropped when the resync is done.
    pub resync_publication: String,
}

impl Names {
    /// Names for `prefix`.
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
            publication: format!("{prefix}_pub"),
            forward: format!("{prefix}_fwd"),
            reverse_publication: format!("{prefix}_rev_pub"),
            reverse: format!("{prefix}_rev"),
            resync_publication: format!("{prefix}_resync_pub"),
        }
    }
    /// Subscription (and slot) name of a direction.
    pub fn subscription(&self, d: Direction) -> &str {
        match d {
            Direction::Forward => &self.forward,
            Direction::Reverse => &self.reverse,
        }
    }
    /// Publication name of a direction.
    pub fn publication(&self, d: Direction) -> &str {
        match d {
            Direction::Forward => &self.publication,
            Direction::Reverse => &self.reverse_publication,
        }
    }
}

/// SQL identifier quoting (PostgreSQL docs 4.1.1, "Identifiers and Key Words").
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// SQL string literal quoting for a server with `standard_conforming_strings = on` (the
/// driver sets it on every connection). PostgreSQL docs 4.1.2.1.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Result of the preflight checks.
#[derive(Debug, Clone, Default)]
pub struct Preflight {
    /// Every problem found, each saying what to change. Empty = good to go.
    pub failures: Vec<String>,
    /// Facts worth recording (versions, sequences to sync at cutover).
    pub notes: Vec<String>,
    /// Source major version (e.g. 13; 9 for any 9.x), if reachable.
    pub source_major: Option<u32>,
    /// The source's `server_version_num` (e.g. 90624 for 9.6.24, 130022 for 13.22), if
    /// reachable: before 10 the major is two numbers, which `source_major` cannot tell apart.
    pub source_version: Option<i32>,
    /// Target major version, if reachable.
    pub target_major: Option<u32>,
    /// Sequences of the source (`schema.name`), synced to the target at cutover.
    pub sequences: Vec<String>,
}

/// Replication lag as seen on the publisher.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    /// `pg_current_wal_lsn() - confirmed_flush_lsn` of the slot on the publisher, in bytes: WAL
    /// the subscriber has not yet confirmed as applied and flushed (PostgreSQL docs, "pg_replication_slots").
    pub bytes: Option<i64>,
    /// `pg_stat_replication.replay_lag` of the walsender serving the subscription
    /// (`application_name` = subscription name), in seconds (PostgreSQL docs 28.2.3 /
    /// "pg_stat_replication"): time between a commit on the publisher and the subscriber's
    /// report that it applied it. PostgreSQL shows NULL there once an idle subscriber has caught
    /// up; that is reported as 0.0. `None` when no walsender streams for the subscription.
    pub seconds: Option<f64>,
}

/// Initial-copy progress of a subscription (`pg_subscription_rel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncProgress {
    /// Tables in state `r` (ready) or `s` (synchronised).
    pub ready: u64,
    /// Tables of the subscription.
    pub total: u64,
    /// Up to 10 tables still copying, as `schema.table (state)`.
    pub pending: Vec<String>,
}

impl SyncProgress {
    /// Every table is synchronised.
    pub fn done(&self) -> bool {
        self.ready == self.total
    }
}

/// What the catch-up barrier saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The slot's `confirmed_flush_lsn` on the publisher (applied and flushed on the subscriber).
    pub confirmed_flush: Option<u64>,
    /// `pg_stat_replication.replay_lsn` of the walsender (applied on the subscriber; the apply
    /// worker commits with `synchronous_commit = off`, so this runs ahead of `confirmed_flush`).
    pub replay: Option<u64>,
}

impl Applied {
    /// The furthest position known applied.
    pub fn position(&self) -> Option<u64> {
        match (self.confirmed_flush, self.replay) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Formats an LSN as PostgreSQL does (`X/XXXXXXXX`).
pub fn fmt_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// The schemas of the application's objects: not the system's, and not `pgactive` (the
/// pgactive extension's per-node state, made by `CREATE EXTENSION` on each node: never
/// copied, replicated or synced).
const USER_SCHEMA: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgactive') AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp_'";

/// What the other databases carried by the same upgrade take from the same two servers, for
/// the preflight's capacity checks: slots, WAL senders and workers are per instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Every slot (and subscription) name of the upgrade on both servers: not counted as
    /// used by others.
    pub slots: Vec<String>,
    /// How many databases the upgrade carries (>= 1).
    pub databases: usize,
}

/// The logical replication driver for one source/target pair of databases.
#[derive(Clone)]
pub struct Logical {
    source: ServerConfig,
    target: ServerConfig,
    names: Names,
    instance: Instance,
    pg_dump: std::path::PathBuf,
    psql: std::path::PathBuf,
    copy_schema: bool,
    server_users: Vec<(String, String)>,
    connect_timeout: Duration,
    /// Both directions replicate at once (`[replication] driver = "bidirectional"`): every
    /// subscription is made with `origin = none`.
    both_ways: bool,
    /// `[replication] driver = "pgactive"`: the slots are pgactive's (one per peer, of
    /// plugin `pgactive`), and health comes from its workers and conflict history.
    pgactive: bool,
    /// `[upgrade] ddl = "replicate"` with the pgactive driver: both nodes need
    /// `pgactive.skip_ddl_replication = off`.
    pgactive_ddl: bool,
    /// `[upgrade] long_transaction_ms`.
    long_transaction_ms: u64,
}

impl Logical {
    /// A driver for the servers, names and tools of `cfg`.
    pub fn new(cfg: &Config) -> Logical {
        let names = Names::new(&cfg.replication.object_prefix);
        Logical {
            source: cfg.source.clone(),
            target: cfg.target.clone(),
            instance: Instance {
                slots: vec![names.forward.clone(), names.reverse.clone()],
                databases: 1,
            },
            names,
            pg_dump: cfg.replication.pg_dump.clone(),
            psql: cfg.replication.psql.clone(),
            // A full pgactive join copies the schema itself (into a database without tables).
            copy_schema: cfg.replication.copy_schema
                && !(cfg.replication.driver == config::Driver::Pgactive
                    && cfg.replication.pgactive_join == config::PgactiveJoin::Full),
            // Admin users only open the console: they never log in to a server.
            server_users: cfg
                .users
                .iter()
                .filter(|u| !u.admin)
                .map(|u| (u.name.clone(), u.server_user().to_string()))
                .collect(),
            connect_timeout: Duration::from_millis(cfg.proxy.connect_timeout_ms.max(1000)),
            both_ways: cfg.replication.driver.both_ways(),
            pgactive: cfg.replication.driver == config::Driver::Pgactive,
            pgactive_ddl: cfg.replication.driver == config::Driver::Pgactive
                && cfg.upgrade.ddl == config::DdlPolicy::Replicate,
            long_transaction_ms: cfg.upgrade.long_transaction_ms,
        }
    }

    /// `, origin = none` when both directions replicate at once: a subscription then applies
    /// only changes made on its publisher, not the ones the publisher applied from the other
    /// direction, so nothing loops (PostgreSQL 16+; docs "CREATE SUBSCRIPTION", `origin`).
    fn origin_option(&self) -> &'static str {
        if self.both_ways {
            ", origin = none"
        } else {
            ""
        }
    }

    /// Object names.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The same servers, tools and users for another pair of databases: `source_db` on the
    /// source, `target_db` on the target, with its own object `names` (slot names are
    /// per instance, so each database needs its own).
    pub fn for_database(&self, source_db: &str, target_db: &str, names: Names) -> Logical {
        let mut d = self.clone();
        d.source.dbname = source_db.to_string();
        d.target.dbname = target_db.to_string();
        d.instance.slots = vec![names.forward.clone(), names.reverse.clone()];
        d.names = names;
        d
    }

    /// Tells the preflight what the upgrade's other databases take from the same servers.
    pub fn set_instance(&mut self, instance: Instance) {
        self.instance = instance;
    }

    /// The database this driver replicates on `side` (`[source] dbname`, `[target] dbname`
    /// for the primary one).
    pub fn database(&self, side: Side) -> &str {
        &self.server(side).dbname
    }

    /// Whether source and target are the same host and port (two databases of one server).
    pub fn same_server(&self) -> bool {
        self.source.host == self.target.host && self.source.port == self.target.port
    }

    /// The source's databases an upgrade of the whole instance carries: every database that
    /// accepts connections (`pg_database.datallowconn`), except templates and `rdsadmin`
    /// (Amazon RDS's own), in name order (PostgreSQL docs, "pg_database").
    pub async fn instance_databases(&self) -> Result<Vec<String>> {
        let c = self.connect(Side::Source).await?;
        let rows = c
            .query(
                "SELECT datname::text FROM pg_database
                  WHERE NOT datistemplate AND datallowconn AND datname <> 'rdsadmin'
                  ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| {
                pg_error(
                    &format!("{}: listing databases", self.label(Side::Source)),
                    &e,
                )
            })?;
        rows.iter().map(|r| r.col(0)).collect()
    }

    /// Which of `names` exist as databases on `side`.
    pub async fn existing_databases(
        &self,
        side: Side,
        names: &[String],
    ) -> Result<HashSet<String>> {
        let c = self.connect(side).await?;
        let rows = c
            .query(
                "SELECT datname::text FROM pg_database WHERE datname = ANY($1::text[])",
                &[&names],
            )
            .await
            .map_err(|e| pg_error(&format!("{}: listing databases", self.label(side)), &e))?;
        rows.iter().map(|r| r.col(0)).collect()
    }

    /// Whether the target user may create databases (`rolcreatedb` or superuser).
    pub async fn target_may_create_databases(&self) -> Result<bool> {
        let c = self.connect(Side::Target).await?;
        let r = c
            .query_one(
                "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(|e| {
                pg_error(
                    &format!("{}: reading the role", self.label(Side::Target)),
                    &e,
                )
            })?;
        r.col(0)
    }

    /// Creates database `db` on the target unless it exists, like the source's: same encoding,
    /// `LC_COLLATE` and `LC_CTYPE`, from `template0`, owned by the source database's owner
    /// when that role exists on the target (PostgreSQL docs, "CREATE DATABASE"). Connects
    /// through this driver's own databases (which must exist). Returns what was done.
    pub async fn ensure_target_database(&self, db: &str) -> Result<String> {
        let src = self.connect(Side::Source).await?;
        let tgt = self.connect(Side::Target).await?;
        let exists = tgt
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
            .await
            .map_err(|e| {
                pg_error(
                    &format!("{}: looking for database {db}", self.label(Side::Target)),
                    &e,
                )
            })?;
        if exists.is_some() {
            return Ok(format!("database {db} exists on the target"));
        }
        let r = src
            .query_one(
                "SELECT pg_encoding_to_char(d.encoding)::text, d.datcollate::text, d.datctype::text, r.rolname::text
                   FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = $1",
                &[&db],
            )
            .await
            .map_err(|e| pg_error(&format!("{}: reading database {db}", self.label(Side::Source)), &e))?;
        let (encoding, collate, ctype, owner): (String, String, String, String) =
            (r.col(0)?, r.col(1)?, r.col(2)?, r.col(3)?);
        let owner_exists = tgt
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&owner])
            .await
            .map_err(|e| {
                pg_error(
                    &format!("{}: looking for role {owner}", self.label(Side::Target)),
                    &e,
                )
            })?
            .is_some();
        let mut sql = format!(
            "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            quote_ident(db),
            quote_literal(&encoding),
            quote_literal(&collate),
            quote_literal(&ctype)
        );
        if owner_exists {
            sql.push_str(&format!(" OWNER {}", quote_ident(&owner)));
        }
        tgt.batch_execute(&sql).await.map_err(|e| {
            pg_error(
                &format!(
                    "{}: CREATE DATABASE {db} (encoding {encoding}, LC_COLLATE {collate}, LC_CTYPE {ctype})",
                    self.label(Side::Target)
                ),
                &e,
            )
        })?;
        Ok(format!(
            "database {db} created on the target (encoding {encoding}, LC_COLLATE {collate}, LC_CTYPE {ctype}{})",
            if owner_exists {
                format!(", owner {owner}")
            } else {
                format!(", owner the target user: role {owner} does not exist there")
            }
        ))
    }

    /// Whether the plan copies the schema (`replication.copy_schema`).
    pub fn copy_schema_enabled(&self) -> bool {
        self.copy_schema
    }

    fn server(&self, side: Side) -> &ServerConfig {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }

    /// `source (host:port/db)`, for messages. Never includes the password.
    pub fn label(&self, side: Side) -> String {
        let s = self.server(side);
        format!("{} ({}:{}/{})", side.as_str(), s.host, s.port, s.dbname)
    }

    /// Opens a control-plane connection to `side` (TLS per its `sslmode`, login checked
    /// against its `auth`, `application_name = pgshift-control`,
    /// `standard_conforming_strings = on`; see [`crate::connect`]).
    pub async fn connect(&self, side: Side) -> Result<Client> {
        let s = self.server(side);
        crate::connect::connect(
            s,
            &s.dbname,
            self.connect_timeout,
            &format!("{}: cannot connect as {}", self.label(side), s.user),
        )
        .await
    }

    // ----------------------------------------------------------------------------------
    // Preflight
    // ----------------------------------------------------------------------------------

    /// Checks everything the plan needs on both servers and collects every failure (not only
    /// the first). See the module docs of [`crate::controller`] for the list.
    pub async fn preflight(&self) -> Preflight {
        self.preflight_scope(true).await
    }

    /// [`preflight`](Self::preflight), or with `target = false` the source and the tools only
    /// (the target does not exist yet: pgshift provisions it). `sync_workers` of the target is
    /// then taken as PostgreSQL's default, 2.
    pub async fn preflight_scope(&self, target: bool) -> Preflight {
        let mut out = Preflight::default();
        let ours: Vec<String> = self.instance.slots.clone();

        let src = match self.connect(Side::Source).await {
            Ok(c) => Some(c),
            Err(e) => {
                out.failures.push(format!(
                    "{}; check [source] host, port, dbname, user and password",
                    e.message
                ));
                None
            }
        };
        let tgt = match if target {
            Some(self.connect(Side::Target).await)
        } else {
            None
        } {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                out.failures.push(format!(
                    "{}; check [target] host, port, dbname, user and password",
                    e.message
                ));
                None
            }
        };

        // The target's max_sync_workers_per_subscription decides how many extra slots and
        // walsenders the initial copy takes on the source (PostgreSQL docs 31.10, "Configuration Settings").
        let mut sync_workers: i64 = 2;
        let mut src_sysid: Option<(String, String)> = None;
        let mut source_tables: Vec<String> = Vec::new();
        if let Some(t) = &tgt {
            if let Ok(r) = t
                .query_one(
                    "SELECT current_setting('max_sync_workers_per_subscription')::int8",
                    &[],
                )
                .await
            {
                sync_workers = r.col(0).unwrap_or(sync_workers);
            }
        }

        if let Some(c) = &src {
            if let Err(e) = self
                .preflight_source(
                    c,
                    &ours,
                    sync_workers,
                    &mut out,
                    &mut src_sysid,
                    &mut source_tables,
                )
                .await
            {
                out.failures.push(e.message);
            }
        }
        if let Some(c) = &tgt {
            if let Err(e) = self
                .preflight_target(c, src.as_ref(), &ours, sync_workers, &src_sysid, &mut out)
                .await
            {
                out.failures.push(e.message);
            }
        }
        if let Some(c) = &src {
            // What logical replication does not carry, and what its slot waits for.
            if out.source_version.is_some_and(|v| v >= 100000) {
                if let Err(e) = self.preflight_not_carried(c, &mut out).await {
                    out.failures.push(e.message);
                }
            }
            if let Some(t) = &tgt {
                if let Err(e) = self.preflight_extensions(c, t, &mut out).await {
                    out.failures.push(e.message);
                }
            }
        }
        if let (Some(s), Some(t)) = (out.source_major, out.target_major) {
            if t < s {
                out.failures.push(format!(
                    "target: major version {t} is older than the source's {s}; the target must run the same or a newer major"
                ));
            }
        }
        if self.copy_schema {
            self.preflight_tools(out.source_major, &mut out).await;
        }
        out
    }

    async fn preflight_source(
        &self,
        c: &Client,
        ours: &[String],
        sync_workers: i64,
        out: &mut Preflight,
        sysid: &mut Option<(String, String)>,
        tables: &mut Vec<String>,
    ) -> Result<()> {
        let ctx = |what: &str| format!("source: {what}");
        let version = server_version_num(c)
            .await
            .map_err(|e| pg_error(&ctx("reading server_version_num"), &e))?;
        let major = (version / 10000) as u32;
        out.source_major = Some(major);
        out.source_version = Some(version);
        out.notes.push(format!(
            "source: PostgreSQL {} (server_version_num {version})",
            version_label(version)
        ));
        if version >= 100000 {
            self.preflight_source_replication(c, ours, sync_workers, out, sysid)
                .await?;
        } else {
            // Before 10 the settings and views the logical driver checks are missing
            // (max_logical_replication_workers is 10+, docs "Logical Replication ›
            // Configuration Settings"; pg_replication_slots and max_replication_slots 9.4+,
            // docs "pg_replication_slots"): only what exists is read. The system identifier
            // (pg_control_system(), 9.6+, docs "System Information Functions › Control Data
            // Functions") tells the source from the target; older servers go without that
            // check (a target of another major is another server anyway).
            let (wal_level, db, sid): (String, String, Option<String>) = if version >= 90600 {
                let r = c
                    .query_one(
                        "SELECT current_setting('wal_level'), current_database()::text,
                                (SELECT system_identifier::text FROM pg_control_system())",
                        &[],
                    )
                    .await
                    .map_err(|e| pg_error(&ctx("reading settings"), &e))?;
                (r.col(0)?, r.col(1)?, Some(r.col(2)?))
            } else {
                let r = c
                    .query_one(
                        "SELECT current_setting('wal_level'), current_database()::text",
                        &[],
                    )
                    .await
                    .map_err(|e| pg_error(&ctx("reading settings"), &e))?;
                (r.col(0)?, r.col(1)?, None)
            };
            out.failures.push(format!(
                "source: PostgreSQL {} has no native logical replication (publications and subscriptions are PostgreSQL 10+); \
                 set [replication] driver = \"mirror\" (wal_level is '{wal_level}')",
                version_label(version)
            ));
            *sysid = sid.map(|s| (s, db));
        }

        if version < 100000 {
            // No native logical replication to check a replica identity for (and no
            // relreplident / indisreplident before 9.4): the tables only. relkind 'p'
            // (partitioned, 10+) cannot occur.
            let rows = c
                .query(
                    &format!(
                        "SELECT n.nspname::text, c.relname::text
                           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE c.relkind = 'r' AND c.relpersistence = 'p' AND {USER_SCHEMA}
                          ORDER BY 1, 2"
                    ),
                    &[],
                )
                .await
                .map_err(|e| pg_error(&ctx("listing tables"), &e))?;
            for row in &rows {
                tables.push(format!(
                    "{}.{}",
                    quote_ident_min(&row.col::<String>(0)?),
                    quote_ident_min(&row.col::<String>(1)?)
                ));
            }
            out.notes.push(format!("source: {} tables", tables.len()));
        } else {
            self.preflight_source_identity(c, out, tables).await?;
        }

        // pg_sequences is PostgreSQL 10+; before, the catalog (see `sequence_values_catalog`).
        let catalog = catalog_sequences_sql();
        let seqs = c
            .query(
                if version >= 100000 {
                    "SELECT schemaname::text, sequencename::text FROM pg_sequences WHERE schemaname <> 'pgactive' ORDER BY 1, 2"
                } else {
                    &catalog
                },
                &[],
            )
            .await
            .map_err(|e| pg_error(&ctx("listing sequences"), &e))?;
        out.sequences = seqs
            .iter()
            .map(|r| {
                Ok(format!(
                    "{}.{}",
                    quote_ident_min(&r.col::<String>(0)?),
                    quote_ident_min(&r.col::<String>(1)?)
                ))
            })
            .collect::<Result<_>>()?;
        if !out.sequences.is_empty() {
            out.notes.push(format!(
                "source: {} sequences, synced to the target at cutover: {}",
                out.sequences.len(),
                out.sequences.join(", ")
            ));
        }
        Ok(())
    }

    /// Replica identity of the source's tables (PostgreSQL 10+, native logical replication):
    /// UPDATE and DELETE of a published table need a primary key or a replica identity
    /// (PostgreSQL docs 31.1, "Publication"; ALTER TABLE ... REPLICA IDENTITY).
    async fn preflight_source_identity(
        &self,
        c: &Client,
        out: &mut Preflight,
        tables: &mut Vec<String>,
    ) -> Result<()> {
        let ctx = |what: &str| format!("source: {what}");
        let rows = c
            .query(
                &format!(
                    "SELECT n.nspname::text, c.relname::text, c.relkind::text, c.relreplident::text,
                            EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                            EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)
                       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' AND {USER_SCHEMA}
                      ORDER BY 1, 2"
                ),
                &[],
            )
            .await
            .map_err(|e| pg_error(&ctx("listing tables"), &e))?;
        let mut no_identity = 0;
        for row in &rows {
            let (schema, name, kind, ident): (String, String, String, String) =
                (row.col(0)?, row.col(1)?, row.col(2)?, row.col(3)?);
            let (has_pk, has_ri): (bool, bool) = (row.col(4)?, row.col(5)?);
            let q = format!("{}.{}", quote_ident_min(&schema), quote_ident_min(&name));
            tables.push(q.clone());
            if kind != "r" {
                continue; // partitioned parents hold no rows; their partitions are checked
            }
            let bad = match ident.as_str() {
                "d" => !has_pk,
                "n" => true,
                "i" => !has_ri,
                _ => false, // 'f' = FULL
            };
            if bad {
                no_identity += 1;
                let why = match ident.as_str() {
                    "n" => "has REPLICA IDENTITY NOTHING",
                    "i" => "has REPLICA IDENTITY USING INDEX but that index is gone",
                    _ => "has no primary key",
                };
                out.failures.push(format!(
                    "source: table {q} {why}; add a primary key, or ALTER TABLE {q} REPLICA IDENTITY USING INDEX <unique index on NOT NULL columns> (or REPLICA IDENTITY FULL)"
                ));
            }
        }
        out.notes.push(format!(
            "source: {} tables, {no_identity} without a usable replica identity",
            tables.len()
        ));
        Ok(())
    }

    /// The source's settings for native logical replication (PostgreSQL 10+ only:
    /// `max_logical_replication_workers`, `pg_replication_slots`, `pg_control_system()`).
    async fn preflight_source_replication(
        &self,
        c: &Client,
        ours: &[String],
        sync_workers: i64,
        out: &mut Preflight,
        sysid: &mut Option<(String, String)>,
    ) -> Result<()> {
        let ctx = |what: &str| format!("source: {what}");
        let r = c
            .query_one(
                "SELECT current_setting('wal_level'),
                        current_setting('max_replication_slots')::int8,
                        current_setting('max_wal_senders')::int8,
                        (SELECT count(*) FROM pg_replication_slots
                          WHERE slot_name <> ALL($1::text[]) AND slot_name !~ '^pg_[0-9]+_sync_'),
                        (SELECT count(*) FROM pg_stat_replication r
                          WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.active_pid = r.pid
                                  AND (s.slot_name = ANY($1::text[]) OR s.slot_name ~ '^pg_[0-9]+_sync_'))),
                        current_setting('max_logical_replication_workers')::int8,
                        (SELECT system_identifier::text FROM pg_control_system()),
                        current_database()::text",
                &[&ours],
            )
            .await
            .map_err(|e| pg_error(&ctx("reading settings"), &e))?;
        let wal_level: String = r.col(0)?;
        if wal_level != "logical" {
            out.failures.push(format!(
                "source: wal_level is '{wal_level}'; set wal_level = logical in postgresql.conf and restart the source server"
            ));
        }
        let (max_slots, used_slots, max_senders, used_senders): (i64, i64, i64, i64) =
            (r.col(1)?, r.col(3)?, r.col(2)?, r.col(4)?);
        // One slot per carried database, and the table-sync workers of one subscription at a
        // time (more run when there is room; the launcher retries the others).
        let dbs = self.instance.databases.max(1) as i64;
        let need = dbs + sync_workers;
        if max_slots - used_slots < need {
            out.failures.push(format!(
                "source: max_replication_slots is {max_slots} with {used_slots} in use by others; pgshift needs {need} \
                 ({} + {sync_workers} for the initial table copy, max_sync_workers_per_subscription on the target); \
                 set max_replication_slots >= {} in postgresql.conf and restart",
                if dbs == 1 {
                    format!("slot {}", self.names.forward)
                } else {
                    format!("a slot for each of the {dbs} databases")
                },
                used_slots + need
            ));
        }
        if max_senders - used_senders < need {
            out.failures.push(format!(
                "source: max_wal_senders is {max_senders} with {used_senders} in use by others; pgshift needs {need}; \
                 set max_wal_senders >= {} in postgresql.conf and restart",
                used_senders + need
            ));
        }
        let lrw: i64 = r.col(5)?;
        if lrw < dbs {
            out.failures.push(format!(
                "source: max_logical_replication_workers is {lrw}; the reverse subscriptions (after cutover) need {dbs}, one per database; \
                 set max_logical_replication_workers >= {dbs} in postgresql.conf and restart"
            ));
        }
        *sysid = Some((r.col(6)?, r.col(7)?));
        Ok(())
    }

    async fn preflight_target(
        &self,
        t: &Client,
        src: Option<&Client>,
        ours: &[String],
        sync_workers: i64,
        src_sysid: &Option<(String, String)>,
        out: &mut Preflight,
    ) -> Result<()> {
        let ctx = |what: &str| format!("target: {what}");
        let r = t
            .query_one(
                "SELECT current_setting('server_version_num')::int4,
                        current_setting('wal_level'),
                        current_setting('max_replication_slots')::int8,
                        current_setting('max_wal_senders')::int8,
                        (SELECT count(*) FROM pg_replication_slots WHERE slot_name <> ALL($1::text[])),
                        (SELECT count(*) FROM pg_stat_replication r
                          WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots s
                                             WHERE s.active_pid = r.pid AND s.slot_name = ANY($1::text[]))),
                        current_setting('max_logical_replication_workers')::int8,
                        (SELECT system_identifier::text FROM pg_control_system()),
                        current_database()::text",
                &[&ours],
            )
            .await
            .map_err(|e| pg_error(&ctx("reading settings"), &e))?;
        let version: i32 = r.col(0)?;
        let major = (version / 10000) as u32;
        out.target_major = Some(major);
        out.notes.push(format!(
            "target: PostgreSQL {major} (server_version_num {version})"
        ));
        let wal_level: String = r.col(1)?;
        if wal_level != "logical" {
            out.failures.push(format!(
                "target: wal_level is '{wal_level}'; set wal_level = logical in postgresql.conf and restart the target server \
                 (reverse replication target → source after cutover needs it)"
            ));
        }
        let (max_slots, max_senders, used_slots, used_senders): (i64, i64, i64, i64) =
            (r.col(2)?, r.col(3)?, r.col(4)?, r.col(5)?);
        let dbs = self.instance.databases.max(1) as i64;
        if max_slots - used_slots < dbs {
            out.failures.push(format!(
                "target: max_replication_slots is {max_slots} with {used_slots} in use; {} needs {dbs} more; \
                 raise max_replication_slots in postgresql.conf and restart",
                if dbs == 1 {
                    format!("the reverse slot {}", self.names.reverse)
                } else {
                    format!("a reverse slot for each of the {dbs} databases")
                }
            ));
        }
        if max_senders - used_senders < dbs {
            out.failures.push(format!(
                "target: max_wal_senders is {max_senders} with {used_senders} in use; reverse replication needs {dbs} more; \
                 raise max_wal_senders in postgresql.conf and restart"
            ));
        }
        let lrw: i64 = r.col(6)?;
        if lrw < dbs + sync_workers {
            out.failures.push(format!(
                "target: max_logical_replication_workers is {lrw}; the subscriptions need {} ({dbs} apply + {sync_workers} table sync workers); \
                 raise it in postgresql.conf and restart",
                dbs + sync_workers
            ));
        }
        if let Some((sid, sdb)) = src_sysid {
            let (tid, tdb): (String, String) = (r.col(7)?, r.col(8)?);
            if *sid == tid && *sdb == tdb {
                out.failures.push(format!(
                    "source and target are the same database ({tdb} on the server with system identifier {tid}); point [target] at the new server"
                ));
            }
        }

        // Roles: owners and grantees of the source's objects (the schema copy assigns them),
        // and the server users that clients log in as.
        let mut needed: Vec<(String, String)> = Vec::new();
        if let Some(s) = src {
            let rows = s
                .query(
                    &format!(
                        "SELECT DISTINCT r.rolname::text FROM pg_roles r WHERE r.oid IN (
                           SELECT c.relowner FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_SCHEMA}
                           UNION SELECT n.nspowner FROM pg_namespace n WHERE {USER_SCHEMA}
                           UNION SELECT p.proowner FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {USER_SCHEMA}
                           UNION SELECT t.typowner FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE {USER_SCHEMA}
                           UNION SELECT (aclexplode(c.relacl)).grantee FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                  WHERE c.relacl IS NOT NULL AND {USER_SCHEMA}
                           UNION SELECT (aclexplode(n.nspacl)).grantee FROM pg_namespace n WHERE n.nspacl IS NOT NULL AND {USER_SCHEMA})
                         ORDER BY 1"
                    ),
                    &[],
                )
                .await
                .map_err(|e| pg_error("source: listing object owners", &e))?;
            for r in rows {
                needed.push((
                    r.col(0)?,
                    "owns or is granted objects in the source database".into(),
                ));
            }
        }
        for (name, server_user) in &self.server_users {
            needed.push((
                server_user.clone(),
                format!("server_user of configured user {name}"),
            ));
        }
        let names: Vec<String> = needed.iter().map(|(n, _)| n.clone()).collect();
        let rows = t
            .query(
                "SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1::text[])",
                &[&names],
            )
            .await
            .map_err(|e| pg_error(&ctx("listing roles"), &e))?;
        let present: HashSet<String> = rows.iter().map(|r| r.col(0)).collect::<Result<_>>()?;
        let mut reported = HashSet::new();
        for (role, why) in needed {
            if !present.contains(&role) && reported.insert(role.clone()) {
                out.failures.push(format!(
                    "target: role {} does not exist ({why}); create it on the target first \
                     (pg_dumpall --roles-only on the source prints the definitions)",
                    quote_ident_min(&role)
                ));
            }
        }
        Ok(())
    }

    async fn preflight_tools(&self, source_major: Option<u32>, out: &mut Preflight) {
        match tool_major(&self.pg_dump).await {
            Ok(m) => {
                out.notes.push(format!("pg_dump {} is major {m}", self.pg_dump.display()));
                if m < 10 {
                    // --no-publications / --no-subscriptions are pg_dump 10+ options.
                    out.failures.push(format!(
                        "replication.pg_dump: {} is major {m}; the schema copy needs pg_dump 10 or newer (--no-publications, --no-subscriptions); \
                         set replication.pg_dump to the pg_dump of the target's major (it dumps servers back to 9.2)",
                        self.pg_dump.display()
                    ));
                }
                if let Some(s) = source_major {
                    if m < s {
                        out.failures.push(format!(
                            "replication.pg_dump: {} is major {m} and cannot dump a major {s} source; set replication.pg_dump to a pg_dump of major {s} or newer",
                            self.pg_dump.display()
                        ));
                    }
                }
            }
            Err(e) => out.failures.push(format!(
                "replication.pg_dump: {e}; install the PostgreSQL client tools or set replication.pg_dump (or set replication.copy_schema = false and create the schema on the target yourself)"
            )),
        }
        if let Err(e) = tool_major(&self.psql).await {
            out.failures.push(format!("replication.psql: {e}; install the PostgreSQL client tools or set replication.psql"));
        }
    }

    // ----------------------------------------------------------------------------------
    // Schema copy
    // ----------------------------------------------------------------------------------

    async fn user_tables(&self, c: &Client, side: Side) -> Result<BTreeSet<String>> {
        let rows = c
            .query(
                &format!(
                    "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' AND {USER_SCHEMA}"
                ),
                &[],
            )
            .await
            .map_err(|e| pg_error(&format!("{}: listing tables", self.label(side)), &e))?;
        rows.iter().map(|r| r.col(0)).collect()
    }

    /// Copies the source's schema to the target: `pg_dump --schema-only --no-publications
    /// --no-subscriptions` piped into `psql -X -q -v ON_ERROR_STOP=1 --single-transaction`
    /// (passwords through `PGPASSWORD`, never on a command line).
    ///
    /// Idempotent: skipped when every user table of the source already exists on the target.
    /// The restore is one transaction, so an interrupted copy leaves all or nothing; a target
    /// holding some but not all of the source's tables is refused with the list.
    /// Returns what was done.
    pub async fn copy_schema(&self) -> Result<String> {
        let src = self.connect(Side::Source).await?;
        let tgt = self.connect(Side::Target).await?;
        let s = self.user_tables(&src, Side::Source).await?;
        let t = self.user_tables(&tgt, Side::Target).await?;
        drop((src, tgt));
        let missing: Vec<&String> = s.iter().filter(|x| !t.contains(*x)).collect();
        if !s.is_empty() && missing.is_empty() {
            return Ok(format!(
                "skipped: all {} source tables already exist on the target",
                s.len()
            ));
        }
        if missing.len() < s.len() {
            let shown: Vec<&str> = missing.iter().take(20).map(|x| x.as_str()).collect();
            return Err(DriverError::new(format!(
                "schema copy: the target already holds {} of the source's {} tables but not {}{}; \
                 the copy is all or nothing: drop those tables on the target, or create the missing ones and retry",
                s.len() - missing.len(),
                s.len(),
                shown.join(", "),
                if missing.len() > shown.len() { ", ..." } else { "" }
            )));
        }

        let mut dump = tokio::process::Command::new(&self.pg_dump);
        dump.args([
            "--schema-only",
            "--no-publications",
            "--no-subscriptions",
            "--no-password",
        ]);
        pg_env(&mut dump, &self.source);
        dump.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut dump = dump.spawn().map_err(|e| {
            DriverError::new(format!(
                "schema copy: cannot run {}: {e}",
                self.pg_dump.display()
            ))
        })?;
        let dump_out = dump
            .stdout
            .take()
            .ok_or_else(|| DriverError::new("schema copy: pg_dump has no stdout"))?;
        let dump_in: Stdio = dump_out.try_into().map_err(|e| {
            DriverError::new(format!("schema copy: cannot pipe pg_dump into psql: {e}"))
        })?;
        let mut restore = tokio::process::Command::new(&self.psql);
        restore.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "--single-transaction",
            "--no-password",
        ]);
        pg_env(&mut restore, &self.target);
        restore
            .stdin(dump_in)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut restore = restore.spawn().map_err(|e| {
            DriverError::new(format!(
                "schema copy: cannot run {}: {e}",
                self.psql.display()
            ))
        })?;
        let dump_err = read_all(dump.stderr.take());
        let restore_err = read_all(restore.stderr.take());
        let (dump_status, restore_status, dump_err, restore_err) =
            tokio::join!(dump.wait(), restore.wait(), dump_err, restore_err);
        let dump_status = dump_status
            .map_err(|e| DriverError::new(format!("schema copy: waiting for pg_dump: {e}")))?;
        let restore_status = restore_status
            .map_err(|e| DriverError::new(format!("schema copy: waiting for psql: {e}")))?;
        if !dump_status.success() {
            return Err(DriverError::new(format!(
                "schema copy: pg_dump of {} failed ({dump_status}): {}",
                self.label(Side::Source),
                tail(&dump_err, 10)
            )));
        }
        if !restore_status.success() {
            return Err(DriverError::new(format!(
                "schema copy: psql restore into {} failed ({restore_status}), nothing was kept (single transaction): {}",
                self.label(Side::Target),
                tail(&restore_err, 10)
            )));
        }
        Ok(format!("copied the schema of {} tables", s.len()))
    }

    // ----------------------------------------------------------------------------------
    // Objects
    // ----------------------------------------------------------------------------------

    /// Creates publication `name` FOR ALL TABLES on `side` unless it exists. Returns whether it
    /// was created.
    pub async fn ensure_publication(&self, side: Side, name: &str) -> Result<bool> {
        let c = self.connect(side).await?;
        let ctx = format!("{}: publication {name}", self.label(side));
        let n = c
            .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
            .await
            .map_err(|e| pg_error(&ctx, &e))?;
        if n.is_some() {
            return Ok(false);
        }
        c.batch_execute(&format!(
            "CREATE PUBLICATION {} FOR ALL TABLES",
            quote_ident(name)
        ))
        .await
        .map_err(|e| pg_error(&format!("{ctx}: create"), &e))?;
        Ok(true)
    }

    /// Drops publication `name` on `side` if it exists. Returns whether it existed.
    pub async fn drop_publication(&self, side: Side, name: &str) -> Result<bool> {
        let c = self.connect(side).await?;
        let ctx = format!("{}: publication {name}", self.label(side));
        let n = c
            .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
            .await
            .map_err(|e| pg_error(&ctx, &e))?;
        if n.is_none() {
            return Ok(false);
        }
        c.batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name)))
            .await
            .map_err(|e| pg_error(&format!("{ctx}: drop"), &e))?;
        Ok(true)
    }

    /// `Some(enabled)` when subscription `name` exists in the connected database.
    pub async fn subscription_state(
        &self,
        c: &Client,
        side: Side,
        name: &str,
    ) -> Result<Option<bool>> {
        let r = c
            .query_opt(
                "SELECT subenabled FROM pg_subscription
                  WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&name],
            )
            .await
            .map_err(|e| pg_error(&format!("{}: reading subscription {name}", self.label(side)), &e))?;
        r.map(|r| r.col(0)).transpose()
    }

    /// `Some(active)` when replication slot `name` exists on the connected server.
    pub async fn slot_state(&self, c: &Client, side: Side, name: &str) -> Result<Option<bool>> {
        let r = c
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&name],
            )
            .await
            .map_err(|e| {
                pg_error(
                    &format!("{}: reading replication slot {name}", self.label(side)),
                    &e,
                )
            })?;
        r.map(|r| r.col(0)).transpose()
    }

    /// Drops replication slot `name` on `side` if it exists, first ending a walsender that
    /// still holds it. Returns whether it existed.
    pub async fn drop_slot(&self, c: &Client, side: Side, name: &str) -> Result<bool> {
        let ctx = format!("{}: dropping replication slot {name}", self.label(side));
        for attempt in 0..200 {
            let Some(active) = self.slot_state(c, side, name).await? else {
                return Ok(attempt > 0);
            };
            if active {
                c.query(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                      WHERE slot_name = $1 AND active_pid IS NOT NULL",
                    &[&name],
                )
                .await
                .map_err(|e| pg_error(&ctx, &e))?;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            match c
                .query("SELECT pg_drop_replication_slot($1)", &[&name])
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) => {
                    let err = pg_error(&ctx, &e);
                    // 42704: dropped meanwhile; 55006: taken meanwhile.
                    match e.as_db_error().map(|d| d.code().code()) {
                        Some("42704") => return Ok(true),
                        Some("55006") => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                        _ => return Err(err),
                    }
                }
            }
        }
        Err(DriverError::temporary(format!(
            "{ctx}: still in use after 2 s"
        )))
    }

    /// Creates logical slot `name` (plugin `pgoutput`) on `side`, dropping a slot of that name
    /// first: a leftover slot would start at an older position and send changes from before
    /// this call. Returns the slot's starting LSN.
    ///
    /// Creating a logical slot waits for the transactions running on that server to end, and
    /// flushes that server's WAL (PostgreSQL's `ReplicationSlotReserveWal`), which also makes
    /// commits made with `synchronous_commit = off` (apply workers) durable.
    pub async fn recreate_slot(&self, c: &Client, side: Side, name: &str) -> Result<u64> {
        self.drop_slot(c, side, name).await?;
        let r = c
            .query_one(
                "SELECT lsn FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&name],
            )
            .await
            .map_err(|e| {
                pg_error(
                    &format!(
                        "{}: creating replication slot {name} (this waits for every transaction running on that server to end; \
                         see pg_stat_activity for one left open)",
                        self.label(side)
                    ),
                    &e,
                )
            })?;
        let lsn: PgLsn = r.col(0)?;
        Ok(u64::from(lsn))
    }

    /// Empties the target's copies of the source's tables (one `TRUNCATE`), before a fresh
    /// subscription copies them again: a restarted upgrade finds rows of the earlier attempt
    /// there, and the initial copy would stop on duplicate keys. Returns the number of tables.
    pub async fn truncate_target_tables(&self) -> Result<usize> {
        let src = self.connect(Side::Source).await?;
        let tgt = self.connect(Side::Target).await?;
        let s = self.user_tables(&src, Side::Source).await?;
        let t = self.user_tables(&tgt, Side::Target).await?;
        let both: Vec<&String> = s.iter().filter(|x| t.contains(*x)).collect();
        if both.is_empty() {
            return Ok(0);
        }
        let list: Vec<&str> = both.iter().map(|x| x.as_str()).collect();
        tgt.batch_execute(&format!("TRUNCATE TABLE {}", list.join(", ")))
            .await
            .map_err(|e| {
                pg_error(
                    &format!("{}: truncating the copied tables", self.label(Side::Target)),
                    &e,
                )
            })?;
        Ok(both.len())
    }

    /// Creates the forward subscription on the target with the initial copy (`copy_data = true`),
    /// unless it exists (then it is enabled if disabled). Before creating it, empties the
    /// target's copies of the tables and drops a leftover slot `<p>_fwd` on the source.
    /// Returns what was done.
    pub async fn ensure_forward_subscription(&self) -> Result<String> {
        let tgt = self.connect(Side::Target).await?;
        let name = self.names.forward.clone();
        if let Some(m) = self.reuse_subscription(&tgt, Side::Target, &name).await? {
            return Ok(m);
        }
        let src = self.connect(Side::Source).await?;
        let leftover = self.drop_slot(&src, Side::Source, &name).await?;
        let truncated = self.truncate_target_tables().await?;
        let sql = format!(
            "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = true{})",
            quote_ident(&name),
            quote_literal(&self.source.replication_conninfo()),
            quote_ident(&self.names.publication),
            self.origin_option()
        );
        self.create_subscription(&tgt, Side::Target, &name, &sql)
            .await?;
        Ok(format!(
            "created subscription {name} (copy_data = true){}; emptied {truncated} target tables first",
            if leftover { ", after dropping a leftover slot on the source" } else { "" }
        ))
    }

    /// An existing subscription `name` on `side`: enabled if it was disabled, with what was
    /// found (`None`: there is none, make it).
    async fn reuse_subscription(
        &self,
        c: &Client,
        side: Side,
        name: &str,
    ) -> Result<Option<String>> {
        Ok(match self.subscription_state(c, side, name).await? {
            Some(true) => Some(format!("subscription {name} exists")),
            Some(false) => {
                self.enable_subscription(c, side, name).await?;
                Some(format!("subscription {name} existed disabled; enabled"))
            }
            None => None,
        })
    }

    /// Runs `sql`, the `CREATE SUBSCRIPTION` of `name`, on `side`.
    async fn create_subscription(
        &self,
        c: &Client,
        side: Side,
        name: &str,
        sql: &str,
    ) -> Result<()> {
        c.batch_execute(sql).await.map_err(|e| {
            pg_error(
                &format!("{}: creating subscription {name}", self.label(side)),
                &e,
            )
        })
    }

    /// Creates the subscription of direction `d` on an existing slot, without initial copy
    /// (`copy_data = false, create_slot = false`), unless it exists (then it is enabled).
    pub async fn ensure_subscription_on_slot(&self, d: Direction) -> Result<String> {
        let side = d.subscriber();
        let c = self.connect(side).await?;
        let name = self.names.subscription(d).to_string();
        if let Some(m) = self.reuse_subscription(&c, side, &name).await? {
            return Ok(m);
        }
        let publisher = self.server(d.publisher());
        let sql = format!(
            "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = false, create_slot = false, slot_name = {}{})",
            quote_ident(&name),
            quote_literal(&publisher.replication_conninfo()),
            quote_ident(self.names.publication(d)),
            quote_literal(&name),
            self.origin_option()
        );
        self.create_subscription(&c, side, &name, &sql).await?;
        Ok(format!(
            "created subscription {name} on slot {name} (copy_data = false)"
        ))
    }

    /// Creates the subscription of direction `d` with a new slot on its publisher and no
    /// initial copy (`copy_data = false`, plus `origin = none` when both directions run),
    /// unless it exists (then it is enabled). A leftover slot of that name on the publisher
    /// (an earlier attempt) is dropped first. For the `bidirectional` driver's reverse
    /// subscription, made once the forward one has copied every table.
    pub async fn ensure_subscription_fresh(&self, d: Direction) -> Result<String> {
        let side = d.subscriber();
        let c = self.connect(side).await?;
        let name = self.names.subscription(d).to_string();
        if let Some(m) = self.reuse_subscription(&c, side, &name).await? {
            return Ok(m);
        }
        let pc = self.connect(d.publisher()).await?;
        let leftover = self.drop_slot(&pc, d.publisher(), &name).await?;
        let sql = format!(
            "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = false{})",
            quote_ident(&name),
            quote_literal(&self.server(d.publisher()).replication_conninfo()),
            quote_ident(self.names.publication(d)),
            self.origin_option()
        );
        self.create_subscription(&c, side, &name, &sql).await?;
        Ok(format!(
            "created subscription {name} on the {} (copy_data = false{}){}",
            side.as_str(),
            self.origin_option(),
            if leftover {
                ", after dropping a leftover slot"
            } else {
                ""
            }
        ))
    }

    /// `ALTER SUBSCRIPTION .. ENABLE` if it exists and is disabled.
    pub async fn enable_subscription(&self, c: &Client, side: Side, name: &str) -> Result<bool> {
        if self.subscription_state(c, side, name).await? != Some(false) {
            return Ok(false);
        }
        c.batch_execute(&format!("ALTER SUBSCRIPTION {} ENABLE", quote_ident(name)))
            .await
            .map_err(|e| {
                pg_error(
                    &format!("{}: enabling subscription {name}", self.label(side)),
                    &e,
                )
            })?;
        Ok(true)
    }

    /// Stops subscription `name` on the connected server: `ALTER SUBSCRIPTION .. DISABLE`, then
    /// ends its workers (`pg_terminate_backend`; a disabled subscription's apply worker would
    /// otherwise notice only at its next wake-up, up to a second later) and waits until
    /// `pg_stat_subscription` shows none, at most `deadline`. Returns whether it existed.
    pub async fn stop_subscription(
        &self,
        c: &Client,
        side: Side,
        name: &str,
        deadline: Duration,
    ) -> Result<bool> {
        let ctx = format!("{}: stopping subscription {name}", self.label(side));
        match self.subscription_state(c, side, name).await? {
            None => return Ok(false),
            Some(true) => c
                .batch_execute(&format!("ALTER SUBSCRIPTION {} DISABLE", quote_ident(name)))
                .await
                .map_err(|e| pg_error(&ctx, &e))?,
            Some(false) => {}
        }
        let start = tokio::time::Instant::now();
        loop {
            let r = c
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_subscription
                      WHERE subname = $1 AND pid IS NOT NULL",
                    &[&name],
                )
                .await
                .map_err(|e| pg_error(&ctx, &e))?;
            let n: i64 = r.col(0)?;
            if n == 0 {
                return Ok(true);
            }
            if start.elapsed() > deadline {
                return Err(DriverError::temporary(format!(
                    "{ctx}: {n} worker(s) still running after {} ms",
                    deadline.as_millis()
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Drops subscription `name` of direction `d` (on its subscriber) if it exists. Its slot
    /// on the publisher goes with it; when that slot is already gone or the publisher cannot
    /// be reached, the subscription is detached from it first (`SET (slot_name = NONE)`), and a
    /// reachable publisher's leftover slot is then dropped directly. Returns what was done.
    pub async fn drop_subscription(&self, d: Direction) -> Result<String> {
        let side = d.subscriber();
        let name = self.names.subscription(d).to_string();
        let c = self.connect(side).await?;
        let ctx = format!("{}: dropping subscription {name}", self.label(side));
        if self.subscription_state(&c, side, &name).await?.is_none() {
            return Ok(format!("subscription {name} absent"));
        }
        let publisher = match self.connect(d.publisher()).await {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e.message, "publisher unreachable; dropping the subscription without its slot");
                None
            }
        };
        let slot_there = match &publisher {
            Some(p) => self.slot_state(p, d.publisher(), &name).await?.is_some(),
            None => false,
        };
        if slot_there {
            self.stop_subscription(&c, side, &name, Duration::from_secs(5))
                .await?;
            let mut attempt = 0;
            loop {
                attempt += 1;
                match c
                    .batch_execute(&format!(
                        "DROP SUBSCRIPTION IF EXISTS {}",
                        quote_ident(&name)
                    ))
                    .await
                {
                    Ok(()) => return Ok(format!("dropped subscription {name} and its slot")),
                    Err(e) => {
                        let err = pg_error(&ctx, &e);
                        // The slot may still be held for a moment by the walsender of the
                        // worker just stopped (55006, or an error relayed from the publisher).
                        if attempt < 100 {
                            tracing::debug!(error = %err.message, "retrying DROP SUBSCRIPTION");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        return Err(err);
                    }
                }
            }
        }
        self.stop_subscription(&c, side, &name, Duration::from_secs(5))
            .await?;
        c.batch_execute(&format!(
            "ALTER SUBSCRIPTION {n} SET (slot_name = NONE); DROP SUBSCRIPTION IF EXISTS {n}",
            n = quote_ident(&name)
        ))
        .await
        .map_err(|e| pg_error(&ctx, &e))?;
        Ok(match publisher {
            Some(_) => format!("dropped subscription {name} (its slot was already gone)"),
            None => format!(
                "dropped subscription {name}; its slot {name} on the unreachable {} remains",
                d.publisher().as_str()
            ),
        })
    }

    /// Ends pgshift's own other backends on `side` that are still executing a statement
    /// (`application_name` `pgshift-control` or `pgshift-schema-copy`): a plan task stopped by a
    /// rollback leaves its statement running on the server (e.g. `CREATE SUBSCRIPTION`, which
    /// could commit after the teardown looked). Waits up to 5 s for them to exit. Returns how
    /// many were ended.
    pub async fn end_own_backends(&self, c: &Client, side: Side) -> Result<i64> {
        let ctx = format!("{}: ending pgshift's running statements", self.label(side));
        let r = c
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                  WHERE application_name IN ('pgshift-control', 'pgshift-schema-copy')
                    AND pid <> pg_backend_pid() AND state <> 'idle'",
                &[],
            )
            .await
            .map_err(|e| pg_error(&ctx, &e))?;
        let n: i64 = r.col(0)?;
        let start = tokio::time::Instant::now();
        while n > 0 && start.elapsed() < Duration::from_secs(5) {
            let r = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE application_name IN ('pgshift-control', 'pgshift-schema-copy')
                        AND pid <> pg_backend_pid() AND state <> 'idle'",
                    &[],
                )
                .await
                .map_err(|e| pg_error(&ctx, &e))?;
            if r.col::<i64>(0)? == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(n)
    }

    /// Removes every replication object pgshift made, in both directions: subscriptions,
    /// publications and slots. Idempotent. Returns what was done.
    ///
    /// Only for a rollback before the cutover (traffic on the source): first ends pgshift's own
    /// statements still running on either server (see [`end_own_backends`](Self::end_own_backends)).
    pub async fn teardown(&self) -> Result<Vec<String>> {
        let mut done = vec![];
        for side in [Side::Target, Side::Source] {
            let c = self.connect(side).await?;
            let n = self.end_own_backends(&c, side).await?;
            if n > 0 {
                done.push(format!(
                    "ended {n} running pgshift statement(s) on {}",
                    side.as_str()
                ));
            }
        }
        done.push(self.drop_subscription(Direction::Forward).await?);
        done.push(self.drop_subscription(Direction::Reverse).await?);
        let src = self.connect(Side::Source).await?;
        let tgt = self.connect(Side::Target).await?;
        if self
            .drop_slot(&src, Side::Source, &self.names.forward)
            .await?
        {
            done.push(format!("dropped slot {} on source", self.names.forward));
        }
        if self
            .drop_slot(&tgt, Side::Target, &self.names.reverse)
            .await?
        {
            done.push(format!("dropped slot {} on target", self.names.reverse));
        }
        if self
            .drop_publication(Side::Source, &self.names.publication)
            .await?
        {
            done.push(format!(
                "dropped publication {} on source",
                self.names.publication
            ));
        }
        if self
            .drop_publication(Side::Target, &self.names.reverse_publication)
            .await?
        {
            done.push(format!(
                "dropped publication {} on target",
                self.names.reverse_publication
            ));
        }
        if self
            .drop_publication(Side::Source, &self.names.resync_publication)
            .await?
        {
            done.push(format!(
                "dropped publication {} on source",
                self.names.resync_publication
            ));
        }
        Ok(done)
    }

    /// [`teardown`](Self::teardown) of the source alone, for a target that does not exist
    /// (not provisioned yet) or is about to be deleted: ends pgshift's statements on the
    /// source, drops the reverse subscription (detached from its slot when the target cannot
    /// be reached), the forward slot and the source's publication. Idempotent.
    pub async fn teardown_source(&self) -> Result<Vec<String>> {
        let mut done = vec![];
        let src = self.connect(Side::Source).await?;
        let n = self.end_own_backends(&src, Side::Source).await?;
        if n > 0 {
            done.push(format!("ended {n} running pgshift statement(s) on source"));
        }
        done.push(self.drop_subscription(Direction::Reverse).await?);
        if self
            .drop_slot(&src, Side::Source, &self.names.forward)
            .await?
        {
            done.push(format!("dropped slot {} on source", self.names.forward));
        }
        for name in [&self.names.publication, &self.names.resync_publication] {
            if self.drop_publication(Side::Source, name).await? {
                done.push(format!("dropped publication {name} on source"));
            }
        }
        Ok(done)
    }

    // ----------------------------------------------------------------------------------
    // Progress, lag, barriers
    // ----------------------------------------------------------------------------------

    /// Initial-copy progress of the forward subscription, from `pg_subscription_rel` on the
    /// target (PostgreSQL docs, "pg_subscription_rel": `i` init, `d` copying, `f` copy done,
    /// `s` synchronised, `r` ready).
    pub async fn sync_progress(&self, tgt: &Client) -> Result<SyncProgress> {
        let name = &self.names.forward;
        let ctx = format!(
            "{}: reading the state of subscription {name}",
            self.label(Side::Target)
        );
        if self
            .subscription_state(tgt, Side::Target, name)
            .await?
            .is_none()
        {
            return Err(DriverError::new(format!(
                "{}: subscription {name} is gone; ROLLBACK UPGRADE and START UPGRADE again",
                self.label(Side::Target)
            )));
        }
        let rows = tgt
            .query(
                "SELECT sr.srrelid::regclass::text, sr.srsubstate::text
                   FROM pg_subscription s JOIN pg_subscription_rel sr ON sr.srsubid = s.oid
                  WHERE s.subname = $1 AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                  ORDER BY 1",
                &[name],
            )
            .await
            .map_err(|e| pg_error(&ctx, &e))?;
        let mut p = SyncProgress {
            ready: 0,
            total: rows.len() as u64,
            pending: vec![],
        };
        for r in rows {
            let (rel, state): (String, String) = (r.col(0)?, r.col(1)?);
            if state == "r" || state == "s" {
                p.ready += 1;
            } else if p.pending.len() < 10 {
                p.pending.push(format!("{rel} ({state})"));
            }
        }
        Ok(p)
    }

    /// The cutover's catch-up target on the publisher, after its clients stopped: commits
    /// one tiny transaction that writes WAL (a transactional logical decoding message, prefix
    /// `pgshift`, which pgoutput does not send) with `synchronous_commit = on`, which flushes all
    /// WAL before it, then returns `pg_current_wal_flush_lsn()`. One round trip.
    ///
    /// Why not `pg_current_wal_lsn()`: a transaction committed with `synchronous_commit = off`
    /// (a server default, or any session's SET) returns before its commit record is written,
    /// so the write position can be behind commits already acknowledged to clients; waiting for
    /// it would cut over without them. The flush position after the barrier commit covers every
    /// commit record inserted before it.
    pub async fn barrier_lsn(&self, c: &Client, side: Side) -> Result<u64> {
        let msgs = c
            .simple_query(
                "BEGIN; SET LOCAL synchronous_commit = on; \
                 SELECT pg_catalog.pg_logical_emit_message(true, 'pgshift', 'cutover barrier'); COMMIT; \
                 SELECT pg_catalog.pg_current_wal_flush_lsn()::text",
            )
            .await
            .map_err(|e| pg_error(&format!("{}: cutover barrier", self.label(side)), &e))?;
        let text = last_text(&msgs).ok_or_else(|| {
            DriverError::new(format!(
                "{}: cutover barrier returned no position",
                self.label(side)
            ))
        })?;
        parse_lsn(&text).ok_or_else(|| {
            DriverError::new(format!(
                "{}: cutover barrier: bad LSN {text:?}",
                self.label(side)
            ))
        })
    }

    /// `ALTER SUBSCRIPTION .. SET (synchronous_commit = ..)` on the connected subscriber. The
    /// cutover sets `on` just before its pause: an apply worker committing asynchronously
    /// (the default, `off`) reports its apply position only once its own WAL is flushed (up to
    /// `wal_writer_delay`, 200 ms, later); committing synchronously it reports at once.
    pub async fn set_subscription_sync_commit(
        &self,
        c: &Client,
        side: Side,
        name: &str,
        on: bool,
    ) -> Result<()> {
        if self.subscription_state(c, side, name).await?.is_none() {
            return Ok(());
        }
        c.batch_execute(&format!(
            "ALTER SUBSCRIPTION {} SET (synchronous_commit = {})",
            quote_ident(name),
            if on { "on" } else { "off" }
        ))
        .await
        .map_err(|e| {
            pg_error(
                &format!(
                    "{}: setting synchronous_commit of subscription {name}",
                    self.label(side)
                ),
                &e,
            )
        })
    }

    /// The prepared transactions (`PREPARE TRANSACTION`) of the connected database that are
    /// neither committed nor rolled back, oldest first, each as
    /// `'gid' (owner <role>, prepared <n> ms ago)` (view `pg_prepared_xacts`, PostgreSQL docs
    /// "System Views"). Logical replication sends a prepared transaction only at its
    /// `COMMIT PREPARED` (without `two_phase`), so a switch must not happen while one is open:
    /// its changes would not be on the new side, and its `COMMIT PREPARED` would go there.
    pub async fn prepared_xacts(&self, c: &Client, side: Side) -> Result<Vec<String>> {
        let rows = c
            .query(
                "SELECT gid, owner::text, (extract(epoch FROM now() - prepared) * 1000)::bigint
                   FROM pg_prepared_xacts WHERE database = current_database() ORDER BY prepared",
                &[],
            )
            .await
            .map_err(|e| {
                pg_error(
                    &format!("{}: reading pg_prepared_xacts", self.label(side)),
                    &e,
                )
            })?;
        rows.iter()
            .map(|r| {
                let (gid, owner, ms): (String, String, i64) = (r.col(0)?, r.col(1)?, r.col(2)?);
                Ok(format!(
                    "{} (owner {owner}, prepared {ms} ms ago)",
                    quote_literal(&gid)
                ))
            })
            .collect()
    }

    /// `pg_current_wal_lsn()` of the connected server.
    pub async fn current_lsn(&self, c: &Client, side: Side) -> Result<u64> {
        let r = c
            .query_one("SELECT pg_current_wal_lsn()", &[])
            .await
            .map_err(|e| pg_error(&format!("{}: pg_current_wal_lsn()", self.label(side)), &e))?;
        let lsn: PgLsn = r.col(0)?;
        Ok(u64::from(lsn))
    }

    /// How far the subscriber of `d` has applied, read on the publisher (`c`): the slot's
    /// `confirmed_flush_lsn` and the walsender's `replay_lsn` (with the `pgactive` driver:
    /// of the database's slot of plugin `pgactive`).
    pub async fn applied(&self, c: &Client, d: Direction) -> Result<Applied> {
        if self.pgactive {
            return match self.pgactive_slot(c, d.publisher()).await? {
                Some((_, cf, rp, _, _, _)) => Ok(Applied {
                    confirmed_flush: cf,
                    replay: rp,
                }),
                None => Err(DriverError::new(format!(
                    "{}: pgactive's replication slot (plugin pgactive) is missing",
                    self.label(d.publisher())
                ))),
            };
        }
        let name = self.names.subscription(d);
        let r = c
            .query_opt(
                "SELECT s.confirmed_flush_lsn,
                        (SELECT max(r.replay_lsn) FROM pg_stat_replication r WHERE r.application_name = $1)
                   FROM pg_replication_slots s WHERE s.slot_name = $1",
                &[&name],
            )
            .await
            .map_err(|e| pg_error(&format!("{}: reading slot {name}", self.label(d.publisher())), &e))?;
        let Some(r) = r else {
            return Err(DriverError::new(format!(
                "{}: replication slot {name} is missing",
                self.label(d.publisher())
            )));
        };
        let cf: Option<PgLsn> = r.col(0)?;
        let rp: Option<PgLsn> = r.col(1)?;
        Ok(Applied {
            confirmed_flush: cf.map(u64::from),
            replay: rp.map(u64::from),
        })
    }

    /// Lag of direction `d`, read on its publisher (`c`); `None` when the slot is missing
    /// (with the `pgactive` driver: the database's slot of plugin `pgactive`).
    pub async fn lag(&self, c: &Client, d: Direction) -> Result<Option<Lag>> {
        if self.pgactive {
            return Ok(self.pgactive_slot(c, d.publisher()).await?.map(
                |(_, _, _, bytes, secs, streaming)| Lag {
                    bytes,
                    seconds: secs.or(if streaming { Some(0.0) } else { None }),
                },
            ));
        }
        let name = self.names.subscription(d);
        let r = c
            .query_opt(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::int8,
                        (SELECT extract(epoch FROM r.replay_lag)::float8 FROM pg_stat_replication r
                          WHERE r.application_name = $1 ORDER BY r.backend_start DESC LIMIT 1),
                        EXISTS (SELECT 1 FROM pg_stat_replication r WHERE r.application_name = $1 AND r.state = 'streaming')
                   FROM pg_replication_slots s WHERE s.slot_name = $1",
                &[&name],
            )
            .await
            .map_err(|e| pg_error(&format!("{}: reading lag of {name}", self.label(d.publisher())), &e))?;
        r.map(|r| {
            let bytes: Option<i64> = r.col(0)?;
            let secs: Option<f64> = r.col(1)?;
            let streaming: bool = r.col(2)?;
            Ok(Lag {
                bytes,
                seconds: secs.or(if streaming { Some(0.0) } else { None }),
            })
        })
        .transpose()
    }

    /// The health probe of direction `d`'s subscription, on its subscriber (`c`): `None` when
    /// the subscription does not exist, else (enabled, apply worker running,
    /// `pg_stat_subscription_stats.apply_error_count` on PostgreSQL 15+). With the
    /// `pgactive` driver: `None` when the subscriber is no pgactive node, else (node ready,
    /// every peer's apply worker running, conflicts and worker errors:
    /// [`PgactiveHealth`]).
    pub async fn subscription_health(
        &self,
        c: &Client,
        d: Direction,
    ) -> Result<Option<(bool, bool, Option<i64>)>> {
        let side = d.subscriber();
        if self.pgactive {
            // pgactive: the node is ready, every peer's apply worker runs, conflicts and
            // worker errors counted.
            return Ok(self
                .pgactive_health(c, side)
                .await?
                .map(|h| (h.ready, h.applying, Some(h.errors))));
        }
        let name = self.names.subscription(d);
        let ctx = format!(
            "{}: reading the state of subscription {name}",
            self.label(side)
        );
        let r = c
            .query_opt(
                "SELECT s.subenabled,
                        EXISTS (SELECT 1 FROM pg_stat_subscription w
                                 WHERE w.subid = s.oid AND w.pid IS NOT NULL AND w.relid IS NULL),
                        current_setting('server_version_num')::int4
                   FROM pg_subscription s
                  WHERE s.subname = $1 AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&name],
            )
            .await
            .map_err(|e| pg_error(&ctx, &e))?;
        let Some(r) = r else { return Ok(None) };
        let (enabled, running, version): (bool, bool, i32) = (r.col(0)?, r.col(1)?, r.col(2)?);
        let errors = if version >= 150000 {
            c.query_opt(
                "SELECT apply_error_count FROM pg_stat_subscription_stats WHERE subname = $1",
                &[&name],
            )
            .await
            .map_err(|e| pg_error(&ctx, &e))?
            .map(|r| r.col::<i64>(0))
            .transpose()?
        } else {
            None
        };
        Ok(Some((enabled, running, errors)))
    }

    /// Copies every used sequence's position from `from` to `to`:
    /// [`sequence_values`](Self::sequence_values) on `from`, then
    /// [`set_sequences`](Self::set_sequences) on `to`. Returns the number set. Works with
    /// either side on PostgreSQL 9.2 or later (the `mirror` driver's old source, which after
    /// cutover is where sequences are set on rollback).
    pub async fn sync_sequences(
        &self,
        from: &Client,
        from_side: Side,
        to: &Client,
        to_side: Side,
    ) -> Result<usize> {
        let values = self.sequence_values(from, from_side).await?;
        self.set_sequences(to, to_side, from_side, &values).await
    }

    /// The position of every used sequence of `c`'s database (serial and identity sequences
    /// included): from the `pg_sequences` view on PostgreSQL 10 and later
    /// ([`sequence_values_view`](Self::sequence_values_view)), from the catalog before
    /// ([`sequence_values_catalog`](Self::sequence_values_catalog)), chosen by
    /// `server_version_num`. Sorted by schema and name.
    pub async fn sequence_values(&self, c: &Client, side: Side) -> Result<Vec<SequenceValue>> {
        let version = server_version_num(c).await.map_err(|e| {
            pg_error(
                &format!("{}: reading server_version_num", self.label(side)),
                &e,
            )
        })?;
        if version >= 100000 {
            self.sequence_values_view(c, side).await
        } else {
            self.sequence_values_catalog(c, side).await
        }
    }

    /// [`sequence_values`](Self::sequence_values) from the `pg_sequences` view (PostgreSQL 10+:
    /// docs "pg_sequences"; release notes of 10, "Add view pg_sequences"): schemaname,
    /// sequencename, last_value, in one query. `last_value` is NULL for a sequence never used
    /// (`is_called` false) or one the user may neither SELECT nor USAGE: skipped.
    pub async fn sequence_values_view(&self, c: &Client, side: Side) -> Result<Vec<SequenceValue>> {
        let rows = c
            .query(
                "SELECT schemaname::text, sequencename::text, last_value FROM pg_catalog.pg_sequences
                  WHERE last_value IS NOT NULL AND schemaname <> 'pgactive' ORDER BY 1, 2",
                &[],
            )
            .await
            .map_err(|e| pg_error(&format!("{}: reading pg_sequences", self.label(side)), &e))?;
        let mut out: Vec<SequenceValue> = rows
            .iter()
            .map(|r| {
                Ok(SequenceValue {
                    schema: r.col(0)?,
                    name: r.col(1)?,
                    last_value: r.col(2)?,
                })
            })
            .collect::<Result<_>>()?;
        out.sort();
        Ok(out)
    }

    /// [`sequence_values`](Self::sequence_values) from the catalog, for servers without
    /// `pg_sequences` (before 10), and correct on every version from 9.0: the sequences are
    /// `pg_class` rows of `relkind 'S'` in user schemas (the schemas `pg_sequences` shows
    /// sequences of, less the system ones, which hold none) that the user may `SELECT`
    /// (`has_sequence_privilege`, 9.0+); each sequence relation is then read with
    /// `SELECT last_value, is_called` (columns of a sequence on every version: docs "CREATE
    /// SEQUENCE", "Notes"; 10 dropped the others from the relation but kept these). Only
    /// sequences with `is_called` true count: that is what a non-NULL
    /// `pg_sequences.last_value` means (`pg_sequence_last_value()` returns NULL otherwise).
    ///
    /// Round trips: `server_version_num` aside, one for the list and one for the values: the
    /// reads are [`SEQUENCE_BATCH`] sequences per `UNION ALL` query, all queries sent in one
    /// simple-protocol message. A sequence dropped between the two fails the read (naming the
    /// server); the caller tries again. A role with USAGE but no SELECT on a sequence sees it
    /// in `pg_sequences` but not here (reading the relation needs SELECT); pgshift's
    /// control-plane user is a superuser.
    pub async fn sequence_values_catalog(
        &self,
        c: &Client,
        side: Side,
    ) -> Result<Vec<SequenceValue>> {
        let label = self.label(side);
        let rows = c
            .query(&catalog_sequences_sql(), &[])
            .await
            .map_err(|e| pg_error(&format!("{label}: listing sequences"), &e))?;
        let names: Vec<(String, String)> = rows
            .iter()
            .map(|r| Ok((r.col(0)?, r.col(1)?)))
            .collect::<Result<_>>()?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let sql = sequence_read_sql(&names, SEQUENCE_BATCH);
        let msgs = c
            .simple_query(&sql)
            .await
            .map_err(|e| pg_error(&format!("{label}: reading {} sequences", names.len()), &e))?;
        let mut out = Vec::new();
        for m in &msgs {
            let tokio_postgres::SimpleQueryMessage::Row(r) = m else {
                continue;
            };
            let bad = || {
                DriverError::new(format!(
                    "{label}: unexpected row reading sequences: {:?}",
                    (r.get(0), r.get(1))
                ))
            };
            let i: usize = r.get(0).and_then(|v| v.parse().ok()).ok_or_else(bad)?;
            let last_value: i64 = r.get(1).and_then(|v| v.parse().ok()).ok_or_else(bad)?;
            let (schema, name) = names.get(i).ok_or_else(bad)?.clone();
            out.push(SequenceValue {
                schema,
                name,
                last_value,
            });
        }
        out.sort();
        Ok(out)
    }

    /// Sets each of `values` on `to` with `setval(.., last_value, true)` (so the next
    /// `nextval` gives the one after), all in one statement. Returns the number set.
    ///
    /// The arrays are walked with `generate_series` and subscripts rather than the
    /// multi-argument `unnest(a, b, c)` in FROM, which is PostgreSQL 9.4+ (release notes of
    /// 9.4, "Allow unnest() to take multiple arguments"): the statement runs on 9.1 and later (`format('%I')` is 9.1+, docs
    /// "String Functions and Operators"), so on the `mirror` driver's old source too, where
    /// the sequences are set on rollback after cutover. A sequence missing on `to` fails the
    /// statement, and none is set.
    pub async fn set_sequences(
        &self,
        to: &Client,
        to_side: Side,
        from_side: Side,
        values: &[SequenceValue],
    ) -> Result<usize> {
        if values.is_empty() {
            return Ok(0);
        }
        let schemas: Vec<&str> = values.iter().map(|v| v.schema.as_str()).collect();
        let names: Vec<&str> = values.iter().map(|v| v.name.as_str()).collect();
        let last: Vec<i64> = values.iter().map(|v| v.last_value).collect();
        let r = to
            .query_one(
                "SELECT count(pg_catalog.setval(pg_catalog.format('%I.%I', a.s[i], a.n[i])::regclass, a.v[i], true))
                   FROM (SELECT $1::text[] AS s, $2::text[] AS n, $3::int8[] AS v) a,
                        pg_catalog.generate_series(1, pg_catalog.array_length($1::text[], 1)) AS i",
                &[&schemas, &names, &last],
            )
            .await
            .map_err(|e| {
                pg_error(
                    &format!(
                        "{}: setting sequences from the {}",
                        self.label(to_side),
                        from_side.as_str()
                    ),
                    &e,
                )
            })?;
        let n: i64 = r.col(0)?;
        Ok(n as usize)
    }
}

impl Logical {
    /// Every sequence of `c`'s database the connected role may read, from `pg_sequences`
    /// (PostgreSQL 10+; docs "pg_sequences"): `(schema, name, last_value, start_value,
    /// increment_by, min_value, max_value)`, `last_value` `None` when never used.
    #[allow(clippy::type_complexity)]
    async fn sequence_table(
        &self,
        c: &Client,
        side: Side,
    ) -> Result<Vec<(String, String, Option<i64>, i64, i64, i64, i64)>> {
        let rows = c
            .query(
                "SELECT schemaname::text, sequencename::text, last_value, start_value, increment_by, min_value, max_value
                   FROM pg_catalog.pg_sequences
                  WHERE schemaname NOT IN ('pg_catalog', 'information_schema', 'pgactive')
                  ORDER BY 1, 2",
                &[],
            )
            .await
            .map_err(|e| pg_error(&format!("{}: reading pg_sequences", self.label(side)), &e))?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.col(0)?,
                    r.col(1)?,
                    r.col(2)?,
                    r.col(3)?,
                    r.col(4)?,
                    r.col(5)?,
                    r.col(6)?,
                ))
            })
            .collect()
    }

    /// The `bidirectional` driver's sequence ranges: moves every sequence of `to` `gap`
    /// values ahead of where `from` stands (its last value, or one step before its start
    /// when never used; downwards for a descending sequence), never backwards, so that the
    /// two servers draw from ranges of their own while both take writes. Both sides
    /// PostgreSQL 10+. Returns the number set. Errors: a sequence whose range would pass
    /// its `MAXVALUE` (`MINVALUE`) on `to`, each named, and nothing set.
    pub async fn move_sequences_ahead(
        &self,
        from: &Client,
        from_side: Side,
        to: &Client,
        to_side: Side,
        gap: i64,
    ) -> Result<usize> {
        let src = self.sequence_table(from, from_side).await?;
        let dst: std::collections::HashMap<(String, String), (Option<i64>, i64, i64)> = self
            .sequence_table(to, to_side)
            .await?
            .into_iter()
            .map(|(s, n, last, _, _, min, max)| ((s, n), (last, min, max)))
            .collect();
        let mut set = Vec::new();
        let mut bad = Vec::new();
        for (schema, name, last, start, inc, _, _) in src {
            let Some(&(t_last, min, max)) = dst.get(&(schema.clone(), name.clone())) else {
                continue;
            };
            let base = last.unwrap_or(start.saturating_sub(inc));
            let v = if inc > 0 {
                match base.checked_add(gap).filter(|v| *v <= max) {
                    Some(v) => t_last.map_or(v, |t| t.max(v)),
                    None => {
                        bad.push(format!("{schema}.{name} (at {base}, MAXVALUE {max})"));
                        continue;
                    }
                }
            } else {
                match base.checked_sub(gap).filter(|v| *v >= min) {
                    Some(v) => t_last.map_or(v, |t| t.min(v)),
                    None => {
                        bad.push(format!("{schema}.{name} (at {base}, MINVALUE {min})"));
                        continue;
                    }
                }
            };
            set.push(SequenceValue {
                schema,
                name,
                last_value: v,
            });
        }
        if !bad.is_empty() {
            return Err(DriverError::new(format!(
                "{}: [replication] sequence_gap {gap} does not fit {} sequence(s): {}; lower sequence_gap \
                 (it must still exceed what the {} draws until the cutover) or widen the sequence (ALTER SEQUENCE ... AS bigint)",
                self.label(to_side),
                bad.len(),
                bad.join(", "),
                from_side.as_str()
            )));
        }
        self.set_sequences(to, to_side, from_side, &set).await
    }

    /// The switch's sequence step of the `bidirectional` driver: every used sequence of
    /// `from` copied to `to` only where that moves it forward (a target range drawn from
    /// since [`move_sequences_ahead`](Self::move_sequences_ahead) stays). Returns the
    /// number set.
    pub async fn sync_sequences_forward(
        &self,
        from: &Client,
        from_side: Side,
        to: &Client,
        to_side: Side,
    ) -> Result<usize> {
        let values = self.sequence_values(from, from_side).await?;
        let dst: std::collections::HashMap<(String, String), (Option<i64>, i64)> = self
            .sequence_table(to, to_side)
            .await?
            .into_iter()
            .map(|(s, n, last, _, inc, _, _)| ((s, n), (last, inc)))
            .collect();
        let ahead: Vec<SequenceValue> = values
            .into_iter()
            .filter(|v| match dst.get(&(v.schema.clone(), v.name.clone())) {
                Some((Some(t), inc)) if *inc > 0 => v.last_value > *t,
                Some((Some(t), _)) => v.last_value < *t,
                _ => true,
            })
            .collect();
        self.set_sequences(to, to_side, from_side, &ahead).await
    }
}

/// A used sequence and its position (see [`Logical::sequence_values`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SequenceValue {
    /// Schema name, unquoted.
    pub schema: String,
    /// Sequence name, unquoted.
    pub name: String,
    /// The last value handed out (or, with `CACHE` > 1, reserved), as `pg_sequences.last_value`.
    pub last_value: i64,
}

/// Sequences read per `UNION ALL` query by [`Logical::sequence_values_catalog`].
pub const SEQUENCE_BATCH: usize = 200;

/// The user schemas' sequences the connected role may read, by schema and name: `pg_class`
/// `relkind 'S'` (every version). `has_sequence_privilege` raises an error for any other
/// relation and the planner may call it before the `relkind` test: hence the `CASE`.
fn catalog_sequences_sql() -> String {
    format!(
        "SELECT n.nspname::text, c.relname::text
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'S' AND {USER_SCHEMA}
            AND CASE WHEN c.relkind = 'S' THEN pg_catalog.has_sequence_privilege(c.oid, 'SELECT') END
          ORDER BY 1, 2"
    )
}

/// The reads of [`Logical::sequence_values_catalog`]: per `batch` sequences one query
/// `SELECT <i>, last_value FROM "s"."n" WHERE is_called UNION ALL ...` (`i`: the position in
/// `names`), the queries joined with `;` for one simple-protocol message.
fn sequence_read_sql(names: &[(String, String)], batch: usize) -> String {
    names
        .chunks(batch.max(1))
        .enumerate()
        .map(|(b, chunk)| {
            chunk
                .iter()
                .enumerate()
                .map(|(k, (s, n))| {
                    format!(
                        "SELECT {}, last_value FROM {}.{} WHERE is_called",
                        b * batch.max(1) + k,
                        quote_ident(s),
                        quote_ident(n)
                    )
                })
                .collect::<Vec<_>>()
                .join(" UNION ALL ")
        })
        .collect::<Vec<_>>()
        .join(";\n")
}

/// `server_version_num` of the connected server (e.g. 90624, 130022): what version-dependent
/// SQL branches on. Readable on every version pgshift supports (8.2+).
pub(crate) async fn server_version_num(c: &Client) -> Result<i32, tokio_postgres::Error> {
    c.query_one(
        "SELECT pg_catalog.current_setting('server_version_num')::int4",
        &[],
    )
    .await?
    .try_get(0)
}

/// A version for messages: `9.6` before 10 (two-part majors), `13` from 10 on.
pub fn version_label(server_version_num: i32) -> String {
    if server_version_num >= 100000 {
        (server_version_num / 10000).to_string()
    } else {
        format!(
            "{}.{}",
            server_version_num / 10000,
            (server_version_num / 100) % 100
        )
    }
}

/// The first column of the last row of a simple-protocol answer (`None`: no row, or NULL).
pub(crate) fn last_text(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    msgs.iter().rev().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => {
            r.try_get(0).ok().flatten().map(str::to_string)
        }
        _ => None,
    })
}

/// Parses PostgreSQL's text form of an LSN (`16/B374D848`).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
        return None;
    }
    Some((hi << 32) | lo)
}

/// Typed column access that reports, instead of panicking on, a value of an unexpected type
/// or an unexpected NULL in a server reply.
pub(crate) trait RowExt {
    fn col<'a, T: tokio_postgres::types::FromSql<'a>>(&'a self, idx: usize) -> Result<T>;
}

impl RowExt for tokio_postgres::Row {
    fn col<'a, T: tokio_postgres::types::FromSql<'a>>(&'a self, idx: usize) -> Result<T> {
        self.try_get(idx).map_err(|e| {
            let name = self
                .columns()
                .get(idx)
                .map(|c| c.name().to_string())
                .unwrap_or_else(|| idx.to_string());
            DriverError::new(format!(
                "unexpected value in column {name} of a server reply: {e}"
            ))
        })
    }
}

/// Quotes an identifier only when needed (for messages).
pub(crate) fn quote_ident_min(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        s.to_string()
    } else {
        quote_ident(s)
    }
}

/// The environment of `pg_dump`/`psql` run against `s` (PostgreSQL docs 34.15): where, as
/// whom, TLS per its `sslmode` ([`ServerConfig::libpq_env`]), the password in `PGPASSWORD`.
pub(crate) fn pg_env(cmd: &mut tokio::process::Command, s: &ServerConfig) {
    cmd.env("PGHOST", &s.host)
        .env("PGPORT", s.port.to_string())
        .env("PGDATABASE", &s.dbname)
        .env("PGUSER", &s.user)
        .env("PGAPPNAME", "pgshift-schema-copy")
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS");
    // TLS as the server's sslmode says; no certificate paths of pgshift's own environment.
    for var in ["PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY", "PGSSLNEGOTIATION"] {
        cmd.env_remove(var);
    }
    for (k, v) in s.libpq_env() {
        cmd.env(k, v);
    }
    match &s.password {
        Some(p) => cmd.env("PGPASSWORD", p),
        None => cmd.env_remove("PGPASSWORD"),
    };
}

async fn read_all<R: tokio::io::AsyncRead + Unpin>(r: Option<R>) -> String {
    let mut buf = Vec::new();
    if let Some(mut r) = r {
        let _ = r.read_to_end(&mut buf).await;
    }
    String::from_utf8_lossy(&buf).into_owned()
}

pub(crate) fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    let t = lines[start..].join(" | ");
    if t.is_empty() {
        "(no output)".into()
    } else {
        t
    }
}

/// Runs `<tool> --version` and returns the major version it prints
/// (`pg_dump (PostgreSQL) 15.14 (Debian ...)` → 15).
pub(crate) async fn tool_major(tool: &Path) -> Result<u32, String> {
    let out = tokio::process::Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    parse_tool_major(&text).ok_or_else(|| {
        format!(
            "{} --version printed {:?}, not a PostgreSQL version",
            tool.display(),
            text.trim()
        )
    })
}

pub(crate) fn parse_tool_major(text: &str) -> Option<u32> {
    let after = text.split(')').nth(1)?.trim_start();
    let digits: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_quoting() {
        let n = Names::new("pgshift");
        assert_eq!(n.publication(Direction::Forward), "pgshift_pub");
        assert_eq!(n.subscription(Direction::Forward), "pgshift_fwd");
        assert_eq!(n.publication(Direction::Reverse), "pgshift_rev_pub");
        assert_eq!(n.subscription(Direction::Reverse), "pgshift_rev");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("pass'word"), "'pass''word'");
        assert_eq!(quote_ident_min("public"), "public");
        assert_eq!(quote_ident_min("Mixed"), "\"Mixed\"");
        assert_eq!(fmt_lsn(0x1_0000_00A0), "1/A0");
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn(&fmt_lsn(0x1_0000_00A0)), Some(0x1_0000_00A0));
        assert_eq!(parse_lsn("nope"), None);
    }

    #[test]
    fn tool_versions() {
        assert_eq!(
            parse_tool_major("pg_dump (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_tool_major("psql (PostgreSQL) 17.2\n"), Some(17));
        assert_eq!(parse_tool_major("garbage"), None);
    }

    #[test]
    fn versions_and_sequence_reads() {
        assert_eq!(version_label(90224), "9.2");
        assert_eq!(version_label(90624), "9.6");
        assert_eq!(version_label(100023), "10");
        assert_eq!(version_label(170010), "17");
        let names: Vec<(String, String)> = (0..5)
            .map(|i| ("s".to_string(), format!("q{i}")))
            .chain([("My \"Schema\"".to_string(), "Seq".to_string())])
            .collect();
        let sql = sequence_read_sql(&names, 2);
        let queries: Vec<&str> = sql.split(";\n").collect();
        assert_eq!(queries.len(), 3, "{sql}");
        assert_eq!(
            queries[0],
            "SELECT 0, last_value FROM \"s\".\"q0\" WHERE is_called UNION ALL SELECT 1, last_value FROM \"s\".\"q1\" WHERE is_called"
        );
        assert_eq!(
            queries[2],
            "SELECT 4, last_value FROM \"s\".\"q4\" WHERE is_called UNION ALL SELECT 5, last_value FROM \"My \"\"Schema\"\"\".\"Seq\" WHERE is_called"
        );
        assert_eq!(sequence_read_sql(&names, 200).split(";\n").count(), 1);
    }

    #[test]
    fn directions() {
        assert_eq!(Direction::Forward.publisher(), Side::Source);
        assert_eq!(Direction::Forward.subscriber(), Side::Target);
        assert_eq!(Direction::Reverse.publisher(), Side::Target);
        assert_eq!(Direction::parse("reverse"), Some(Direction::Reverse));
        assert_eq!(Direction::parse("none"), None);
    }
}
