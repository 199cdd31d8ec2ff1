//! Capture for the `mirror` replication driver (`[replication] driver = "mirror"`): for
//! sources without logical decoding, pgshift itself records every write transaction that
//! commits through it, and applies them on the other side in commit order.
//!
//! * **Recording** ([`Engine::open_unit`], [`Engine::record`]): while capture runs on the
//!   serving side, each session keeps the bytes of every unit of work (a transaction: the
//!   client's messages and the server's answer through the `ReadyForQuery` with status `I`).
//!   A unit that is not proven read-only writes an `OPEN` record before its first message
//!   reaches the server, and its whole `UNIT` record before the final `ReadyForQuery` is
//!   forwarded to the client: what a client saw committed is in the queue. Units whose
//!   statements all turn out read-only, or that end in `ROLLBACK`, write `CLOSE`.
//!   The order of `UNIT` records is the order in which their commits reached pgshift.
//! * **The queue** ([`queue`]): append-only segment files under `[replication] queue_dir`,
//!   each record checked by CRC32, kept across restarts. A restarted pgshift writes a
//!   `RESTART` record; a unit `OPEN` before it and never finished was in flight when pgshift
//!   stopped, and may have committed on the source unseen: applying stops with an error that
//!   says so (the initial copy must be made again).
//! * **Applying** (`apply`): a connection to the other side per `server_user`, logged in
//!   with that user's own credentials (its `[[users]]` entry), so a unit has there exactly
//!   the rights it had on the source: a `RESET ROLE`, `SET ROLE` or `SET SESSION
//!   AUTHORIZATION` inside it is refused there as it was on the source. Each unit runs in a
//!   transaction that first stores the unit's seq in `<prefix>_mirror.applied` (exactly
//!   once: a unit whose seq is there is not applied again) through
//!   `<prefix>_mirror.mark`, a `SECURITY DEFINER` function of pgshift's configured user
//!   that only the applier's own backends may call (their pid and start time are
//!   registered in `<prefix>_mirror.appliers` by that user: a client's session of the same
//!   role is refused). It then takes the session's start-up parameters and SETs, prepares
//!   the named statements it uses and runs the client's messages as they were sent. Units
//!   are sent in batches (up to `[replication] apply_batch` units or 4 MiB; consecutive
//!   units of one user are pipelined, a unit of another user waits for the answers before
//!   it, so commit order holds) before their answers are read, and commit without waiting
//!   for their WAL flush (`synchronous_commit = off`); one commit that waits ends each
//!   batch, and only then do its units count as applied (so the queue keeps them until
//!   they are durable on the other side).
//!   Each answer is compared with the source's: an error the source did not have, or
//!   a different command tag (rows affected), stops applying (the data would diverge).
//!   Row values (a read inside the transaction, `RETURNING`) are not compared: under
//!   concurrency a read on the source may not have seen a transaction that committed after
//!   it and before its own commit, which the other side applies first.
//!
//! Limits (statement-based replication): every writer must go through pgshift; statements
//! whose effect depends on more than the data (`now()`, `random()`, sequence values drawn
//! by concurrent transactions in another order than their commits) can give other values
//! on the target; validation of reads reports such tables. A transaction that rolled back
//! or failed on the source is run too and rolled back, uncompared, for its sequence draws.

pub mod apply;
pub mod queue;

use crate::routing::BackendAddr;
use arc_swap::ArcSwapOption;
use config::Config;
use control::{CaptureState, Side};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Test hook for the kill test of group commit: with `PGSHIFT_FAILPOINT=capture-sync@N`
/// the process kills itself (SIGKILL) at its N-th group commit, after the `UNIT` records
/// were written and before their `fdatasync` (so before any of their clients heard the
/// commit); `capture-sync` alone is `@1`.
fn sync_failpoint() {
    static AT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let at = AT.get_or_init(|| {
        let v = std::env::var("PGSHIFT_FAILPOINT").ok()?;
        let n = v.strip_prefix("capture-sync")?;
        match n.strip_prefix('@') {
            None if n.is_empty() => Some(1),
            Some(n) => n.parse().ok(),
            None => None,
        }
    });
    if let Some(at) = *at {
        if COUNT.fetch_add(1, Ordering::Relaxed) + 1 == at {
            tracing::error!("PGSHIFT_FAILPOINT=capture-sync@{at}: killing the process (SIGKILL) before fdatasync of the capture queue");
            // SAFETY: kill(2) of our own process; no memory is touched.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
}

/// Record kinds in the queue.
pub const OPEN: u8 = 1;
/// A committed unit ([`Unit`] encoded).
pub const UNIT: u8 = 2;
/// A unit that wrote nothing (read-only after all, or rolled back).
pub const CLOSE: u8 = 3;
/// pgshift started again with capture on.
pub const RESTART: u8 = 4;
/// A unit that could not be recorded (over [`MAX_UNIT_BYTES`]): applying stops there.
pub const LOST: u8 = 5;

/// Largest unit (client bytes + answer) recorded: 512 MiB. A bigger one stops applying
/// with an error naming it.
pub const MAX_UNIT_BYTES: usize = 512 << 20;

/// One committed unit of work as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unit {
    /// The session's unit id (of its `OPEN` record).
    pub uid: u64,
    /// The user on the servers (`server_user`) the session runs as.
    pub user: String,
    /// The client's start-up parameters (other than user and database).
    pub params: Vec<(String, String)>,
    /// The session's SET statements in force when the unit started.
    pub sets: Vec<String>,
    /// Parse messages (whole frames) of named statements the unit binds: name → frame.
    pub statements: Vec<(String, Vec<u8>)>,
    /// The client's messages, as received.
    pub client: Vec<u8>,
    /// The source's answer, as forwarded to the client.
    pub server: Vec<u8>,
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

/// The u64 (little-endian) at the start of `b`, if it has 8 bytes.
pub(crate) fn le_u64(b: &[u8]) -> Option<u64> {
    b.get(..8)?.try_into().ok().map(u64::from_le_bytes)
}

/// Takes a u64 (little-endian) off the front of `b`.
fn take_u64(b: &mut &[u8]) -> Result<u64, String> {
    let v = le_u64(b).ok_or("record cut short")?;
    *b = &b[8..];
    Ok(v)
}

fn take_bytes<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let n = take_u64(b)? as usize;
    if b.len() < n {
        return Err("record cut short".into());
    }
    let (v, rest) = b.split_at(n);
    *b = rest;
    Ok(v)
}

fn take_str(b: &mut &[u8]) -> Result<String, String> {
    String::from_utf8(take_bytes(b)?.to_vec()).map_err(|_| "text that is not UTF-8".to_string())
}

impl Unit {
    /// Encoding in the queue: `uid` (u64 LE), then each field as u64 LE length + bytes
    /// (lists: count, then their items).
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(self.client.len() + self.server.len() + 256);
        o.extend_from_slice(&self.uid.to_le_bytes());
        put_bytes(&mut o, self.user.as_bytes());
        o.extend_from_slice(&(self.params.len() as u64).to_le_bytes());
        for (k, v) in &self.params {
            put_bytes(&mut o, k.as_bytes());
            put_bytes(&mut o, v.as_bytes());
        }
        o.extend_from_slice(&(self.sets.len() as u64).to_le_bytes());
        for s in &self.sets {
            put_bytes(&mut o, s.as_bytes());
        }
        o.extend_from_slice(&(self.statements.len() as u64).to_le_bytes());
        for (n, f) in &self.statements {
            put_bytes(&mut o, n.as_bytes());
            put_bytes(&mut o, f);
        }
        put_bytes(&mut o, &self.client);
        put_bytes(&mut o, &self.server);
        o
    }

    /// Inverse of [`encode`](Self::encode). Errors: cut short, text not UTF-8.
    pub fn decode(mut b: &[u8]) -> Result<Unit, String> {
        let b = &mut b;
        let count = |b: &mut &[u8]| -> Result<usize, String> {
            let n = take_u64(b)? as usize;
            if n > b.len() {
                return Err("record with an impossible count".into());
            }
            Ok(n)
        };
        let uid = take_u64(b)?;
        let user = take_str(b)?;
        let mut params = Vec::new();
        for _ in 0..count(b)? {
            params.push((take_str(b)?, take_str(b)?));
        }
        let mut sets = Vec::new();
        for _ in 0..count(b)? {
            sets.push(take_str(b)?);
        }
        let mut statements = Vec::new();
        for _ in 0..count(b)? {
            statements.push((take_str(b)?, take_bytes(b)?.to_vec()));
        }
        let client = take_bytes(b)?.to_vec();
        let server = take_bytes(b)?.to_vec();
        Ok(Unit {
            uid,
            user,
            params,
            sets,
            statements,
            client,
            server,
        })
    }
}

/// What survives a restart besides the queue: `state.json` in the queue directory.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Persisted {
    gen: u64,
    /// `source` / `target` while capturing.
    from: Option<String>,
    applying: bool,
}

fn side_code(s: Option<Side>) -> u8 {
    match s {
        None => 0,
        Some(Side::Source) => 1,
        Some(Side::Target) => 2,
    }
}

/// The capture engine: the queue being written, the applier, their state.
pub struct Engine {
    cfg: Arc<Config>,
    /// `[source]` and `[target]` as the applier reaches them (TLS set-up included).
    addrs: [BackendAddr; 2],
    /// Group commit: every record up to this seq of the current writer is on disk.
    synced: AtomicU64,
    /// One `fdatasync` at a time; those waiting meanwhile are covered by the next.
    sync_turn: tokio::sync::Mutex<()>,
    dir: PathBuf,
    /// 0: not capturing; 1: capturing on the source; 2: on the target.
    from: AtomicU8,
    writer: ArcSwapOption<queue::Writer>,
    persisted: Mutex<Persisted>,
    next_uid: AtomicU64,
    /// Applier state, written by the applier.
    pub(crate) applied: AtomicU64,
    pub(crate) applied_pos: AtomicU64,
    pub(crate) failed: Mutex<Option<String>>,
    /// Generation the applier should run (0: none); the applier stops when it changes.
    pub(crate) apply_gen: AtomicU64,
    applier_running: AtomicBool,
    me: std::sync::Weak<Engine>,
}

impl Engine {
    /// The engine for `[replication] driver = "mirror"` (`None` for other drivers). Resumes
    /// a capture that ran when pgshift stopped (a `RESTART` record is written first), and its
    /// applier. Errors: the queue directory or its state cannot be read or written.
    pub fn start(cfg: Arc<Config>, addrs: [BackendAddr; 2]) -> Result<Option<Arc<Engine>>, String> {
        if cfg.replication.driver != config::Driver::Mirror {
            return Ok(None);
        }
        let dir = cfg.replication.queue_dir.clone();
        control::files::create_dir_all(&dir)
            .map_err(|e| format!("[replication] queue_dir {}: {e}", dir.display()))?;
        let persisted: Persisted = match std::fs::read(dir.join("state.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format!("{}: {e}", dir.join("state.json").display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => return Err(format!("{}: {e}", dir.join("state.json").display())),
        };
        let e = Arc::new_cyclic(|me| Engine {
            me: me.clone(),
            cfg,
            addrs,
            synced: AtomicU64::new(0),
            sync_turn: tokio::sync::Mutex::new(()),
            dir,
            from: AtomicU8::new(0),
            writer: ArcSwapOption::empty(),
            persisted: Mutex::new(persisted.clone()),
            next_uid: AtomicU64::new(1),
            applied: AtomicU64::new(0),
            applied_pos: AtomicU64::new(0),
            failed: Mutex::new(None),
            apply_gen: AtomicU64::new(0),
            applier_running: AtomicBool::new(false),
        });
        if let Some(from) = persisted.from.as_deref().and_then(Side::parse) {
            let w = queue::Writer::open(&e.dir, persisted.gen)
                .map_err(|err| format!("capture queue {}: {err}", e.dir.display()))?;
            w.append(RESTART, &[])
                .map_err(|err| format!("capture queue {}: {err}", e.dir.display()))?;
            tracing::warn!(
                gen = persisted.gen,
                from = from.as_str(),
                last_seq = w.last_seq(),
                "capture of committed writes resumed after a restart"
            );
            e.writer.store(Some(Arc::new(w)));
            e.from.store(side_code(Some(from)), Ordering::SeqCst);
        }
        if persisted.applying {
            e.run_applier(persisted.gen);
        }
        Ok(Some(e))
    }

    fn persist(&self, p: &Persisted) -> Result<(), String> {
        let tmp = self.dir.join("state.json.tmp");
        let body = serde_json::to_vec(p).map_err(|e| e.to_string())?;
        control::files::write(&tmp, body)
            .and_then(|_| std::fs::rename(&tmp, self.dir.join("state.json")))
            .map_err(|e| format!("{}: {e}", self.dir.join("state.json").display()))
    }

    /// Whether units on `side` are recorded now. One atomic load.
    #[inline]
    pub fn capturing(&self, side: Side) -> bool {
        self.from.load(Ordering::Relaxed) == side_code(Some(side))
    }

    fn append(&self, kind: u8, payload: &[u8]) -> Option<u64> {
        let w = self.writer.load_full()?;
        match w.append(kind, payload) {
            Ok(seq) => Some(seq),
            Err(e) => {
                self.queue_failed(&format!(
                    "cannot write the capture queue in {}: {e}",
                    self.dir.display()
                ));
                None
            }
        }
    }

    fn queue_failed(&self, what: &str) {
        let msg = format!(
            "{what}; transactions committed from now on are not recorded: the initial copy must be made again"
        );
        tracing::error!("{msg}");
        lock(&self.failed).get_or_insert(msg);
    }

    /// Waits until the queue record `seq` is on disk (group commit: one `fdatasync` covers
    /// every record appended before it starts, so the sessions waiting at that moment share
    /// it; a session that finds its record already covered does not wait at all). Called
    /// between a unit's `UNIT` record and the ReadyForQuery that tells the client it
    /// committed. An `fdatasync` error marks capture failed (the client still hears its
    /// commit: the source has it) and returns.
    pub async fn durable(&self, seq: u64) {
        if self.synced.load(Ordering::Acquire) >= seq {
            return;
        }
        let _turn = self.sync_turn.lock().await;
        if self.synced.load(Ordering::Acquire) >= seq {
            return;
        }
        let Some(w) = self.writer.load_full() else {
            return;
        };
        sync_failpoint();
        match tokio::task::spawn_blocking(move || w.sync_upto()).await {
            Ok(Ok(upto)) => {
                self.synced.fetch_max(upto, Ordering::AcqRel);
                crate::metrics::capture_synced();
            }
            Ok(Err(e)) => self.queue_failed(&format!(
                "cannot fdatasync the capture queue in {}: {e}",
                self.dir.display()
            )),
            Err(e) => self.queue_failed(&format!("capture queue sync task: {e}")),
        }
    }

    /// A unit that may write starts: writes its `OPEN` record; returns its id.
    pub fn open_unit(&self) -> u64 {
        let uid = self.next_uid.fetch_add(1, Ordering::Relaxed);
        let _ = self.append(OPEN, &uid.to_le_bytes());
        uid
    }

    /// The unit wrote nothing: `CLOSE`.
    pub fn close_unit(&self, uid: u64) {
        let _ = self.append(CLOSE, &uid.to_le_bytes());
    }

    /// The unit committed (or may have): its `UNIT` record; its seq, to wait for with
    /// [`Engine::durable`] (`None` when capture stopped or the write failed).
    pub fn record(&self, unit: &Unit) -> Option<u64> {
        self.append(UNIT, &unit.encode())
    }

    /// The unit could not be kept whole (`bytes`: over [`MAX_UNIT_BYTES`]), or is in doubt
    /// (`bytes` 0: its client left while it may have been committing, and it could not be
    /// finished without the client). Applying stops at it, saying which.
    pub fn lost(&self, uid: u64, bytes: usize) {
        let mut p = uid.to_le_bytes().to_vec();
        p.extend_from_slice(&(bytes as u64).to_le_bytes());
        let _ = self.append(LOST, &p);
    }

    /// The address and admin user of `side`, for the applier.
    pub(crate) fn server(&self, side: Side) -> (BackendAddr, String, Option<String>) {
        let (s, addr) = match side {
            Side::Source => (&self.cfg.source, &self.addrs[0]),
            Side::Target => (&self.cfg.target, &self.addrs[1]),
        };
        (addr.clone(), s.user.clone(), s.password.clone())
    }

    pub(crate) fn cfg(&self) -> &Config {
        &self.cfg
    }

    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The side the recorded units came from.
    pub(crate) fn source_side_of(&self, gen: u64) -> Option<Side> {
        let p = lock(&self.persisted);
        if p.gen == gen {
            p.from
                .as_deref()
                .and_then(Side::parse)
                .or(Some(Side::Source))
        } else {
            None
        }
    }

    fn run_applier(self: &Arc<Self>, gen: u64) {
        self.apply_gen.store(gen, Ordering::SeqCst);
        *lock(&self.failed) = None;
        if self.applier_running.swap(true, Ordering::SeqCst) {
            return;
        }
        let e = self.clone();
        let spawned = std::thread::Builder::new()
            .name("pgshift-apply".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    // `run` clears `applier_running` itself when it leaves (and takes up a
                    // generation asked for meanwhile).
                    Ok(rt) => rt.block_on(apply::run(e.clone())),
                    Err(err) => {
                        *lock(&e.failed) = Some(format!("cannot start the applier: {err}"));
                        e.applier_running.store(false, Ordering::SeqCst);
                    }
                }
            });
        if let Err(err) = spawned {
            self.applier_running.store(false, Ordering::SeqCst);
            *lock(&self.failed) = Some(format!("cannot start the applier thread: {err}"));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl control::Capture for Engine {
    fn start(&self, gen: u64, from: Side) -> Result<(), String> {
        self.apply_gen.store(0, Ordering::SeqCst);
        self.from.store(0, Ordering::SeqCst);
        self.writer.store(None);
        // Earlier generations are done with.
        if let Ok(gens) = queue::generations(&self.dir) {
            for g in gens.into_iter().filter(|g| *g != gen) {
                let _ = queue::remove(&self.dir, g);
            }
        }
        let _ = queue::remove(&self.dir, gen);
        let w = queue::Writer::open(&self.dir, gen)
            .map_err(|e| format!("capture queue {}: {e}", self.dir.display()))?;
        let p = Persisted {
            gen,
            from: Some(from.as_str().into()),
            applying: false,
        };
        self.persist(&p)?;
        *lock(&self.persisted) = p;
        *lock(&self.failed) = None;
        self.applied.store(0, Ordering::SeqCst);
        self.applied_pos.store(0, Ordering::SeqCst);
        self.synced.store(0, Ordering::Release);
        self.writer.store(Some(Arc::new(w)));
        self.from.store(side_code(Some(from)), Ordering::SeqCst);
        tracing::info!(
            gen,
            from = from.as_str(),
            "capture of committed writes started"
        );
        Ok(())
    }

    fn apply(&self, gen: u64) -> Result<(), String> {
        let mut p = lock(&self.persisted).clone();
        if p.gen != gen {
            return Err(format!(
                "capture generation {gen} is not the one recorded ({})",
                p.gen
            ));
        }
        p.applying = true;
        self.persist(&p)?;
        *lock(&self.persisted) = p;
        // `self` is behind an Arc in the proxy; the applier needs one.
        match self.me.upgrade() {
            Some(e) => {
                e.run_applier(gen);
                Ok(())
            }
            None => Err("capture engine not registered".into()),
        }
    }

    fn stop(&self, remove: bool) {
        self.apply_gen.store(0, Ordering::SeqCst);
        self.from.store(0, Ordering::SeqCst);
        if let Some(w) = self.writer.swap(None) {
            let _ = w.sync();
        }
        let mut p = lock(&self.persisted).clone();
        p.from = None;
        p.applying = false;
        if let Err(e) = self.persist(&p) {
            tracing::warn!("capture stop: {e}");
        }
        let gen = p.gen;
        *lock(&self.persisted) = p;
        if remove {
            let _ = queue::remove(&self.dir, gen);
        }
    }

    fn state(&self) -> CaptureState {
        let p = lock(&self.persisted).clone();
        let w = self.writer.load_full();
        let captured = w.as_ref().map(|w| w.last_seq()).unwrap_or(0);
        let pos = w.as_ref().map(|w| w.position()).unwrap_or(0);
        CaptureState {
            gen: p.gen,
            from: match self.from.load(Ordering::Relaxed) {
                1 => Some(Side::Source),
                2 => Some(Side::Target),
                _ => None,
            },
            applying: p.applying && self.applier_running.load(Ordering::Relaxed),
            captured,
            applied: self.applied.load(Ordering::Relaxed),
            lag_bytes: pos.saturating_sub(self.applied_pos.load(Ordering::Relaxed)),
            failed: lock(&self.failed).clone(),
        }
    }
}
