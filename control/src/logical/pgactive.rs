//! pgactive (AWS's active-active logical replication extension, github.com/aws/pgactive) on
//! one source/target pair of databases: the SQL the `pgactive` driver runs. The facts come
//! from pgactive's SQL API (release 2.1.8, `pgactive--*.sql`) and were checked on two
//! PostgreSQL 15 nodes (`../shared/notes/pgactive.md`).
//!
//! * Server settings a pgactive node needs ([`Logical::pgactive_requirements`]):
//!   `shared_preload_libraries` with `pgactive`, `track_commit_timestamp = on`,
//!   `wal_level = logical`, room for its workers, and, on servers that have the setting
//!   (minor releases from 2026-08 on), `output_plugin_libraries` with `pgactive`.
//! * The group: `pgactive.pgactive_create_group(node_name, node_dsn)` on the source, then
//!   `pgactive.pgactive_join_group(node_name, node_dsn, join_using_dsn, data_only_node_init)`
//!   on the target; the join runs in pgactive's background workers and is done when the
//!   target's own row of `pgactive.pgactive_nodes` has `node_status = 'r'`.
//! * Node names: `<p>_source` and `<p>_target` (`<p>` = `[replication] object_prefix`); a
//!   name that a detached node of the group still holds is never reused (pgactive refuses
//!   it): the next free `<p>_target_<n>` is taken.
//! * Node DSNs are the servers' [`replication_conninfo`](config::ServerConfig::replication_conninfo):
//!   pgactive keeps them in `pgactive.pgactive_nodes.node_dsn`, which only superusers may
//!   read (`REVOKE ALL ... FROM PUBLIC`), as PostgreSQL keeps `pg_subscription.subconninfo`.
//! * The slot feeding the peer: the database's one slot of plugin `pgactive`
//!   (`pgactive_<local dboid>_<peer sysid>_<tli>_<peer dboid>__`); its walsender's
//!   `application_name` is `pgactive:<peer sysid>:send`.
//!
//! Every function is superuser-only in pgactive (on Amazon RDS: `rds_superuser`).

use super::{pg_error, DriverError, Logical, Result, RowExt};
use crate::Side;
use std::time::Duration;
use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;

/// One server setting a pgactive node needs and does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The setting, e.g. `shared_preload_libraries`.
    pub name: String,
    /// The value it needs, in `postgresql.conf` syntax without quotes.
    pub want: String,
    /// Its value now.
    pub now: String,
    /// Whether the server must restart for it (`pg_settings.context = 'postmaster'`);
    /// else a reload is enough.
    pub restart: bool,
}

impl Requirement {
    /// `set shared_preload_libraries = 'pgactive' (now ''; restart)`.
    pub fn describe(&self) -> String {
        format!(
            "set {} = '{}' (now '{}'; {})",
            self.name,
            self.want,
            self.now,
            if self.restart { "restart" } else { "reload" }
        )
    }
}

/// The items of a list setting as `pg_settings.setting` shows it: split on the commas
/// outside double quotes, each trimmed and unquoted (`""` inside quotes is one `"`). A list
/// set with `ALTER SYSTEM SET x = 'a, b'` shows as the one item `a, b` (PostgreSQL docs,
/// ALTER SYSTEM; GUC_LIST_QUOTE settings such as `shared_preload_libraries`), which is not
/// `b`.
pub fn list_items(setting: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = setting.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c if !quoted && c.is_whitespace() => {}
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.retain(|i| !i.is_empty());
    out
}

/// Workers pgactive needs on a node of a two-node group, one carried database: the
/// supervisor, one per-database worker, one apply worker per peer, plus PostgreSQL's own
/// (logical replication launcher, autovacuum launcher and parallel workers) and room for
/// pgactive's dump jobs at the join.
pub const MIN_WORKER_PROCESSES: i64 = 16;

/// What the local node of a pgactive group is, read from `pgactive.pgactive_nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// `node_name`.
    pub name: String,
    /// `node_status`: `b` begin, `i` copying, `c` catch-up, `o` creating slots, `r` ready,
    /// `k` detached.
    pub status: char,
}

/// The status letter of `pgactive.pgactive_nodes.node_status` in words.
pub fn status_words(status: char) -> &'static str {
    match status {
        'b' => "beginning the join",
        'i' => "copying the data",
        'c' => "catching up",
        'o' => "creating slots",
        'r' => "ready",
        'k' => "detached",
        _ => "in an unknown state",
    }
}

/// One apply-side problem a node reports: a conflict pgactive logged or a worker's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The local node is `r` (ready).
    pub ready: bool,
    /// Every peer of the local node has a running apply worker on it.
    pub applying: bool,
    /// Conflicts the apply workers met (`pgactive.pgactive_get_stats()`: inserts, updates
    /// and deletes in conflict, whichever row won, logged or not) plus workers with a
    /// `last_error` (`pgactive.pgactive_get_workers_info()`; it stays set after the worker
    /// recovers, so only an increase means something new).
    pub errors: i64,
    /// The newest of them, for the reason shown (`update_update on public.items: last_update_wins_keep_local`).
    pub last: Option<String>,
}

impl Logical {
    /// The node name of `side` in the pgactive group: `<p>_source` / `<p>_target`.
    pub fn pgactive_node_name(&self, side: Side) -> String {
        format!("{}_{}", self.names.prefix, side.as_str())
    }

    /// The settings `side` (connection `c`) lacks to run pgactive, each with the value it
    /// needs; with `[upgrade] ddl = "replicate"` also `pgactive.skip_ddl_replication = off`
    /// (a `superuser` setting that pgactive accepts only from the configuration file, so a
    /// reload; it must be equal on every node, pgactive source `pgactive.c`). `Err` only when
    /// the server cannot be read.
    pub async fn pgactive_requirements(&self, c: &Client, side: Side) -> Result<Vec<Requirement>> {
        let rows = c
            .query(
                "SELECT name, setting, context FROM pg_settings
                  WHERE name IN ('shared_preload_libraries', 'track_commit_timestamp', 'wal_level',
                                 'output_plugin_libraries', 'max_worker_processes',
                                 'pgactive.skip_ddl_replication')",
                &[],
            )
            .await
            .map_err(|e| pg_error(&format!("{}: reading pg_settings", self.label(side)), &e))?;
        let mut out = Vec::new();
        for r in &rows {
            let (name, now, context): (String, String, String) = (r.col(0)?, r.col(1)?, r.col(2)?);
            let want = match name.as_str() {
                "shared_preload_libraries" | "output_plugin_libraries" => {
                    let items = list_items(&now);
                    if items.iter().any(|l| l == "pgactive") {
                        continue;
                    }
                    // What was meant: an item holding commas (`ALTER SYSTEM SET x = 'a, b'`
                    // quotes the whole text as one item) is its parts.
                    let mut want: Vec<String> = items
                        .iter()
                        .flat_map(|i| i.split(','))
                        .map(|i| i.trim().to_string())
                        .filter(|i| !i.is_empty() && i != "pgactive")
                        .collect();
                    if want.is_empty() && name == "output_plugin_libraries" {
                        // Empty means "none but the built-in"; keep PostgreSQL's own.
                        want = vec!["pgoutput".into(), "test_decoding".into()];
                    }
                    want.push("pgactive".into());
                    want.join(", ")
                }
                "track_commit_timestamp" if now != "on" => "on".into(),
                "wal_level" if now != "logical" => "logical".into(),
                "pgactive.skip_ddl_replication" if self.pgactive_ddl && now != "off" => {
                    "off".into()
                }
                "max_worker_processes"
                    if now.parse::<i64>().unwrap_or(0) < MIN_WORKER_PROCESSES =>
                {
                    MIN_WORKER_PROCESSES.to_string()
                }
                _ => continue,
            };
            out.push(Requirement {
                name,
                want,
                now,
                restart: context == "postmaster",
            });
        }
        // Without pgactive loaded the setting does not exist yet: its default is on.
        let ddl = "pgactive.skip_ddl_replication";
        if self.pgactive_ddl
            && !rows
                .iter()
                .any(|r| r.col::<String>(0).is_ok_and(|n| n == ddl))
        {
            out.push(Requirement {
                name: ddl.into(),
                want: "off".into(),
                now: "on".into(),
                restart: false,
            });
        }
        Ok(out)
    }

    /// The problems that keep `side` from being a pgactive node, each saying what to do:
    /// settings ([`pgactive_requirements`](Self::pgactive_requirements)), the extension not
    /// installed on the server (`pg_available_extensions`), the login not a superuser (nor
    /// a member of `rds_superuser`).
    pub async fn pgactive_problems(&self, c: &Client, side: Side) -> Result<Vec<String>> {
        let label = self.label(side);
        let mut out: Vec<String> = self
            .pgactive_requirements(c, side)
            .await?
            .iter()
            .map(|r| format!("{label}: pgactive needs: {}", r.describe()))
            .collect();
        let r = c
            .query_one(
                "SELECT (SELECT default_version FROM pg_available_extensions WHERE name = 'pgactive'),
                        (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
                        OR pg_has_role(current_user, (SELECT oid FROM pg_roles WHERE rolname = 'rds_superuser'), 'MEMBER') IS TRUE",
                &[],
            )
            .await
            .map_err(|e| pg_error(&format!("{label}: reading pg_available_extensions"), &e))?;
        let (available, superuser): (Option<String>, Option<bool>) = (r.col(0)?, r.col(1)?);
        if available.is_none() {
            out.push(format!(
                "{label}: the pgactive extension is not installed on this server (not in pg_available_extensions); \
                 install it (on Amazon RDS: parameter rds.enable_pgactive = 1, then reboot)"
            ));
        }
        if superuser != Some(true) {
            out.push(format!(
                "{label}: user {} is not a superuser (nor rds_superuser); the pgactive functions need one",
                self.server(side).user
            ));
        }
        Ok(out)
    }

    /// What pgactive's apply worker needs of the owner of each table it applies to: it runs
    /// as the table's owner (pgactive_apply.c, `SwitchToUntrustedUser(relowner)`), and on a
    /// conflict it reads `pgactive.pgactive_conflict_handlers` and logs to
    /// `pgactive.pgactive_conflict_history`, which its extension script grants to nobody;
    /// without these grants the first conflict on a table owned by a non-superuser stops
    /// the apply (`permission denied for table pgactive_conflict_handlers`, seen on
    /// pgactive 2.1.8). Grants, to each of `owners` on `side`: SELECT on the handlers,
    /// INSERT on the history and USAGE on its sequence (no SELECT: the history holds rows
    /// of every table). Returns the roles granted.
    pub async fn pgactive_grant_owners(
        &self,
        side: Side,
        owners: &[String],
    ) -> Result<Vec<String>> {
        let c = self.connect(side).await?;
        let label = self.label(side);
        let mut done = Vec::new();
        for o in owners {
            let superuser: Option<bool> = c
                .query_opt("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[o])
                .await
                .map_err(|e| pg_error(&format!("{label}: reading pg_roles"), &e))?
                .map(|r| r.col(0))
                .transpose()?;
            match superuser {
                Some(false) => {}
                // A superuser needs nothing; a role missing here owns nothing here.
                _ => continue,
            }
            let r = super::quote_ident(o);
            c.batch_execute(&format!(
                "GRANT SELECT ON pgactive.pgactive_conflict_handlers TO {r}; \
                 GRANT INSERT ON pgactive.pgactive_conflict_history TO {r}; \
                 GRANT USAGE ON SEQUENCE pgactive.pgactive_conflict_history_id_seq TO {r}"
            ))
            .await
            .map_err(|e| {
                pg_error(
                    &format!("{label}: granting {o} pgactive's conflict tables"),
                    &e,
                )
            })?;
            done.push(o.clone());
        }
        Ok(done)
    }

    /// The owners of the source's tables (`USER_SCHEMA`), sorted.
    pub async fn table_owners(&self) -> Result<Vec<String>> {
        let c = self.connect(Side::Source).await?;
        let rows = c
            .query(
                &format!(
                    "SELECT DISTINCT pg_get_userbyid(c.relowner)::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.relkind IN ('r', 'p') AND {} ORDER BY 1",
                    super::USER_SCHEMA
                ),
                &[],
            )
            .await
            .map_err(|e| pg_error(&format!("{}: reading the tables' owners", self.label(Side::Source)), &e))?;
        rows.iter().map(|r| r.col(0)).collect()
    }

    /// `CREATE EXTENSION IF NOT EXISTS pgactive` in the database of `side`. Returns its
    /// version.
    pub async fn pgactive_install(&self, side: Side) -> Result<String> {
        let c = self.connect(side).await?;
        let label = self.label(side);
        c.batch_execute("CREATE EXTENSION IF NOT EXISTS pgactive")
            .await
            .map_err(|e| pg_error(&format!("{label}: CREATE EXTENSION pgactive"), &e))?;
        let r = c
            .query_one(
                "SELECT extversion FROM pg_extension WHERE extname = 'pgactive'",
                &[],
            )
            .await
            .map_err(|e| pg_error(&format!("{label}: reading pg_extension"), &e))?;
        r.col(0)
    }

    /// What must match on both nodes of a group and does not, each named: the extension's
    /// version (major.minor), `pgactive.max_nodes`, `pgactive.skip_ddl_replication`, the
    /// database's collation and character type.
    pub async fn pgactive_mismatches(&self) -> Result<Vec<String>> {
        const SQL: &str = "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'pgactive'),
                                  current_setting('pgactive.max_nodes', true),
                                  current_setting('pgactive.skip_ddl_replication', true),
                                  d.datcollate::text, d.datctype::text
                             FROM pg_database d WHERE d.datname = current_database()";
        let mut vals = Vec::new();
        for side in [Side::Source, Side::Target] {
            let c = self.connect(side).await?;
            let r = c.query_one(SQL, &[]).await.map_err(|e| {
                pg_error(
                    &format!("{}: reading pgactive's settings", self.label(side)),
                    &e,
                )
            })?;
            let v: Vec<Option<String>> = (0..5).map(|i| r.col(i)).collect::<Result<_>>()?;
            vals.push(v);
        }
        let names = [
            "pgactive version",
            "pgactive.max_nodes",
            "pgactive.skip_ddl_replication",
            "database collation (datcollate)",
            "database character type (datctype)",
        ];
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".into());
        let mut out = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let (s, t) = (&vals[0][i], &vals[1][i]);
            let same = if i == 0 {
                let mm = |v: &Option<String>| {
                    v.as_deref()
                        .map(|v| v.split('.').take(2).collect::<Vec<_>>().join("."))
                };
                mm(s) == mm(t)
            } else {
                s == t
            };
            if !same {
                out.push(format!(
                    "{name} differs: source {}, target {}; pgactive needs it equal on both nodes",
                    show(s),
                    show(t)
                ));
            }
        }
        Ok(out)
    }

    /// The local node of the connected database's group (`None`: not a node, or the
    /// extension is not created).
    pub async fn pgactive_local_node(&self, c: &Client, side: Side) -> Result<Option<NodeState>> {
        let ctx = format!("{}: reading pgactive.pgactive_nodes", self.label(side));
        // pgactive_get_local_nodeid() raises 55000 in a database that is no node yet.
        let active: Option<bool> = c
            .query_one(
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pgactive')
                             THEN pgactive.pgactive_is_active_in_db() END",
                &[],
            )
            .await
            .map_err(|e| pg_error(&ctx, &e))?
            .col(0)?;
        if active != Some(true) {
            return Ok(None);
        }
        let r = c
            .query_opt(
                "SELECT n.node_name, n.node_status::text FROM pgactive.pgactive_nodes n
                  WHERE (n.node_sysid, n.node_timeline, n.node_dboid)
                      = (SELECT sysid, timeline, dboid FROM pgactive.pgactive_get_local_nodeid())",
                &[],
            )
            .await
            .map_err(|e| pg_error(&ctx, &e))?;
        r.map(|r| {
            let (name, status): (Option<String>, Option<String>) = (r.col(0)?, r.col(1)?);
            Ok(NodeState {
                name: name.unwrap_or_default(),
                status: status.and_then(|s| s.chars().next()).unwrap_or('?'),
            })
        })
        .transpose()
    }

    /// Every node of the connected database's group: (name, status).
    pub async fn pgactive_nodes(&self, c: &Client, side: Side) -> Result<Vec<(String, char)>> {
        let rows = c
            .query(
                "SELECT node_name, node_status::text FROM pgactive.pgactive_nodes ORDER BY node_name",
                &[],
            )
            .await
            .map_err(|e| {
                pg_error(&format!("{}: reading pgactive.pgactive_nodes", self.label(side)), &e)
            })?;
        rows.iter()
            .map(|r| {
                let (n, s): (Option<String>, Option<String>) = (r.col(0)?, r.col(1)?);
                Ok((
                    n.unwrap_or_default(),
                    s.and_then(|s| s.chars().next()).unwrap_or('?'),
                ))
            })
            .collect()
    }

    /// Creates the group on the source (`pgactive_create_group`) unless the source is a
    /// node already. Returns what was done.
    pub async fn pgactive_create_group(&self) -> Result<String> {
        let c = self.connect(Side::Source).await?;
        let label = self.label(Side::Source);
        if let Some(n) = self.pgactive_local_node(&c, Side::Source).await? {
            return Ok(format!(
                "source is pgactive node {} ({}) already",
                n.name,
                status_words(n.status)
            ));
        }
        let name = self.pgactive_node_name(Side::Source);
        c.execute(
            "SELECT pgactive.pgactive_create_group(node_name := $1, node_dsn := $2)",
            &[&name, &self.source.replication_conninfo()],
        )
        .await
        .map_err(|e| pg_error(&format!("{label}: pgactive_create_group"), &e))?;
        Ok(format!(
            "pgactive group created on the source (node {name})"
        ))
    }

    /// Joins the target to the source's group (`pgactive_join_group`, with
    /// `data_only_node_init` when `data_only`) unless it is a node already. The join runs in
    /// pgactive's workers: [`pgactive_local_node`](Self::pgactive_local_node) tells when it
    /// is ready. Returns what was done.
    pub async fn pgactive_join(&self, data_only: bool) -> Result<String> {
        let t = self.connect(Side::Target).await?;
        if let Some(n) = self.pgactive_local_node(&t, Side::Target).await? {
            return Ok(format!(
                "target is pgactive node {} ({}) already",
                n.name,
                status_words(n.status)
            ));
        }
        let s = self.connect(Side::Source).await?;
        let taken: Vec<String> = self
            .pgactive_nodes(&s, Side::Source)
            .await?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let base = self.pgactive_node_name(Side::Target);
        let (mut name, mut n) = (base.clone(), 1);
        while taken.contains(&name) {
            n += 1;
            name = format!("{base}_{n}");
        }
        t.execute(
            "SELECT pgactive.pgactive_join_group(node_name := $1, node_dsn := $2, join_using_dsn := $3,
                                                 data_only_node_init := $4)",
            &[
                &name,
                &self.target.replication_conninfo(),
                &self.source.replication_conninfo(),
                &data_only,
            ],
        )
        .await
        .map_err(|e| pg_error(&format!("{}: pgactive_join_group", self.label(Side::Target)), &e))?;
        Ok(format!(
            "target joining the pgactive group as node {name} ({})",
            if data_only {
                "data_only_node_init after pgshift's schema copy"
            } else {
                "full logical join"
            }
        ))
    }

    /// The health of the node on `side` (connection `c`), `None` when it is not a node.
    pub async fn pgactive_health(&self, c: &Client, side: Side) -> Result<Option<Health>> {
        let Some(node) = self.pgactive_local_node(c, side).await? else {
            return Ok(None);
        };
        let ctx = format!(
            "{}: reading pgactive's workers and conflicts",
            self.label(side)
        );
        let r = c
            .query_one(
                "WITH me AS (SELECT sysid, timeline, dboid FROM pgactive.pgactive_get_local_nodeid()),
                      peers AS (SELECT n.node_sysid, n.node_timeline, n.node_dboid FROM pgactive.pgactive_nodes n, me
                                 WHERE (n.node_sysid, n.node_timeline, n.node_dboid) <> (me.sysid, me.timeline, me.dboid)
                                   AND n.node_status <> 'k'),
                      w AS (SELECT * FROM pgactive.pgactive_get_workers_info())
                 SELECT (SELECT count(*) FROM peers p WHERE NOT EXISTS (
                             SELECT 1 FROM w WHERE w.worker_type = 'apply' AND w.pid IS NOT NULL AND NOT w.unregistered
                                AND (w.sysid, w.timeline, w.dboid) = (p.node_sysid, p.node_timeline, p.node_dboid))),
                        (SELECT coalesce(sum(nr_insert_conflict + nr_update_conflict + nr_delete_conflict), 0)::int8
                           FROM pgactive.pgactive_get_stats()),
                        (SELECT count(*) FROM w WHERE w.last_error IS NOT NULL),
                        (SELECT h.conflict_type::text || ' on ' || coalesce(h.object_schema || '.' || h.object_name, '?') || ': ' || h.conflict_resolution::text
                           FROM pgactive.pgactive_conflict_history h WHERE h.object_schema IS DISTINCT FROM 'pgactive'
                          ORDER BY h.conflict_id DESC LIMIT 1),
                        (SELECT w.worker_type || ' worker: ' || w.last_error FROM w WHERE w.last_error IS NOT NULL
                          ORDER BY w.last_error_time DESC NULLS LAST LIMIT 1)",
                &[],
            )
            .await
            .map_err(|e| pg_error(&ctx, &e))?;
        let (missing, conflicts, errors): (i64, i64, i64) = (r.col(0)?, r.col(1)?, r.col(2)?);
        let (last_conflict, last_error): (Option<String>, Option<String>) = (r.col(3)?, r.col(4)?);
        Ok(Some(Health {
            ready: node.status == 'r',
            applying: missing == 0,
            errors: conflicts + errors,
            last: last_error.or(last_conflict),
        }))
    }

    /// The slot of the connected database that feeds its peer (plugin `pgactive`), with its
    /// `confirmed_flush_lsn`, the walsender's `replay_lsn`, the bytes from the current WAL
    /// position to the confirmed one, and the walsender's `replay_lag` in seconds. `None`
    /// when there is none.
    pub async fn pgactive_slot(
        &self,
        c: &Client,
        side: Side,
    ) -> Result<
        Option<(
            String,
            Option<u64>,
            Option<u64>,
            Option<i64>,
            Option<f64>,
            bool,
        )>,
    > {
        let r = c
            .query_opt(
                "SELECT s.slot_name::text, s.confirmed_flush_lsn, r.replay_lsn,
                        pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::int8,
                        extract(epoch FROM r.replay_lag)::float8, r.state IS NOT DISTINCT FROM 'streaming'
                   FROM pg_replication_slots s
                   LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
                  WHERE s.plugin = 'pgactive' AND s.database = current_database()
                  ORDER BY s.active DESC, s.slot_name LIMIT 1",
                &[],
            )
            .await
            .map_err(|e| pg_error(&format!("{}: reading pgactive's slot", self.label(side)), &e))?;
        r.map(|r| {
            let cf: Option<PgLsn> = r.col(1)?;
            let rp: Option<PgLsn> = r.col(2)?;
            Ok((
                r.col(0)?,
                cf.map(u64::from),
                rp.map(u64::from),
                r.col(3)?,
                r.col(4)?,
                r.col(5)?,
            ))
        })
        .transpose()
    }

    /// The schema of pgshift's barrier table: `<p>` (`[replication] object_prefix`).
    fn barrier_table(&self) -> String {
        format!("{}.barrier", super::quote_ident(&self.names.prefix))
    }

    /// Makes pgshift's barrier table on the source (before the schema copy, so that the
    /// target gets it too; a full join copies it as well): `<p>.barrier (side int primary
    /// key, n bigint)`, one row per side, owned by the control-plane user. A switch's
    /// barrier is an update of the serving side's row ([`pgactive_barrier`](Self::pgactive_barrier)):
    /// pgactive applies a peer's transactions in its commit order, so once the other node
    /// shows the new `n`, everything committed before it is applied there. (The slot's
    /// `confirmed_flush_lsn` would tell it too, but pgactive's apply reports it only about
    /// once a second.) Each side updates only its own row: no conflict. Returns what was
    /// done.
    pub async fn pgactive_barrier_setup(&self) -> Result<String> {
        let c = self.connect(Side::Source).await?;
        let t = self.barrier_table();
        c.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; \
             CREATE TABLE IF NOT EXISTS {t} (side int PRIMARY KEY, n bigint NOT NULL, at timestamptz); \
             INSERT INTO {t} VALUES (1, 0, now()), (2, 0, now()) ON CONFLICT (side) DO NOTHING",
            schema = super::quote_ident(&self.names.prefix)
        ))
        .await
        .map_err(|e| pg_error(&format!("{}: creating {t}", self.label(Side::Source)), &e))?;
        Ok(format!("barrier table {t} on the source"))
    }

    /// The barrier on the serving node `side` (connection `c`): its row of the barrier
    /// table moved on, committed with `synchronous_commit = on`. Returns the new `n`.
    pub async fn pgactive_barrier(&self, c: &Client, side: Side) -> Result<i64> {
        let id: i32 = if side == Side::Source { 1 } else { 2 };
        let msgs = c
            .simple_query(&format!(
                "BEGIN; SET LOCAL synchronous_commit = on; \
                 UPDATE {} SET n = n + 1, at = now() WHERE side = {id} RETURNING n; COMMIT",
                self.barrier_table()
            ))
            .await
            .map_err(|e| pg_error(&format!("{}: pgactive barrier", self.label(side)), &e))?;
        super::last_text(&msgs)
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| {
                DriverError::new(format!(
                    "{}: pgactive barrier: {} has no row for the {}",
                    self.label(side),
                    self.barrier_table(),
                    side.as_str()
                ))
            })
    }

    /// The barrier count of `side` as the other node (connection `c`, side `on`) sees it.
    pub async fn pgactive_barrier_seen(&self, c: &Client, on: Side, side: Side) -> Result<i64> {
        let id: i32 = if side == Side::Source { 1 } else { 2 };
        let r = c
            .query_opt(
                &format!("SELECT n FROM {} WHERE side = $1", self.barrier_table()),
                &[&id],
            )
            .await
            .map_err(|e| {
                pg_error(
                    &format!("{}: reading the pgactive barrier", self.label(on)),
                    &e,
                )
            })?;
        Ok(r.map(|r| r.col::<i64>(0)).transpose()?.unwrap_or(-1))
    }

    /// Drops pgshift's barrier schema on `side` (after pgactive left it: DDL is local).
    async fn pgactive_barrier_drop(&self, c: &Client, side: Side) -> Result<Option<String>> {
        let schema = super::quote_ident(&self.names.prefix);
        let has = c
            .query_opt(
                "SELECT 1 FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace
                  WHERE n.nspname = $1 AND t.relname = 'barrier'",
                &[&self.names.prefix],
            )
            .await
            .map_err(|e| pg_error(&format!("{}: reading pg_class", self.label(side)), &e))?
            .is_some();
        if !has {
            return Ok(None);
        }
        c.batch_execute(&format!(
            "DROP TABLE {}; DROP SCHEMA IF EXISTS {schema}",
            self.barrier_table()
        ))
        .await
        .map_err(|e| {
            pg_error(
                &format!("{}: dropping the barrier table", self.label(side)),
                &e,
            )
        })?;
        Ok(Some(format!(
            "barrier table {} dropped on the {}",
            self.barrier_table(),
            side.as_str()
        )))
    }

    /// DetachOld after a cutover to the target: `pgactive_detach_nodes` of the source's node
    /// on the target, then `pgactive_remove()` and `DROP EXTENSION pgactive` on the source.
    /// Each part is skipped when done already. Returns what was done.
    pub async fn pgactive_detach_source(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let t = self.connect(Side::Target).await?;
        let s = self.connect(Side::Source).await?;
        let src_node = self.pgactive_local_node(&s, Side::Source).await?;
        if let Some(n) = &src_node {
            let on_target = self
                .pgactive_nodes(&t, Side::Target)
                .await
                .unwrap_or_default();
            if on_target
                .iter()
                .any(|(name, st)| *name == n.name && *st != 'k')
            {
                t.execute(
                    "SELECT pgactive.pgactive_detach_nodes(ARRAY[$1])",
                    &[&n.name],
                )
                .await
                .map_err(|e| {
                    pg_error(
                        &format!("{}: pgactive_detach_nodes", self.label(Side::Target)),
                        &e,
                    )
                })?;
                out.push(format!("node {} detached on the target", n.name));
            }
        }
        // pgactive_remove() on the source agrees only once the source's own row says `k`,
        // which a detached node never hears from the group (seen: not within 10 s): the
        // target has detached it (checked here), so the source is removed with force.
        let force = match &src_node {
            Some(n) => {
                let on_target = self.pgactive_nodes(&t, Side::Target).await?;
                let detached = on_target
                    .iter()
                    .any(|(name, st)| *name == n.name && *st == 'k');
                if !detached && n.status != 'k' {
                    return Err(DriverError::new(format!(
                        "{}: node {} is not detached on the target; not removing pgactive from the source",
                        self.label(Side::Target),
                        n.name
                    )));
                }
                n.status != 'k'
            }
            None => false,
        };
        out.extend(self.pgactive_remove(&s, Side::Source, force).await?);
        for (c, side) in [(&s, Side::Source), (&t, Side::Target)] {
            out.extend(self.pgactive_barrier_drop(c, side).await?);
        }
        Ok(out)
    }

    /// Rollback before the cutover: the target's node detached on the source and removed
    /// from the target (`pgactive_remove(true)`, `DROP EXTENSION`), then pgactive removed
    /// from the source. `source_only`: the target is absent or deleted next. Returns what was
    /// done.
    pub async fn pgactive_teardown(&self, source_only: bool) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let s = self.connect(Side::Source).await?;
        if !source_only {
            let t = self.connect(Side::Target).await?;
            if let Some(n) = self.pgactive_local_node(&t, Side::Target).await? {
                let on_source = self
                    .pgactive_nodes(&s, Side::Source)
                    .await
                    .unwrap_or_default();
                if on_source
                    .iter()
                    .any(|(name, st)| *name == n.name && *st != 'k')
                {
                    s.execute(
                        "SELECT pgactive.pgactive_detach_nodes(ARRAY[$1])",
                        &[&n.name],
                    )
                    .await
                    .map_err(|e| {
                        pg_error(
                            &format!("{}: pgactive_detach_nodes", self.label(Side::Source)),
                            &e,
                        )
                    })?;
                    out.push(format!("node {} detached on the source", n.name));
                }
            }
            out.extend(self.pgactive_remove(&t, Side::Target, true).await?);
            out.extend(self.pgactive_barrier_drop(&t, Side::Target).await?);
        }
        out.extend(self.pgactive_remove(&s, Side::Source, true).await?);
        out.extend(self.pgactive_barrier_drop(&s, Side::Source).await?);
        Ok(out)
    }

    /// `pgactive_remove(force)` then `DROP EXTENSION pgactive` on `side`, when there.
    async fn pgactive_remove(&self, c: &Client, side: Side, force: bool) -> Result<Vec<String>> {
        let label = self.label(side);
        let mut out = Vec::new();
        if self.pgactive_local_node(c, side).await?.is_some() {
            c.execute("SELECT pgactive.pgactive_remove($1)", &[&force])
                .await
                .map_err(|e| pg_error(&format!("{label}: pgactive_remove"), &e))?;
            out.push(format!("pgactive removed from the {}", side.as_str()));
        }
        let has = c
            .query_opt("SELECT 1 FROM pg_extension WHERE extname = 'pgactive'", &[])
            .await
            .map_err(|e| pg_error(&format!("{label}: reading pg_extension"), &e))?
            .is_some();
        if has {
            // pgactive_remove ends its workers asynchronously; the extension can go once
            // they are gone.
            let mut tries = 0;
            loop {
                match c.batch_execute("DROP EXTENSION pgactive").await {
                    Ok(()) => break,
                    Err(e) if tries < 50 && e.code().is_some_and(|c| c.code() == "55006") => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        return Err(pg_error(&format!("{label}: DROP EXTENSION pgactive"), &e))
                    }
                }
            }
            out.push(format!(
                "extension pgactive dropped on the {}",
                side.as_str()
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_settings_are_read_as_postgresql_reads_them() {
        assert_eq!(
            list_items("pgoutput, test_decoding, pgactive"),
            ["pgoutput", "test_decoding", "pgactive"]
        );
        assert_eq!(
            list_items("\"pgoutput, test_decoding, pgactive\""),
            ["pgoutput, test_decoding, pgactive"]
        );
        assert_eq!(list_items("\"a\"\"b\", c"), ["a\"b", "c"]);
        assert!(list_items("").is_empty());
        assert!(list_items(" , ").is_empty());
    }
}
