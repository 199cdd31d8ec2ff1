//! FORCE RESYNC TABLE with native logical replication: copying one table to the target again,
//! consistently, while replication of the others goes on. The steps, in order:
//! [`Logical::resync_plan`], [`Logical::resync_exclude`], [`Logical::resync_empty`],
//! [`Logical::resync_include`], [`Logical::resync_wait_copied`], [`Logical::resync_cleanup`].
//! The controller runs them ([`crate::Controller::force_resync`]).

use super::{pg_error, quote_ident, Direction, DriverError, Logical, Result, RowExt, USER_SCHEMA};
use crate::Side;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio_postgres::types::Oid;
use tokio_postgres::Client;

/// What a resync will do, worked out on both servers before anything changes
/// ([`Logical::resync_plan`]). Table names are `schema.table`, each part quoted where SQL
/// needs it (`format('%I.%I')`), as the servers print them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncPlan {
    /// The table asked for.
    pub table: String,
    /// Every table copied again: `table` first, then the tables of the publication that the
    /// forward subscription does not hold (an earlier resync that did not finish, or tables
    /// added to the source and the target after the subscription was made).
    pub tables: Vec<String>,
    /// The tables of the publication that stay replicated meanwhile: those of
    /// `<p>_resync_pub`.
    pub keep: Vec<String>,
    /// Tables of `tables` that other target tables' foreign keys reference: emptied with
    /// `DELETE` under `session_replication_role = replica` (TRUNCATE refuses them).
    pub referenced: Vec<String>,
}

impl Logical {
    /// Resolves `name` on the source and checks that a resync can be done, changing nothing.
    ///
    /// `name`: `schema.table` or `table` in SQL syntax (`to_regclass`, the source's search
    /// path), else a plain `table` or `schema.table` that names exactly one user table.
    ///
    /// Errors: unknown or ambiguous name; not a table (view, sequence...); a partitioned
    /// table (its partitions hold the rows: resync them); unlogged or temporary (never
    /// replicated); not in publication `<p>_pub`; the publication or the forward
    /// subscription missing; tables of the publication missing on the target.
    pub async fn resync_plan(&self, src: &Client, tgt: &Client, name: &str) -> Result<ResyncPlan> {
        let table = self.resolve_table(src, name).await?;
        let pubname = &self.names.publication;
        let exists = src
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[pubname],
            )
            .await
            .map_err(|e| {
                pg_error(
                    &format!("{}: publication {pubname}", self.label(Side::Source)),
                    &e,
                )
            })?;
        if exists.is_none() {
            return Err(DriverError::new(format!(
                "publication {pubname} is missing on the {}: replication is not set up",
                self.label(Side::Source)
            )));
        }
        let published = self.publication_tables(src, pubname).await?;
        if !published.contains(&table) {
            return Err(DriverError::new(format!(
                "{table} is not in publication {pubname} on the source, so it is not replicated to the target (unlogged and temporary tables never are)"
            )));
        }
        let (subid, _) = self.forward_subscription(tgt).await?;
        let held = self.subscription_tables(tgt, subid).await?;
        let list: Vec<String> = published.iter().cloned().collect();
        let rows = tgt
            .query(
                "SELECT x FROM unnest($1::text[]) x WHERE pg_catalog.to_regclass(x) IS NULL ORDER BY 1",
                &[&list],
            )
            .await
            .map_err(|e| pg_error(&format!("{}: looking up the published tables", self.label(Side::Target)), &e))?;
        let missing: Vec<String> = rows.iter().map(|r| r.col(0)).collect::<Result<_>>()?;
        if !missing.is_empty() {
            return Err(DriverError::new(format!(
                "the target lacks table(s) of publication {pubname}: {}; create them on the target first (the schema is not replicated)",
                missing.join(", ")
            )));
        }
        let mut tables = vec![table.clone()];
        tables.extend(
            published
                .iter()
                .filter(|t| !held.contains_key(*t) && **t != table)
                .cloned(),
        );
        let keep: Vec<String> = published
            .iter()
            .filter(|t| !tables.contains(t))
            .cloned()
            .collect();
        let rows = tgt
            .query(
                "WITH r AS (SELECT pg_catalog.to_regclass(x)::oid AS oid FROM unnest($1::text[]) x)
                 SELECT DISTINCT format('%I.%I', n.nspname, c.relname)
                   FROM pg_constraint k
                   JOIN pg_class c ON c.oid = k.confrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE k.contype = 'f' AND k.confrelid IN (SELECT oid FROM r)
                    AND k.conrelid NOT IN (SELECT oid FROM r)
                  ORDER BY 1",
                &[&tables],
            )
            .await
            .map_err(|e| {
                pg_error(
                    &format!("{}: reading foreign keys", self.label(Side::Target)),
                    &e,
                )
            })?;
        let referenced: Vec<String> = rows.iter().map(|r| r.col(0)).collect::<Result<_>>()?;
        Ok(ResyncPlan {
            table,
            tables,
            keep,
            referenced,
        })
    }

    /// `format('%I.%I')` of the table `name` names on the source (see
    /// [`resync_plan`](Self::resync_plan)).
    async fn resolve_table(&self, src: &Client, name: &str) -> Result<String> {
        let ctx = format!("{}: looking up table {name}", self.label(Side::Source));
        const COLS: &str =
            "SELECT format('%I.%I', n.nspname, c.relname), c.relkind::text, c.relpersistence::text
                              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace";
        let by_syntax = match src
            .query_opt(
                &format!("{COLS} WHERE c.oid = pg_catalog.to_regclass($1)"),
                &[&name],
            )
            .await
        {
            Ok(r) => r,
            // Not a valid name in SQL syntax (e.g. too many dots): try it as written.
            Err(e) if e.as_db_error().is_some() => None,
            Err(e) => return Err(pg_error(&ctx, &e)),
        };
        let row = match by_syntax {
            Some(r) => r,
            None => {
                let mut rows = src
                    .query(
                        &format!(
                            "{COLS} WHERE (c.relname = $1 OR n.nspname || '.' || c.relname = $1)
                               AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {USER_SCHEMA} ORDER BY 1"
                        ),
                        &[&name],
                    )
                    .await
                    .map_err(|e| pg_error(&ctx, &e))?;
                match rows.len() {
                    0 => {
                        return Err(DriverError::new(format!(
                            "unknown table {name}: no such table on the {} (give it as schema.table; quote mixed-case names: public.\"Mixed Case\")",
                            self.label(Side::Source)
                        )))
                    }
                    1 => rows.remove(0),
                    _ => {
                        let names: Vec<String> = rows.iter().map(|r| r.col(0)).collect::<Result<_>>()?;
                        return Err(DriverError::new(format!(
                            "table name {name} is ambiguous on the source: {}; give it as schema.table",
                            names.join(", ")
                        )));
                    }
                }
            }
        };
        let (q, kind, persistence): (String, String, String) =
            (row.col(0)?, row.col(1)?, row.col(2)?);
        match kind.as_str() {
            "r" => {}
            "p" => {
                return Err(DriverError::new(format!(
                    "{q} is a partitioned table: its rows are in its partitions, which are replicated one by one; FORCE RESYNC TABLE each partition"
                )))
            }
            "v" | "m" => {
                return Err(DriverError::new(format!(
                    "{q} is a {}view, not a table: views are not replicated",
                    if kind == "m" { "materialized " } else { "" }
                )))
            }
            k => {
                return Err(DriverError::new(format!(
                    "{q} is not a table (relkind {k}); only tables are replicated"
                )))
            }
        }
        match persistence.as_str() {
            "u" => Err(DriverError::new(format!(
                "{q} is unlogged: logical replication does not carry unlogged tables, so it is not in publication {}",
                self.names.publication
            ))),
            "t" => Err(DriverError::new(format!("{q} is a temporary table: it is not replicated"))),
            _ => Ok(q),
        }
    }

    /// Tables of publication `name` on the connected publisher (`pg_publication_tables`), as
    /// `format('%I.%I')`.
    async fn publication_tables(&self, c: &Client, name: &str) -> Result<BTreeSet<String>> {
        let rows = c
            .query(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_publication_tables WHERE pubname = $1",
                &[&name],
            )
            .await
            .map_err(|e| pg_error(&format!("{}: tables of publication {name}", self.label(Side::Source)), &e))?;
        rows.iter().map(|r| r.col(0)).collect()
    }

    /// The forward subscription on the target: its oid and publications.
    async fn forward_subscription(&self, tgt: &Client) -> Result<(Oid, Vec<String>)> {
        let name = &self.names.forward;
        let r = tgt
            .query_opt(
                "SELECT s.oid, s.subpublications::text[] FROM pg_subscription s
                  WHERE s.subname = $1 AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[name],
            )
            .await
            .map_err(|e| pg_error(&format!("{}: reading subscription {name}", self.label(Side::Target)), &e))?;
        let Some(r) = r else {
            return Err(DriverError::new(format!(
                "subscription {name} is missing on the {}: forward replication is not running",
                self.label(Side::Target)
            )));
        };
        Ok((r.col(0)?, r.col(1)?))
    }

    /// The tables of subscription `subid` on the target (`pg_subscription_rel`) and their
    /// states (`i` init, `d` copying, `f` copied, `s` synchronised, `r` ready).
    async fn subscription_tables(
        &self,
        tgt: &Client,
        subid: Oid,
    ) -> Result<BTreeMap<String, String>> {
        let rows = tgt
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname), sr.srsubstate::text
                   FROM pg_subscription_rel sr
                   JOIN pg_class c ON c.oid = sr.srrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE sr.srsubid = $1",
                &[&subid],
            )
            .await
            .map_err(|e| {
                pg_error(
                    &format!(
                        "{}: tables of subscription {}",
                        self.label(Side::Target),
                        self.names.forward
                    ),
                    &e,
                )
            })?;
        rows.iter().map(|r| Ok((r.col(0)?, r.col(1)?))).collect()
    }

    /// Pids of the forward subscription's apply worker(s) on the target.
    async fn apply_pids(&self, tgt: &Client) -> Result<Vec<i32>> {
        let name = &self.names.forward;
        let rows = tgt
            .query(
                "SELECT pid FROM pg_stat_subscription WHERE subname = $1 AND relid IS NULL AND pid IS NOT NULL",
                &[name],
            )
            .await
            .map_err(|e| pg_error(&format!("{}: workers of subscription {name}", self.label(Side::Target)), &e))?;
        rows.iter().map(|r| r.col(0)).collect()
    }

    /// Waits until the forward subscription has applied source position `x` (the slot's
    /// `confirmed_flush_lsn` alone when `flushed`, else also the walsender's `replay_lsn`),
    /// at most `timeout`.
    async fn wait_forward_applied(
        &self,
        src: &Client,
        x: u64,
        flushed: bool,
        timeout: Duration,
        what: &str,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            let a = self.applied(src, Direction::Forward).await?;
            let at = if flushed {
                a.confirmed_flush
            } else {
                a.position()
            };
            if at.is_some_and(|p| p >= x) {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(DriverError::temporary(format!(
                    "{what}: the target has not applied the source's position {} within {} ms (applied up to {})",
                    super::fmt_lsn(x),
                    timeout.as_millis(),
                    at.map(super::fmt_lsn).unwrap_or_else(|| "nothing".into())
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Makes `<p>_resync_pub` on the source publish exactly `keep`, with the publish options
    /// of `<p>_pub`. Returns what was done.
    async fn ensure_resync_publication(&self, src: &Client, keep: &[String]) -> Result<String> {
        let rp = &self.names.resync_publication;
        let main = &self.names.publication;
        let ctx = format!("{}: publication {rp}", self.label(Side::Source));
        let opts = src
            .query_one(
                "SELECT pubinsert, pubupdate, pubdelete,
                        COALESCE((to_jsonb(p) ->> 'pubtruncate')::bool, true),
                        COALESCE((to_jsonb(p) ->> 'pubviaroot')::bool, false)
                   FROM pg_publication p WHERE pubname = $1",
                &[main],
            )
            .await
            .map_err(|e| {
                pg_error(
                    &format!("{}: publication {main}", self.label(Side::Source)),
                    &e,
                )
            })?;
        let mut publish = Vec::new();
        for (i, op) in ["insert", "update", "delete", "truncate"]
            .iter()
            .enumerate()
        {
            if opts.col::<bool>(i)? {
                publish.push(*op);
            }
        }
        let with = format!(
            " WITH (publish = '{}'{})",
            publish.join(", "),
            if opts.col::<bool>(4)? {
                ", publish_via_partition_root = true"
            } else {
                ""
            }
        );
        let existing = src
            .query_opt(
                "SELECT puballtables FROM pg_publication WHERE pubname = $1",
                &[rp],
            )
            .await
            .map_err(|e| pg_error(&ctx, &e))?
            .map(|r| r.col::<bool>(0))
            .transpose()?;
        let create = format!(
            "CREATE PUBLICATION {}{}{with}",
            quote_ident(rp),
            if keep.is_empty() {
                String::new()
            } else {
                format!(" FOR TABLE {}", keep.join(", "))
            }
        );
        match existing {
            None => {
                src.batch_execute(&create)
                    .await
                    .map_err(|e| pg_error(&format!("{ctx}: create"), &e))?;
                Ok(format!("created publication {rp} ({} tables)", keep.len()))
            }
            Some(true) => {
                src.batch_execute(&format!("DROP PUBLICATION {}; {create}", quote_ident(rp)))
                    .await
                    .map_err(|e| pg_error(&format!("{ctx}: re-create"), &e))?;
                Ok(format!(
                    "re-created publication {rp} ({} tables)",
                    keep.len()
                ))
            }
            Some(false) => {
                let current = self.publication_tables(src, rp).await?;
                let want: BTreeSet<&String> = keep.iter().collect();
                let add: Vec<&str> = keep
                    .iter()
                    .filter(|t| !current.contains(*t))
                    .map(String::as_str)
                    .collect();
                let drop: Vec<&str> = current
                    .iter()
                    .filter(|t| !want.contains(t))
                    .map(String::as_str)
                    .collect();
                let mut sql = String::new();
                if !add.is_empty() {
                    sql.push_str(&format!(
                        "ALTER PUBLICATION {} ADD TABLE {};",
                        quote_ident(rp),
                        add.join(", ")
                    ));
                }
                if !drop.is_empty() {
                    sql.push_str(&format!(
                        "ALTER PUBLICATION {} DROP TABLE {};",
                        quote_ident(rp),
                        drop.join(", ")
                    ));
                }
                if !sql.is_empty() {
                    src.batch_execute(&sql)
                        .await
                        .map_err(|e| pg_error(&format!("{ctx}: alter"), &e))?;
                }
                Ok(format!(
                    "publication {rp} exists ({} tables; {} added, {} dropped)",
                    keep.len(),
                    add.len(),
                    drop.len()
                ))
            }
        }
    }

    /// Waits until every transaction that holds a transaction id on the source now has ended
    /// (`txid_snapshot_xmin` of a later snapshot reaches `txid_snapshot_xmax` of the current
    /// one), at most `timeout`. Returns how long it waited.
    async fn wait_xact_horizon(&self, src: &Client, timeout: Duration) -> Result<Duration> {
        let ctx = format!(
            "{}: waiting for running transactions",
            self.label(Side::Source)
        );
        let xmax: i64 = src
            .query_one("SELECT txid_snapshot_xmax(txid_current_snapshot())", &[])
            .await
            .map_err(|e| pg_error(&ctx, &e))?
            .col(0)?;
        let start = Instant::now();
        loop {
            let passed: bool = src
                .query_one(
                    "SELECT txid_snapshot_xmin(txid_current_snapshot()) >= $1",
                    &[&xmax],
                )
                .await
                .map_err(|e| pg_error(&ctx, &e))?
                .col(0)?;
            if passed {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                let rows = src
                    .query(
                        "SELECT format('pid %s (%s, %s, for %s s: %s)', pid, datname, state,
                                       COALESCE(extract(epoch FROM now() - xact_start)::int8, 0),
                                       left(regexp_replace(COALESCE(query, ''), '\\s+', ' ', 'g'), 60))
                           FROM pg_stat_activity
                          WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
                          ORDER BY xact_start LIMIT 5",
                        &[],
                    )
                    .await
                    .map_err(|e| pg_error(&ctx, &e))?;
                let open: Vec<String> = rows.iter().map(|r| r.col(0)).collect::<Result<_>>()?;
                let prepared: i64 = src
                    .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
                    .await
                    .map_err(|e| pg_error(&ctx, &e))?
                    .col(0)?;
                return Err(DriverError::temporary(format!(
                    "{ctx}: transactions that started before the resync are still open after {} ms: {}{}; they must end first (their changes are decoded with the catalog of their start, which does not have publication {})",
                    timeout.as_millis(),
                    if open.is_empty() { "none in pg_stat_activity".to_string() } else { open.join("; ") },
                    if prepared > 0 { format!("; {prepared} prepared transaction(s) in pg_prepared_xacts") } else { String::new() },
                    self.names.resync_publication
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resync step 1: takes the tables of `plan` out of the forward subscription, so that
    /// nothing is applied to them any more, while every other table stays replicated.
    ///
    /// Why this way: `<p>_pub` is `FOR ALL TABLES`, from which PostgreSQL cannot drop a table
    /// (`ALTER PUBLICATION .. DROP TABLE` is for table lists). Instead the subscription is
    /// pointed at `<p>_resync_pub`, a publication of every other table (`plan.keep`), with
    /// `ALTER SUBSCRIPTION <p>_fwd SET PUBLICATION <p>_resync_pub WITH (refresh = true,
    /// copy_data = false)`: the refresh removes the missing tables from
    /// `pg_subscription_rel` (and stops a table synchronisation worker still copying one) and
    /// adds nothing; the apply worker restarts and streams from its replication origin's
    /// position through the slot with the new publication (PostgreSQL docs, "ALTER
    /// SUBSCRIPTION"). The slot and the apply position stay: nothing of the other tables is
    /// lost or applied twice.
    ///
    /// Before the switch: the publisher decodes each transaction with the catalog as of its
    /// changes, and a walsender asked for a publication that did not exist then fails
    /// ("publication does not exist") on every restart. So after creating (or altering)
    /// `<p>_resync_pub` this waits until every transaction that was open on the source has
    /// ended, then until the subscription has confirmed the source's current position: what
    /// the restarted walsender sends after that began after the publication existed.
    ///
    /// After the switch: waits until the apply worker that ran before it has exited (it is
    /// ended after 3 s if it has not noticed) and the target has applied the source's
    /// position taken after the switch, so that no change to those tables is applied after
    /// this returns. Every wait is bounded by `timeout`. Returns what was done.
    pub async fn resync_exclude(
        &self,
        src: &Client,
        tgt: &Client,
        plan: &ResyncPlan,
        timeout: Duration,
    ) -> Result<String> {
        let t0 = Instant::now();
        let made = self.ensure_resync_publication(src, &plan.keep).await?;
        let waited = self
            .wait_xact_horizon(src, timeout.max(Duration::from_secs(60)))
            .await?;
        let y = self.current_lsn(src, Side::Source).await?;
        self.wait_forward_applied(src, y, true, timeout, "before leaving the publication")
            .await?;
        let sub = &self.names.forward;
        let rp = &self.names.resync_publication;
        let pids0 = self.apply_pids(tgt).await?;
        tgt.batch_execute(&format!(
            "ALTER SUBSCRIPTION {} SET PUBLICATION {} WITH (refresh = true, copy_data = false)",
            quote_ident(sub),
            quote_ident(rp)
        ))
        .await
        .map_err(|e| {
            pg_error(
                &format!(
                    "{}: pointing subscription {sub} at publication {rp}",
                    self.label(Side::Target)
                ),
                &e,
            )
        })?;
        let x = self.current_lsn(src, Side::Source).await?;
        let start = Instant::now();
        let mut ended = false;
        loop {
            let pids = self.apply_pids(tgt).await?;
            let old: Vec<i32> = pids.iter().copied().filter(|p| pids0.contains(p)).collect();
            if old.is_empty() {
                let a = self.applied(src, Direction::Forward).await?;
                if a.position().is_some_and(|p| p >= x) {
                    break;
                }
            } else if !ended && start.elapsed() >= Duration::from_secs(3) {
                ended = true;
                tgt.query(
                    "SELECT pg_terminate_backend(pid) FROM unnest($1::int4[]) pid",
                    &[&old],
                )
                .await
                .map_err(|e| {
                    pg_error(
                        &format!(
                            "{}: ending the apply worker of {sub}",
                            self.label(Side::Target)
                        ),
                        &e,
                    )
                })?;
            }
            if start.elapsed() >= timeout {
                return Err(DriverError::temporary(format!(
                    "subscription {sub} on publication {rp}: {} within {} ms",
                    if old.is_empty() {
                        format!(
                            "the restarted apply worker has not applied the source's position {}",
                            super::fmt_lsn(x)
                        )
                    } else {
                        format!("the apply worker (pid {old:?}) has not restarted")
                    },
                    timeout.as_millis()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(format!(
            "out of replication in {} ms ({made}; open transactions waited for {} ms; subscription {sub} on {rp}, apply worker restarted and caught up to {})",
            t0.elapsed().as_millis(),
            waited.as_millis(),
            super::fmt_lsn(x)
        ))
    }

    /// Resync step 2: empties the tables of `plan` on the target, in one transaction under
    /// `session_replication_role = replica` (user and foreign-key triggers do not fire, as
    /// when replication applies): `TRUNCATE ONLY` for tables no other table references,
    /// `DELETE FROM ONLY` for the others. Waits at most `timeout` for locks.
    pub async fn resync_empty(
        &self,
        tgt: &Client,
        plan: &ResyncPlan,
        timeout: Duration,
    ) -> Result<String> {
        let plain: Vec<&str> = plan
            .tables
            .iter()
            .filter(|t| !plan.referenced.contains(t))
            .map(String::as_str)
            .collect();
        let referenced: Vec<&str> = plan
            .tables
            .iter()
            .filter(|t| plan.referenced.contains(t))
            .map(String::as_str)
            .collect();
        let ms = timeout.as_millis();
        let mut sql = format!(
            "BEGIN; SET LOCAL session_replication_role = replica; SET LOCAL lock_timeout = {ms}; SET LOCAL statement_timeout = 0; "
        );
        if !plain.is_empty() {
            sql.push_str(&format!("TRUNCATE ONLY {}; ", plain.join(", ")));
        }
        for t in &referenced {
            sql.push_str(&format!("DELETE FROM ONLY {t}; "));
        }
        sql.push_str("COMMIT");
        if let Err(e) = tgt.batch_execute(&sql).await {
            let _ = tgt.batch_execute("ROLLBACK").await;
            return Err(pg_error(
                &format!(
                    "{}: emptying {}",
                    self.label(Side::Target),
                    plan.tables.join(", ")
                ),
                &e,
            ));
        }
        let mut parts = Vec::new();
        if !plain.is_empty() {
            parts.push(format!("TRUNCATE {}", plain.join(", ")));
        }
        if !referenced.is_empty() {
            parts.push(format!(
                "DELETE {} (referenced by foreign keys)",
                referenced.join(", ")
            ));
        }
        Ok(format!("emptied on the target ({})", parts.join("; ")))
    }

    /// Resync step 3: points the forward subscription back at `<p>_pub` with the initial copy
    /// of what it adds: `ALTER SUBSCRIPTION <p>_fwd SET PUBLICATION <p>_pub WITH (refresh =
    /// true, copy_data = true)`. The tables left out are added in state `i`; a table
    /// synchronisation worker copies each from a consistent snapshot of the source and
    /// catches up from there (PostgreSQL docs, "Logical Replication › Architecture › Initial
    /// Snapshot"), while the apply worker skips their changes until it hands over.
    pub async fn resync_include(&self, tgt: &Client) -> Result<String> {
        let sub = &self.names.forward;
        let main = &self.names.publication;
        tgt.batch_execute(&format!(
            "ALTER SUBSCRIPTION {} SET PUBLICATION {} WITH (refresh = true, copy_data = true)",
            quote_ident(sub),
            quote_ident(main)
        ))
        .await
        .map_err(|e| {
            pg_error(
                &format!(
                    "{}: pointing subscription {sub} back at publication {main}",
                    self.label(Side::Target)
                ),
                &e,
            )
        })?;
        Ok(format!(
            "subscription {sub} back on {main} (copy_data = true)"
        ))
    }

    /// Resync step 4: waits (polling every `poll`, at most `copy_timeout`) until every table
    /// of `plan` is synchronised again (`pg_subscription_rel.srsubstate` `s` or `r`), then (at
    /// most `catchup_timeout`) until the target has applied the source's current position.
    /// Fails at once when the target counts a failed table copy
    /// (`pg_stat_subscription_stats.sync_error_count`, PostgreSQL 15+).
    pub async fn resync_wait_copied(
        &self,
        src: &Client,
        tgt: &Client,
        plan: &ResyncPlan,
        poll: Duration,
        copy_timeout: Duration,
        catchup_timeout: Duration,
    ) -> Result<String> {
        let (subid, _) = self.forward_subscription(tgt).await?;
        let errors0 = self.sync_errors(tgt).await?;
        let start = Instant::now();
        loop {
            let states = self.subscription_tables(tgt, subid).await?;
            let pending: Vec<String> = plan
                .tables
                .iter()
                .filter_map(|t| match states.get(t).map(String::as_str) {
                    Some("r") | Some("s") => None,
                    Some(s) => Some(format!("{t} ({s})")),
                    None => Some(format!("{t} (not in the subscription)")),
                })
                .collect();
            if pending.is_empty() {
                break;
            }
            if let (Some(a), Some(b)) = (errors0, self.sync_errors(tgt).await?) {
                if b > a {
                    return Err(DriverError::new(format!(
                        "copying {} failed on the {} (pg_stat_subscription_stats.sync_error_count {a} -> {b}); see its log",
                        pending.join(", "),
                        self.label(Side::Target)
                    )));
                }
            }
            if start.elapsed() >= copy_timeout {
                return Err(DriverError::temporary(format!(
                    "the copy is not done after {} ms ([upgrade.timeouts] wait_for_sync_ms): {}",
                    copy_timeout.as_millis(),
                    pending.join(", ")
                )));
            }
            tokio::time::sleep(poll).await;
        }
        let copied = start.elapsed();
        let x = self.current_lsn(src, Side::Source).await?;
        self.wait_forward_applied(src, x, false, catchup_timeout, "after the copy")
            .await?;
        Ok(format!(
            "copied from a consistent snapshot of the source in {:.1} s and caught up to {} in {:.1} s",
            copied.as_secs_f64(),
            super::fmt_lsn(x),
            (start.elapsed() - copied).as_secs_f64()
        ))
    }

    /// `pg_stat_subscription_stats.sync_error_count` of the forward subscription (PostgreSQL
    /// 15+; `None` before).
    async fn sync_errors(&self, tgt: &Client) -> Result<Option<i64>> {
        let name = &self.names.forward;
        let r = tgt
            .query_one(
                "SELECT current_setting('server_version_num')::int4 >= 150000",
                &[],
            )
            .await
            .map_err(|e| pg_error(&format!("{}: server version", self.label(Side::Target)), &e))?;
        if !r.col::<bool>(0)? {
            return Ok(None);
        }
        let r = tgt
            .query_opt(
                "SELECT sync_error_count FROM pg_stat_subscription_stats WHERE subname = $1",
                &[name],
            )
            .await
            .map_err(|e| {
                pg_error(
                    &format!("{}: statistics of {name}", self.label(Side::Target)),
                    &e,
                )
            })?;
        r.map(|r| r.col::<i64>(0)).transpose()
    }

    /// Resync step 5: drops `<p>_resync_pub` on the source. Returns whether it existed.
    pub async fn resync_cleanup(&self) -> Result<bool> {
        self.drop_publication(Side::Source, &self.names.resync_publication)
            .await
    }

    /// What keeps the forward subscription (on the connected target) from holding every table
    /// synchronised: `None` when it subscribes to `<p>_pub` alone and every table of it is in
    /// state `s` or `r` (or the subscription is missing: the caller checks that). The cutover
    /// refuses otherwise (an unfinished FORCE RESYNC TABLE).
    pub async fn forward_problem(&self, tgt: &Client) -> Result<Option<String>> {
        let name = &self.names.forward;
        let main = &self.names.publication;
        let r = tgt
            .query_opt(
                "SELECT s.subpublications::text[],
                        ARRAY(SELECT format('%I.%I', n.nspname, c.relname) || ' (' || sr.srsubstate::text || ')'
                                FROM pg_subscription_rel sr
                                JOIN pg_class c ON c.oid = sr.srrelid
                                JOIN pg_namespace n ON n.oid = c.relnamespace
                               WHERE sr.srsubid = s.oid AND sr.srsubstate NOT IN ('r', 's')
                               ORDER BY 1 LIMIT 10)
                   FROM pg_subscription s
                  WHERE s.subname = $1 AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[name],
            )
            .await
            .map_err(|e| pg_error(&format!("{}: reading subscription {name}", self.label(Side::Target)), &e))?;
        let Some(r) = r else { return Ok(None) };
        let pubs: Vec<String> = r.col(0)?;
        let pending: Vec<String> = r.col(1)?;
        if pubs != [main.clone()] {
            return Ok(Some(format!(
                "subscription {name} subscribes to {} instead of {main}: a FORCE RESYNC TABLE did not finish; run it again",
                pubs.join(", ")
            )));
        }
        if !pending.is_empty() {
            return Ok(Some(format!(
                "tables not synchronised on the target: {} (a FORCE RESYNC TABLE under way or unfinished, or the initial copy)",
                pending.join(", ")
            )));
        }
        Ok(None)
    }
}
