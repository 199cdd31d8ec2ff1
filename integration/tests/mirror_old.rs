//! The `mirror` replication driver from an old source: PostgreSQL 10 with `wal_level =
//! replica` (the oldest major the harness has; before 10 there is no `pg_sequences`, and the
//! driver's server-side SQL branches on the version) carried to a 17 under a short,
//! rate-limited pgbench and a writer of acknowledged ids, all through pgshift: START UPGRADE
//! to replicating, INITIATE CUTOVER, contents equal on both sides, sequences set at the
//! cutover (a sequence advanced by draws that no committed transaction carries, so only the
//! sync can tell the target), then ROLLBACK UPGRADE after cutover: nothing written on the 17
//! lost, and the 10's sequences set from the 17.

use integration::load::{self, missing_ids, table_digest, Writer, PGBENCH_TABLES};
use integration::stack::field as get;
use integration::{PgServer, Stack, StackOptions};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// A table with a sequence, written by one session at a time (ids drawn on the side the
/// statement runs on; one writer keeps the draws in commit order, so both sides get the same
/// ids when the statement is applied again on the other).
const EVENTS_SQL: &str =
    "CREATE TABLE events (id bigserial PRIMARY KEY, note text NOT NULL); ALTER TABLE events OWNER TO app";

/// md5 of a table's rows in key order (the same on both servers when their data is equal).
fn digest(s: &PgServer, table: &str, key: &str) -> String {
    table_digest(s, table, key).unwrap()
}

/// The tables whose contents differ between `a` and `b`: pgbench's, the writer's
/// acknowledged ids and the events.
fn tables_differ(a: &PgServer, b: &PgServer) -> Vec<String> {
    let mut tables = PGBENCH_TABLES.to_vec();
    tables.extend([("(SELECT id FROM acked)", "id"), ("events", "id")]);
    load::tables_differ(a, b, &tables)
}

/// Waits until `a` and `b` hold the same data (the applier catches up), at most 30 s.
async fn wait_equal(stack: &Stack, a: &PgServer, b: &PgServer, when: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        let differ = tables_differ(a, b);
        if differ.is_empty() {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{when}: the servers differ in {differ:?}\n{}",
            integration::tail_file(&stack.pgshift.log_path(), 100)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A session through pgshift that inserts events with the statement's text on every call.
///
/// tokio-postgres then prepares a statement per call and closes it when done, and that
/// Close + Sync can reach pgshift in one write with the next call's Parse/Describe/Sync:
/// one recorded unit whose first request ends idle without running a statement. The
/// applier must still wrap it in its transaction with the applied position (it once ran it
/// unwrapped and stored the position under the session's role: "permission denied for
/// schema pgshift_mirror").
struct Events {
    c: Client,
}

impl Events {
    async fn open(stack: &Stack) -> Events {
        Events {
            c: stack.app_client().await.unwrap(),
        }
    }

    /// Inserts `n` events, one autocommit statement each; returns the ids.
    async fn insert(&self, n: usize, note: &str) -> Vec<i64> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let id: i64 = self
                .c
                .query_one(
                    "INSERT INTO events (note) VALUES ($1) RETURNING id",
                    &[&note],
                )
                .await
                .unwrap_or_else(|e| panic!("insert into events ({note}): {e:?}"))
                .get(0);
            ids.push(id);
        }
        ids
    }
}

/// Draws `n` values of events' sequence in a transaction that rolls back, then one more in
/// an insert that fails (NOT NULL): the sequence moves on without a committed write. The
/// applier runs such units too (and rolls them back), so that ids drawn later are the same
/// on both sides. Returns the last value drawn.
async fn burn(c: &Client, n: i64) -> i64 {
    c.batch_execute("BEGIN").await.unwrap();
    let last: i64 = c
        .query_one(
            "SELECT max(nextval('events_id_seq')) FROM generate_series(1, $1::int8)",
            &[&n],
        )
        .await
        .expect("nextval")
        .get(0);
    c.batch_execute("ROLLBACK").await.unwrap();
    let e = c
        .execute("INSERT INTO events (note) VALUES (NULL)", &[])
        .await
        .expect_err("NOT NULL");
    assert_eq!(e.code().map(|c| c.code()), Some("23502"), "{e:?}");
    last + 1
}

/// `last_value` of events' sequence on a server (its own view of it, not through pgshift).
fn seq_last(s: &PgServer) -> i64 {
    s.psql("app", "SELECT last_value FROM events_id_seq")
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_driver_10_to_17_cutover_and_rollback() {
    let t0 = Instant::now();
    let stack = Stack::start(StackOptions {
        source_major: 10,
        target_major: 17,
        pgbench_scale: 1,
        source_settings: vec![("wal_level".into(), "replica".into())],
        extra_config: "[replication]\ndriver = \"mirror\"\ncopy_jobs = 2\n\n\
                       [upgrade]\napprove_cutover = true\nshift = []\nshift_hold_ms = 90000\n\
                       drain_timeout_ms = 5000\ncatchup_timeout_ms = 20000\npoll_interval_ms = 100\n\n\
                       [health]\ninterval_ms = 250\nmax_p99_ratio = 100.0\n"
            .into(),
        // max_p99_ratio 100: the health checks guard the 17 after the cutover (their probe
        // of the 10 runs too), and the latency ratio on a loaded 2-core machine is noise.
        ..Default::default()
    })
    .expect("stack");
    let (src, tgt) = (&stack.source, &stack.target);
    stack.prepare_source().unwrap();
    src.psql("app", EVENTS_SQL).unwrap();
    assert_eq!(src.psql("app", "SHOW wal_level").unwrap(), "replica");
    assert_eq!(
        src.psql("app", "SHOW server_version_num").unwrap()[..2].to_string(),
        "10"
    );
    eprintln!(
        "[{:>5.1?}] stack up: 10 (wal_level=replica) and 17",
        t0.elapsed()
    );

    // Rate-limited: the applier is one connection and unlimited pgbench outruns it.
    let tpcb = stack.pgbench_loop(&[
        "-n", "-c", "2", "-j", "1", "-T", "3", "-R", "100", "-M", "prepared",
    ]);
    let writer = Writer::start(stack.app_conninfo(), "acked", Duration::from_millis(3));
    let app = Events::open(&stack).await;
    let mut events = app.insert(20, "before start").await;

    stack.admin("START UPGRADE").await.expect("START UPGRADE");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    loop {
        let s = stack.status().await.unwrap();
        let state = get(&s, "state");
        assert!(
            !matches!(state.as_str(), "error" | "paused" | "alert"),
            "plan stopped: {s:?}\n{}",
            integration::tail_file(&stack.pgshift.log_path(), 100)
        );
        if state == "waiting" {
            assert_eq!(get(&s, "phase"), "replicating", "{s:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not replicating in time: {s:?}\n{}",
            integration::tail_file(&stack.pgshift.log_path(), 100)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "[{:>5.1?}] replicating {:.1?} after START UPGRADE",
        t0.elapsed(),
        started.elapsed()
    );
    let e = stack
        .admin("FORCE RESYNC TABLE 'events'")
        .await
        .expect_err("FORCE RESYNC with the mirror driver");
    assert!(e.to_string().contains("logical\" only"), "{e}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    events.extend(app.insert(20, "replicating").await);
    // The source's sequence moves on without a committed transaction to carry it.
    // Statements PostgreSQL refuses inside a transaction block are applied outside one.
    app.c
        .batch_execute("CREATE INDEX CONCURRENTLY events_note_idx ON events (note)")
        .await
        .expect("CREATE INDEX CONCURRENTLY");
    app.c.batch_execute("VACUUM events").await.expect("VACUUM");
    let burned_on_10 = burn(&app.c, 1000).await;
    assert_eq!(seq_last(src), burned_on_10);
    // Inserts after the draws get the same ids on the 17 (the draws were applied too).
    let after = app.insert(10, "after the draws").await;
    assert!(after.iter().all(|id| *id > burned_on_10), "{after:?}");
    events.extend(after);
    // (The load goes on: only events, written by this session alone, can be compared now.)
    let waited = Instant::now();
    while digest(src, "events", "id") != digest(tgt, "events", "id") {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "events differ after the draws: 10 {} / 17 {}\n{}",
            digest(src, "events", "id"),
            digest(tgt, "events", "id"),
            integration::tail_file(&stack.pgshift.log_path(), 100)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let applied = waited.elapsed();
    assert!(seq_last(tgt) >= burned_on_10, "the 17 did not draw");
    assert_eq!(
        tgt.psql(
            "app",
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'events_note_idx'"
        )
        .unwrap(),
        "1",
        "the index built concurrently on the 10 is on the 17"
    );
    eprintln!(
        "[{:>5.1?}] rolled-back draws applied: ids equal on both sides ({applied:.1?})",
        t0.elapsed()
    );

    let r = stack.admin("INITIATE CUTOVER").await;
    assert!(
        r.is_ok(),
        "cutover: {r:?}\n{}",
        integration::tail_file(&stack.pgshift.log_path(), 100)
    );
    let msg = r.unwrap();
    eprintln!("[{:>5.1?}] cutover: {msg:?}", t0.elapsed());
    let s = stack.status().await.unwrap();
    assert_eq!(get(&s, "target_weight"), "100", "{s:?}");
    assert_eq!(stack.app_server_major().await.unwrap(), 17);
    // Sequences set at the cutover: the 17 goes on after the 10's last draw.
    assert!(seq_last(tgt) >= burned_on_10, "target sequence not set");
    let app = Events::open(&stack).await;
    let on_17 = app.insert(20, "on 17").await;
    assert!(
        on_17.iter().all(|id| *id > burned_on_10),
        "ids on the 17 {on_17:?} not after the 10's {burned_on_10}"
    );
    events.extend(&on_17);
    // Load on the 17; its writes are recorded and applied back to the 10.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The health checks after the cutover ran, their probe of the 10 included.
    let s = stack.status().await.unwrap();
    let health = get(&s, "health");
    eprintln!(
        "[{:>5.1?}] health after the cutover: {health}",
        t0.elapsed()
    );
    assert!(
        !health.is_empty() && !health.contains("unreachable"),
        "{s:?}"
    );
    let burned_on_17 = burn(&app.c, 1000).await;

    let written = writer.stop().await;
    let tpcb = tokio::task::spawn_blocking(move || tpcb.stop())
        .await
        .unwrap();
    eprintln!(
        "[{:>5.1?}] load stopped: pgbench {tpcb:?}; writer {} acked, errors {:?}",
        t0.elapsed(),
        written.acked.len(),
        written.errors
    );
    assert!(tpcb.transactions > 100, "{tpcb:?}");
    assert_eq!((tpcb.failed, tpcb.errors.len()), (0, 0), "{tpcb:?}");
    assert!(written.errors.is_empty(), "writer: {:?}", written.errors);
    assert!(written.acked.len() > 200, "{} writes", written.acked.len());
    let lost = missing_ids(tgt, "app", "acked", &written.acked).unwrap();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes not on the 17",
        lost.len()
    );
    let caught_up = wait_equal(&stack, src, tgt, "after cutover").await;
    eprintln!(
        "[{:>5.1?}] the 10 equals the 17 ({caught_up:.1?} after the load stopped)",
        t0.elapsed()
    );
    let n_events: usize = src
        .psql("app", "SELECT count(*) FROM events")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(n_events, events.len());
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

    // The 17's rolled-back draws were applied back to the 10 too.
    assert!(seq_last(src) >= burned_on_17, "the 10 did not draw");
    // Rollback after cutover: back on the 10, nothing written on the 17 lost, and the 10's
    // sequence set from the 17.
    let r = stack.admin("ROLLBACK UPGRADE").await;
    assert!(
        r.is_ok(),
        "rollback: {r:?}\n{}",
        integration::tail_file(&stack.pgshift.log_path(), 100)
    );
    eprintln!("[{:>5.1?}] rollback: {:?}", t0.elapsed(), r.unwrap());
    let s = stack.status().await.unwrap();
    assert_eq!(get(&s, "source_weight"), "100", "{s:?}");
    assert_eq!(stack.app_server_major().await.unwrap(), 10);
    let lost = missing_ids(src, "app", "acked", &written.acked).unwrap();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes not on the 10 after rollback",
        lost.len()
    );
    assert!(seq_last(src) >= burned_on_17, "source sequence not set");
    let app = Events::open(&stack).await;
    let on_10 = app.insert(5, "back on 10").await;
    assert!(
        on_10.iter().all(|id| *id > burned_on_17),
        "ids on the 10 {on_10:?} not after the 17's {burned_on_17}"
    );
    let history = stack.history_lines().await.unwrap();
    for l in history.iter().filter(|l| l.contains("pause")) {
        eprintln!("  {l}");
    }
    assert!(
        history
            .iter()
            .any(|l| l.contains("capture of committed writes started")),
        "{}",
        history.join("\n")
    );
    eprintln!("done in {:.1?}", t0.elapsed());
}
