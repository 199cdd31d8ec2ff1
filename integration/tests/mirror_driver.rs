//! The `mirror` replication driver (issue 4, "done when"): a PostgreSQL 13 source WITHOUT
//! logical decoding (`wal_level = replica`) carried to a 17 by pgshift itself, under pgbench
//! TPC-B (prepared and simple protocol) and a writer of acknowledged ids: snapshot-consistent
//! parallel COPY started with the capture, committed transactions applied in commit order,
//! reads validated with 0 mismatches, cutover, writes on the 17 applied back to the 13, and a
//! rollback after cutover that loses nothing.

use integration::load::{missing_ids, tables_differ, Writer, PGBENCH_TABLES};
use integration::stack::field as get;
use integration::{PgServer, Stack, StackOptions};
use std::time::{Duration, Instant};

/// The tables the test compares: pgbench's and the writer's acknowledged ids.
fn tables_equal(a: &PgServer, b: &PgServer) -> Vec<String> {
    let mut tables = PGBENCH_TABLES.to_vec();
    tables.push(("(SELECT id FROM acked)", "id"));
    tables_differ(a, b, &tables)
}

async fn validation_totals(stack: &Stack) -> std::collections::HashMap<String, Option<String>> {
    stack
        .admin("SHOW UPGRADE VALIDATION")
        .await
        .unwrap()
        .into_iter()
        .find(|r| get(r, "table") == "*")
        .expect("totals row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_driver_13_without_logical_decoding_to_17_under_pgbench() {
    let t0 = Instant::now();
    let stack = Stack::start(StackOptions {
        pgbench_scale: 5,
        source_settings: vec![("wal_level".into(), "replica".into())],
        extra_config: "[replication]\ndriver = \"mirror\"\ncopy_jobs = 3\n\n\
                       [upgrade]\napprove_cutover = true\nshift = []\nshift_hold_ms = 90000\n\
                       drain_timeout_ms = 5000\ncatchup_timeout_ms = 20000\npoll_interval_ms = 200\n\n\
                       [health]\ninterval_ms = 250\nwindow_ms = 3000\nmin_transactions = 20\nmax_p99_ratio = 50.0\n\n\
                       [mirror]\nenabled = true\nlevel = \"reads\"\nsample_rate = 1.0\nrecheck_timeout_ms = 8000\n\n\
                       [validation]\nmin_duration_ms = 0\n"
            .into(),
        ..Default::default()
    })
    .expect("stack");
    let (src, tgt) = (&stack.source, &stack.target);
    stack.prepare_source().unwrap();
    assert_eq!(src.psql("app", "SHOW wal_level").unwrap(), "replica");

    // Rate-limited: the applier is one connection (about 900 transactions per second during
    // load on the 2-core test machine, `bench apply`); unlimited pgbench outruns it and the
    // cutover is (rightly) refused for lag.
    let tpcb = stack.pgbench_loop(&[
        "-n", "-c", "3", "-j", "1", "-T", "6", "-R", "150", "-M", "prepared",
    ]);
    let simple = stack.pgbench_loop(&[
        "-n", "-c", "2", "-j", "1", "-T", "6", "-R", "100", "-M", "simple",
    ]);
    let reads = stack.pgbench_loop(&[
        "-n", "-S", "-c", "2", "-j", "1", "-T", "6", "-M", "prepared",
    ]);
    let writer = Writer::start(stack.app_conninfo(), "acked", Duration::from_millis(3));
    tokio::time::sleep(Duration::from_secs(1)).await;

    stack.admin("START UPGRADE").await.expect("START UPGRADE");
    // The plan runs to the approval of the cutover.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let s = stack.status().await.unwrap();
        let (phase, state) = (get(&s, "phase"), get(&s, "state"));
        assert!(
            !matches!(state.as_str(), "error" | "paused" | "alert"),
            "plan stopped: {s:?}\n{}",
            integration::tail_file(&stack.pgshift.log_path(), 200)
        );
        if state == "waiting" {
            eprintln!(
                "[{:>6.1?}] waiting for INITIATE CUTOVER: {s:?}",
                t0.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not at the cutover in time: {s:?}\n{}",
            integration::tail_file(&stack.pgshift.log_path(), 200)
        );
        let _ = phase;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Some more load while validation compares reads.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = validation_totals(&stack).await;
    eprintln!("validation before cutover: {v:?}");
    assert!(
        get(&v, "compared").parse::<u64>().unwrap_or(0) > 10,
        "reads were compared: {v:?}"
    );
    assert_eq!(
        get(&v, "mismatched"),
        "0",
        "{v:?}\n{:?}",
        stack.admin("SHOW UPGRADE ERRORS").await
    );
    assert_eq!(get(&v, "target_errors"), "0", "{v:?}");

    let r = stack.admin("INITIATE CUTOVER").await;
    assert!(
        r.is_ok(),
        "cutover: {r:?}\n{}",
        integration::tail_file(&stack.pgshift.log_path(), 200)
    );
    eprintln!("[{:>6.1?}] cutover: {r:?}", t0.elapsed());
    let s = stack.status().await.unwrap();
    assert_eq!(get(&s, "target_weight"), "100", "{s:?}");
    // Load on the 17; its writes are recorded and applied back to the 13.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let written = writer.stop().await;
    let (tpcb, simple, reads) =
        tokio::task::spawn_blocking(move || (tpcb.stop(), simple.stop(), reads.stop()))
            .await
            .unwrap();
    eprintln!(
        "tpcb {tpcb:?}\nsimple {simple:?}\nreads {reads:?}\nwriter: {} acked, errors {:?}",
        written.acked.len(),
        written.errors
    );
    for (name, l) in [
        ("TPC-B prepared", &tpcb),
        ("TPC-B simple", &simple),
        ("select-only", &reads),
    ] {
        assert!(l.transactions > 0, "{name}: {l:?}");
        assert_eq!((l.failed, l.errors.len()), (0, 0), "{name}: {l:?}");
    }
    assert!(written.errors.is_empty(), "writer: {:?}", written.errors);
    assert!(written.acked.len() > 100, "{} writes", written.acked.len());
    let lost = missing_ids(tgt, "app", "acked", &written.acked).unwrap();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes not on the 17: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );

    // The way back is current: the 13 equals the 17 once the reverse queue is applied.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let differ = tables_equal(src, tgt);
        if differ.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "source and target differ in {differ:?}\n{}",
            integration::tail_file(&stack.pgshift.log_path(), 200)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // pgbench's invariant holds on both.
    for s in [src, tgt] {
        assert_eq!(
            s.psql(
                "app",
                "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(bbalance) FROM pgbench_branches)"
            )
            .unwrap(),
            "t"
        );
    }
    // No logical replication anywhere.
    assert_eq!(
        src.psql("app", "SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_replication_slots)")
            .unwrap(),
        "0"
    );
    assert_eq!(
        tgt.psql("app", "SELECT count(*) FROM pg_subscription")
            .unwrap(),
        "0"
    );

    // Rollback after cutover: traffic back on the 13, nothing written on the 17 lost.
    let r = stack.admin("ROLLBACK UPGRADE").await;
    assert!(
        r.is_ok(),
        "rollback: {r:?}\n{}",
        integration::tail_file(&stack.pgshift.log_path(), 200)
    );
    let s = stack.status().await.unwrap();
    assert_eq!(get(&s, "source_weight"), "100", "{s:?}");
    let lost = missing_ids(src, "app", "acked", &written.acked).unwrap();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes not on the 13 after rollback",
        lost.len()
    );
    let c = stack.app_client().await.unwrap();
    let v: i32 = c
        .query_one(
            "SELECT current_setting('server_version_num')::int / 10000",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 13);
    let history = stack.history_lines().await.unwrap();
    assert!(
        history
            .iter()
            .any(|l| l.contains("capture of committed writes started")),
        "{}",
        history.join("\n")
    );
    eprintln!("done in {:.1?}", t0.elapsed());
}

/// Durable before acknowledged (issue 10 part 7): pgshift is killed at its 60th group
/// commit, after the unit's queue records were written and before their `fdatasync`, while
/// one writer commits ids through it. After the restart every id whose commit the writer
/// heard is applied on the target, and applying goes on (no unit was left open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_driver_acknowledges_only_durable_commits_across_a_kill_before_sync() {
    let mut stack = Stack::start(StackOptions {
        pgbench_scale: 1,
        source_settings: vec![("wal_level".into(), "replica".into())],
        extra_config: "[replication]\ndriver = \"mirror\"\n\n\
                       [upgrade]\napprove_cutover = true\nshift = []\npoll_interval_ms = 200\n"
            .into(),
        env: vec![("PGSHIFT_FAILPOINT".into(), "capture-sync@60".into())],
        ..Default::default()
    })
    .expect("stack");
    stack.prepare_source().unwrap();
    stack.admin("START UPGRADE").await.expect("START UPGRADE");
    // One writer: at the kill only its own unit can be in flight, and that one is recorded
    // whole (the kill comes after the UNIT record), so applying can go on after the restart.
    let writer = Writer::start(stack.app_conninfo(), "acked", Duration::from_millis(2));
    let deadline = Instant::now() + Duration::from_secs(120);
    while stack.pgshift.is_running() {
        assert!(
            Instant::now() < deadline,
            "the failpoint was not reached: {:?}\n{}",
            stack.status().await,
            integration::tail_file(&stack.pgshift.log_path(), 40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stack.pgshift.log().contains("capture-sync@60"),
        "pgshift died elsewhere:\n{}",
        integration::tail_file(&stack.pgshift.log_path(), 40)
    );
    stack.pgshift.env.clear();
    stack.pgshift.restart().expect("restart");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let written = writer.stop().await;
    assert!(written.acked.len() >= 50, "{} acked", written.acked.len());
    let tgt = &stack.target;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // -1: the target's table cannot be read yet.
        let lost = missing_ids(tgt, "app", "acked", &written.acked).unwrap_or_else(|_| vec![-1]);
        if lost.is_empty() {
            break;
        }
        let s = stack.status().await.unwrap();
        assert_ne!(get(&s, "state"), "error", "applying stopped: {s:?}");
        assert!(
            Instant::now() < deadline,
            "acknowledged ids missing on the target: {lost:?}; status {s:?}\n{}",
            integration::tail_file(&stack.pgshift.log_path(), 60)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The id in flight at the kill: committed on the source (its UNIT record was written),
    // never acknowledged (the client waited for the fdatasync), applied on the target.
    let first_error = written
        .errors
        .first()
        .expect("the kill broke the writer's connection");
    let in_flight: i64 = first_error
        .strip_prefix("id ")
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("writer error without an id: {first_error}"));
    assert!(
        !written.acked.contains(&in_flight),
        "id {in_flight} was acknowledged"
    );
    let on = |s: &PgServer| {
        s.psql(
            "app",
            &format!("SELECT count(*) FROM acked WHERE id = {in_flight}"),
        )
        .unwrap()
    };
    assert_eq!(
        on(&stack.source),
        "1",
        "id {in_flight} committed on the source"
    );
    assert_eq!(on(tgt), "1", "id {in_flight} applied on the target");
    let log = integration::tail_file(&stack.pgshift.log_path(), 1000);
    assert!(!log.contains("cannot be trusted"), "{log}");
}

/// Large write units under the memory budget (issue 10 part 6): with the `mirror` driver a
/// write unit's message is buffered twice (the message and the driver's copy), so 4
/// clients inserting 12 MiB values at once, under `session_memory_bytes` = 40 MiB, take
/// turns; every insert commits and is applied on the target. A write transaction that
/// reads 24 MiB of rows is recorded without the row data (the applier compares command
/// tags), so it takes almost nothing from the budget and is applied too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_driver_records_large_write_units_within_the_memory_budget() {
    const MIB: usize = 1 << 20;
    let stack = Stack::start(StackOptions {
        pgbench_scale: 1,
        source_settings: vec![("wal_level".into(), "replica".into())],
        extra_config: format!(
            "[proxy]\nsession_memory_bytes = {}\nmax_message_bytes = {}\nmemory_wait_ms = 30000\n\n\
             [replication]\ndriver = \"mirror\"\n\n\
             [upgrade]\napprove_cutover = true\nshift = []\npoll_interval_ms = 200\n",
            40 * MIB,
            16 * MIB
        ),
        ..Default::default()
    })
    .expect("stack");
    stack.prepare_source().unwrap();
    stack
        .source
        .psql(
            "app",
            "CREATE TABLE blobs (id int PRIMARY KEY, v text); ALTER TABLE blobs OWNER TO app",
        )
        .unwrap();
    stack.admin("START UPGRADE").await.expect("START UPGRADE");
    stack
        .wait_state("waiting", Duration::from_secs(60))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for id in 0..4 {
        let ci = stack.app_conninfo();
        tasks.push(tokio::spawn(async move {
            let c = integration::stack::connect(&ci).await.unwrap();
            let sql = format!(
                "INSERT INTO blobs VALUES ({id}, '{}')",
                char::from(b'a' + id as u8).to_string().repeat(12 * MIB)
            );
            c.batch_execute(&sql)
                .await
                .map_err(|e| integration::stack::db_error(&e))
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = stack.app_client().await.unwrap();
    c.batch_execute(
        "BEGIN; INSERT INTO blobs VALUES (10, 'read'); \
         SELECT repeat('r', 1048576) FROM generate_series(1, 24); COMMIT",
    )
    .await
    .unwrap();
    let sums = "SELECT string_agg(id || ':' || md5(v), ',' ORDER BY id) FROM blobs";
    let want = stack.source.psql("app", sums).unwrap();
    assert_eq!(want.split(',').count(), 5, "{want}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if stack.target.psql("app", sums).unwrap_or_default() == want {
            break;
        }
        let s = stack.status().await.unwrap();
        assert_ne!(get(&s, "state"), "error", "applying stopped: {s:?}");
        assert!(
            Instant::now() < deadline,
            "the large units were not applied: {s:?}\n{}",
            integration::tail_file(&stack.pgshift.log_path(), 40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A client that hangs up while its write may be committing (found in issue 10's review):
/// the unit used to be closed as if it had rolled back, so the target could lack a row the
/// source committed. Now pgshift finishes the unit without the client and records it as it
/// happened. Three hang-ups through the `mirror` driver: (1) during an autocommit INSERT
/// (it commits on the source: it must be on the target), (2) inside an open transaction
/// with nothing in flight (rolled back: on neither side), (3) after a pipelined autocommit
/// INSERT and during a transaction still open (the first commits, the second is rolled back
/// by pgshift's ROLLBACK: on both sides the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_driver_records_a_write_whose_client_left_mid_commit() {
    use integration::raw;
    use tokio::io::AsyncWriteExt;
    let stack = Stack::start(StackOptions {
        pgbench_scale: 1,
        source_settings: vec![("wal_level".into(), "replica".into())],
        extra_config: "[replication]\ndriver = \"mirror\"\n\n\
                       [upgrade]\napprove_cutover = true\nshift = []\npoll_interval_ms = 200\n\n\
                       [[users]]\nname = \"raw\"\nauth = \"trust\"\nserver_user = \"app\"\nserver_password = \"app-secret\"\n"
            .into(),
        ..Default::default()
    })
    .expect("stack");
    stack.prepare_source().unwrap();
    stack
        .source
        .psql(
            "app",
            "CREATE TABLE hangup (id int PRIMARY KEY); ALTER TABLE hangup OWNER TO app",
        )
        .unwrap();
    stack.admin("START UPGRADE").await.expect("START UPGRADE");
    stack
        .wait_state("waiting", Duration::from_secs(60))
        .await
        .unwrap();
    let port = stack.pgshift.port;
    let hang_up_after = |sql: Vec<u8>, ms: u64| async move {
        let mut s = raw::session(port, "raw", "app").await;
        s.write_all(&sql).await.unwrap();
        tokio::time::sleep(Duration::from_millis(ms)).await;
        drop(s);
    };
    // (1) During an autocommit INSERT that takes 1 s.
    hang_up_after(
        raw::query("INSERT INTO hangup SELECT 1 FROM pg_sleep(1)"),
        200,
    )
    .await;
    // (2) Inside an open transaction, nothing in flight.
    hang_up_after(raw::query("BEGIN; INSERT INTO hangup VALUES (2)"), 300).await;
    // (3) A committed INSERT, then a transaction still open and busy.
    let mut both = raw::query("INSERT INTO hangup VALUES (3)");
    both.extend(raw::query(
        "BEGIN; INSERT INTO hangup VALUES (4); SELECT pg_sleep(1)",
    ));
    hang_up_after(both, 300).await;
    // A marker after them, from a client that stays.
    let c = stack.app_client().await.unwrap();
    // The source finishes (1) in its own time.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c.batch_execute("INSERT INTO hangup VALUES (99)")
        .await
        .unwrap();
    let ids = "SELECT string_agg(id::text, ',' ORDER BY id) FROM hangup";
    assert_eq!(stack.source.psql("app", ids).unwrap(), "1,3,99");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let on_target = stack.target.psql("app", ids).unwrap_or_default();
        if on_target.ends_with("99") {
            assert_eq!(on_target, "1,3,99", "the target differs from the source");
            break;
        }
        let s = stack.status().await.unwrap();
        assert_ne!(
            get(&s, "state"),
            "error",
            "applying stopped: {s:?}\n{}",
            integration::tail_file(&stack.pgshift.log_path(), 40)
        );
        assert!(
            Instant::now() < deadline,
            "marker not applied: {on_target} {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
