//! The `pgactive` driver (`[replication] driver = "pgactive"`): AWS's pgactive extension
//! (github.com/aws/pgactive) replicates both ways between a group of two nodes, the source
//! and the target. SQL in [`crate::logical`]'s `pgactive` module; facts in
//! `../shared/notes/pgactive.md`.
//!
//! * **Preflight**: on each server the settings pgactive needs (each named with the value
//!   to set and whether a restart is needed), the extension installed on the server, a
//!   superuser login; every table with a primary key or replica identity index (pgactive
//!   rejects UPDATE and DELETE on the others).
//! * **ConfigureParams**: a target pgshift provisioned gets the settings in
//!   `pgshift-driver.conf` and a restart; a server pgshift did not make must have them
//!   already (the step names exactly what to change).
//! * **InstallExtension**: `CREATE EXTENSION pgactive` in every carried database of both
//!   servers, then what must match on both nodes (version, `pgactive.max_nodes`,
//!   `pgactive.skip_ddl_replication`, collation and ctype), each difference named; the
//!   owners of the tables get what pgactive's apply, which runs as the owner, needs on a
//!   conflict ([`Logical::pgactive_grant_owners`]).
//! * **InitReplication** (after pgshift's schema copy): the group created on the source, the
//!   target joined (`data_only_node_init` by default, `[replication] pgactive_join`).
//! * **WaitForSync**: the target's node ready (`node_status = 'r'`; progress in the journal's
//!   heartbeats), both apply workers running, then each target sequence moved
//!   `sequence_gap` ahead of the source's after the draw rate was checked (pgactive does not
//!   replicate sequences), as with the `bidirectional` driver.
//! * **Health**: both nodes ready, their apply workers running, conflicts
//!   (`pgactive_conflict_history`, pgactive's own internal ones left out) and workers' errors
//!   counted; a new one halts the shift unless `halt_on_conflict = false`.
//! * **Switch**: a barrier before the pause (so the pause covers only the last stretch),
//!   pause, drain, the barrier (the serving node's row of pgshift's barrier table
//!   `<p>.barrier` moved on and waited for on the other node, under `catchup_timeout_ms`:
//!   [`Logical::pgactive_barrier_setup`]), sequences only forward, swap; nothing is
//!   stopped or set up.
//! * **DetachOld**: the source's node detached on the target (`pgactive_detach_nodes`), then
//!   `pgactive_remove()` and `DROP EXTENSION pgactive` on the source, and the barrier table
//!   dropped on both. The target stays a pgactive node of a group of one.
//! * **Rollback before cutover**: the target's node detached on the source and removed from
//!   the target, then pgactive removed from the source.

use super::super::{plan, ControlError, Controller};
use super::bidirectional::{draws, sequence_ranges};
use super::logical::{LogicalRun, RunMode};
use super::{ReplicationDriver, SwitchRun};
use crate::logical::{status_words, Direction, DriverError, Logical, Preflight, RowExt};
use crate::Side;
use std::time::{Duration, Instant};

/// The `pgactive` driver (module docs).
pub(in crate::controller) struct PgactiveDriver;

/// Tables of the connected database that pgactive cannot UPDATE or DELETE in: no primary key
/// and no replica identity index (`schema.name`, sorted).
async fn tables_without_key(
    d: &Logical,
    c: &tokio_postgres::Client,
    side: Side,
) -> Result<Vec<String>, DriverError> {
    let rows = c
        .query(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(t.relname)
               FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace
              WHERE t.relkind = 'r' AND t.relpersistence = 'p'
                AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgactive')
                AND n.nspname NOT LIKE 'pg\\_%'
                AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = t.oid AND (i.indisprimary OR i.indisreplident))
                AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.objid = t.oid AND e.deptype = 'e')
              ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| {
            crate::logical::pg_error(&format!("{}: reading the tables' keys", d.label(side)), &e)
        })?;
    rows.iter().map(|r| r.col(0)).collect()
}

#[async_trait::async_trait]
impl ReplicationDriver for PgactiveDriver {
    async fn preflight(
        &self,
        c: &Controller,
        d: &Logical,
        target: bool,
        mut pf: Preflight,
    ) -> Preflight {
        // The common check of keys accepts REPLICA IDENTITY FULL and counts pgactive's own
        // tables; pgactive needs a key, checked below for the application's tables only.
        pf.failures.retain(|f| !f.contains(" has no primary key; "));
        let sides: &[Side] = if target {
            &[Side::Source, Side::Target]
        } else {
            &[Side::Source]
        };
        for &side in sides {
            let cl = match d.connect(side).await {
                Ok(cl) => cl,
                // The common preflight named the connection problem already.
                Err(_) => continue,
            };
            match d.pgactive_problems(&cl, side).await {
                Ok(p) => pf.failures.extend(p),
                Err(e) => pf.failures.push(e.message),
            }
            if side == Side::Source {
                match tables_without_key(d, &cl, side).await {
                    Ok(t) if !t.is_empty() => pf.failures.push(format!(
                        "source: {} table(s) without a primary key or replica identity index: {}; pgactive rejects UPDATE and DELETE on them; \
                         add a primary key (or ALTER TABLE .. REPLICA IDENTITY USING INDEX)",
                        t.len(),
                        crate::logical::summarise(&t, 10)
                    )),
                    Ok(_) => {}
                    Err(e) => pf.failures.push(e.message),
                }
            }
        }
        pf.notes.push(format!(
            "pgactive driver: the target joins the source's group ({}); writes may reach both servers once it is ready; target sequences move {} values ahead of the source's",
            c.cfg.replication.pgactive_join.as_str(),
            c.cfg.replication.sequence_gap
        ));
        pf
    }

    fn both_ways(&self) -> bool {
        true
    }

    /// pgactive replicates neither DDL nor TRUNCATE while `pgactive.skip_ddl_replication`
    /// is on (its default). `replicate` requires it off on both nodes (preflight), and then
    /// pgactive itself queues each DDL statement and TRUNCATE for the other node under its
    /// global DDL lock (pgactive source: `pgactive_commandfilter.c`, `pgactive_ddlrep.c`):
    /// the proxy lets DDL through once both nodes are in the group (`ready`) and blocks it
    /// before, while the schema is copied and the target joins.
    fn ddl_gate(&self, policy: config::DdlPolicy, ready: bool) -> crate::DdlGate {
        crate::DdlGate {
            action: match policy {
                config::DdlPolicy::Allow => crate::DdlAction::Warn,
                config::DdlPolicy::Replicate if ready => crate::DdlAction::Off,
                config::DdlPolicy::Replicate | config::DdlPolicy::Block => crate::DdlAction::Block,
            },
            truncate: true,
        }
    }

    /// RDS User Guide, "Initializing the pgactive extension capability":
    /// `rds.enable_pgactive = 1` also turns on `rds.logical_replication` and
    /// `track_commit_timestamp`.
    fn rds_parameters(&self) -> &'static [(&'static str, &'static str)] {
        &[("rds.enable_pgactive", "1")]
    }

    fn configure_params_note(&self) -> &'static str {
        "pgactive driver: server settings checked"
    }

    fn has_setup_steps(&self) -> bool {
        true
    }

    /// The source must have the settings; a provisioned target gets them and a restart.
    async fn configure_params(&self, c: &Controller) -> Result<String, DriverError> {
        let d = &c.driver;
        let mut done = Vec::new();
        let src = d.connect(Side::Source).await?;
        let need = d.pgactive_requirements(&src, Side::Source).await?;
        if !need.is_empty() {
            let list: Vec<String> = need.iter().map(|r| r.describe()).collect();
            return Err(DriverError::new(format!(
                "{}: pgactive needs: {}; pgshift does not restart a source it did not make: change them and restart the source, then RESUME UPGRADE",
                d.label(Side::Source),
                list.join(", ")
            )));
        }
        done.push("source has pgactive's settings".to_string());
        let tgt = d.connect(Side::Target).await?;
        let need = d.pgactive_requirements(&tgt, Side::Target).await?;
        drop(tgt);
        if need.is_empty() {
            done.push("target has pgactive's settings".into());
        } else {
            match crate::provider::Target::of(&c.cfg) {
                Some(local) => {
                    let settings: Vec<(String, String)> = need
                        .iter()
                        .map(|r| (r.name.clone(), r.want.clone()))
                        .collect();
                    done.push(local.configure(&settings).await?);
                    let tgt = d.connect(Side::Target).await?;
                    let left = d.pgactive_requirements(&tgt, Side::Target).await?;
                    if !left.is_empty() {
                        let list: Vec<String> = left.iter().map(|r| r.describe()).collect();
                        return Err(DriverError::new(format!(
                            "{}: after the restart pgactive still needs: {} ([target.provision] settings may override them)",
                            d.label(Side::Target),
                            list.join(", ")
                        )));
                    }
                }
                None => {
                    let list: Vec<String> = need.iter().map(|r| r.describe()).collect();
                    return Err(DriverError::new(format!(
                        "{}: pgactive needs: {}; change them and restart the target, then RESUME UPGRADE",
                        d.label(Side::Target),
                        list.join(", ")
                    )));
                }
            }
        }
        Ok(done.join("; "))
    }

    async fn install_extension(&self, c: &Controller) -> Result<String, DriverError> {
        let mut done = Vec::new();
        let mut problems = Vec::new();
        for (i, d) in c.carried().iter().enumerate() {
            done.push(plan::db_detail(i, d, &d.pgactive_barrier_setup().await?));
            let s = d.pgactive_install(Side::Source).await?;
            let t = d.pgactive_install(Side::Target).await?;
            let owners = d.table_owners().await?;
            let mut granted = d.pgactive_grant_owners(Side::Source, &owners).await?;
            granted.extend(d.pgactive_grant_owners(Side::Target, &owners).await?);
            granted.sort();
            granted.dedup();
            done.push(plan::db_detail(
                i,
                d,
                &format!(
                    "pgactive {s} on the source, {t} on the target{}",
                    if granted.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; table owner(s) {} granted what pgactive's apply needs on a conflict (SELECT on pgactive_conflict_handlers, INSERT on pgactive_conflict_history)",
                            granted.join(", ")
                        )
                    }
                ),
            ));
            problems.extend(
                d.pgactive_mismatches()
                    .await?
                    .into_iter()
                    .map(|p| format!("{}{p}", plan::db_tag(i, d))),
            );
        }
        if !problems.is_empty() {
            return Err(DriverError::new(format!(
                "{} problem(s): {}",
                problems.len(),
                problems.join("; ")
            )));
        }
        Ok(done.join("; "))
    }

    async fn init(&self, c: &Controller, actor: &str) -> Result<Vec<String>, ControlError> {
        let data_only = c.cfg.replication.pgactive_join == config::PgactiveJoin::DataOnly;
        let mut done = Vec::new();
        for (i, d) in c.carried().iter().enumerate() {
            let m = c
                .step(actor, &plan::db_key("pgactive_group", i, d), || async {
                    d.pgactive_create_group().await.map(|m| (m.clone(), m))
                })
                .await?;
            done.push(plan::db_detail(i, d, &m));
            let m = c
                .step(actor, &plan::db_key("pgactive_join", i, d), || async {
                    d.pgactive_join(data_only).await.map(|m| (m.clone(), m))
                })
                .await?;
            done.push(plan::db_detail(i, d, &m));
        }
        Ok(done)
    }

    async fn wait_sync(&self, c: &Controller, _actor: &str) -> Result<(u64, String), DriverError> {
        let src = c.driver.connect(Side::Source).await?;
        let before = draws(c, &src).await?;
        let t0 = Instant::now();
        let id = c.row().id;
        let key = super::super::plan::StepKind::WaitForSync.key();
        let mut parts = Vec::new();
        for (i, d) in c.carried().iter().enumerate() {
            let started = Instant::now();
            let mut last_beat = Instant::now();
            let mut seen = Vec::new();
            loop {
                let t = d.connect(Side::Target).await?;
                let node = d.pgactive_local_node(&t, Side::Target).await?;
                let status = node.as_ref().map(|n| n.status).unwrap_or('?');
                if seen.last() != Some(&status) {
                    seen.push(status);
                    tracing::info!(database = %d.database(Side::Target), status = %status_words(status), "pgactive join");
                }
                if status == 'r' {
                    break;
                }
                if last_beat.elapsed() >= Duration::from_secs(10) {
                    let h = d.pgactive_health(&t, Side::Target).await.ok().flatten();
                    let detail = format!(
                        "heartbeat: {}target node {} after {} s{}",
                        plan::db_tag(i, d),
                        status_words(status),
                        started.elapsed().as_secs(),
                        h.and_then(|h| h.last)
                            .map(|e| format!("; last error: {e}"))
                            .unwrap_or_default()
                    );
                    let _ = c.journal.heartbeat(id, &key, Some(detail)).await;
                    last_beat = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Both apply workers run before any write may reach the target.
            let deadline = Instant::now() + Duration::from_secs(60);
            for side in [Side::Target, Side::Source] {
                let cl = d.connect(side).await?;
                loop {
                    let h = d.pgactive_health(&cl, side).await?;
                    if h.as_ref().is_some_and(|h| h.ready && h.applying) {
                        break;
                    }
                    if Instant::now() >= deadline {
                        return Err(DriverError::temporary(format!(
                            "{}: pgactive's apply worker did not start within 60 s{}; see the server's log",
                            d.label(side),
                            h.and_then(|h| h.last)
                                .map(|e| format!(" (last error: {e})"))
                                .unwrap_or_default()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            parts.push(plan::db_detail(
                i,
                d,
                &format!(
                    "target node ready after {} ms ({})",
                    started.elapsed().as_millis(),
                    seen.iter()
                        .map(|s| status_words(*s))
                        .collect::<Vec<_>>()
                        .join(" → ")
                ),
            ));
        }
        parts.extend(sequence_ranges(c, &before, t0).await?);
        parts.push("replicating both ways".into());
        let tables = c
            .driver
            .connect(Side::Target)
            .await?
            .query_one(
                "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname <> 'pgactive'",
                &[],
            )
            .await
            .ok()
            .and_then(|r| r.col::<i64>(0).ok())
            .map_or(0, |n| n.max(0) as u64);
        Ok((tables, parts.join("; ")))
    }

    fn resync_refusal(&self, name: &str) -> Option<String> {
        Some(format!(
            "FORCE RESYNC TABLE {name} not possible with [replication] driver = \"pgactive\": \
             the table takes writes on both nodes, and a re-copy would undo the target's"
        ))
    }

    async fn begin_switch(
        &self,
        c: &Controller,
        dir: Direction,
        actor: &str,
    ) -> Result<Box<dyn SwitchRun>, ControlError> {
        // Both nodes must be ready and applying: after the swap the old side's writes (and
        // before it the new side's) travel the other way.
        let what = super::super::switch::words(dir).1;
        for (i, d) in c.carried().iter().enumerate() {
            for side in [Side::Source, Side::Target] {
                let cl = d.connect(side).await?;
                let h = d.pgactive_health(&cl, side).await?;
                let problem = match &h {
                    None => Some("is no pgactive node".to_string()),
                    Some(h) if !h.ready => Some("is not ready".into()),
                    Some(h) if !h.applying => Some("has no running apply worker".into()),
                    _ => None,
                };
                if let Some(p) = problem {
                    return Err(ControlError::refused(format!(
                        "{what} refused: {}the {} {p}, so writes would not reach the other node; traffic stays on the {}",
                        plan::db_tag(i, d),
                        side.as_str(),
                        dir.publisher().as_str()
                    )));
                }
            }
        }
        Ok(Box::new(
            LogicalRun::begin(c, dir, actor, RunMode::Pgactive).await?,
        ))
    }

    /// Nothing changed before the swap.
    async fn abandon_cleanup(&self, _c: &Controller, _dir: Direction) -> Vec<String> {
        Vec::new()
    }

    async fn finish_switch(
        &self,
        c: &Controller,
        dir: Direction,
        actor: &str,
    ) -> Result<String, ControlError> {
        let msg = format!(
            "pgactive replicates both ways; writes now go to the {} and reach the {} through the group",
            dir.subscriber().as_str(),
            dir.publisher().as_str()
        );
        c.switch_done(dir, actor, msg).await
    }

    async fn detach(&self, c: &Controller) -> Result<String, DriverError> {
        let mut out = Vec::new();
        for (i, d) in c.carried().iter().enumerate() {
            for m in d.pgactive_detach_source().await? {
                out.push(plan::db_detail(i, d, &m));
            }
        }
        Ok(out.join("; "))
    }

    async fn teardown(
        &self,
        c: &Controller,
        actor: &str,
        target_absent: bool,
        provisioned: bool,
    ) -> Result<(), ControlError> {
        let drivers = c.carried();
        let run = |source_only: bool| {
            let drivers = drivers.clone();
            async move {
                let mut out = Vec::new();
                for (i, d) in drivers.iter().enumerate() {
                    for m in d.pgactive_teardown(source_only).await? {
                        out.push(plan::db_detail(i, d, &m));
                    }
                }
                Ok::<_, DriverError>(((), out.join("; ")))
            }
        };
        if target_absent {
            return c.step(actor, "teardown", || run(true)).await;
        }
        match c.step(actor, "teardown", || run(false)).await {
            Err(e) if provisioned => {
                tracing::warn!(error = %e, "pgactive teardown on both servers failed; cleaning the source, the provisioned target is deleted next");
                c.step(actor, "teardown.source", || run(true)).await
            }
            r => r,
        }
    }

    async fn explain_apply_errors(&self, c: &Controller) -> Option<String> {
        let d = &c.driver;
        let mut out = Vec::new();
        for side in [Side::Source, Side::Target] {
            let probe = async {
                let cl = d.connect(side).await?;
                d.pgactive_health(&cl, side).await
            };
            if let Ok(Ok(Some(h))) = tokio::time::timeout(Duration::from_secs(2), probe).await {
                if let Some(last) = h.last {
                    out.push(format!("{}: {last}", side.as_str()));
                }
            }
        }
        (!out.is_empty()).then(|| {
            format!(
                "pgactive reported a conflict or apply error (newest: {}; pgactive.pgactive_conflict_history, pgactive_get_workers_info())",
                out.join("; ")
            )
        })
    }
}
