//! The `bidirectional` replication driver (issue 11, part 3) on real PostgreSQL 16 → 17:
//! both directions replicate at once with `origin = none`, each side's sequences draw from
//! a range of their own, the switches need no reverse set-up, and a conflict (one key
//! written on both servers) halts the plan with the reason shown.

use integration::load::{missing_ids, Writer};
use integration::stack::{db_error, field};
use integration::{Stack, StackOptions};
use std::time::{Duration, Instant};

const GAP: i64 = 1_000_000;

/// The harness's `pg_dump` is Debian's 15, which cannot dump a 16 source: the tests make
/// the schema on both servers themselves (`copy_schema = false`).
fn config(extra: &str) -> String {
    format!(
        "[replication]\ndriver = \"bidirectional\"\nsequence_gap = {GAP}\ncopy_schema = false\n\n\
         [upgrade]\napprove_cutover = true\ndrain_timeout_ms = 5000\ncatchup_timeout_ms = 20000\npoll_interval_ms = 100\n\n\
         [health]\ninterval_ms = 200\nmax_p99_ratio = 100.0\n{extra}"
    )
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

/// Runs `sql` on both servers (the schema, as `copy_schema = false` needs).
fn on_both(stack: &Stack, sql: &str) {
    for s in [&stack.source, &stack.target] {
        s.psql("app", sql).unwrap();
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ways_16_to_17_with_sequence_ranges_cutover_and_rollback() {
    let stack = Stack::start(StackOptions {
        source_major: 16,
        target_major: 17,
        pgbench_scale: 1,
        extra_config: config(""),
        ..Default::default()
    })
    .expect("stack");
    // pgbench's tables, empty, on the target (drop, tables, primary keys: no data).
    let out = integration::pgbench(&[
        "-i",
        "-q",
        "-I",
        "dtp",
        "-h",
        &stack.target.host,
        "-p",
        &stack.target.port.to_string(),
        "-U",
        "app",
        "app",
    ])
    .env("PGPASSWORD", integration::stack::APP_PASSWORD)
    .output()
    .expect("pgbench -i on the target");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    on_both(
        &stack,
        &format!(
            "{}; {}; CREATE TABLE items (id bigserial PRIMARY KEY, side text); ALTER TABLE items OWNER TO app",
            integration::stack::REPLICA_IDENTITY_SQL,
            integration::stack::ACKED_TABLE_SQL
        ),
    );
    stack
        .source
        .psql(
            "app",
            "INSERT INTO items (side) SELECT 'before' FROM generate_series(1, 100)",
        )
        .unwrap();

    let writer = Writer::start(stack.app_conninfo(), "acked", Duration::from_millis(5));
    let load = stack.pgbench_loop(&["-T", "3", "-c", "2", "-n"]);

    stack.admin("START UPGRADE").await.expect("start");
    stack
        .wait_state("waiting", Duration::from_secs(120))
        .await
        .expect("synchronised, waiting for INITIATE CUTOVER");
    let st = stack.status().await.unwrap();
    assert_eq!(field(&st, "phase"), "replicating", "{st:?}");

    // The target's sequence draws from its own range, GAP ahead of the source's.
    let src_last: i64 = stack
        .source
        .psql("app", "SELECT last_value FROM items_id_seq")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t = direct(&stack.target).await;
    let row = t
        .query_one(
            "INSERT INTO items (side) VALUES ('target') RETURNING id",
            &[],
        )
        .await
        .map_err(|e| db_error(&e))
        .expect("a write on the target");
    let tgt_id: i64 = row.get(0);
    assert!(
        tgt_id > src_last + GAP / 2,
        "target drew {tgt_id}, source at {src_last}: not in a range of its own"
    );
    // ... and reaches the source by the reverse subscription (origin = none: once).
    wait_value(
        &stack.source,
        &format!("SELECT count(*) FROM items WHERE id = {tgt_id}"),
        "1",
        Duration::from_secs(20),
    )
    .await;
    // A write on the source reaches the target and does not come back.
    let s = direct(&stack.source).await;
    let src_id: i64 = s
        .query_one(
            "INSERT INTO items (side) VALUES ('source') RETURNING id",
            &[],
        )
        .await
        .map_err(|e| db_error(&e))
        .unwrap()
        .get(0);
    wait_value(
        &stack.target,
        &format!("SELECT count(*) FROM items WHERE id = {src_id}"),
        "1",
        Duration::from_secs(20),
    )
    .await;

    // Cutover: no reverse set-up, both subscriptions keep running.
    let out = stack.admin("INITIATE CUTOVER").await.expect("cutover");
    eprintln!("cutover: {out:?}");
    stack
        .wait_phase("cut_over", Duration::from_secs(60))
        .await
        .expect("cut over");
    assert_eq!(stack.app_server_major().await.unwrap(), 17);
    for (server, sub) in [
        (&stack.target, "pgshift_fwd"),
        (&stack.source, "pgshift_rev"),
    ] {
        wait_value(
            server,
            &format!("SELECT count(*) FROM pg_stat_subscription WHERE subname = '{sub}' AND pid IS NOT NULL AND relid IS NULL"),
            "1",
            Duration::from_secs(20),
        )
        .await;
    }
    // Writes through pgshift now run on the target and reach the source.
    let app = stack.app_client().await.unwrap();
    let after_id: i64 = app
        .query_one(
            "INSERT INTO items (side) VALUES ('after cutover') RETURNING id",
            &[],
        )
        .await
        .map_err(|e| db_error(&e))
        .unwrap()
        .get(0);
    assert!(
        after_id > tgt_id,
        "{after_id} after {tgt_id}: the target's range moved back"
    );
    wait_value(
        &stack.source,
        &format!("SELECT count(*) FROM items WHERE id = {after_id}"),
        "1",
        Duration::from_secs(20),
    )
    .await;

    // Rollback after the cutover: back to the source, still both ways.
    stack.admin("ROLLBACK UPGRADE").await.expect("rollback");
    stack
        .wait_phase("rolled_back", Duration::from_secs(60))
        .await
        .expect("rolled back");
    assert_eq!(stack.app_server_major().await.unwrap(), 16);
    let back_id: i64 = app
        .query_one(
            "INSERT INTO items (side) VALUES ('after rollback') RETURNING id",
            &[],
        )
        .await
        .map_err(|e| db_error(&e))
        .unwrap()
        .get(0);
    assert!(
        back_id > after_id,
        "{back_id} after {after_id}: an id could be drawn twice"
    );
    wait_value(
        &stack.target,
        &format!("SELECT count(*) FROM items WHERE id = {back_id}"),
        "1",
        Duration::from_secs(20),
    )
    .await;

    for l in stack.history_lines().await.unwrap() {
        if l.starts_with("swap ") {
            eprintln!("{l}");
        }
    }

    // And over again, for good.
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
    assert!(
        written.acked.len() > 100,
        "only {} writes",
        written.acked.len()
    );

    let digest = |s: &integration::PgServer, table: &str, key: &str| {
        integration::load::table_digest(s, table, key).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for (table, key) in [
        ("items", "id"),
        ("acked", "id"),
        ("pgbench_accounts", "aid"),
        ("pgbench_branches", "bid"),
        ("pgbench_tellers", "tid"),
    ] {
        loop {
            let (a, b) = (
                digest(&stack.source, table, key),
                digest(&stack.target, table, key),
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
    // Nothing lost, on either side (both equal by now).
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_halts_the_shift_with_the_reason_shown() {
    let stack = Stack::start(StackOptions {
        source_major: 16,
        target_major: 17,
        pgbench_scale: 0,
        extra_config: config(""),
        ..Default::default()
    })
    .expect("stack");
    on_both(
        &stack,
        "CREATE TABLE kv (k int PRIMARY KEY, v text); ALTER TABLE kv OWNER TO app",
    );
    stack.admin("START UPGRADE").await.expect("start");
    stack
        .wait_state("waiting", Duration::from_secs(120))
        .await
        .expect("synchronised");
    stack.admin("SHIFT TRAFFIC 25").await.expect("shift");
    // Health checks run while shifted: give them a clean first round.
    tokio::time::sleep(Duration::from_millis(600)).await;

    // The same key on both servers, before either side has the other's row.
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
    let halted_ms = written.elapsed().as_millis();
    eprintln!("conflict halted the plan {halted_ms} ms after the writes: {st:?}");
    assert_eq!(field(&st, "target_weight"), "0", "{st:?}");
    let why = field(&st, "last_error");
    assert!(why.contains("conflict"), "{why}");
}

/// Part 4: with a both-ways driver the weight applies to whole sessions, writes included.
/// 100 sessions through pgshift: at 25 % exactly a quarter of them write on the target; at
/// 50 % the ones already there stay (sticky) and as many again join; at 0 % every one is
/// back on the source at its next statement; every row reaches the other server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_sessions_follow_the_weight_writes_included() {
    let stack = Stack::start(StackOptions {
        source_major: 16,
        target_major: 17,
        pgbench_scale: 0,
        extra_config: config(""),
        ..Default::default()
    })
    .expect("stack");
    on_both(
        &stack,
        "CREATE TABLE w (id bigserial PRIMARY KEY, port int, session int); ALTER TABLE w OWNER TO app",
    );
    stack.admin("START UPGRADE").await.expect("start");
    stack
        .wait_state("waiting", Duration::from_secs(120))
        .await
        .expect("synchronised");
    let tgt_port = stack.target.port as i32;
    const N: usize = 100;
    let mut sessions = Vec::new();
    for _ in 0..N {
        sessions.push(stack.app_client().await.expect("session"));
    }
    // One write per session; returns which sessions wrote on the target.
    async fn round(sessions: &[tokio_postgres::Client], tgt_port: i32) -> Vec<bool> {
        let mut on = Vec::new();
        for (i, c) in sessions.iter().enumerate() {
            let port: i32 = c
                .query_one(
                    "INSERT INTO w (port, session) VALUES (inet_server_port(), $1) RETURNING port",
                    &[&(i as i32)],
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

    let before = round(&sessions, tgt_port).await;
    assert_eq!(count(&before), 0, "no weight: every session on the source");
    stack.admin("SHIFT TRAFFIC 25").await.expect("shift 25");
    let at25 = round(&sessions, tgt_port).await;
    eprintln!("weight 25: {} of {N} sessions on the target", count(&at25));
    assert!((20..=30).contains(&count(&at25)), "{} of {N}", count(&at25));
    // The same sessions stay where they are while the weight does not change.
    assert_eq!(
        round(&sessions, tgt_port).await,
        at25,
        "sessions moved without a reason"
    );
    stack.admin("SHIFT TRAFFIC 50").await.expect("shift 50");
    let at50 = round(&sessions, tgt_port).await;
    eprintln!("weight 50: {} of {N} sessions on the target", count(&at50));
    assert!((45..=55).contains(&count(&at50)), "{} of {N}", count(&at50));
    let stayed = at25.iter().zip(&at50).filter(|(a, b)| **a && **b).count();
    assert_eq!(
        stayed,
        count(&at25),
        "sticky: the sessions on the target at 25 % stay at 50 %"
    );
    let t0 = Instant::now();
    stack.admin("SHIFT TRAFFIC 0").await.expect("shift 0");
    let back = round(&sessions, tgt_port).await;
    eprintln!("weight 0: all back in {:?}", t0.elapsed());
    assert_eq!(
        count(&back),
        0,
        "weight 0: every session back on the source"
    );
    // Every write of either side is on both servers.
    let n = (5 * N).to_string();
    for s in [&stack.source, &stack.target] {
        wait_value(s, "SELECT count(*) FROM w", &n, Duration::from_secs(20)).await;
    }
    let on_target = stack
        .source
        .psql(
            "app",
            &format!("SELECT count(*) FROM w WHERE port = {tgt_port}"),
        )
        .unwrap();
    assert_eq!(
        on_target.trim(),
        (count(&at25) * 2 + count(&at50)).to_string(),
        "the target's writes reached the source"
    );
    // The cutover from 50 %: the sessions on the source move, those on the target keep
    // their connection; one connection each on the target afterwards (none left over).
    stack.admin("SHIFT TRAFFIC 50").await.expect("shift 50");
    assert_eq!(count(&round(&sessions, tgt_port).await), count(&at50));
    stack.admin("INITIATE CUTOVER").await.expect("cutover");
    assert_eq!(
        count(&round(&sessions, tgt_port).await),
        N,
        "all on the target"
    );
    let backends =
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND datname = 'app'";
    wait_value(
        &stack.target,
        backends,
        &N.to_string(),
        Duration::from_secs(5),
    )
    .await;
}
