//! Mirroring with result validation (`[mirror]`, `[validation]`).
//!
//! While forward replication keeps the target current and the source serves, sessions copy
//! a sample of their units of work (the client's bytes and the source's answer, as relayed)
//! into a bounded queue ([`Mirror::offer`]; a full queue sheds and counts, the client never
//! waits). Mirror workers, on a thread of their own, replay each unit on the target inside a
//! transaction that they always roll back, and compare the target's answers with the
//! source's ([`validator::compare`]):
//!
//! * reads (`level = "reads"` and up): replayed in `BEGIN READ ONLY … ROLLBACK`, compared
//!   exactly (row multisets unless the statement orders its rows, column names and types,
//!   command tags, SQLSTATEs), or by shape for server-specific relations
//!   ([`validator::compare::mode_for`]);
//! * DML (`level = "dml"` / `"all"`): dry-run in `BEGIN … ROLLBACK` under a short
//!   `lock_timeout`, so that it never holds up replication apply; compared by shape: command
//!   tag (rows affected), columns and row counts of `RETURNING` (values are not comparable:
//!   replication may already have applied the source's change on the target);
//! * transaction control in the unit is not replayed (the unit runs inside pgshift's own
//!   transaction); a unit with DDL (except with `level = "all"`), COPY, a function call or
//!   other utility statements than SET is skipped and counted.
//!
//! A difference is checked again before it counts (lag-aware): the unit runs again on the
//! source, the source's current WAL position (LSN) is taken, the mirror waits until the
//! target has applied it (at most `recheck_timeout_ms`), runs the unit on the target and once
//! more on the source. Target equal to the source: the difference was replication lag, not
//! reported. Source unchanged between its two runs and the target still different: a
//! mismatch. Otherwise (the source's own answer moved): inconclusive, counted apart.
//!
//! Named prepared statements the unit uses are prepared on the mirror connection first
//! (closed and prepared again when another session's statement of the same name is there).
//! Session state the answers depend on is set inside the transaction: the client's start-up
//! parameters (`set_config(…, true)`) and its SETs (undone by the rollback).

use crate::backend::{self, BackendConn};
use crate::routing::BackendAddr;
use crate::server::UserEntry;
use bytes::{Bytes, BytesMut};
use config::{MirrorConfig, MirrorLevel, ValidationConfig};
use control::{Controller, Side};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use validator::answer::Answer;
use validator::compare::{compare, CompareOptions, Mode, Verdict};
use validator::report::Report;
use validator::Kind;
use wire::frame::header;
use wire::msg;

/// One unit of work as relayed on the source, for the mirror.
pub struct Job {
    pub user: Arc<UserEntry>,
    /// The client's start-up parameters (other than user and database).
    pub params: Vec<(String, String)>,
    /// The session's SET statements in force when the unit started.
    pub sets: Vec<String>,
    /// Parse messages (whole frames) of the named statements the unit binds but does not
    /// parse itself: name → frame.
    pub statements: Vec<(String, Bytes)>,
    /// The client's messages of the unit, as received.
    pub client: Bytes,
    /// The source's answer, as forwarded to the client (through the last ReadyForQuery).
    pub server: Bytes,
    pub at: SystemTime,
}

/// What a session collects for a sampled unit (see `session::record`).
#[derive(Debug, Default)]
pub struct Capture {
    pub client: BytesMut,
    pub server: BytesMut,
    /// Statement names bound in the unit.
    pub used: Vec<String>,
    /// Over `max_answer_bytes`: collection stopped; the unit is counted as skipped.
    pub too_big: bool,
    /// The unit ended (its final ReadyForQuery is being forwarded).
    pub done: bool,
}

impl Capture {
    /// Appends client bytes, within `max` bytes in all.
    pub fn client_bytes(&mut self, b: &[u8], max: usize) {
        if !self.too_big {
            self.too_big = self.client.len() + self.server.len() + b.len() > max;
            if !self.too_big {
                self.client.extend_from_slice(b);
            }
        }
    }

    /// Appends server bytes, within `max` bytes in all.
    pub fn server_bytes(&mut self, b: &[u8], max: usize) {
        if !self.too_big {
            self.too_big = self.client.len() + self.server.len() + b.len() > max;
            if !self.too_big {
                self.server.extend_from_slice(b);
            }
        }
    }
}

/// The mirror: queue, workers and the validation report.
pub struct Mirror {
    pub cfg: MirrorConfig,
    pub validation: ValidationConfig,
    tx: mpsc::Sender<Job>,
    /// Replication keeps the target current and the source serves (refreshed every 200 ms
    /// from the controller): sessions sample only then.
    active: AtomicBool,
    pub report: Report,
    /// Units offered and dropped because the queue was full.
    pub shed: AtomicU64,
    /// Units queued.
    pub queued: AtomicU64,
    /// Differences that the lag-aware re-check explained as replication lag (not reported).
    pub lag_explained: AtomicU64,
    /// `MIRROR OFF` from the admin console: sessions stop sampling until `MIRROR ON`.
    pub off: AtomicBool,
    /// Bytes of the units in the queue (bounded by [`QUEUE_BYTES`]).
    queued_bytes: std::sync::atomic::AtomicUsize,
    /// `[replication] driver = "mirror"`: DML reaches the target through the capture's
    /// applier; only reads are mirrored.
    dml_applied: bool,
}

/// Most bytes of captured units waiting in the queue, whatever `queue_length` says: a queue
/// of large answers sheds before it holds much memory.
pub const QUEUE_BYTES: usize = 64 << 20;

impl Mirror {
    /// Starts the mirror workers on a thread of their own (`pgshift-mirror`); `None` when
    /// `[mirror] enabled` is false.
    pub fn start(
        cfg: &config::Config,
        target: BackendAddr,
        source: BackendAddr,
        controller: Arc<Controller>,
    ) -> std::io::Result<Option<Arc<Mirror>>> {
        if !cfg.mirror.enabled {
            return Ok(None);
        }
        let (tx, rx) = mpsc::channel(cfg.mirror.queue_length.max(1));
        let mirror = Arc::new(Mirror {
            cfg: cfg.mirror.clone(),
            validation: cfg.validation.clone(),
            tx,
            active: AtomicBool::new(false),
            report: Report::new(),
            shed: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            lag_explained: AtomicU64::new(0),
            off: AtomicBool::new(false),
            queued_bytes: std::sync::atomic::AtomicUsize::new(0),
            dml_applied: cfg.replication.driver == config::Driver::Mirror,
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let m = mirror.clone();
        let connect_timeout = cfg.proxy.connect_timeout_ms;
        std::thread::Builder::new()
            .name("pgshift-mirror".into())
            .spawn(move || {
                rt.block_on(async move {
                    let rx = Arc::new(tokio::sync::Mutex::new(rx));
                    let sides = Arc::new(Sides {
                        target,
                        source,
                        connect_timeout,
                    });
                    let mut tasks = Vec::new();
                    for _ in 0..m.cfg.connections.max(1) {
                        let (m, rx, sides, c) =
                            (m.clone(), rx.clone(), sides.clone(), controller.clone());
                        tasks.push(tokio::spawn(async move {
                            let mut w = Worker {
                                m,
                                sides,
                                controller: c,
                                conns: HashMap::new(),
                            };
                            loop {
                                let job = { rx.lock().await.recv().await };
                                let Some(job) = job else { return };
                                w.m.queued_bytes.fetch_sub(
                                    job.client.len() + job.server.len(),
                                    Ordering::Relaxed,
                                );
                                w.run(job).await;
                            }
                        }));
                    }
                    // Keep `active` current.
                    let m2 = m.clone();
                    let c2 = controller.clone();
                    tasks.push(tokio::spawn(async move {
                        loop {
                            let st = c2.status();
                            let (side, _) = c2.serving_side();
                            let on = side == Side::Source
                                && matches!(
                                    st.phase,
                                    control::Phase::Replicating
                                        | control::Phase::Shifting
                                        | control::Phase::HealthCheck
                                );
                            m2.active.store(on, Ordering::Relaxed);
                            crate::metrics::mirror_state(
                                m2.tx.max_capacity() - m2.tx.capacity(),
                                m2.queued.load(Ordering::Relaxed),
                                m2.shed.load(Ordering::Relaxed),
                                m2.report.totals().error_rate(),
                            );
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }));
                    for t in tasks {
                        let _ = t.await;
                    }
                });
            })?;
        Ok(Some(mirror))
    }

    /// Whether a session should capture this unit: mirroring active, sampled at
    /// `sample_rate`, and of the configured level (`read_only` is asked only for `reads`).
    #[inline]
    pub fn sample(&self, read_only: impl FnOnce() -> bool) -> bool {
        if !self.active.load(Ordering::Relaxed) || self.off.load(Ordering::Relaxed) {
            return false;
        }
        if self.cfg.sample_rate < 1.0 && rand::random::<f64>() >= self.cfg.sample_rate {
            return false;
        }
        // With the mirror replication driver, DML is applied (crate::capture), not dry-run.
        let level = if self.dml_applied {
            MirrorLevel::Reads
        } else {
            self.cfg.level
        };
        match level {
            MirrorLevel::Reads => read_only(),
            MirrorLevel::Dml | MirrorLevel::All => true,
        }
    }

    /// Queues a unit without waiting; a full queue sheds it (counted).
    pub fn offer(&self, job: Job) {
        let size = job.client.len() + job.server.len();
        if self.queued_bytes.fetch_add(size, Ordering::Relaxed) + size > QUEUE_BYTES {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            self.shed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.tx.try_send(job) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
                self.shed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A sampled unit that could not be captured whole (over `max_answer_bytes`).
    pub fn too_big(&self) {
        self.report
            .record_skipped("answer over [mirror] max_answer_bytes");
    }
}

impl control::CutoverGate for Mirror {
    /// Refuses while the validation error rate is above `[validation] error_threshold`, or
    /// before `min_duration_ms` of clean mirrored traffic.
    fn check(&self) -> Result<(), String> {
        let t = self.report.totals();
        let rate = t.error_rate();
        if rate > self.validation.error_threshold {
            return Err(format!(
                "validation error rate {:.3} % ({} mismatches and {} target-only errors in {} compared statements) is above [validation] error_threshold {:.3} %; SHOW UPGRADE ERRORS lists them",
                rate * 100.0,
                t.mismatched,
                t.target_errors,
                t.compared,
                self.validation.error_threshold * 100.0
            ));
        }
        let min = Duration::from_millis(self.validation.min_duration_ms);
        if !min.is_zero() {
            let clean = self.report.clean_for(SystemTime::now()).unwrap_or_default();
            if clean < min {
                return Err(format!(
                    "{:.0} s of clean mirrored traffic so far; [validation] min_duration_ms asks for {:.0} s",
                    clean.as_secs_f64(),
                    min.as_secs_f64()
                ));
            }
        }
        Ok(())
    }
}

struct Sides {
    target: BackendAddr,
    source: BackendAddr,
    connect_timeout: u64,
}

/// A mirror connection: its stream, read buffer and the named statements prepared on it.
struct Conn {
    stream: tls::Stream,
    buf: BytesMut,
    prepared: HashMap<String, Bytes>,
}

struct Worker {
    m: Arc<Mirror>,
    sides: Arc<Sides>,
    controller: Arc<Controller>,
    /// (side, user) → connection.
    conns: HashMap<(Side, String), Conn>,
}

/// One request/answer pair of a unit: the client's messages up to a Sync or Query and the
/// source's answer up to the matching ReadyForQuery.
struct Group {
    client: Bytes,
    server: Bytes,
    /// Statement texts the group runs (Query text, or the SQL of each bound statement).
    sqls: Vec<String>,
    /// Named statements the group parses itself.
    parses: Vec<(String, Bytes)>,
    kind: Kind,
    /// The source's transaction status after the group (ReadyForQuery).
    status: u8,
}

/// Why a unit is not compared.
type Skip = &'static str;

/// A group that gave no answer to compare on a server.
#[derive(Debug, Clone)]
enum Failed {
    /// Its named statement does not prepare there (SQLSTATE, message): a target-only error
    /// when the source ran it.
    Prepare(String, String),
    /// Not run: an earlier group of the unit failed inside the same transaction.
    NotRun,
}

/// SQLSTATEs of contention on the target (lock_timeout, statement_timeout, serialization
/// failure, deadlock: Appendix A "PostgreSQL Error Codes"): the mirror's own limits, not an
/// incompatibility of the new major.
const CONTENTION: &[&str] = &["55P03", "57014", "40001", "40P01"];

impl Worker {
    async fn run(&mut self, job: Job) {
        let groups = match split(&job) {
            Ok(g) => g,
            Err(why) => {
                self.m.report.record_skipped(why);
                return;
            }
        };
        let dml = groups
            .iter()
            .any(|g| matches!(g.kind, Kind::Dml | Kind::Ddl));
        let run_groups: Vec<&Group> = groups
            .iter()
            .filter(|g| g.kind != Kind::Transaction)
            .collect();
        if run_groups.is_empty() {
            return;
        }
        let first = match self.replay(Side::Target, &job, &run_groups, dml).await {
            Ok(a) => a,
            Err(why) => {
                self.m.report.record_skipped(why);
                return;
            }
        };
        let mut rechecks = Vec::new();
        for (i, g) in run_groups.iter().enumerate() {
            if g.sqls.is_empty() {
                continue;
            }
            let Some(opts) = options(g, dml) else {
                self.m
                    .report
                    .record_skipped("not comparable (server-specific or volatile)");
                continue;
            };
            let Ok(src) = Answer::parse(&g.server) else {
                self.m.report.record_skipped("unreadable source answer");
                continue;
            };
            let v = match &first[i] {
                Ok(t) => compare(&src, t, &opts),
                Err(Failed::NotRun) => continue,
                Err(Failed::Prepare(sqlstate, message)) => Verdict::TargetError {
                    sqlstate: sqlstate.clone(),
                    message: message.clone(),
                    source: src.summary(200),
                },
            };
            if let Verdict::TargetError { sqlstate, .. } = &v {
                if CONTENTION.contains(&sqlstate.as_str()) {
                    self.m
                        .report
                        .record_skipped("lock or statement timeout on the target");
                    continue;
                }
            }
            if matches!(v, Verdict::Mismatch { .. }) {
                rechecks.push((i, opts));
            } else {
                self.record(g, &v, job.at);
            }
        }
        if rechecks.is_empty() {
            return;
        }
        match self.recheck(&job, &run_groups, dml, &rechecks).await {
            Ok(results) => {
                for ((i, _), r) in rechecks.iter().zip(results) {
                    let g = run_groups[*i];
                    match r {
                        Some(v) => {
                            if v.is_match() {
                                self.m.lag_explained.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(statement = %validator::fingerprint(&g.sqls.join("; ")), "mirror: a difference was replication lag");
                            }
                            self.record(g, &v, job.at)
                        }
                        None => self.m.report.record_inconclusive(
                            &g.sqls.join("; "),
                            &tables(g),
                            job.at,
                        ),
                    }
                }
            }
            Err(why) => {
                for (i, _) in &rechecks {
                    let g = run_groups[*i];
                    self.m
                        .report
                        .record_inconclusive(&g.sqls.join("; "), &tables(g), job.at);
                }
                tracing::debug!("mirror re-check not possible: {why}");
            }
        }
    }

    fn record(&self, g: &Group, v: &Verdict, at: SystemTime) {
        let sql = g.sqls.join("; ");
        self.m.report.record(&sql, &tables(g), v, at);
        crate::metrics::mirror_compared(v.as_str());
        if !matches!(v, Verdict::Match) {
            tracing::info!(statement = %validator::fingerprint(&sql), "mirror: {}", describe(v));
        }
    }

    /// Lag-aware re-check of the groups that differed: `Some(verdict)` per group, `None` when
    /// inconclusive (the source's own answer moved).
    async fn recheck(
        &mut self,
        job: &Job,
        groups: &[&Group],
        dml: bool,
        which: &[(usize, CompareOptions)],
    ) -> Result<Vec<Option<Verdict>>, String> {
        let timeout = Duration::from_millis(self.m.cfg.recheck_timeout_ms);
        let mut out: Vec<Option<Verdict>> = vec![None; which.len()];
        for _attempt in 0..3 {
            let s1 = self.source_again(job, groups, dml).await?;
            let lsn = self
                .controller
                .source_current_lsn()
                .await
                .map_err(|e| e.to_string())?;
            let applied = self
                .controller
                .wait_target_applied(lsn, timeout)
                .await
                .map_err(|e| e.to_string())?;
            if !applied {
                return Err(format!(
                    "the target did not apply the source's LSN within {} ms",
                    timeout.as_millis()
                ));
            }
            let t = self
                .replay(Side::Target, job, groups, dml)
                .await
                .map_err(str::to_string)?;
            let s2 = self.source_again(job, groups, dml).await?;
            let mut settled = true;
            for (k, (i, opts)) in which.iter().enumerate() {
                let original = Answer::parse(&groups[*i].server).map_err(|e| e.to_string())?;
                let (src_a, src_b) = match (&s1, &s2) {
                    (Some(a), Some(b)) => (a[*i].as_ref().ok(), b[*i].as_ref().ok()),
                    _ => (Some(&original), Some(&original)),
                };
                let (Some(sa), Some(sb)) = (src_a, src_b) else {
                    settled = false;
                    continue;
                };
                let verdict = match &t[*i] {
                    Ok(ta) => compare(sa, ta, opts),
                    Err(Failed::NotRun) => {
                        settled = false;
                        continue;
                    }
                    Err(Failed::Prepare(sqlstate, message)) => Verdict::TargetError {
                        sqlstate: sqlstate.clone(),
                        message: message.clone(),
                        source: sa.summary(200),
                    },
                };
                let source_stable = matches!(compare(sa, sb, opts), Verdict::Match);
                out[k] = match verdict {
                    Verdict::Match => Some(Verdict::Match),
                    v if source_stable => Some(v),
                    _ => {
                        settled = false;
                        None
                    }
                };
            }
            if settled {
                break;
            }
        }
        Ok(out)
    }

    /// Runs the unit's groups on `side` inside a transaction that is rolled back; per group
    /// the answer, or the error that kept it from running (SQLSTATE, message).
    async fn replay(
        &mut self,
        side: Side,
        job: &Job,
        groups: &[&Group],
        dml: bool,
    ) -> Result<Vec<Result<Answer, Failed>>, Skip> {
        let key = (side, job.user.cfg.name.clone());
        let mut conn = match self.conns.remove(&key) {
            Some(c) => c,
            None => {
                let addr = match side {
                    Side::Target => &self.sides.target,
                    Side::Source => &self.sides.source,
                };
                let BackendConn { stream, .. } = backend::connect(
                    addr,
                    job.user.cfg.server_user(),
                    backend::server_password(&job.user.cfg).as_deref(),
                    &[("application_name".into(), "pgshift-mirror".into())],
                    self.sides.connect_timeout,
                )
                .await
                .map_err(|_| "cannot connect to the server for mirroring")?;
                Conn {
                    stream,
                    buf: BytesMut::new(),
                    prepared: HashMap::new(),
                }
            }
        };
        let r = replay_on(&mut conn, &self.m.cfg, job, groups, dml).await;
        if r.is_ok() {
            // After a failure the connection's state is unknown: it is dropped.
            self.conns.insert(key, conn);
        }
        r
    }

    /// The unit's answers on the source once more, for the re-check of a read-only unit;
    /// `None` for a unit with DML, whose first source answer stands (a dry-run on the source
    /// would lock its rows).
    async fn source_again(
        &mut self,
        job: &Job,
        groups: &[&Group],
        dml: bool,
    ) -> Result<Option<Vec<Result<Answer, Failed>>>, String> {
        if dml {
            return Ok(None);
        }
        self.replay(Side::Source, job, groups, false)
            .await
            .map(Some)
            .map_err(str::to_string)
    }
}

/// Comparison options of a group, or `None` when it is not comparable: each statement's
/// options ([`CompareOptions::for_sql`]) folded to the weakest mode; a unit with DML
/// compares by shape at most (see the module docs); row order only for a single statement.
fn options(g: &Group, dml: bool) -> Option<CompareOptions> {
    let mut opts: Option<CompareOptions> = None;
    for sql in &g.sqls {
        let o = info(sql).opts.clone()?;
        opts = Some(match opts {
            None => o,
            Some(p) => CompareOptions {
                ordered: false,
                mode: p.mode.min(o.mode),
                order_by: None,
            },
        });
    }
    let mut o = opts?;
    if dml {
        o.mode = o.mode.min(Mode::Shape);
    }
    if g.sqls.len() != 1 {
        o.ordered = false;
        o.order_by = None;
    }
    Some(o)
}

fn tables(g: &Group) -> Vec<String> {
    let mut t = Vec::new();
    for sql in &g.sqls {
        for name in &info(sql).tables {
            if !t.contains(name) {
                t.push(name.clone());
            }
        }
    }
    t
}

/// What the mirror needs to know of a statement text: computed once per text (clients run
/// the same texts over and over; parsing them each time was most of the mirror's CPU).
struct StmtInfo {
    kind: Kind,
    tables: Vec<String>,
    opts: Option<CompareOptions>,
}

/// Texts kept in the cache of [`info`] before it starts over.
const INFO_CACHE: usize = 10_000;

/// [`StmtInfo`] of `sql`, from the mirror thread's cache.
fn info(sql: &str) -> Arc<StmtInfo> {
    thread_local! {
        static CACHE: std::cell::RefCell<HashMap<String, Arc<StmtInfo>>> =
            std::cell::RefCell::new(HashMap::new());
    }
    CACHE.with(|c| {
        if let Some(i) = c.borrow().get(sql) {
            return i.clone();
        }
        let cl = validator::classify(sql);
        let i = Arc::new(StmtInfo {
            kind: cl.kind,
            opts: CompareOptions::for_sql(sql, cl.kind),
            tables: cl.tables,
        });
        let mut c = c.borrow_mut();
        if c.len() >= INFO_CACHE {
            c.clear();
        }
        c.insert(sql.to_string(), i.clone());
        i
    })
}

fn describe(v: &Verdict) -> String {
    match v {
        Verdict::Match => "match".into(),
        Verdict::Mismatch {
            what,
            source,
            target,
        } => format!("{what} differ: source {source} / target {target}"),
        Verdict::TargetError {
            sqlstate, message, ..
        } => format!("only the target fails: {sqlstate} {message}"),
        Verdict::SourceError {
            sqlstate, message, ..
        } => format!("only the source fails: {sqlstate} {message}"),
    }
}

/// Splits a job into request/answer groups and classifies them.
fn split(job: &Job) -> Result<Vec<Group>, Skip> {
    let mut named: HashMap<String, Bytes> = job.statements.iter().cloned().collect();
    // Client side: groups end after a Query or a Sync.
    // (client bytes, statement texts, named statements parsed) of each group.
    type Request = (Bytes, Vec<String>, Vec<(String, Bytes)>);
    let mut reqs: Vec<Request> = Vec::new();
    let (mut start, mut at) = (0usize, 0usize);
    let mut sqls = Vec::new();
    let mut parses = Vec::new();
    let mut unnamed: Option<String> = None;
    let c = &job.client[..];
    while at < c.len() {
        let (tag, total) = match header(&c[at..], usize::MAX) {
            Ok(Some((t, n))) if at + n <= c.len() => (t, n),
            _ => return Err("incomplete client messages"),
        };
        let body = &c[at + 5..at + total];
        match tag {
            msg::QUERY => {
                sqls.push(msg::parse_query(body).map_err(|_| "bad Query")?.to_string());
            }
            msg::PARSE => {
                let (name, sql) = msg::parse_parse(body).map_err(|_| "bad Parse")?;
                if name.is_empty() {
                    unnamed = Some(sql.to_string());
                } else {
                    let frame = Bytes::copy_from_slice(&c[at..at + total]);
                    // Later Binds in this job see the new text.
                    named.insert(name.to_string(), frame.clone());
                    parses.push((name.to_string(), frame));
                }
            }
            msg::BIND => {
                let mut b = body;
                let _portal = wire::frame::take_cstr(&mut b, "Bind").map_err(|_| "bad Bind")?;
                let stmt = wire::frame::take_cstr(&mut b, "Bind").map_err(|_| "bad Bind")?;
                let sql = if stmt.is_empty() {
                    unnamed
                        .clone()
                        .ok_or("Bind of an unknown unnamed statement")?
                } else {
                    let f = named.get(stmt).ok_or("Bind of an unknown statement")?;
                    msg::parse_parse(&f[5..])
                        .map_err(|_| "bad Parse")?
                        .1
                        .to_string()
                };
                sqls.push(sql);
            }
            msg::FUNCTION_CALL => return Err("function call"),
            msg::COPY_DATA | msg::COPY_DONE | msg::COPY_FAIL => return Err("COPY"),
            msg::TERMINATE => break,
            _ => {}
        }
        at += total;
        if matches!(tag, msg::QUERY | msg::SYNC) {
            reqs.push((
                Bytes::copy_from_slice(&c[start..at]),
                std::mem::take(&mut sqls),
                std::mem::take(&mut parses),
            ));
            start = at;
        }
    }
    if start < at {
        return Err("unit without a final Sync");
    }
    // Server side: answers end after each ReadyForQuery.
    let answers = cut_answers(&job.server)?;
    if reqs.len() != answers.len() {
        return Err("requests and answers do not pair up");
    }
    let mut out = Vec::with_capacity(reqs.len());
    for ((client, sqls, parses), (server, status)) in reqs.into_iter().zip(answers) {
        let server = Bytes::copy_from_slice(server);
        let mut kind = Kind::Read;
        // Transaction control together with other statements in one group (a Query text
        // `BEGIN; UPDATE …; COMMIT`, or several Executes before one Sync) cannot be left out
        // of the replay, and its COMMIT would commit the dry-run on the target: never sent.
        let pieces: Vec<&str> = sqls
            .iter()
            .flat_map(|q| crate::session::track::split_statements(q))
            .collect();
        if pieces.len() > 1 && pieces.iter().any(|p| info(p).kind == Kind::Transaction) {
            return Err("transaction control inside a multi-statement request");
        }
        for sql in &sqls {
            let k = info(sql).kind;
            if k.strength() > kind.strength() {
                kind = k;
            }
            if k == Kind::Utility && !is_set(sql) && !is_show(sql) {
                return Err("utility statement");
            }
        }
        if sqls.is_empty() {
            // Describe/Close only: nothing to compare, but it may be needed (it is sent).
            kind = Kind::Read;
        }
        out.push(Group {
            client,
            server,
            sqls,
            parses,
            kind,
            status,
        });
    }
    if out.iter().any(|g| g.kind == Kind::Unknown) {
        return Err("statement the classifier cannot parse");
    }
    Ok(out)
}

fn is_set(sql: &str) -> bool {
    let t = sql.trim_start().to_ascii_lowercase();
    t.starts_with("set ") || t.starts_with("reset ")
}

fn is_show(sql: &str) -> bool {
    sql.trim_start().to_ascii_lowercase().starts_with("show ")
}

/// Appends to a simple-query text (`; `-separated) what gives another connection a
/// session's state: its start-up parameters through `set_config` (`local`: for the
/// transaction only) and its SET statements. Not carried: `options`, `replication` (start-up
/// only), `application_name` (the connection's own) and `synchronous_commit` (the
/// replaying connection's own choice; a dry run that rolls back does not depend on it).
pub(crate) fn push_session_state(
    out: &mut String,
    params: &[(String, String)],
    sets: &[String],
    local: bool,
) {
    for (k, v) in params {
        if matches!(
            k.as_str(),
            "options" | "replication" | "application_name" | "synchronous_commit"
        ) {
            continue;
        }
        out.push_str(&format!(
            "; SELECT pg_catalog.set_config({}, {}, {local})",
            literal(k),
            literal(v)
        ));
    }
    for s in sets {
        out.push_str("; ");
        out.push_str(s);
    }
}

/// `'text'` as a SQL string literal.
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `"name"` as a quoted SQL identifier.
pub(crate) fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Appends a Close of the named statement `name` (53.7 "Close").
pub(crate) fn close_statement(out: &mut BytesMut, name: &str) {
    msg::put_msg(out, msg::CLOSE, |b| {
        b.extend_from_slice(b"S");
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&[0]);
    });
}

/// A server's answer cut after each ReadyForQuery: (bytes through it, its transaction status).
/// Errors: the bytes end inside a message.
pub(crate) fn cut_answers(s: &[u8]) -> Result<Vec<(&[u8], u8)>, &'static str> {
    let mut out = Vec::new();
    let (mut start, mut at) = (0usize, 0usize);
    while at < s.len() {
        let (tag, total) = match header(&s[at..], usize::MAX) {
            Ok(Some((t, n))) if at + n <= s.len() => (t, n),
            _ => return Err("incomplete server messages"),
        };
        if tag == msg::READY_FOR_QUERY {
            let status = s.get(at + 5).copied().unwrap_or(msg::TX_IDLE);
            out.push((&s[start..at + total], status));
            start = at + total;
        }
        at += total;
    }
    Ok(out)
}

async fn replay_on(
    conn: &mut Conn,
    cfg: &MirrorConfig,
    job: &Job,
    groups: &[&Group],
    dml: bool,
) -> Result<Vec<Result<Answer, Failed>>, Skip> {
    // Named statements: prepared outside the transaction (a failing Parse must not abort it).
    let mut prep = BytesMut::new();
    let mut want: Vec<(String, Bytes)> = job.statements.clone();
    for g in groups {
        for (n, _) in &g.parses {
            // The group parses it itself (inside the transaction, where it may fail): close
            // any other session's statement of that name, and forget it afterwards.
            close_statement(&mut prep, n);
            conn.prepared.remove(n);
        }
    }
    let mut prepare_errors: HashMap<String, (String, String)> = HashMap::new();
    want.retain(|(n, f)| conn.prepared.get(n) != Some(f));
    for (n, f) in &want {
        close_statement(&mut prep, n);
        prep.extend_from_slice(f);
        msg::sync(&mut prep);
    }
    if !prep.is_empty() {
        msg::sync(&mut prep);
        let syncs = want.len() + 1;
        send(conn, &prep).await?;
        // One Sync after each wanted Parse (its errors are its own), one at the end.
        let mut done = 0;
        while done < syncs {
            let (tag, body) = read(conn).await?;
            match tag {
                msg::READY_FOR_QUERY => done += 1,
                msg::ERROR_RESPONSE => {
                    let e = msg::parse_error(&body).unwrap_or_default();
                    if let Some((n, _)) = want.get(done) {
                        prepare_errors.insert(n.clone(), (e.sqlstate, e.message));
                    }
                }
                _ => {}
            }
        }
        for (n, f) in &want {
            if !prepare_errors.contains_key(n) {
                conn.prepared.insert(n.clone(), f.clone());
            } else {
                conn.prepared.remove(n);
            }
        }
    }
    // The transaction, with the session's state.
    let mut begin = String::from(if dml { "BEGIN" } else { "BEGIN READ ONLY" });
    begin.push_str(&format!(
        "; SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}",
        literal(&format!("{}ms", cfg.lock_timeout_ms)),
        literal(&format!("{}ms", cfg.statement_timeout_ms))
    ));
    push_session_state(&mut begin, &job.params, &job.sets, true);
    simple(conn, &begin).await?;
    let mut out = Vec::with_capacity(groups.len());
    let mut aborted = false;
    for g in groups {
        if let Some(e) = g
            .parses
            .iter()
            .chain(job.statements.iter())
            .find_map(|(n, _)| prepare_errors.get(n))
        {
            out.push(Err(Failed::Prepare(e.0.clone(), e.1.clone())));
            continue;
        }
        if aborted {
            out.push(Err(Failed::NotRun));
            continue;
        }
        send(conn, &g.client).await?;
        let mut ans = BytesMut::new();
        let status = loop {
            let (tag, body) = read(conn).await?;
            msg::put_msg(&mut ans, tag, |b| b.extend_from_slice(&body));
            if tag == msg::READY_FOR_QUERY {
                break body.first().copied().unwrap_or(msg::TX_IDLE);
            }
        };
        let a = Answer::parse(&ans).map_err(|_| "unreadable answer")?;
        if status == msg::TX_IDLE {
            // The group ended pgshift's transaction (it should never: transaction control is
            // not replayed). Stop here; the connection is dropped.
            tracing::error!(
                statements = %g.sqls.join("; "),
                "mirror: a replayed group ended the mirror's transaction on the server; unit abandoned"
            );
            return Err("a replayed statement ended the mirror's transaction");
        }
        if status == msg::TX_FAILED {
            if g.status == msg::TX_IDLE {
                // The source ran this group on its own: start a fresh transaction.
                simple(conn, "ROLLBACK").await?;
                simple(conn, &begin).await?;
            } else {
                aborted = true;
            }
        }
        out.push(Ok(a));
    }
    simple(conn, "ROLLBACK").await?;
    Ok(out)
}

async fn send(conn: &mut Conn, b: &[u8]) -> Result<(), Skip> {
    conn.stream
        .write_all(b)
        .await
        .map_err(|_| "mirror connection lost")
}

async fn read(conn: &mut Conn) -> Result<(u8, BytesMut), Skip> {
    backend::read_frame(&mut conn.stream, &mut conn.buf, "mirror")
        .await
        .map_err(|_| "mirror connection lost")
}

/// Runs a simple Query and waits for its ReadyForQuery; an error is a failure of the mirror's
/// own set-up.
async fn simple(conn: &mut Conn, sql: &str) -> Result<(), Skip> {
    let mut b = BytesMut::new();
    msg::query(&mut b, sql);
    send(conn, &b).await?;
    let mut failed = false;
    loop {
        let (tag, body) = read(conn).await?;
        match tag {
            msg::ERROR_RESPONSE => {
                let e = msg::parse_error(&body).unwrap_or_default();
                tracing::debug!("mirror set-up failed: {e}");
                failed = true;
            }
            msg::READY_FOR_QUERY => break,
            _ => {}
        }
    }
    if failed {
        Err("the mirror's transaction set-up failed (a session setting?)")
    } else {
        Ok(())
    }
}
