//! The `pgactive` replication driver (issue 11, part 2) on real servers with AWS's pgactive
//! extension, PostgreSQL 15 → 15: the servers come from the bindir named by
//! `PGSHIFT_PGACTIVE_BINDIR` (see the README); without it these tests say so and skip.
//! pgactive has no package in the registries these machines reach, so CI has none; the
//! preflight test at the end runs everywhere.

use integration::load::{missing_ids, table_digest, Writer};
use integration::stack::{db_error, field};
use integration::{PgBinaries, Stack, StackOptions};
use std::time::{Duration, Instant};

/// Large enough for pgbench's draw rate of pgbench_history.hid over the 24 h horizon.
const GAP: i64 = 10_000_000_000;

/// The pgactive-enabled binaries, or `None` after printing why the test skips.
fn pgactive(test: &str) -> Option<PgBinaries> {
    match integration::pgactive_binaries() {
        Ok(Some(b)) => Some(b),
        Ok(None) => {
            eprintln!(
                "SKIPPED {test}: {} is not set (no PostgreSQL with the pgactive extension on this machine; see the README)",
                integration::PGACTIVE_BINDIR_ENV
            );
            None
        }
        Err(e) => panic!("{e:#}"),
    }
}

/// A source server's settings for pgactive.
fn source_settings(bins: &PgBinaries) -> Vec<(String, String)> {
    integration::pgactive_settings(bins).expect("pgactive settings")
}

fn config(extra: &str) -> String {
    config_with("", extra)
}

/// [`config`] with extra `[replication]` lines.
fn config_with(replication: &str, extra: &str) -> String {
    format!(
        "[replication]\ndriver = \"pgactive\"\nsequence_gap = {GAP}\n{replication}\n\n\
         [upgrade]\ndrain_timeout_ms = 5000\ncatchup_timeout_ms = 20000\npoll_interval_ms = 100\nbackoff_initial_ms = 200\n{extra}\n\n\
         [health]\ninterval_ms = 200\nmax_p99_ratio = 100.0\n"
    )
}

/// pgactive needs a key on every table it updates: pgbench_history gets one; the id
/// writer's table and a table of the test's own.
fn prepare(stack: &Stack) {
    stack
        .source
        .psql(
            "app",
            &format!(
                "ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY; {}; \
                 CREATE TABLE items (id bigserial PRIMARY KEY, side text); ALTER TABLE items OWNER TO app; \
                 INSERT INTO items (side) SELECT 'before' FROM generate_series(1, 1000)",
                integration::stack::ACKED_TABLE_SQL
            ),
        )
        .expect("source schema");
}

/// The application user's own connection to `server`, straight (not through pgshift).
async fn direct(server: &integration::PgServer) -> tokio_postgres::Client {
    integration::stack::connect(&format!(
        "host={} port={} dbname=app user=app password={}",
        server.host,
        server.port,
        integration::stack::APP_PASSWORD
    ))
    .await
    .expect("direct connection")
}

/// Polls `sql` (one value) on `server` until it returns `want`, at most `timeout`.
async fn wait_value(server: &integration::PgServer, sql: &str, want: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = server.psql("app", sql).unwrap_or_default();
        if got.trim() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql} on port {}: {got:?}, wanted {want:?} within {timeout:?}",
            server.port
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Both servers equal in every table the test wrote (waiting for replication to settle).
async fn assert_equal(stack: &Stack) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for (table, key) in [
        ("items", "id"),
        ("acked", "id"),
        ("pgbench_accounts", "aid"),
        ("pgbench_branches", "bid"),
        ("pgbench_tellers", "tid"),
        ("pgbench_history", "hid"),
    ] {
        loop {
            let (a, b) = (
                table_digest(&stack.source, table, key).unwrap(),
                table_digest(&stack.target, table, key).unwrap(),
            );
            if a == b {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{table} differs: source {a}, target {b}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The whole plan unattended: the target provisioned by pgshift (ConfigureParams writes
/// pgactive's settings and restarts it), the schema copied, the target joined with
/// `data_only_node_init`, sessions shifted 25/25/50 under pgbench and the id writer, the
/// cutover, DetachOld. Nothing failed, lost or drawn twice; pgactive gone from the source
/// afterwards. (`halt_on_conflict = false`: pgbench's updates of random accounts from both
/// nodes conflict now and then, which pgactive resolves last-update-wins.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgactive_plan_unattended_under_load() {
    let Some(bins) = pgactive("pgactive_plan_unattended_under_load") else {
        return;
    };
    let settings = source_settings(&bins);
    let stack = Stack::start(StackOptions {
        source_major: bins.major,
        target_major: bins.major,
        pgbench_scale: 1,
        provision_target: true,
        binaries: Some(bins),
        source_settings: settings,
        // pgbench's random account updates from sessions on both nodes meet now and then
        // (update_update, resolved last-update-wins on both): logged, not a halt, here.
        extra_config: config_with(
            "halt_on_conflict = false",
            "shift = [25, 25, 50]\nshift_hold_ms = 1500\ndatabases = [\"app\"]",
        ),
        ..Default::default()
    })
    .expect("stack");
    prepare(&stack);
    let writer = Writer::start(stack.app_conninfo(), "acked", Duration::from_millis(5));
    // -N: pgbench's "simple update" (no updates of the one branch row and the ten tellers,
    // which sessions on both nodes would update at once: conflicts by design of
    // active-active, resolved last-update-wins).
    let load = stack.pgbench_loop(&["-T", "2", "-c", "2", "-n", "-N"]);
    let t0 = Instant::now();
    stack.admin("START UPGRADE").await.expect("start");
    stack
        .wait_for("cut over", Duration::from_secs(240), |s| {
            matches!(
                field(s, "phase").as_str(),
                "cut_over" | "detaching" | "done"
            )
        })
        .await;
    let cut = t0.elapsed();
    let st = stack
        .wait_for("phase done", Duration::from_secs(120), |s| {
            field(s, "phase") == "done"
        })
        .await;
    eprintln!(
        "pgactive plan: cut over after {cut:?}, done after {:?}: {st:?}",
        t0.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let totals = load.stop();
    let written = writer.stop().await;
    assert_eq!(totals.failed, 0, "pgbench: {totals:?}");
    assert!(totals.errors.is_empty(), "pgbench: {:?}", totals.errors);
    assert!(written.errors.is_empty(), "writer: {:?}", written.errors);
    assert!(
        written.acked.len() > 100,
        "only {} writes",
        written.acked.len()
    );
    let lost = missing_ids(&stack.target, "app", "acked", &written.acked).unwrap();
    assert!(lost.is_empty(), "{} acknowledged writes lost", lost.len());
    for t in ["items", "acked", "pgbench_history"] {
        let key = if t == "pgbench_history" { "hid" } else { "id" };
        let dup = stack
            .target
            .psql(
                "app",
                &format!("SELECT count(*) - count(DISTINCT {key}) FROM {t}"),
            )
            .unwrap();
        assert_eq!(dup.trim(), "0", "{t}: an id drawn twice");
    }
    // Through pgshift on the target now.
    let app = stack.app_client().await.unwrap();
    let port: i32 = app
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port, stack.target.port as i32);
    // DetachOld removed pgactive from the source; the target is a group of one.
    let ext = stack
        .source
        .psql(
            "app",
            "SELECT count(*) FROM pg_extension WHERE extname = 'pgactive'",
        )
        .unwrap();
    assert_eq!(ext.trim(), "0", "pgactive left on the source");
    let slots = stack
        .source
        .psql("app", "SELECT count(*) FROM pg_replication_slots")
        .unwrap();
    assert_eq!(slots.trim(), "0", "slots left on the source");
    for l in stack.history_lines().await.unwrap() {
        if l.starts_with("swap ")
            || l.contains("configure_params")
            || l.contains("wait_for_sync")
            || l.contains("detach")
        {
            eprintln!("{l}");
        }
    }
}

/// Step by step, both servers started by the harness with pgactive's settings: whole
/// sessions follow the weight (25, 50, back to 0 from 50), writes included and replicated
/// both ways; each side draws ids from its own range; cutover, rollback after the cutover,
/// cutover again; the pauses printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgactive_sessions_shift_and_switch_both_ways() {
    let Some(bins) = pgactive("pgactive_sessions_shift_and_switch_both_ways") else {
        return;
    };
    let settings = source_settings(&bins);
    let mut stack = Stack::start(StackOptions {
        source_major: bins.major,
        target_major: bins.major,
        pgbench_scale: 1,
        binaries: Some(bins),
        source_settings: settings.clone(),
        extra_config: config("approve_cutover = true\ndatabases = [\"app\"]"),
        ..Default::default()
    })
    .expect("stack");
    // The harness's target: pgactive's settings set before it starts.
    for (k, v) in &settings {
        // One literal per item: ALTER SYSTEM would quote 'a, b' as the one item "a, b".
        let items: Vec<String> = v.split(',').map(|i| format!("'{}'", i.trim())).collect();
        stack
            .target
            .psql(
                "postgres",
                &format!("ALTER SYSTEM SET {k} = {}", items.join(", ")),
            )
            .unwrap();
    }
    stack.target.restart().expect("target restart");
    prepare(&stack);
    let t0 = Instant::now();
    stack.admin("START UPGRADE").await.expect("start");
    stack
        .wait_state("waiting", Duration::from_secs(180))
        .await
        .expect("synchronised, waiting for INITIATE CUTOVER");
    eprintln!("joined and ready in {:?}", t0.elapsed());

    let src_last: i64 = stack
        .source
        .psql("app", "SELECT last_value FROM items_id_seq")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t = direct(&stack.target).await;
    let tgt_id: i64 = t
        .query_one(
            "INSERT INTO items (side) VALUES ('target') RETURNING id",
            &[],
        )
        .await
        .map_err(|e| db_error(&e))
        .expect("a write on the target")
        .get(0);
    assert!(
        tgt_id > src_last + GAP / 2,
        "target drew {tgt_id}, source at {src_last}: not in a range of its own"
    );
    let written = Instant::now();
    wait_value(
        &stack.source,
        &format!("SELECT count(*) FROM items WHERE id = {tgt_id}"),
        "1",
        Duration::from_secs(20),
    )
    .await;
    eprintln!(
        "a target write visible on the source after {:?}",
        written.elapsed()
    );

    let tgt_port = stack.target.port as i32;
    const N: usize = 100;
    let mut sessions = Vec::new();
    for _ in 0..N {
        sessions.push(stack.app_client().await.expect("session"));
    }
    async fn round(sessions: &[tokio_postgres::Client], tgt_port: i32) -> Vec<bool> {
        let mut on = Vec::new();
        for c in sessions {
            let port: i32 = c
                .query_one(
                    "INSERT INTO items (side) VALUES (inet_server_port()::text) RETURNING inet_server_port()",
                    &[],
                )
                .await
                .map_err(|e| db_error(&e))
                .expect("write")
                .get(0);
            on.push(port == tgt_port);
        }
        on
    }
    let count = |v: &[bool]| v.iter().filter(|b| **b).count();
    stack.admin("SHIFT TRAFFIC 25").await.expect("shift 25");
    let at25 = round(&sessions, tgt_port).await;
    stack.admin("SHIFT TRAFFIC 50").await.expect("shift 50");
    let at50 = round(&sessions, tgt_port).await;
    eprintln!(
        "sessions on the target: {} of {N} at 25 %, {} at 50 %",
        count(&at25),
        count(&at50)
    );
    assert!((20..=30).contains(&count(&at25)), "{} of {N}", count(&at25));
    assert!((45..=55).contains(&count(&at50)), "{} of {N}", count(&at50));
    let back_t = Instant::now();
    stack
        .admin("SHIFT TRAFFIC 0")
        .await
        .expect("back to 0 from 50");
    let back = round(&sessions, tgt_port).await;
    eprintln!("weight 0 from 50: all back in {:?}", back_t.elapsed());
    assert_eq!(count(&back), 0);
    drop(sessions);

    let writer = Writer::start(stack.app_conninfo(), "acked", Duration::from_millis(5));
    let load = stack.pgbench_loop(&["-T", "2", "-c", "2", "-n", "-N"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.admin("INITIATE CUTOVER").await.expect("cutover");
    stack
        .wait_phase("cut_over", Duration::from_secs(60))
        .await
        .expect("cut over");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack
        .admin("ROLLBACK UPGRADE")
        .await
        .expect("rollback after cutover");
    stack
        .wait_phase("rolled_back", Duration::from_secs(60))
        .await
        .expect("rolled back");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack
        .admin("INITIATE CUTOVER")
        .await
        .expect("second cutover");
    stack
        .wait_phase("cut_over", Duration::from_secs(60))
        .await
        .expect("cut over again");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let totals = load.stop();
    let written = writer.stop().await;
    assert_eq!(totals.failed, 0, "pgbench: {totals:?}");
    assert!(totals.errors.is_empty(), "pgbench: {:?}", totals.errors);
    assert!(written.errors.is_empty(), "writer: {:?}", written.errors);
    assert_equal(&stack).await;
    for server in [&stack.source, &stack.target] {
        let lost = missing_ids(server, "app", "acked", &written.acked).unwrap();
        assert!(
            lost.is_empty(),
            "{} acknowledged ids lost on port {}",
            lost.len(),
            server.port
        );
    }
    let dup = stack
        .source
        .psql("app", "SELECT count(*) - count(DISTINCT id) FROM items")
        .unwrap();
    assert_eq!(dup.trim(), "0");
    for l in stack.history_lines().await.unwrap() {
        if l.starts_with("swap ") {
            eprintln!("{l}");
        }
    }
}

/// One key inserted on both nodes at once while shifted: pgactive logs the conflict, the
/// health check halts the plan (weight back to 0, paused) and the reason names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgactive_conflict_halts_the_shift() {
    let Some(bins) = pgactive("pgactive_conflict_halts_the_shift") else {
        return;
    };
    let settings = source_settings(&bins);
    let stack = Stack::start(StackOptions {
        source_major: bins.major,
        target_major: bins.major,
        pgbench_scale: 0,
        provision_target: true,
        binaries: Some(bins),
        source_settings: settings,
        extra_config: config("approve_cutover = true\ndatabases = [\"app\"]"),
        ..Default::default()
    })
    .expect("stack");
    stack
        .source
        .psql(
            "app",
            "CREATE TABLE kv (k int PRIMARY KEY, v text); ALTER TABLE kv OWNER TO app",
        )
        .unwrap();
    stack.admin("START UPGRADE").await.expect("start");
    stack
        .wait_state("waiting", Duration::from_secs(180))
        .await
        .expect("synchronised");
    // [upgrade] ddl = "block" (the default): with pgactive, TRUNCATE is DDL too.
    let app = stack.app_client().await.unwrap();
    let e = app
        .batch_execute("TRUNCATE kv")
        .await
        .expect_err("TRUNCATE refused");
    let d = e.as_db_error().expect("a server error");
    assert_eq!(d.code().code(), "55000", "{}", d.message());
    assert!(
        d.message().starts_with("TRUNCATE is refused"),
        "{}",
        d.message()
    );
    drop(app);
    stack.admin("SHIFT TRAFFIC 25").await.expect("shift");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let s = direct(&stack.source).await;
    let t = direct(&stack.target).await;
    // Both rows inserted before either commits (a commit replicates within milliseconds,
    // so two autocommit inserts may not meet), then both committed at once.
    s.batch_execute("BEGIN; INSERT INTO kv VALUES (1, 'source')")
        .await
        .map_err(|e| db_error(&e))
        .unwrap();
    t.batch_execute("BEGIN; INSERT INTO kv VALUES (1, 'target')")
        .await
        .map_err(|e| db_error(&e))
        .unwrap();
    let written = Instant::now();
    let (a, b) = tokio::join!(s.batch_execute("COMMIT"), t.batch_execute("COMMIT"));
    a.map_err(|e| db_error(&e)).unwrap();
    b.map_err(|e| db_error(&e)).unwrap();
    let st = stack
        .wait_state("paused", Duration::from_secs(30))
        .await
        .expect("the plan pauses");
    eprintln!(
        "pgactive conflict halted the plan {} ms after the writes: {st:?}",
        written.elapsed().as_millis()
    );
    assert_eq!(field(&st, "target_weight"), "0", "{st:?}");
    let why = field(&st, "last_error");
    assert!(why.contains("insert_insert"), "{why}");
    // Last update wins: both nodes end with the same row.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (x, y) = (
            stack.source.psql("app", "SELECT v FROM kv").unwrap(),
            stack.target.psql("app", "SELECT v FROM kv").unwrap(),
        );
        if x == y {
            break;
        }
        assert!(Instant::now() < deadline, "kv differs: {x:?} / {y:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `[upgrade] ddl = "replicate"` with `pgactive.skip_ddl_replication = off` (set on the
/// source by hand, on the provisioned target by ConfigureParams): DDL and TRUNCATE sent
/// through pgshift once the target has joined reach both nodes through pgactive's DDL
/// replication, with sessions on both sides writing the new column; then the cutover and
/// DetachOld, and DDL goes on on the target alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgactive_ddl_replicates_to_every_node() {
    let Some(bins) = pgactive("pgactive_ddl_replicates_to_every_node") else {
        return;
    };
    let mut settings = source_settings(&bins);
    settings.push(("pgactive.skip_ddl_replication".into(), "off".into()));
    let stack = Stack::start(StackOptions {
        source_major: bins.major,
        target_major: bins.major,
        pgbench_scale: 0,
        provision_target: true,
        binaries: Some(bins),
        source_settings: settings,
        extra_config: config(
            "approve_cutover = true\nddl = \"replicate\"\nshift_hold_ms = 500\ndatabases = [\"app\"]",
        ),
        ..Default::default()
    })
    .expect("stack");
    stack
        .source
        .psql(
            "app",
            "CREATE TABLE kv (k int PRIMARY KEY, v text); ALTER TABLE kv OWNER TO app; \
             INSERT INTO kv SELECT g, 'before' FROM generate_series(1, 100) g",
        )
        .unwrap();
    stack.admin("START UPGRADE").await.expect("start");
    stack
        .wait_state("waiting", Duration::from_secs(180))
        .await
        .expect("synchronised");
    let c = stack.app_client().await.unwrap();
    let t0 = Instant::now();
    c.batch_execute("ALTER TABLE kv ADD COLUMN note text")
        .await
        .map_err(|e| db_error(&e))
        .expect("ALTER TABLE through pgshift");
    let alter_ms = t0.elapsed().as_millis();
    let has_note = "SELECT count(*) FROM information_schema.columns WHERE table_name = 'kv' AND column_name = 'note'";
    wait_value(&stack.target, has_note, "1", Duration::from_secs(20)).await;
    eprintln!(
        "ALTER TABLE through pgshift took {alter_ms} ms; on the target after {} ms",
        t0.elapsed().as_millis()
    );
    // A new table, and writes of the new column on both nodes.
    c.batch_execute(
        "CREATE TABLE public.notes (id bigint PRIMARY KEY, body text); \
         INSERT INTO kv VALUES (1001, 'via pgshift', 'n1')",
    )
    .await
    .map_err(|e| db_error(&e))
    .expect("CREATE TABLE through pgshift");
    wait_value(
        &stack.target,
        "SELECT to_regclass('public.notes') IS NOT NULL",
        "t",
        Duration::from_secs(20),
    )
    .await;
    let t = direct(&stack.target).await;
    t.batch_execute("INSERT INTO kv VALUES (1002, 'on the target', 'n2'); INSERT INTO notes VALUES (1, 'target')")
        .await
        .map_err(|e| db_error(&e))
        .unwrap();
    wait_value(
        &stack.source,
        "SELECT count(*) FROM kv WHERE note IS NOT NULL",
        "2",
        Duration::from_secs(20),
    )
    .await;
    wait_value(
        &stack.source,
        "SELECT count(*) FROM notes",
        "1",
        Duration::from_secs(20),
    )
    .await;
    // TRUNCATE replicates too (pgactive's truncate trigger).
    c.batch_execute("TRUNCATE notes")
        .await
        .map_err(|e| db_error(&e))
        .expect("TRUNCATE through pgshift");
    wait_value(
        &stack.target,
        "SELECT count(*) FROM notes",
        "0",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        table_digest(&stack.source, "kv", "k").unwrap(),
        table_digest(&stack.target, "kv", "k").unwrap()
    );
    let st = stack.status().await.unwrap();
    assert_eq!(
        field(&st, "state"),
        "waiting",
        "replication healthy: {st:?}"
    );

    drop((c, t));
    stack.admin("INITIATE CUTOVER").await.expect("cutover");
    stack
        .wait_phase("done", Duration::from_secs(120))
        .await
        .expect("done");
    let c = stack.app_client().await.unwrap();
    c.batch_execute("ALTER TABLE kv ADD COLUMN later int")
        .await
        .map_err(|e| db_error(&e))
        .expect("DDL on the target alone after DetachOld");
}

/// A provisioned-target stack whose plan runs unattended to the end with the pgactive
/// driver, `PGSHIFT_FAILPOINT` set to `failpoint`, 200,000 rows to join and the id writer
/// running.
async fn kill_stack(bins: PgBinaries, failpoint: &str) -> (Stack, Writer) {
    let settings = source_settings(&bins);
    let stack = Stack::start(StackOptions {
        source_major: bins.major,
        target_major: bins.major,
        pgbench_scale: 0,
        provision_target: true,
        binaries: Some(bins),
        source_settings: settings,
        env: vec![("PGSHIFT_FAILPOINT".into(), failpoint.into())],
        extra_config: config("shift = [25, 25, 50]\nshift_hold_ms = 1000\ndatabases = [\"app\"]"),
        ..Default::default()
    })
    .expect("stack");
    stack
        .source
        .psql(
            "app",
            &format!(
                "{}; CREATE TABLE items (id bigserial PRIMARY KEY, v text); ALTER TABLE items OWNER TO app; \
                 INSERT INTO items (v) SELECT 'x' FROM generate_series(1, 200000)",
                integration::stack::ACKED_TABLE_SQL
            ),
        )
        .unwrap();
    let writer = Writer::start(stack.app_conninfo(), "acked", Duration::from_millis(5));
    (stack, writer)
}

/// After the restarts: the plan finishes on the target, no acknowledged write lost, no id
/// drawn twice, pgactive and its slots gone from the source.
async fn kill_finish(stack: &Stack, writer: Writer) {
    stack
        .wait_for("phase done", Duration::from_secs(180), |s| {
            field(s, "phase") == "done"
        })
        .await;
    let before = writer.acked_count();
    let deadline = Instant::now() + Duration::from_secs(20);
    while writer.acked_count() < before + 50 {
        assert!(Instant::now() < deadline, "no writes after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let app = stack.app_client().await.unwrap();
    let port: i32 = app
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port, stack.target.port as i32, "traffic on the target");
    // The writer's connections die with pgshift (errors, not acknowledged writes).
    let written = writer.stop().await;
    let lost = missing_ids(&stack.target, "app", "acked", &written.acked).unwrap();
    assert!(lost.is_empty(), "{} acknowledged writes lost", lost.len());
    let dup = stack
        .target
        .psql("app", "SELECT count(*) - count(DISTINCT id) FROM acked")
        .unwrap();
    assert_eq!(dup.trim(), "0", "an id drawn twice");
    assert_eq!(
        integration::stack::replication_objects(&stack.source),
        "",
        "left on the source"
    );
    let ext = stack
        .source
        .psql(
            "app",
            "SELECT count(*) FROM pg_extension WHERE extname = 'pgactive'",
        )
        .unwrap();
    assert_eq!(ext.trim(), "0", "pgactive left on the source");
    let hist = stack.admin("SHOW UPGRADE HISTORY").await.unwrap();
    assert!(hist.iter().any(|r| field(r, "actor") == "resume"));
}

/// `kill -9` while the target joins (WaitForSync), then inside the cutover before the
/// swap (`PGSHIFT_FAILPOINT=pause`): each restart resumes the plan, which finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgactive_kill_9_during_the_join_then_inside_the_cutover() {
    let Some(bins) = pgactive("pgactive_kill_9_during_the_join_then_inside_the_cutover") else {
        return;
    };
    let (mut stack, writer) = kill_stack(bins, "pause").await;
    stack.admin("START UPGRADE").await.unwrap();
    stack
        .wait_for("wait_for_sync", Duration::from_secs(120), |s| {
            field(s, "step") == "wait_for_sync"
        })
        .await;
    stack.pgshift.kill9();
    stack.pgshift.restart().expect("restart");
    stack.crashed_at_failpoint("Pause").await;
    let nodes = stack
        .target
        .psql(
            "app",
            "SELECT count(*) FROM pgactive.pgactive_nodes WHERE node_status = 'r'",
        )
        .unwrap();
    assert_eq!(nodes.trim(), "2", "one join, both nodes ready");
    stack.pgshift.restart().expect("restart");
    kill_finish(&stack, writer).await;
}

/// `kill -9` inside the cutover after the swap was journaled (`PGSHIFT_FAILPOINT=switch`):
/// the restart finds traffic on the target and finishes the plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgactive_kill_9_inside_the_cutover_after_the_swap() {
    let Some(bins) = pgactive("pgactive_kill_9_inside_the_cutover_after_the_swap") else {
        return;
    };
    let (mut stack, writer) = kill_stack(bins, "switch").await;
    stack.admin("START UPGRADE").await.unwrap();
    stack.crashed_at_failpoint("Switch").await;
    stack.pgshift.restart().expect("restart");
    let s = stack.status().await.unwrap();
    assert_eq!(field(&s, "epoch"), "2", "{s:?}");
    kill_finish(&stack, writer).await;
}

/// Runs everywhere: START UPGRADE on servers without pgactive's settings is refused by the
/// preflight with every change named (setting, value, restart), and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgactive_preflight_names_what_to_change() {
    let stack = Stack::start(StackOptions {
        source_major: 15,
        target_major: 15,
        pgbench_scale: 0,
        extra_config: config("databases = [\"app\"]"),
        ..Default::default()
    })
    .expect("stack");
    let why = format!(
        "{:#}",
        stack
            .admin("START UPGRADE")
            .await
            .expect_err("START UPGRADE is refused")
    );
    for want in [
        "source (127.0.0.1",
        "target (127.0.0.1",
        "set shared_preload_libraries = 'pgactive' (now ''; restart)",
        "set track_commit_timestamp = 'on' (now 'off'; restart)",
        "nothing was changed",
    ] {
        assert!(why.contains(want), "{want:?} not in {why}");
    }
    let slots = stack
        .source
        .psql("app", "SELECT count(*) FROM pg_replication_slots")
        .unwrap();
    assert_eq!(slots.trim(), "0");
}
