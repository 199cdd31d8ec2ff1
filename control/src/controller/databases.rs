//! The databases an upgrade carries (`[upgrade] databases`; by default every database of the
//! source instance): which they are, their object names, their preflight, and their live
//! state for `SHOW UPGRADE DATABASES`.
//!
//! Each carried database has its own [`Logical`] driver: its own publications, subscriptions
//! and slots (slot names are per instance, so each database's objects carry its name), its
//! own schema copy and initial copy. The first is the primary one (`[source] dbname` →
//! `[target] dbname`), which keeps the names of `replication.object_prefix`; every other
//! keeps its name on the target. The set is resolved by ValidateInput and journaled as the
//! step `databases` (a JSON array of source database names), so a restarted pgshift routes
//! and switches the same set.

use super::{lock, ControlError, Controller};
use crate::logical::{Instance, Lag, Logical, Names, Preflight, SyncProgress};
use crate::Side;
use std::collections::HashSet;
use std::sync::Arc;

/// Journal step key of the carried set (detail: JSON array of source database names).
pub(super) const DATABASES_STEP: &str = "databases";

/// One carried database, for `SHOW UPGRADE DATABASES`.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseStatus {
    /// Database name on the source (the name clients connect with).
    pub database: String,
    /// Database name on the target.
    pub target_database: String,
    /// Whether this is `[source] dbname`.
    pub primary: bool,
    /// Publication on the source (forward replication).
    pub publication: String,
    /// Subscription on the target (forward) and its slot on the source.
    pub subscription: String,
    /// Initial copy: tables synchronised / tables of the subscription (while and after the
    /// copy; `None` before it started in this process).
    pub tables: Option<(u64, u64)>,
    /// Lag of the running direction (`None` when no direction runs or it is not known yet).
    pub lag: Option<Lag>,
}

/// Live per-database state, kept in memory beside the carried set.
#[derive(Debug, Clone, Default)]
pub(super) struct Live {
    /// Initial-copy progress by source database.
    pub progress: std::collections::HashMap<String, SyncProgress>,
    /// Lag by source database.
    pub lag: std::collections::HashMap<String, Option<Lag>>,
}

/// Object names of a non-primary database `db`: `<prefix>_<db>` with characters other than
/// `[a-z0-9_]` replaced by `_`, cut so that the longest name (`..._resync_pub`) stays within
/// PostgreSQL's 63-byte identifiers (NAMEDATALEN - 1, docs 4.1.1), and a hash of the real name
/// appended whenever the name had to change, so two databases never share names.
pub fn names_for(prefix: &str, db: &str) -> Names {
    const LONGEST_SUFFIX: usize = "_resync_pub".len();
    let clean: String = db
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let room = 63usize.saturating_sub(prefix.len() + 1 + LONGEST_SUFFIX);
    let tag = if clean == db && clean.len() <= room {
        clean
    } else {
        // FNV-1a of the real name: stable across versions and machines.
        let mut h: u32 = 0x811c_9dc5;
        for b in db.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        let keep = room.saturating_sub(9).min(clean.len());
        format!("{}_{h:08x}", &clean[..keep])
    };
    Names::new(&format!("{prefix}_{tag}"))
}

/// Drivers of `dbs` (source names, the primary first), each told about the others.
pub(super) fn drivers_for(base: &Logical, prefix: &str, dbs: &[String]) -> Vec<Logical> {
    let primary = base.database(Side::Source).to_string();
    let mut out: Vec<Logical> = vec![base.clone()];
    for db in dbs {
        if *db != primary {
            out.push(base.for_database(db, db, names_for(prefix, db)));
        }
    }
    let instance = Instance {
        slots: out
            .iter()
            .flat_map(|d| [d.names().forward.clone(), d.names().reverse.clone()])
            .collect(),
        databases: out.len(),
    };
    for d in &mut out {
        d.set_instance(instance.clone());
    }
    out
}

impl Controller {
    /// The drivers of the carried databases, the primary first.
    pub(super) fn carried(&self) -> Arc<Vec<Logical>> {
        self.carried
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes `dbs` (source database names) the carried set.
    pub(super) fn carry(&self, dbs: &[String]) {
        let drivers = drivers_for(&self.driver, &self.cfg.replication.object_prefix, dbs);
        *self.carried.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(drivers);
    }

    /// Journals the carried set as step `databases` of the current upgrade, for a restarted
    /// pgshift ([`Controller::open`] reads it back).
    pub(super) async fn journal_databases(&self, actor: &str) -> Result<(), ControlError> {
        let dbs = serde_json::to_string(&self.carried_databases())
            .map_err(|e| ControlError::refused(format!("databases: {e}")))?;
        self.step(actor, DATABASES_STEP, || async { Ok(((), dbs.clone())) })
            .await
    }

    /// Source names of the carried databases, the primary first.
    pub fn carried_databases(&self) -> Vec<String> {
        self.carried()
            .iter()
            .map(|d| d.database(Side::Source).to_string())
            .collect()
    }

    /// Which databases this upgrade would carry now: `[upgrade] databases` (the primary
    /// added first), or every database of the source instance; only the primary with the
    /// mirror driver or when source and target are one server. `Err` says what is wrong
    /// (a listed database that does not exist, the source unreachable).
    pub(super) async fn resolve_databases(&self) -> Result<Vec<String>, String> {
        let primary = self.cfg.source.dbname.clone();
        if self.replication.primary_only() || self.driver.same_server() {
            return Ok(vec![primary]);
        }
        let all = self
            .driver
            .instance_databases()
            .await
            .map_err(|e| format!("{}; check [source]", e.message))?;
        let mut dbs = vec![primary.clone()];
        match &self.cfg.upgrade.databases {
            Some(list) => {
                let missing: Vec<&String> = list
                    .iter()
                    .filter(|d| **d != primary && !all.contains(d))
                    .collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "[upgrade] databases: {} not on the source (or not accepting connections, or a template); the source has {}",
                        missing
                            .iter()
                            .map(|d| d.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        all.join(", ")
                    ));
                }
                dbs.extend(list.iter().filter(|d| **d != primary).cloned());
            }
            None => dbs.extend(all.into_iter().filter(|d| *d != primary)),
        }
        Ok(dbs)
    }

    /// The preflight of every database `drivers` carry (`target = false`: the source and the
    /// tools only), merged: instance-wide findings once, the others of a non-primary database
    /// prefixed with `database <name>:`. A non-primary database missing on the target is
    /// checked on the source only, plus whether the target user may create it.
    pub(super) async fn preflight_carried(&self, drivers: &[Logical], target: bool) -> Preflight {
        let mut missing = HashSet::new();
        if target && drivers.len() > 1 {
            let names: Vec<String> = drivers[1..]
                .iter()
                .map(|d| d.database(Side::Target).to_string())
                .collect();
            if let Ok(have) = drivers[0].existing_databases(Side::Target, &names).await {
                missing = names.into_iter().filter(|n| !have.contains(n)).collect();
            }
        }
        let runs = drivers.iter().map(|d| {
            let t = target && !missing.contains(d.database(Side::Target));
            async move {
                self.replication
                    .preflight(self, d, t, d.preflight_scope(t).await)
                    .await
            }
        });
        let mut all = futures_util::future::join_all(runs).await.into_iter();
        let mut out = all.next().unwrap_or_default();
        let first_failures: HashSet<String> = out.failures.iter().cloned().collect();
        let first_notes: HashSet<String> = out.notes.iter().cloned().collect();
        for (d, pf) in drivers[1..].iter().zip(all) {
            let db = d.database(Side::Source);
            for f in pf.failures {
                if !first_failures.contains(&f) {
                    out.failures.push(format!("database {db}: {f}"));
                }
            }
            for n in pf.notes {
                if !first_notes.contains(&n) {
                    out.notes.push(format!("database {db}: {n}"));
                }
            }
        }
        if !missing.is_empty() {
            let mut list: Vec<&String> = missing.iter().collect();
            list.sort();
            let list = list
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            match drivers[0].target_may_create_databases().await {
                Ok(true) => out.notes.push(format!(
                    "target: database(s) {list} missing, created by InitReplication"
                )),
                Ok(false) => out.failures.push(format!(
                    "target: database(s) {list} do not exist and the target user may not create databases; \
                     create them on the target, or ALTER ROLE {} CREATEDB, or leave them out of [upgrade] databases",
                    self.cfg.target.user
                )),
                Err(e) => out.failures.push(e.message),
            }
        }
        if drivers.len() > 1 {
            out.notes.push(format!(
                "{} databases carried: {}",
                drivers.len(),
                drivers
                    .iter()
                    .map(|d| d.database(Side::Source))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out
    }

    /// Every carried database with its objects, initial-copy progress and lag.
    pub fn databases(&self) -> Vec<DatabaseStatus> {
        let live = lock(&self.live).clone();
        self.carried()
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let db = d.database(Side::Source).to_string();
                DatabaseStatus {
                    target_database: d.database(Side::Target).to_string(),
                    primary: i == 0,
                    publication: d.names().publication.clone(),
                    subscription: d.names().forward.clone(),
                    tables: live.progress.get(&db).map(|p| (p.ready, p.total)),
                    lag: live.lag.get(&db).copied().flatten(),
                    database: db,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_other_databases() {
        assert_eq!(names_for("pgshift", "shop").forward, "pgshift_shop_fwd");
        // Not a plain lower-case name: cleaned, and a hash keeps it apart from "my_db".
        let a = names_for("pgshift", "My-DB");
        let b = names_for("pgshift", "my_db");
        assert!(a.forward.starts_with("pgshift_my_db_"), "{}", a.forward);
        assert_ne!(a.forward, b.forward);
        // Long names fit 63 bytes, each its own.
        let long1 = "x".repeat(63);
        let long2 = format!("{}y", "x".repeat(62));
        let (l1, l2) = (names_for("pgshift", &long1), names_for("pgshift", &long2));
        assert!(
            l1.resync_publication.len() <= 63,
            "{}",
            l1.resync_publication
        );
        assert_ne!(l1.forward, l2.forward);
        let prefix = "p".repeat(40);
        assert!(names_for(&prefix, &long1).resync_publication.len() <= 63);
        // Multi-byte names are cleaned to ASCII.
        let u = names_for("pgshift", "données");
        assert!(u.forward.is_ascii());
    }
}
