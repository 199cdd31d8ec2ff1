//! Shared by the controller's tests against real servers: a test double of the proxy's
//! [`TrafficControl`] (routing table, weight and traffic counters you can drive), servers,
//! configuration, waiting.
#![allow(dead_code)]

use config::Config;
use control::{Controller, RouteState, Side, TrafficControl, TrafficStats, UpgradeStatus};
use integration::{client_bin, PgServer, ServerOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

// ------------------------------------------------------------------------------------------
// Test double of the proxy
// ------------------------------------------------------------------------------------------

/// The proxy's routing table reduced to atomics, plus a record of what the controller did.
/// Side, epoch and the paused flag live in one `AtomicU64` so that a reader gets a consistent
/// snapshot (as the proxy's `ArcSwap<RoutingTable>` gives).
pub struct FakeTraffic {
    /// bit 0: on target; bit 1: paused; bits 2..: epoch.
    pub state: AtomicU64,
    pub busy: AtomicUsize,
    pub pauses: AtomicUsize,
    pub resumes: AtomicUsize,
    pub switches: Mutex<Vec<(Side, u64)>>,
    /// Panic inside switch_to (after recording it): simulates the process dying right after the
    /// swap was journaled.
    pub die_on_switch: AtomicBool,
    /// Panic inside pause: simulates the process dying inside the cutover, before the swap.
    pub die_on_pause: AtomicBool,
    /// Set just before a simulated crash.
    pub died: AtomicBool,
    /// The weighted share for the side that is not serving.
    pub weight: AtomicU8,
    /// Every set_weight call, with its time.
    pub weights: Mutex<Vec<(Instant, u8)>>,
    /// Cumulative counters that [`stats`](TrafficControl::stats) returns (driven by [`Load`]
    /// or by the test).
    pub counters: Mutex<TrafficStats>,
    /// Recent latencies per side (source, target), for the p99.
    recent: Mutex<[std::collections::VecDeque<f64>; 2]>,
}

fn pack(r: RouteState) -> u64 {
    (r.epoch << 2) | (u64::from(r.paused) << 1) | u64::from(r.side == Side::Target)
}

fn unpack(v: u64) -> RouteState {
    RouteState {
        side: if v & 1 == 1 {
            Side::Target
        } else {
            Side::Source
        },
        paused: v & 2 == 2,
        epoch: v >> 2,
    }
}

impl FakeTraffic {
    pub fn new(side: Side, epoch: u64) -> Arc<FakeTraffic> {
        Arc::new(FakeTraffic {
            state: AtomicU64::new(pack(RouteState {
                side,
                epoch,
                paused: false,
            })),
            busy: AtomicUsize::new(0),
            pauses: AtomicUsize::new(0),
            resumes: AtomicUsize::new(0),
            switches: Mutex::new(vec![]),
            die_on_switch: AtomicBool::new(false),
            die_on_pause: AtomicBool::new(false),
            died: AtomicBool::new(false),
            weight: AtomicU8::new(0),
            weights: Mutex::new(vec![]),
            counters: Mutex::new(TrafficStats::default()),
            recent: Mutex::new(Default::default()),
        })
    }
    /// A restarted proxy: its table from the journal, weight 0 until the controller says.
    pub fn from(ctl: &Controller) -> Arc<FakeTraffic> {
        let (side, epoch) = ctl.serving_side();
        FakeTraffic::new(side, epoch)
    }
    fn set_paused(&self, paused: bool) {
        let mut r = self.route();
        r.paused = paused;
        self.state.store(pack(r), Ordering::SeqCst);
    }
    /// The weights set so far, in order.
    pub fn weight_history(&self) -> Vec<u8> {
        self.weights.lock().unwrap().iter().map(|w| w.1).collect()
    }
    /// Adds one unit of work on `side`.
    pub fn count(&self, side: Side, error: bool, latency_ms: f64) {
        let mut c = self.counters.lock().unwrap();
        let s = match side {
            Side::Source => &mut c.source,
            Side::Target => &mut c.target,
        };
        s.transactions += 1;
        if error {
            s.errors += 1;
        }
        // p99 of the latest 500 units.
        let mut recent = self.recent.lock().unwrap();
        let r = &mut recent[usize::from(side == Side::Target)];
        r.push_back(latency_ms);
        if r.len() > 500 {
            r.pop_front();
        }
        let mut v: Vec<f64> = r.iter().copied().collect();
        v.sort_by(|a, b| a.total_cmp(b));
        s.p99_ms = v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1];
    }
}

impl TrafficControl for FakeTraffic {
    fn route(&self) -> RouteState {
        unpack(self.state.load(Ordering::SeqCst))
    }
    fn pause(&self) {
        if self.die_on_pause.load(Ordering::SeqCst) {
            self.died.store(true, Ordering::SeqCst);
            panic!("simulated crash in pause (inside the cutover, before the swap)");
        }
        self.pauses.fetch_add(1, Ordering::SeqCst);
        self.set_paused(true);
    }
    fn resume(&self) {
        self.resumes.fetch_add(1, Ordering::SeqCst);
        self.set_paused(false);
    }
    fn switch_to(&self, side: Side, epoch: u64) {
        self.switches.lock().unwrap().push((side, epoch));
        if self.die_on_switch.load(Ordering::SeqCst) {
            self.died.store(true, Ordering::SeqCst);
            panic!("simulated crash in switch_to");
        }
        self.state.store(
            pack(RouteState {
                side,
                epoch,
                paused: false,
            }),
            Ordering::SeqCst,
        );
    }
    fn busy_sessions(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }
    fn set_weight(&self, percent: u8) {
        self.weights.lock().unwrap().push((Instant::now(), percent));
        self.weight.store(percent, Ordering::SeqCst);
    }
    fn weight(&self) -> u8 {
        self.weight.load(Ordering::SeqCst)
    }
    fn stats(&self) -> TrafficStats {
        *self.counters.lock().unwrap()
    }
}

/// Read-only traffic through the double: every few ms one `SELECT` on the side the routing
/// table and the weight pick (the weighted share of eligible transactions, spread evenly),
/// counted in the double's stats with its latency and outcome. `fail_target` makes target
/// transactions count as errors (an application-level failure on the new major).
pub struct Load {
    pub stop: Arc<AtomicBool>,
    pub fail_target: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl Load {
    pub async fn start(
        traffic: Arc<FakeTraffic>,
        source: &PgServer,
        target: (&str, u16, &str),
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let fail_target = Arc::new(AtomicBool::new(false));
        let src = connect(source).await;
        let tgt_conninfo = format!(
            "host={} port={} user=postgres password={} dbname=postgres connect_timeout=2",
            target.0, target.1, target.2
        );
        let (st, ft) = (stop.clone(), fail_target.clone());
        let task = tokio::spawn(async move {
            let mut tgt: Option<Client> = None;
            let mut n: u64 = 0;
            let (mut on_src, mut on_tgt) = (0u64, 0u64);
            while !st.load(Ordering::SeqCst) {
                n += 1;
                let r = traffic.route();
                let w = u64::from(traffic.weight());
                // Weighted share: n*w/100 crosses an integer w times in 100.
                let other = (n * w / 100) != ((n - 1) * w / 100);
                let side = if other { r.side.other() } else { r.side };
                let mut t0 = Instant::now();
                let ok = match side {
                    Side::Source => src.simple_query("SELECT 1").await.is_ok(),
                    Side::Target => {
                        if tgt.as_ref().is_none_or(|c| c.is_closed()) {
                            tgt = match tokio::time::timeout(
                                Duration::from_secs(2),
                                tokio_postgres::connect(&tgt_conninfo, tokio_postgres::NoTls),
                            )
                            .await
                            {
                                Ok(Ok((c, conn))) => {
                                    tokio::spawn(async move {
                                        let _ = conn.await;
                                    });
                                    // Warm the new backend up, as a proxy's pooled session is.
                                    let _ = c.simple_query("SELECT 1").await;
                                    Some(c)
                                }
                                _ => None,
                            };
                        }
                        match &tgt {
                            Some(c) => {
                                // Latency of the query, not of the connection set-up (a
                                // proxy's sessions are connected already).
                                t0 = Instant::now();
                                let ok = matches!(
                                    tokio::time::timeout(
                                        Duration::from_secs(1),
                                        c.simple_query("SELECT 1")
                                    )
                                    .await,
                                    Ok(Ok(_))
                                );
                                ok && !ft.load(Ordering::SeqCst)
                            }
                            None => false,
                        }
                    }
                };
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                traffic.count(side, !ok, ms);
                match side {
                    Side::Source => on_src += 1,
                    Side::Target => on_tgt += 1,
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            (on_src, on_tgt)
        });
        Load {
            stop,
            fail_target,
            task,
        }
    }

    /// Stops; returns the units run on (source, target).
    pub async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("load task")
    }
}

/// A client session behind the fake proxy: marks itself busy BEFORE it reads the routing table
/// (so the controller's drain, which pauses and then reads the busy count, either sees it or is
/// seen by it), holds while paused, and runs each transaction on the side the table names.
/// Returns the number of rows it inserted on each side.
pub async fn writer(
    traffic: Arc<FakeTraffic>,
    src: Client,
    tgt: Client,
    id: i32,
    stop: Arc<AtomicBool>,
) -> (i64, i64) {
    let (mut on_src, mut on_tgt) = (0, 0);
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        traffic.busy.fetch_add(1, Ordering::SeqCst);
        let r = traffic.route();
        if r.paused {
            traffic.busy.fetch_sub(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
        let c = if r.side == Side::Source { &src } else { &tgt };
        n += 1;
        let res = c
            .execute(
                "INSERT INTO load (writer, n, side, epoch) VALUES ($1, $2, $3, $4)",
                &[&id, &n, &r.side.as_str(), &(r.epoch as i64)],
            )
            .await;
        traffic.busy.fetch_sub(1, Ordering::SeqCst);
        if let Err(e) = res {
            panic!(
                "writer {id}: insert {n} on {} failed: {e:?}",
                r.side.as_str()
            );
        }
        if r.side == Side::Source {
            on_src += 1;
        } else {
            on_tgt += 1;
        }
    }
    (on_src, on_tgt)
}

// ------------------------------------------------------------------------------------------
// Servers, configuration, waiting
// ------------------------------------------------------------------------------------------

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "control=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// `PGSHIFT_DURABLE=1`: servers with fsync and synchronous_commit on (the harness turns them off
/// for speed), to measure realistic pauses.
pub fn durable() -> bool {
    std::env::var("PGSHIFT_DURABLE").is_ok_and(|v| v == "1")
}

pub async fn start(major: u32, mut opts: ServerOptions) -> PgServer {
    if durable() {
        opts = opts
            .setting("fsync", "on")
            .setting("synchronous_commit", "on");
    }
    tokio::task::spawn_blocking(move || PgServer::start_with(major, opts))
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("starting PostgreSQL {major}: {e:#}"))
}

/// A 13 source and a 17 target, started in parallel.
pub async fn pair(src_opts: ServerOptions, tgt_opts: ServerOptions) -> (PgServer, PgServer) {
    tokio::join!(start(13, src_opts), start(17, tgt_opts))
}

/// `[source]`-style table text for a harness server.
pub fn server_toml(section: &str, s: &PgServer, dbname: &str) -> String {
    format!(
        "[{section}]\nhost = \"{}\"\nport = {}\ndbname = \"{dbname}\"\nuser = \"{}\"\npassword = \"{}\"\n",
        s.host, s.port, s.superuser, s.password
    )
}

/// A fresh journal path for test `name`.
pub fn journal_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pgshift-control-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("state").join("pgshift.db")
}

/// Loads a configuration from TOML (so that sections added later keep their defaults).
pub fn load_config(text: &str) -> Config {
    config::load_str_with_env(text, "test.toml", |_| None).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Configuration for a source/target pair (database `postgres`), with `[upgrade]` keys
/// `upgrade` (TOML lines) and further `extra` sections.
pub fn config_text(
    src: &PgServer,
    target: &str,
    journal: &Path,
    upgrade: &str,
    extra: &str,
) -> String {
    format!(
        "[journal]\npath = \"{}\"\n\n{}\n{target}\n[[users]]\nname = \"ops\"\npassword = \"x\"\nadmin = true\n\n\
         [upgrade]\ndrain_timeout_ms = 2000\ncatchup_timeout_ms = 10000\npoll_interval_ms = 100\n\
         backoff_initial_ms = 200\nbackoff_max_ms = 2000\n{upgrade}\n\n\
         [replication]\npg_dump = \"{}\"\npsql = \"{}\"\n\n{extra}\n",
        journal.display(),
        server_toml("source", src, "postgres"),
        client_bin("pg_dump").display(),
        client_bin("psql").display()
    )
}

/// The configuration the operator-driven tests use: the plan stops before the cutover
/// (approve_cutover) and the hold after a cutover outlasts the test, so cutover and rollback
/// cycles are the operator's.
pub fn make_config(src: &PgServer, tgt: &PgServer, journal: &Path) -> Config {
    load_config(&config_text(
        src,
        &server_toml("target", tgt, "postgres"),
        journal,
        "approve_cutover = true\nshift_hold_ms = 3600000",
        "",
    ))
}

pub async fn connect(s: &PgServer) -> Client {
    s.connect("postgres")
        .await
        .unwrap_or_else(|e| panic!("connect: {e:#}"))
}

pub async fn wait_status(
    ctl: &Controller,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&UpgradeStatus) -> bool,
) -> UpgradeStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let s = ctl.status();
        if pred(&s) {
            return s;
        }
        if Instant::now() > deadline {
            let events = ctl.history(40).await.unwrap_or_default();
            let ev: Vec<String> = events
                .iter()
                .map(|e| format!("{} {} {}: {}", e.ts, e.actor, e.kind, e.message))
                .collect();
            panic!(
                "timed out waiting for {what}; status {s:?}\nhistory:\n{}",
                ev.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_phase(ctl: &Controller, phase: &str, secs: u64) -> UpgradeStatus {
    wait_status(
        ctl,
        &format!("phase {phase}"),
        Duration::from_secs(secs),
        |s| {
            assert!(
                s.state != control::State::Error,
                "upgrade failed while waiting for {phase}: {s:?}"
            );
            s.phase.as_str() == phase && s.state != control::State::Running
        },
    )
    .await
}

pub async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

pub async fn wait_count(c: &Client, sql: &str, want: i64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = count(c, sql).await;
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {sql} gives {n}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// pgshift's replication objects on a server: publications, subscriptions, slots, by name.
pub async fn objects(c: &Client) -> Vec<String> {
    let rows = c
        .query(
            "SELECT 'pub:' || pubname FROM pg_publication
             UNION ALL SELECT 'sub:' || subname || CASE WHEN subenabled THEN '' ELSE '(disabled)' END FROM pg_subscription
             UNION ALL SELECT 'slot:' || slot_name FROM pg_replication_slots
             ORDER BY 1",
            &[],
        )
        .await
        .expect("objects");
    rows.iter().map(|r| r.get(0)).collect()
}

/// `ALTER SYSTEM SET max_sync_workers_per_subscription` and reload (each its own statement:
/// ALTER SYSTEM refuses a transaction block).
pub async fn set_sync_workers(c: &Client, n: u32) -> Result<(), tokio_postgres::Error> {
    c.batch_execute(&format!(
        "ALTER SYSTEM SET max_sync_workers_per_subscription = {n}"
    ))
    .await?;
    c.batch_execute("SELECT pg_reload_conf()").await
}

pub const SOURCE_SCHEMA: &str = "
    CREATE SCHEMA app;
    CREATE TABLE app.accounts (id serial PRIMARY KEY, name text NOT NULL, balance numeric NOT NULL DEFAULT 0);
    CREATE TABLE app.events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, account int REFERENCES app.accounts, payload jsonb);
    CREATE TABLE public.\"Mixed Case\" (k text PRIMARY KEY, v int);
    CREATE TABLE public.audit (ts timestamptz NOT NULL DEFAULT now(), msg text);
    ALTER TABLE public.audit REPLICA IDENTITY FULL;
    CREATE SEQUENCE app.invoice_no START 1000;
    INSERT INTO app.accounts (name, balance) SELECT 'acct ' || g, g FROM generate_series(1, 5000) g;
    INSERT INTO app.events (account, payload) SELECT 1 + g % 5000, jsonb_build_object('n', g) FROM generate_series(1, 20000) g;
    INSERT INTO public.\"Mixed Case\" SELECT 'k' || g, g FROM generate_series(1, 100) g;
    INSERT INTO public.audit (msg) VALUES ('hello');
    SELECT nextval('app.invoice_no') FROM generate_series(1, 7);
";

/// Prints the history (for test logs).
pub async fn print_history(ctl: &Controller, n: usize) {
    for e in ctl.history(n).await.unwrap_or_default() {
        eprintln!(
            "  {} [{}] {} {}{}: {}",
            e.ts,
            e.upgrade_id.map(|i| i.to_string()).unwrap_or_default(),
            e.actor,
            e.kind,
            e.step
                .as_deref()
                .map(|s| format!(" {s}"))
                .unwrap_or_default(),
            e.message
        );
    }
}

/// Waits until a step of the current upgrade is done.
pub async fn wait_step_done(ctl: &Controller, key: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let steps = ctl.steps().await.unwrap_or_default();
        if steps
            .iter()
            .any(|s| s.key == key && s.status == control::journal::StepStatus::Done)
        {
            return;
        }
        let st = ctl.status();
        assert!(
            st.state != control::State::Error,
            "upgrade failed while waiting for step {key}: {st:?}"
        );
        if Instant::now() > deadline {
            print_history(ctl, 40).await;
            panic!("step {key} not done within {secs} s; status {st:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

/// A configuration for the unattended plan (no approval) on a source/target pair, database
/// `postgres`: shift steps `shift`, holds of `hold_ms`, health checks every 100 ms.
pub fn unattended_config(
    src: &PgServer,
    tgt: &PgServer,
    journal: &Path,
    shift: &str,
    hold_ms: u64,
    extra_upgrade: &str,
    extra: &str,
) -> Config {
    load_config(&config_text(
        src,
        &server_toml("target", tgt, "postgres"),
        journal,
        &format!("shift = {shift}\nshift_hold_ms = {hold_ms}\n{extra_upgrade}"),
        &format!("[health]\ninterval_ms = 100\nwindow_ms = 1000\nmin_transactions = 10\n\n{extra}"),
    ))
}
