//! Preflight checks that find what would otherwise fail late, or lose data silently, each
//! naming what to do (issue 12, item 4):
//!
//! * extensions of the source the target cannot create at the same or a newer version
//!   (`pg_available_extension_versions` of the target; PostgreSQL docs 54.3);
//! * large objects and unlogged tables, which logical replication does not carry (docs
//!   31.8 "Restrictions"; an unlogged table is not published, docs CREATE PUBLICATION);
//! * transactions open on the source longer than `[upgrade] long_transaction_ms`, and
//!   prepared transactions as old: creating a logical replication slot waits for every
//!   transaction running at that moment (docs 49.2.2 "Replication Slots"; pg_create_logical_replication_slot);
//! * as notes: event triggers (the schema copy makes them on the target, where they fire on
//!   pgshift's own DDL) and partitioned tables (published partition by partition).

use super::{pg_error, Logical, Preflight, Result, RowExt};
use tokio_postgres::Client;

/// Extensions pgshift does not carry with the schema: `plpgsql` (every database has it)
/// and `pgactive` (the pgactive driver installs and checks it itself).
const NOT_CARRIED: &[&str] = &["plpgsql", "pgactive"];

/// At most this many names in one failure.
const LIST: usize = 10;

fn list(items: &[String]) -> String {
    super::summarise(items, LIST)
}

/// Whether extension version `have` (target) is `want` (source) or newer: dotted numbers
/// compared part by part; other spellings only when equal.
pub fn version_at_least(have: &str, want: &str) -> bool {
    if have == want {
        return true;
    }
    let parts = |v: &str| -> Option<Vec<u64>> { v.split('.').map(|p| p.parse().ok()).collect() };
    match (parts(have), parts(want)) {
        (Some(h), Some(w)) => h >= w,
        _ => false,
    }
}

impl Logical {
    /// Extensions of the source that the target server cannot create at the source's
    /// version or a newer one. Errors: a server that cannot be read.
    pub(super) async fn preflight_extensions(
        &self,
        src: &Client,
        tgt: &Client,
        out: &mut Preflight,
    ) -> Result<()> {
        let have = src
            .query(
                "SELECT extname::text, extversion FROM pg_extension ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| pg_error("source: reading pg_extension", &e))?;
        let mut carried = Vec::new();
        for r in &have {
            let (name, version): (String, String) = (r.col(0)?, r.col(1)?);
            if !NOT_CARRIED.contains(&name.as_str()) {
                carried.push((name, version));
            }
        }
        if carried.is_empty() {
            return Ok(());
        }
        // One round trip for all of them.
        let names: Vec<&str> = carried.iter().map(|(n, _)| n.as_str()).collect();
        let avail = tgt
            .query(
                "SELECT name::text, version FROM pg_available_extension_versions WHERE name = ANY($1) ORDER BY 1, 2",
                &[&names],
            )
            .await
            .map_err(|e| pg_error("target: reading pg_available_extension_versions", &e))?;
        let mut offered: Vec<(String, String)> = Vec::with_capacity(avail.len());
        for r in &avail {
            offered.push((r.col(0)?, r.col(1)?));
        }
        for (name, version) in &carried {
            let versions: Vec<&str> = offered
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect();
            if versions.is_empty() {
                out.failures.push(format!(
                    "target: extension {name} (version {version} on the source) is not available on the target server; \
                     install its package for the target's PostgreSQL, or DROP EXTENSION {name} on the source if it is not used"
                ));
            } else if !versions.iter().any(|v| version_at_least(v, version)) {
                out.failures.push(format!(
                    "target: extension {name} is at version {version} on the source; the target offers only {}; \
                     install version {version} or newer of it on the target",
                    versions.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Large objects, unlogged tables, long-running and prepared transactions of the
    /// source (failures), event triggers and partitioned tables (notes). Errors: a server
    /// that cannot be read.
    pub(super) async fn preflight_not_carried(
        &self,
        src: &Client,
        out: &mut Preflight,
    ) -> Result<()> {
        let ctx = |what: &str| format!("source: {what}");
        let los: i64 = src
            .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
            .await
            .map_err(|e| pg_error(&ctx("counting large objects"), &e))?
            .col(0)?;
        if los > 0 {
            out.failures.push(format!(
                "source: {los} large object(s) (pg_largeobject_metadata): logical replication does not carry large objects, so the target would have none; \
                 move their contents into bytea columns, or remove them (lo_unlink) if they are not needed, before START UPGRADE"
            ));
        }
        let names = |rows: Vec<tokio_postgres::Row>| -> Result<Vec<String>> {
            rows.iter().map(|r| r.col(0)).collect()
        };
        let unlogged = names(
            src.query(
                "SELECT format('%I.%I', n.nspname, c.relname)
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relpersistence = 'u' AND c.relkind IN ('r', 'p')
                    AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                    AND n.nspname NOT LIKE 'pg\\_%'
                  ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| pg_error(&ctx("listing unlogged tables"), &e))?,
        )?;
        if !unlogged.is_empty() {
            out.failures.push(format!(
                "source: unlogged table(s) {}: logical replication does not carry unlogged tables, so they would arrive empty; \
                 ALTER TABLE .. SET LOGGED before START UPGRADE (or drop them if their rows need not move)",
                list(&unlogged)
            ));
        }
        let secs = (self.long_transaction_ms as f64 / 1000.0).max(0.001);
        let long = src
            .query(
                "SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''),
                        extract(epoch FROM now() - xact_start)::float8
                   FROM pg_stat_activity
                  WHERE xact_start < now() - make_interval(secs => $1)
                    AND (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL)
                    AND pid <> pg_backend_pid()
                  ORDER BY xact_start",
                &[&secs],
            )
            .await
            .map_err(|e| pg_error(&ctx("reading pg_stat_activity"), &e))?;
        let mut open = Vec::new();
        for r in &long {
            let (pid, user, app, age): (i32, String, String, f64) =
                (r.col(0)?, r.col(1)?, r.col(2)?, r.col(3)?);
            open.push(format!(
                "pid {pid} ({user}, application '{app}', {age:.0} s)"
            ));
        }
        let prepared = src
            .query(
                "SELECT gid, extract(epoch FROM now() - prepared)::float8 FROM pg_prepared_xacts
                  WHERE prepared < now() - make_interval(secs => $1) ORDER BY prepared",
                &[&secs],
            )
            .await
            .map_err(|e| pg_error(&ctx("reading pg_prepared_xacts"), &e))?;
        for r in &prepared {
            let (gid, age): (String, f64) = (r.col(0)?, r.col(1)?);
            open.push(format!("prepared transaction '{gid}' ({age:.0} s)"));
        }
        if !open.is_empty() {
            out.failures.push(format!(
                "source: {} transaction(s) open longer than [upgrade] long_transaction_ms ({} ms): {}; \
                 creating the logical replication slot waits for every transaction running at that moment: \
                 let them finish, or end them (pg_terminate_backend, COMMIT PREPARED / ROLLBACK PREPARED)",
                open.len(),
                self.long_transaction_ms,
                list(&open)
            ));
        }
        let triggers = names(
            src.query(
                "SELECT evtname::text FROM pg_event_trigger e
                  WHERE NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = e.oid AND d.deptype = 'e')
                  ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| pg_error(&ctx("listing event triggers"), &e))?,
        )?;
        if !triggers.is_empty() {
            out.notes.push(format!(
                "source: event trigger(s) {}: the schema copy makes them on the target too, where they fire on pgshift's own DDL; \
                 ALTER EVENT TRIGGER .. DISABLE on the target if they must not",
                list(&triggers)
            ));
        }
        let partitioned: i64 = src
            .query_one(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind = 'p' AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
                &[],
            )
            .await
            .map_err(|e| pg_error(&ctx("counting partitioned tables"), &e))?
            .col(0)?;
        if partitioned > 0 {
            out.notes.push(format!(
                "source: {partitioned} partitioned table(s): replicated partition by partition (the publication does not publish via the root), \
                 so the target keeps the source's partitions (the schema copy makes them)"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_versions_compare_by_their_numbers() {
        assert!(version_at_least("1.10", "1.9"));
        assert!(!version_at_least("1.9", "1.10"));
        assert!(version_at_least("2.0", "2.0"));
        assert!(version_at_least("2.0.1", "2.0"));
        assert!(!version_at_least("1.0", "2.0"));
        assert!(version_at_least("unpackaged", "unpackaged"));
        assert!(!version_at_least("1.0beta", "1.0"));
        assert_eq!(list(&["a".to_string(), "b".to_string()]), "a, b");
        let many: Vec<String> = (0..12).map(|i| i.to_string()).collect();
        assert!(list(&many).ends_with("and 2 more)"));
    }
}
