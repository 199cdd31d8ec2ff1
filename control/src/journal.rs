//! The upgrade journal: a SQLite file (default `./data/pgshift.db`) that records the current
//! upgrade, the status of every plan step and a history of events, so that a restarted pgshift
//! resumes the plan where it stood.
//!
//! Durability: the file runs in WAL mode with `synchronous = FULL` (SQLite docs, "PRAGMA
//! synchronous"): a write that returned is on disk, so "journal, then act" holds across a
//! power loss.
//!
//! Threading: rusqlite is blocking. The [`Journal`] owns one connection on a dedicated thread and
//! runs requests from a FIFO channel, so async callers never stall a runtime worker, and writes
//! land in the order they were issued (even when the task that issued one was aborted while it
//! waited for the answer).
//!
//! Schema (all timestamps RFC 3339 UTC with milliseconds):
//! * `upgrade`: at most one row, the current upgrade (`id` = upgrade number, incremented when an
//!   upgrade starts afresh), its `phase`, `state`, `serving_side`, routing `epoch`, `direction`
//!   of the replication that should be running, traffic `weight` on the target (weighted
//!   shift), `last_error`, `started_at`, `updated_at`.
//! * `steps`: `(upgrade_id, key)` → `status` (`started` / `done` / `failed`), `started_at`,
//!   `finished_at`, `attempts`, `detail`, `heartbeat_at` (long steps). A step repeated (a second
//!   cutover, a retry) keeps its key: `attempts` counts, the events keep each run.
//! * `events` (the history): `ts`, `upgrade_id`, `step` (key, for step events), `actor`
//!   (`operator`, `plan`, `resume`, `health`, ...), `kind` (`phase`, `step`, `retry`, `error`,
//!   `signal`, `health`, `alert`, `swap`, `info`), `message`. Pruned after
//!   `upgrade.history_retention_days` ([`Journal::prune`]).
//!
//! Journals written by an earlier pgshift gain the new columns when opened.

use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// A journal failure: the file could not be opened, or a statement failed.
#[derive(Debug, thiserror::Error)]
#[error("journal {path}: {message}")]
pub struct JournalError {
    /// The SQLite file.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

/// The current upgrade, as journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRow {
    /// Upgrade number: 1 for the first upgrade, +1 for every fresh start.
    pub id: i64,
    /// Plan phase (see [`crate::controller::Phase`]).
    pub phase: String,
    /// `idle` / `running` / `waiting` / `done` / `error`.
    pub state: String,
    /// Side the proxy routes to.
    pub serving_side: String,
    /// Routing epoch the proxy runs under (1 at the start).
    pub epoch: i64,
    /// Replication that should be running: `none`, `forward` (source → target) or `reverse`.
    pub direction: String,
    /// Message of the last failure, cleared when a step succeeds after it.
    pub last_error: Option<String>,
    /// Percentage of eligible traffic the proxy sends to the side that is not serving
    /// ([`crate::TrafficControl::set_weight`]); journaled before it is published.
    pub weight: i64,
    /// When this upgrade started (RFC 3339 UTC).
    pub started_at: String,
    /// Last change of this row (RFC 3339 UTC).
    pub updated_at: String,
}

/// How durable a journal write must be when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On disk (`synchronous = FULL`): survives power loss.
    Full,
    /// Written to the OS (`synchronous = NORMAL`): survives a crash of the process; made
    /// durable by the next `Full` write.
    Process,
}

/// Status of a plan step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    /// Journaled before the step's first effect.
    Started,
    /// Finished; its effects are in place.
    Done,
    /// Failed; see `detail`.
    Failed,
}

impl StepStatus {
    /// The journal's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Started => "started",
            StepStatus::Done => "done",
            StepStatus::Failed => "failed",
        }
    }
    fn parse(s: &str) -> StepStatus {
        match s {
            "done" => StepStatus::Done,
            "failed" => StepStatus::Failed,
            _ => StepStatus::Started,
        }
    }
}

/// One step of one upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRow {
    /// Step key, e.g. `schema_copy`, `cutover.swap`.
    pub key: String,
    /// Where it stands.
    pub status: StepStatus,
    /// Start of the latest attempt (RFC 3339 UTC).
    pub started_at: String,
    /// End of the latest attempt, if it ended.
    pub finished_at: Option<String>,
    /// Number of attempts (1 for the first).
    pub attempts: i64,
    /// Free text: what was done, or the failure.
    pub detail: Option<String>,
}

/// One entry of the history, as `SHOW UPGRADE HISTORY` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Row id (increasing).
    pub id: i64,
    /// When (RFC 3339 UTC).
    pub ts: String,
    /// Upgrade number it belongs to (none for entries written before any upgrade).
    pub upgrade_id: Option<i64>,
    /// Who: `operator`, `plan`, `resume`, `health`, `cutover`, `rollback`...
    pub actor: String,
    /// `phase`, `step` (start / end / failure of a step), `retry`, `error`, `signal`
    /// (ROLLBACK / PAUSE / RESUME...), `health`, `alert`, `swap`, `info`.
    pub kind: String,
    /// Plan step key for step and retry entries (`shift_traffic:2`, `cutover.swap`...).
    pub step: Option<String>,
    /// Human-readable text (never a password).
    pub message: String,
}

/// One entry of the history.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Row id (increasing).
    pub id: i64,
    /// When (RFC 3339 UTC).
    pub ts: String,
    /// Who: `operator`, `plan`, `resume`, `cutover`, `rollback`, `collector`.
    pub actor: String,
    /// What kind: `phase`, `step`, `error`, `info`, `swap`.
    pub kind: String,
    /// Human-readable text (never a password).
    pub message: String,
    /// The upgrade it belongs to (`None` for entries written before any upgrade).
    pub upgrade_id: Option<i64>,
    /// The figures of the entry, for programs (`None` for entries without any, and for
    /// entries journaled before this column existed).
    pub data: Option<EventData>,
}

/// The machine-readable part of a history entry: numbers as numbers, names as the journal's
/// own spellings. Stored as JSON (`{"type": "swap", "to": "target", "epoch": 2,
/// "pause_ms": 12.5}`) in the `events.data` column.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventData {
    /// The upgrade row was written: its phase, state, target weight (percent) and epoch after it.
    Row {
        phase: String,
        state: String,
        weight: i64,
        epoch: i64,
    },
    /// A plan step's status changed (`started`, `done`, `failed`).
    Step { key: String, status: String },
    /// A switch published its new side: the side (`source`/`target`), the new epoch, and the
    /// pause of client traffic in ms.
    Swap {
        to: String,
        epoch: i64,
        pause_ms: f64,
    },
}

impl EventData {
    /// The row's figures.
    pub fn row(row: &UpgradeRow) -> EventData {
        EventData::Row {
            phase: row.phase.clone(),
            state: row.state.clone(),
            weight: row.weight,
            epoch: row.epoch,
        }
    }
}

type Job = Box<dyn FnOnce(&mut Connection) + Send + 'static>;

/// Handle to the journal thread. Cheap to clone; the thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Job>,
    path: String,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS upgrade (
    id           INTEGER PRIMARY KEY,
    phase        TEXT NOT NULL,
    state        TEXT NOT NULL,
    serving_side TEXT NOT NULL,
    epoch        INTEGER NOT NULL,
    direction    TEXT NOT NULL DEFAULT 'none',
    weight       INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    started_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    upgrade_id  INTEGER NOT NULL,
    key         TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('started', 'done', 'failed')),
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    attempts    INTEGER NOT NULL DEFAULT 1,
    detail      TEXT,
    heartbeat_at TEXT,
    PRIMARY KEY (upgrade_id, key)
);
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      TEXT NOT NULL,
    actor   TEXT NOT NULL,
    kind    TEXT NOT NULL,
    message TEXT NOT NULL,
    upgrade_id INTEGER,
    step    TEXT
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
";

/// Columns added after the first release: (table, column, definition). Added when missing.
const MIGRATIONS: &[(&str, &str, &str)] = &[
    ("upgrade", "weight", "INTEGER NOT NULL DEFAULT 0"),
    ("steps", "heartbeat_at", "TEXT"),
    ("events", "upgrade_id", "INTEGER"),
    ("events", "step", "TEXT"),
    ("events", "data", "TEXT"),
];

impl Journal {
    /// Opens (creating the file, its parent directory and the tables if missing) the journal at
    /// `path`, in WAL mode with `synchronous = FULL`, starts its thread, and returns it with the
    /// current upgrade row (read before the thread starts, so this never waits on a runtime).
    pub fn open(path: &Path) -> Result<(Journal, Option<UpgradeRow>), JournalError> {
        let shown = path.display().to_string();
        let err = |m: String| JournalError {
            path: shown.clone(),
            message: m,
        };
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                crate::files::create_dir_all(dir)
                    .map_err(|e| err(format!("cannot create directory {}: {e}", dir.display())))?;
            }
        }
        // The database file is made 0600 before SQLite opens it: SQLite gives its -wal and
        // -shm files the permissions of the database file (os_unix.c, findCreateFileMode).
        crate::files::touch(path).map_err(|e| err(format!("cannot create: {e}")))?;
        let mut conn = Connection::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
        init(&mut conn).map_err(|e| err(format!("cannot initialise: {e}")))?;
        let current = read_upgrade(&mut conn)
            .map_err(|e| err(format!("cannot read the upgrade row: {e}")))?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("pgshift-journal".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| err(format!("cannot start journal thread: {e}")))?;
        Ok((Journal { tx, path: shown }, current))
    }

    /// The detail of step `key` of upgrade `upgrade_id` when it is done, read at once on a
    /// connection of its own (for [`Controller::open`](crate::Controller::open), before any
    /// runtime). `None` when absent, not done, or unreadable.
    pub fn done_step_detail(&self, upgrade_id: i64, key: &str) -> Option<String> {
        let conn = Connection::open(&self.path).ok()?;
        conn.query_row(
            "SELECT detail FROM steps WHERE upgrade_id = ?1 AND key = ?2 AND status = 'done'",
            params![upgrade_id, key],
            |r| r.get::<_, Option<String>>(0),
        )
        .ok()
        .flatten()
    }

    /// The file this journal writes.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.path)
    }

    fn err(&self, message: String) -> JournalError {
        JournalError {
            path: self.path.clone(),
            message,
        }
    }

    fn submit<R, F>(&self, f: F) -> Result<oneshot::Receiver<rusqlite::Result<R>>, JournalError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        self.tx
            .send(job)
            .map_err(|_| self.err("journal thread has stopped".into()))?;
        Ok(rx)
    }

    /// Runs `f` on the journal thread and waits for it without blocking the async runtime.
    /// The request is queued at once (before the first `.await`), so requests keep their order.
    pub async fn call<R, F>(&self, f: F) -> Result<R, JournalError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let rx = self.submit(f)?;
        match rx.await {
            Ok(r) => r.map_err(|e| self.err(e.to_string())),
            Err(_) => Err(self.err("journal thread has stopped".into())),
        }
    }

    /// Writes the current upgrade row (replacing any other) and, when given, an event, in one
    /// transaction.
    pub async fn save_upgrade(
        &self,
        row: UpgradeRow,
        event: Option<(String, String, String)>,
    ) -> Result<(), JournalError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            write_upgrade(&tx, &row)?;
            if let Some((actor, kind, message)) = event {
                insert_event(
                    &tx,
                    &row.updated_at,
                    Some(row.id),
                    None,
                    &actor,
                    &kind,
                    &message,
                    Some(&EventData::row(&row)),
                )?;
            }
            tx.commit()
        })
        .await
    }

    /// Writes the current upgrade row with an event, and forgets the steps `reset` of that
    /// upgrade (so the plan runs them again), in one transaction of the given durability.
    pub async fn save_upgrade_reset(
        &self,
        row: UpgradeRow,
        event: (String, String, String),
        reset: Vec<String>,
        durability: Durability,
    ) -> Result<(), JournalError> {
        self.call(move |c| {
            if durability == Durability::Process {
                c.pragma_update(None, "synchronous", "NORMAL")?;
            }
            let res = (|| {
                let tx = c.transaction()?;
                write_upgrade(&tx, &row)?;
                for key in &reset {
                    tx.execute(
                        "DELETE FROM steps WHERE upgrade_id = ?1 AND key = ?2",
                        params![row.id, key],
                    )?;
                }
                let (actor, kind, message) = &event;
                insert_event(
                    &tx,
                    &row.updated_at,
                    Some(row.id),
                    None,
                    actor,
                    kind,
                    message,
                    Some(&EventData::row(&row)),
                )?;
                tx.commit()
            })();
            if durability == Durability::Process {
                c.pragma_update(None, "synchronous", "FULL")?;
            }
            res
        })
        .await
    }

    /// Forgets steps `keys` of upgrade `upgrade_id` (the plan runs them again); the history
    /// keeps their runs.
    pub async fn reset_steps(
        &self,
        upgrade_id: i64,
        keys: Vec<String>,
    ) -> Result<(), JournalError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            for key in &keys {
                tx.execute(
                    "DELETE FROM steps WHERE upgrade_id = ?1 AND key = ?2",
                    params![upgrade_id, key],
                )?;
            }
            tx.commit()
        })
        .await
    }

    /// Records that step `key` is alive (long steps such as WaitForSync): `heartbeat_at` = now
    /// and, when given, `detail`. Not fsynced (a lost heartbeat costs nothing).
    pub async fn heartbeat(
        &self,
        upgrade_id: i64,
        key: &str,
        detail: Option<String>,
    ) -> Result<(), JournalError> {
        let key = key.to_string();
        self.call(move |c| {
            c.pragma_update(None, "synchronous", "NORMAL")?;
            let r = c.execute(
                "UPDATE steps SET heartbeat_at = ?3, detail = COALESCE(?4, detail)
                 WHERE upgrade_id = ?1 AND key = ?2",
                params![upgrade_id, key, now_rfc3339(), detail],
            );
            c.pragma_update(None, "synchronous", "FULL")?;
            r.map(|_| ())
        })
        .await
    }

    /// Appends an event about step `step` of upgrade `upgrade_id` (kind e.g. `retry`).
    pub async fn step_event(
        &self,
        upgrade_id: i64,
        step: &str,
        actor: &str,
        kind: &str,
        message: &str,
    ) -> Result<(), JournalError> {
        let (step, actor, kind, message) = (
            step.to_string(),
            actor.to_string(),
            kind.to_string(),
            message.to_string(),
        );
        self.call(move |c| {
            insert_event(
                c,
                &now_rfc3339(),
                Some(upgrade_id),
                Some(&step),
                &actor,
                &kind,
                &message,
                None,
            )
        })
        .await
    }

    /// The latest `limit` history entries, oldest first.
    pub async fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, JournalError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT id, ts, upgrade_id, actor, kind, step, message FROM
                   (SELECT * FROM events ORDER BY id DESC LIMIT ?1) ORDER BY id",
            )?;
            let rows = st.query_map(params![limit], |r| {
                Ok(HistoryEntry {
                    id: r.get(0)?,
                    ts: r.get(1)?,
                    upgrade_id: r.get(2)?,
                    actor: r.get(3)?,
                    kind: r.get(4)?,
                    step: r.get(5)?,
                    message: r.get(6)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Deletes history entries older than `days` days, and the step records of earlier
    /// upgrades that ended before then. Returns the number of entries deleted.
    pub async fn prune(&self, days: u32) -> Result<usize, JournalError> {
        let cutoff = {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as i64;
            rfc3339_from_unix_millis(now - i64::from(days) * 86_400_000)
        };
        self.call(move |c| {
            let n = c.execute("DELETE FROM events WHERE ts < ?1", params![cutoff])?;
            c.execute(
                "DELETE FROM steps WHERE upgrade_id < (SELECT COALESCE(max(id), 0) FROM upgrade)
                   AND COALESCE(finished_at, started_at) < ?1",
                params![cutoff],
            )?;
            Ok(n)
        })
        .await
    }

    /// Records a step transition (and an event describing it) in one transaction.
    /// `Started` inserts the step or, when it exists, starts a new attempt.
    pub async fn step(
        &self,
        upgrade_id: i64,
        key: &str,
        status: StepStatus,
        detail: Option<String>,
        actor: &str,
    ) -> Result<(), JournalError> {
        self.transitions(
            upgrade_id,
            vec![(key.to_string(), status, detail)],
            None,
            actor,
            Durability::Full,
        )
        .await
    }

    /// Records several step transitions and, when given, the new upgrade row, in one
    /// transaction (one fsync): e.g. "catch-up done, stop-apply started" inside the cutover
    /// pause, or "slot done, swap started" together with the new serving side and epoch.
    ///
    /// `durability`: [`Durability::Full`] fsyncs before returning. [`Durability::Process`]
    /// (`PRAGMA synchronous = NORMAL` for this transaction) survives a crash of the process but
    /// not of the machine until the next `Full` write, which makes it durable too (SQLite's WAL
    /// is sequential). The cutover uses it for its step records inside the pause: recovery
    /// does not depend on them (it looks at the phase and the swap, written `Full`), and each
    /// fsync saved is milliseconds less of pause.
    pub async fn transitions(
        &self,
        upgrade_id: i64,
        items: Vec<(String, StepStatus, Option<String>)>,
        row: Option<UpgradeRow>,
        actor: &str,
        durability: Durability,
    ) -> Result<(), JournalError> {
        let actor = actor.to_string();
        self.call(move |c| {
            let now = now_rfc3339();
            if durability == Durability::Process {
                c.pragma_update(None, "synchronous", "NORMAL")?;
            }
            let res = write_transitions(c, upgrade_id, &items, row.as_ref(), &actor, &now);
            if durability == Durability::Process {
                c.pragma_update(None, "synchronous", "FULL")?;
            }
            res
        })
        .await
    }

    /// Appends an event.
    pub async fn event(&self, actor: &str, kind: &str, message: &str) -> Result<(), JournalError> {
        let (actor, kind, message) = (actor.to_string(), kind.to_string(), message.to_string());
        self.call(move |c| {
            insert_event(c, &now_rfc3339(), None, None, &actor, &kind, &message, None)
        })
        .await
    }

    /// [`event`](Self::event) with its figures ([`EventData`]).
    pub async fn event_data(
        &self,
        actor: &str,
        kind: &str,
        message: &str,
        data: EventData,
    ) -> Result<(), JournalError> {
        let (actor, kind, message) = (actor.to_string(), kind.to_string(), message.to_string());
        self.call(move |c| {
            insert_event(
                c,
                &now_rfc3339(),
                None,
                None,
                &actor,
                &kind,
                &message,
                Some(&data),
            )
        })
        .await
    }

    /// The current upgrade row, if any upgrade was ever started.
    pub async fn load(&self) -> Result<Option<UpgradeRow>, JournalError> {
        self.call(read_upgrade).await
    }

    /// All steps of upgrade `upgrade_id`, in the order they were first started.
    pub async fn steps(&self, upgrade_id: i64) -> Result<Vec<StepRow>, JournalError> {
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT key, status, started_at, finished_at, attempts, detail FROM steps
                 WHERE upgrade_id = ?1 ORDER BY rowid",
            )?;
            let rows = st.query_map(params![upgrade_id], |r| {
                Ok(StepRow {
                    key: r.get(0)?,
                    status: StepStatus::parse(&r.get::<_, String>(1)?),
                    started_at: r.get(2)?,
                    finished_at: r.get(3)?,
                    attempts: r.get(4)?,
                    detail: r.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// The latest `limit` events, oldest first.
    pub async fn events(&self, limit: usize) -> Result<Vec<Event>, JournalError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT id, ts, actor, kind, message, upgrade_id, data FROM
                   (SELECT * FROM events ORDER BY id DESC LIMIT ?1) ORDER BY id",
            )?;
            let rows = st.query_map(params![limit], |r| {
                Ok(Event {
                    id: r.get(0)?,
                    ts: r.get(1)?,
                    actor: r.get(2)?,
                    kind: r.get(3)?,
                    message: r.get(4)?,
                    upgrade_id: r.get(5)?,
                    // An entry this build cannot read keeps its text only.
                    data: r
                        .get::<_, Option<String>>(6)?
                        .and_then(|d| serde_json::from_str(&d).ok()),
                })
            })?;
            rows.collect()
        })
        .await
    }
}

fn init(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // journal_mode returns the mode as a row.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(
            mode,
            "journal: SQLite refused WAL mode; continuing in this mode"
        );
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    conn.execute_batch(SCHEMA)?;
    for (table, column, def) in MIGRATIONS {
        let exists: bool = conn.query_row(
            &format!("SELECT count(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
            params![column],
            |r| r.get(0),
        )?;
        if !exists {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {def}"))?;
        }
    }
    Ok(())
}

fn write_transitions(
    c: &mut Connection,
    upgrade_id: i64,
    items: &[(String, StepStatus, Option<String>)],
    row: Option<&UpgradeRow>,
    actor: &str,
    now: &str,
) -> rusqlite::Result<()> {
    let tx = c.transaction()?;
    for (key, status, detail) in items {
        write_step(&tx, upgrade_id, key, *status, detail.as_deref(), now)?;
        let msg = match detail {
            Some(d) => format!("{key}: {} ({d})", status.as_str()),
            None => format!("{key}: {}", status.as_str()),
        };
        let data = EventData::Step {
            key: key.clone(),
            status: status.as_str().to_string(),
        };
        insert_event(
            &tx,
            now,
            Some(upgrade_id),
            Some(key),
            actor,
            "step",
            &msg,
            Some(&data),
        )?;
    }
    if let Some(row) = row {
        write_upgrade(&tx, row)?;
    }
    tx.commit()
}

fn write_step(
    tx: &Connection,
    upgrade_id: i64,
    key: &str,
    status: StepStatus,
    detail: Option<&str>,
    now: &str,
) -> rusqlite::Result<()> {
    match status {
        StepStatus::Started => {
            tx.execute(
                "INSERT INTO steps (upgrade_id, key, status, started_at, finished_at, attempts, detail)
                 VALUES (?1, ?2, 'started', ?3, NULL, 1, ?4)
                 ON CONFLICT (upgrade_id, key) DO UPDATE SET status = 'started', started_at = ?3,
                     finished_at = NULL, attempts = steps.attempts + 1, detail = ?4",
                params![upgrade_id, key, now, detail],
            )?;
        }
        StepStatus::Done | StepStatus::Failed => {
            let n = tx.execute(
                "UPDATE steps SET status = ?3, finished_at = ?4, detail = COALESCE(?5, detail)
                 WHERE upgrade_id = ?1 AND key = ?2",
                params![upgrade_id, key, status.as_str(), now, detail],
            )?;
            if n == 0 {
                tx.execute(
                    "INSERT INTO steps (upgrade_id, key, status, started_at, finished_at, attempts, detail)
                     VALUES (?1, ?2, ?3, ?4, ?4, 1, ?5)",
                    params![upgrade_id, key, status.as_str(), now, detail],
                )?;
            }
        }
    }
    Ok(())
}

fn write_upgrade(c: &Connection, row: &UpgradeRow) -> rusqlite::Result<()> {
    c.execute("DELETE FROM upgrade WHERE id <> ?1", params![row.id])?;
    c.execute(
        "INSERT INTO upgrade (id, phase, state, serving_side, epoch, direction, last_error, started_at, updated_at, weight)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (id) DO UPDATE SET phase = ?2, state = ?3, serving_side = ?4, epoch = ?5,
             direction = ?6, last_error = ?7, started_at = ?8, updated_at = ?9, weight = ?10",
        params![
            row.id,
            row.phase,
            row.state,
            row.serving_side,
            row.epoch,
            row.direction,
            row.last_error,
            row.started_at,
            row.updated_at,
            row.weight
        ],
    )?;
    Ok(())
}

fn read_upgrade(c: &mut Connection) -> rusqlite::Result<Option<UpgradeRow>> {
    c.query_row(
        "SELECT id, phase, state, serving_side, epoch, direction, last_error, started_at, updated_at, weight
         FROM upgrade ORDER BY id DESC LIMIT 1",
        [],
        |r| {
            Ok(UpgradeRow {
                id: r.get(0)?,
                phase: r.get(1)?,
                state: r.get(2)?,
                serving_side: r.get(3)?,
                epoch: r.get(4)?,
                direction: r.get(5)?,
                last_error: r.get(6)?,
                started_at: r.get(7)?,
                updated_at: r.get(8)?,
                weight: r.get(9)?,
            })
        },
    )
    .optional()
}

#[allow(clippy::too_many_arguments)]
fn insert_event(
    c: &Connection,
    ts: &str,
    upgrade_id: Option<i64>,
    step: Option<&str>,
    actor: &str,
    kind: &str,
    message: &str,
    data: Option<&EventData>,
) -> rusqlite::Result<()> {
    let data = data.and_then(|d| serde_json::to_string(d).ok());
    c.execute(
        "INSERT INTO events (ts, actor, kind, message, upgrade_id, step, data)
         VALUES (?1, ?2, ?3, ?4, COALESCE(?5, (SELECT max(id) FROM upgrade)), ?6, ?7)",
        params![ts, actor, kind, message, upgrade_id, step, data],
    )?;
    Ok(())
}

/// Now as RFC 3339 UTC with milliseconds, e.g. `2026-05-01T12:00:00.123Z`.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339_from_unix_millis(d.as_millis() as i64)
}

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SS.mmmZ`).
pub fn rfc3339_from_unix_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_directory_0700_files_0600() {
        // A permissive umask, as on many hosts: the modes must come from pgshift, not from it.
        // SAFETY: umask(2) cannot fail; other tests only see files made more permissive.
        unsafe { libc::umask(0o022) };
        use std::os::unix::fs::PermissionsExt;
        let base =
            std::env::temp_dir().join(format!("pgshift-journal-modes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let path = base.join("data/pgshift.db");
        let (j, _) = Journal::open(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&base), 0o700);
        assert_eq!(mode(&base.join("data")), 0o700);
        assert_eq!(mode(&path), 0o600);
        // WAL mode: the -wal and -shm files exist while the journal is open.
        for ext in ["db-wal", "db-shm"] {
            let p = path.with_extension(ext);
            assert!(p.exists(), "{}", p.display());
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        drop(j);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339_from_unix_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_from_unix_millis(951_782_400_123),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            rfc3339_from_unix_millis(1_767_225_599_999),
            "2025-12-31T23:59:59.999Z"
        );
    }

    #[tokio::test]
    async fn journal_roundtrip() {
        let dir = std::env::temp_dir().join(format!("pgshift-journal-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("j.db");
        let (j, cur) = Journal::open(&path).expect("open");
        assert!(cur.is_none());
        assert!(j.load().await.expect("load").is_none());
        let row = UpgradeRow {
            id: 1,
            phase: "preflight".into(),
            state: "running".into(),
            serving_side: "source".into(),
            epoch: 1,
            direction: "none".into(),
            last_error: None,
            weight: 25,
            started_at: now_rfc3339(),
            updated_at: now_rfc3339(),
        };
        j.save_upgrade(
            row.clone(),
            Some(("operator".into(), "phase".into(), "start".into())),
        )
        .await
        .expect("save");
        j.step(1, "preflight", StepStatus::Started, None, "plan")
            .await
            .expect("step");
        j.step(1, "preflight", StepStatus::Done, Some("ok".into()), "plan")
            .await
            .expect("step");
        j.step(1, "preflight", StepStatus::Started, None, "plan")
            .await
            .expect("step");
        drop(j);
        let (j, cur) = Journal::open(&path).expect("reopen");
        assert_eq!(cur.as_ref(), Some(&row));
        assert_eq!(j.load().await.expect("load"), Some(row));
        let steps = j.steps(1).await.expect("steps");
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].attempts, 2);
        assert_eq!(steps[0].status, StepStatus::Started);
        let ev = j.events(4).await.expect("events");
        assert_eq!(ev.len(), 4);
        // Numbers as numbers: the row's figures, each step's key and status.
        assert_eq!(
            ev[0].data,
            Some(EventData::Row {
                phase: "preflight".into(),
                state: "running".into(),
                weight: 25,
                epoch: 1
            })
        );
        assert_eq!(ev[0].upgrade_id, Some(1));
        assert_eq!(
            ev[2].data,
            Some(EventData::Step {
                key: "preflight".into(),
                status: "done".into()
            })
        );
        j.event_data(
            "cutover",
            "swap",
            "swapped to target, epoch 2: pause 7.5 ms",
            EventData::Swap {
                to: "target".into(),
                epoch: 2,
                pause_ms: 7.5,
            },
        )
        .await
        .expect("swap event");
        let last = j.events(1).await.expect("events").remove(0);
        assert_eq!(
            last.data,
            Some(EventData::Swap {
                to: "target".into(),
                epoch: 2,
                pause_ms: 7.5
            })
        );
        let h = j.history(10).await.expect("history");
        assert_eq!(h.len(), 5);
        assert_eq!(h[1].step.as_deref(), Some("preflight"));
        assert_eq!(h[1].upgrade_id, Some(1));
        assert_eq!(h[1].kind, "step");
        j.heartbeat(1, "preflight", Some("alive".into()))
            .await
            .expect("heartbeat");
        assert_eq!(
            j.steps(1).await.unwrap()[0].detail.as_deref(),
            Some("alive")
        );
        j.reset_steps(1, vec!["preflight".into()])
            .await
            .expect("reset");
        assert!(j.steps(1).await.unwrap().is_empty());
        assert_eq!(j.prune(90).await.expect("prune"), 0);
        let mode: String = j
            .call(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
            .await
            .expect("mode");
        assert_eq!(mode, "wal");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
