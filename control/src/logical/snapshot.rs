//! The initial copy of the `mirror` driver, for sources without logical decoding: every user
//! table copied from one exported snapshot of the source (PostgreSQL docs 9.27.5, "Snapshot
//! Synchronization Functions") to the target with `COPY`, by parallel workers that all see the
//! same data. No publication, slot or subscription; the SQL sent to the source runs on
//! PostgreSQL 9.2 and later (`pg_export_snapshot`, `SET TRANSACTION SNAPSHOT`, `COPY`).
//!
//! The steps: [`Logical::export_snapshot`] opens the transaction that holds the snapshot,
//! [`Logical::copy_snapshot`] copies as of it, [`ExportedSnapshot::release`] ends it. The
//! target must already hold the schema ([`Logical::copy_schema`]).

use super::{
    pg_error, quote_ident, quote_literal, DriverError, Logical, Result, RowExt, USER_SCHEMA,
};
use crate::Side;
use futures_util::{pin_mut, SinkExt, TryStreamExt};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::task::JoinSet;
use tokio_postgres::Client;

/// Session settings of every connection the copy opens, set where the server knows them
/// (`pg_settings` lists only its own: `idle_in_transaction_session_timeout` is 9.6+,
/// `transaction_timeout` 17+): a server default must not end the exporting transaction while
/// it waits, nor a long `COPY`.
const NO_TIMEOUTS: &str = "SELECT pg_catalog.set_config(name, '0', false) FROM pg_catalog.pg_settings
  WHERE name IN ('statement_timeout', 'idle_in_transaction_session_timeout', 'transaction_timeout')";

/// A transaction on the source holding an exported snapshot (PostgreSQL docs 9.27.5,
/// "Snapshot Synchronization Functions"). The snapshot can be imported only while this
/// transaction is open: keep the value alive until every copy has started
/// ([`Logical::copy_snapshot`] imports it once per worker, at its start). Dropping it closes the
/// connection, which ends the transaction; [`release`](Self::release) does so explicitly.
pub struct ExportedSnapshot {
    /// The snapshot identifier `pg_export_snapshot()` returned (for example
    /// `00000003-0000001B-1`): what `SET TRANSACTION SNAPSHOT` takes.
    pub id: String,
    /// The source connection whose `REPEATABLE READ READ ONLY` transaction exported it.
    client: Client,
    /// `source (host:port/db)`, for messages.
    label: String,
}

impl std::fmt::Debug for ExportedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportedSnapshot")
            .field("id", &self.id)
            .field("server", &self.label)
            .finish()
    }
}

impl ExportedSnapshot {
    /// Ends the exporting transaction (`COMMIT`; it changed nothing) and closes its connection.
    /// Copies that already imported the snapshot go on; new imports fail. Errors name the server.
    pub async fn release(self) -> Result<()> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| pg_error(&format!("{}: ending snapshot {}", self.label, self.id), &e))
    }
}

/// What [`Logical::copy_snapshot`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CopyReport {
    /// Tables copied (plain tables and leaf partitions).
    pub tables: usize,
    /// Rows written to the target, as its `COPY ... FROM STDIN` counted them.
    pub rows: u64,
    /// Bytes of `COPY` text-format data moved from the source to the target.
    pub bytes: u64,
    /// Wall-clock time of the whole copy, in milliseconds.
    pub ms: u64,
}

/// One table to copy, as listed on the source within the snapshot.
#[derive(Debug, Clone)]
struct Table {
    /// `format('%I.%I')`: the name in messages and in `to_regclass` on the target.
    name: String,
    /// `"schema"."table"` for SQL.
    sql: String,
    /// `("a", "b")`, or empty when the table has no copyable column (`COPY` then takes none).
    columns: String,
    /// `pg_relation_size` on the source, in bytes.
    size: i64,
    /// Other target tables' foreign keys reference it: emptied with `DELETE` (TRUNCATE
    /// refuses such a table, PostgreSQL docs, "TRUNCATE").
    referenced: bool,
}

/// What one worker did.
#[derive(Debug, Default)]
struct Done {
    tables: usize,
    rows: u64,
    bytes: u64,
}

impl Logical {
    /// Opens a fresh source connection and exports a snapshot from it: `BEGIN ISOLATION LEVEL
    /// REPEATABLE READ READ ONLY; SELECT pg_export_snapshot()` (PostgreSQL 9.2+; docs 9.27.5).
    /// The transaction stays open as long as the returned value lives, without a timeout
    /// (`statement_timeout`, `idle_in_transaction_session_timeout`, `transaction_timeout` set
    /// to 0 for that session), so it holds back the source's VACUUM meanwhile: release it once
    /// the copy has started ([`copy_snapshot`](Self::copy_snapshot) imports it at the start).
    ///
    /// Errors name the source (`self.label(Side::Source)`): connection refused, or a server
    /// that cannot export (a standby before 10, for instance).
    pub async fn export_snapshot(&self) -> Result<ExportedSnapshot> {
        let label = self.label(Side::Source);
        let client = self.connect(Side::Source).await?;
        client
            .batch_execute(NO_TIMEOUTS)
            .await
            .map_err(|e| pg_error(&format!("{label}: preparing the exporting session"), &e))?;
        let rows = client
            .simple_query(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT pg_catalog.pg_export_snapshot()",
            )
            .await
            .map_err(|e| pg_error(&format!("{label}: exporting a snapshot"), &e))?;
        let id = super::last_text(&rows).ok_or_else(|| {
            DriverError::new(format!(
                "{label}: pg_export_snapshot() returned no identifier"
            ))
        })?;
        tracing::info!(server = %label, snapshot = %id, "snapshot exported");
        Ok(ExportedSnapshot { id, client, label })
    }

    /// Copies every user table of the source, as of the exported snapshot `snapshot` (an
    /// [`ExportedSnapshot::id`] whose transaction is still open), to the target, which must
    /// already hold the schema ([`copy_schema`](Self::copy_schema)).
    ///
    /// Tables: persistent plain tables (`relkind 'r'`, `relpersistence 'p'`) in user schemas,
    /// which for a partitioned table means its leaf partitions (the parent holds no rows);
    /// tables in a schema named in `exclude_schemas` (exact names, as in `pg_namespace`) are
    /// left alone on the target. Columns: the source's non-dropped, non-generated ones
    /// (`attgenerated`, PostgreSQL 12+): the target computes generated columns itself.
    ///
    /// `jobs` workers (at least 1, at most one per table) take the tables largest first
    /// (`pg_relation_size` on the source). Each has its own source connection, in a
    /// `REPEATABLE READ READ ONLY` transaction that imported the snapshot (`SET TRANSACTION
    /// SNAPSHOT`, PostgreSQL docs "SET TRANSACTION"), and its own target connection under
    /// `session_replication_role = replica` (triggers and foreign-key checks do not fire,
    /// docs 19.11.1; setting it needs a superuser, or on 15+ the `SET` privilege on it).
    /// Per table, in one target transaction: empty it (`TRUNCATE ONLY`, or `DELETE FROM
    /// ONLY` when another table's foreign key references it), then stream
    /// `COPY .. TO STDOUT` (text format) from the source into `COPY .. FROM STDIN`, a few
    /// kilobytes in memory at a time. So a copy repeated after a failure, or run again, leaves
    /// each table exactly as the snapshot has it.
    ///
    /// Errors name the server and, once copying, the table: an invalid or expired snapshot
    /// (the exporting transaction ended), tables missing on the target, a failed `COPY`. On
    /// the first error the other workers stop; tables already committed stay copied, the
    /// others keep their previous contents.
    pub async fn copy_snapshot(
        &self,
        snapshot: &str,
        jobs: usize,
        exclude_schemas: &[String],
    ) -> Result<CopyReport> {
        let started = Instant::now();
        if snapshot.trim().is_empty() {
            return Err(DriverError::new(
                "snapshot copy: no snapshot identifier given (export one first)",
            ));
        }
        // The table list, as of the snapshot: also checks the snapshot before any work.
        let planner = self.snapshot_session(snapshot).await?;
        let mut tables = self.snapshot_tables(&planner, exclude_schemas).await?;
        drop(planner);
        if tables.is_empty() {
            return Ok(CopyReport {
                ms: started.elapsed().as_millis() as u64,
                ..CopyReport::default()
            });
        }
        self.check_target_tables(&mut tables).await?;

        let jobs = jobs.clamp(1, tables.len());
        tracing::info!(
            tables = tables.len(),
            jobs,
            snapshot,
            "snapshot copy starting"
        );
        let queue = Arc::new(Mutex::new(tables.into_iter().collect::<VecDeque<Table>>()));
        let mut set = JoinSet::new();
        for _ in 0..jobs {
            let me = self.clone();
            let queue = queue.clone();
            let snapshot = snapshot.to_string();
            set.spawn(async move { me.copy_worker(&snapshot, &queue).await });
        }
        let mut total = Done::default();
        let mut failure: Option<DriverError> = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(Ok(d)) => {
                    total.tables += d.tables;
                    total.rows += d.rows;
                    total.bytes += d.bytes;
                }
                Ok(Err(e)) => {
                    if failure.is_none() {
                        // Stop the others: their open transactions roll back when their
                        // connections close.
                        set.abort_all();
                        failure = Some(e);
                    }
                }
                Err(e) if e.is_cancelled() => {}
                Err(e) => {
                    if failure.is_none() {
                        set.abort_all();
                        failure = Some(DriverError::new(format!(
                            "snapshot copy: a copy worker failed: {e}"
                        )));
                    }
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let report = CopyReport {
            tables: total.tables,
            rows: total.rows,
            bytes: total.bytes,
            ms: started.elapsed().as_millis() as u64,
        };
        tracing::info!(
            tables = report.tables,
            rows = report.rows,
            bytes = report.bytes,
            ms = report.ms,
            "snapshot copy done"
        );
        Ok(report)
    }

    /// A source connection in a `REPEATABLE READ READ ONLY` transaction that imported
    /// `snapshot`.
    async fn snapshot_session(&self, snapshot: &str) -> Result<Client> {
        let label = self.label(Side::Source);
        let c = self.connect(Side::Source).await?;
        c.batch_execute(NO_TIMEOUTS)
            .await
            .map_err(|e| pg_error(&format!("{label}: preparing a copy session"), &e))?;
        c.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot)
        ))
        .await
        .map_err(|e| {
            let mut d = pg_error(&format!("{label}: importing snapshot {snapshot:?}"), &e);
            if e.as_db_error().is_some() {
                d.message.push_str(
                    "; the snapshot must come from pg_export_snapshot() in a transaction that is still open on this server",
                );
            }
            d
        })?;
        Ok(c)
    }

    /// The tables to copy, largest first, with their column lists, read on `c` (a snapshot
    /// session on the source). `referenced` is filled in later, on the target.
    async fn snapshot_tables(&self, c: &Client, exclude_schemas: &[String]) -> Result<Vec<Table>> {
        let label = self.label(Side::Source);
        let ctx = format!("{label}: listing tables");
        let version: i32 = c
            .query_one(
                "SELECT pg_catalog.current_setting('server_version_num')::int4",
                &[],
            )
            .await
            .map_err(|e| pg_error(&ctx, &e))?
            .col(0)?;
        // attgenerated: PostgreSQL 12+ ('' = not generated).
        let generated = if version >= 120000 {
            " AND a.attgenerated = ''"
        } else {
            ""
        };
        let excluded: Vec<String> = exclude_schemas.to_vec();
        let rows = c
            .query(
                &format!(
                    "SELECT n.nspname::text, c.relname::text, pg_catalog.format('%I.%I', n.nspname, c.relname),
                            pg_catalog.pg_relation_size(c.oid)::int8,
                            ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
                                   WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped{generated}
                                   ORDER BY a.attnum)
                       FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.relkind = 'r' AND c.relpersistence = 'p' AND {USER_SCHEMA}
                        AND NOT (n.nspname::text = ANY ($1::text[]))
                      ORDER BY 4 DESC, 3"
                ),
                &[&excluded],
            )
            .await
            .map_err(|e| pg_error(&ctx, &e))?;
        rows.iter()
            .map(|r| {
                let (schema, table, name): (String, String, String) =
                    (r.col(0)?, r.col(1)?, r.col(2)?);
                let cols: Vec<String> = r.col(4)?;
                Ok(Table {
                    name,
                    sql: format!("{}.{}", quote_ident(&schema), quote_ident(&table)),
                    columns: if cols.is_empty() {
                        String::new()
                    } else {
                        let quoted: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
                        format!(" ({})", quoted.join(", "))
                    },
                    size: r.col(3)?,
                    referenced: false,
                })
            })
            .collect()
    }

    /// Checks on the target that every table exists, and marks those another table's foreign
    /// key references (`pg_constraint`, `contype 'f'`).
    async fn check_target_tables(&self, tables: &mut [Table]) -> Result<()> {
        let label = self.label(Side::Target);
        let tgt = self.connect(Side::Target).await?;
        let names: Vec<String> = tables.iter().map(|t| t.name.clone()).collect();
        let rows = tgt
            .query(
                "SELECT u.x, c.oid IS NOT NULL,
                        EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k
                                 WHERE k.contype = 'f' AND k.confrelid = c.oid AND k.conrelid <> c.oid)
                   FROM unnest($1::text[]) WITH ORDINALITY AS u(x, i)
                   LEFT JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(u.x)
                  ORDER BY u.i",
                &[&names],
            )
            .await
            .map_err(|e| pg_error(&format!("{label}: looking up the tables to copy"), &e))?;
        let mut missing = Vec::new();
        for (t, r) in tables.iter_mut().zip(&rows) {
            let exists: bool = r.col(1)?;
            if !exists {
                missing.push(t.name.clone());
            }
            t.referenced = r.col(2)?;
        }
        if !missing.is_empty() {
            let shown: Vec<&str> = missing.iter().take(20).map(String::as_str).collect();
            return Err(DriverError::new(format!(
                "{label} lacks {} of the source's tables: {}{}; copy the schema first",
                missing.len(),
                shown.join(", "),
                if missing.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            )));
        }
        Ok(())
    }

    /// One worker: its own snapshot session on the source and its own target connection;
    /// takes tables from `queue` until it is empty.
    async fn copy_worker(&self, snapshot: &str, queue: &Mutex<VecDeque<Table>>) -> Result<Done> {
        let src = self.snapshot_session(snapshot).await?;
        let label = self.label(Side::Target);
        let tgt = self.connect(Side::Target).await?;
        tgt.batch_execute(&format!(
            "{NO_TIMEOUTS}; SET session_replication_role = replica"
        ))
        .await
        .map_err(|e| pg_error(&format!("{label}: preparing a copy session"), &e))?;
        let mut done = Done::default();
        loop {
            let next = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None);
            let Some(table) = next else { break };
            let t0 = Instant::now();
            let (rows, bytes) = self.copy_table(&src, &tgt, &table).await?;
            tracing::debug!(
                table = %table.name,
                rows,
                bytes,
                source_size = table.size,
                ms = t0.elapsed().as_millis() as u64,
                "table copied"
            );
            done.tables += 1;
            done.rows += rows;
            done.bytes += bytes;
        }
        Ok(done)
    }

    /// Empties `table` on the target and streams its rows from the source into it, in one
    /// target transaction. Returns (rows, bytes).
    async fn copy_table(&self, src: &Client, tgt: &Client, table: &Table) -> Result<(u64, u64)> {
        let (sl, tl) = (self.label(Side::Source), self.label(Side::Target));
        let name = &table.name;
        let empty = if table.referenced {
            format!("DELETE FROM ONLY {}", table.sql)
        } else {
            format!("TRUNCATE ONLY {}", table.sql)
        };
        tgt.batch_execute(&format!("BEGIN; {empty}"))
            .await
            .map_err(|e| pg_error(&format!("{tl}: emptying {name}"), &e))?;
        let result = async {
            let sink = tgt
                .copy_in(&format!("COPY {}{} FROM STDIN", table.sql, table.columns))
                .await
                .map_err(|e| pg_error(&format!("{tl}: copying {name} (COPY FROM STDIN)"), &e))?;
            let stream = src
                .copy_out(&format!("COPY {}{} TO STDOUT", table.sql, table.columns))
                .await
                .map_err(|e| pg_error(&format!("{sl}: copying {name} (COPY TO STDOUT)"), &e))?;
            pin_mut!(sink);
            pin_mut!(stream);
            let mut bytes = 0u64;
            while let Some(chunk) = stream
                .try_next()
                .await
                .map_err(|e| pg_error(&format!("{sl}: copying {name} (COPY TO STDOUT)"), &e))?
            {
                bytes += chunk.len() as u64;
                // feed, not send: the sink batches small rows into larger messages.
                sink.feed(chunk).await.map_err(|e| {
                    pg_error(&format!("{tl}: copying {name} (COPY FROM STDIN)"), &e)
                })?;
            }
            let rows =
                sink.as_mut().finish().await.map_err(|e| {
                    pg_error(&format!("{tl}: copying {name} (COPY FROM STDIN)"), &e)
                })?;
            tgt.batch_execute("COMMIT")
                .await
                .map_err(|e| pg_error(&format!("{tl}: committing the copy of {name}"), &e))?;
            Ok((rows, bytes))
        }
        .await;
        if result.is_err() {
            // The connection may still be usable (a COPY error leaves the transaction
            // aborted); the worker stops anyway, and closing the connection rolls back too.
            let _ = tgt.batch_execute("ROLLBACK").await;
        }
        result
    }
}
