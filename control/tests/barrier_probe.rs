//! Measures the mechanics behind the cutover's catch-up barrier on real servers: how long after
//! reading the publisher's `pg_current_wal_lsn()` the subscriber is seen to have applied it
//! (`pg_stat_replication.replay_lsn` or the slot's `confirmed_flush_lsn`): for an idle
//! publisher, right after a replicated write, and after a write followed by a transaction that
//! is not replicated; in both directions (13 → 17 and 17 → 13); with the subscriptions'
//! default `synchronous_commit = off` and with `on`.
//! Run: `cargo test -p control --test barrier_probe -- --ignored --nocapture`.
//!
//! What it showed (2 cores, loopback): idle ~1 ms; after a replicated write ~1 ms; after a
//! non-replicated transaction ~200 ms with `synchronous_commit = off` (the apply worker reports
//! a position past its last applied transaction only once its own asynchronous commits are
//! flushed, at its next `wal_writer_delay` wake-up), a few ms with `on`. Hence the cutover sets
//! the running subscription to `synchronous_commit = on` just before its pause.

use integration::{PgServer, ServerOptions};
use std::time::{Duration, Instant};
use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;

async fn start(major: u32) -> PgServer {
    let o = ServerOptions::default()
        .setting("fsync", "on")
        .setting("synchronous_commit", "on");
    tokio::task::spawn_blocking(move || PgServer::start_with(major, o))
        .await
        .expect("join")
        .expect("start")
}

/// Milliseconds until the subscriber `app` is seen to have applied `x`, and by which column.
async fn wait_applied(publisher: &Client, app: &str, x: u64) -> (f64, &'static str) {
    let t0 = Instant::now();
    loop {
        let r = publisher
            .query_one(
                "SELECT s.confirmed_flush_lsn,
                        (SELECT max(r.replay_lsn) FROM pg_stat_replication r WHERE r.application_name = $1)
                   FROM pg_replication_slots s WHERE s.slot_name = $1",
                &[&app],
            )
            .await
            .expect("poll");
        let cf = r.get::<_, Option<PgLsn>>(0).map(u64::from).unwrap_or(0);
        let rp = r.get::<_, Option<PgLsn>>(1).map(u64::from).unwrap_or(0);
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        if rp >= x {
            return (ms, "replay");
        }
        if cf >= x {
            return (ms, "confirmed_flush");
        }
        if t0.elapsed() > Duration::from_secs(40) {
            return (ms, "TIMEOUT");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn lsn(c: &Client) -> u64 {
    let r = c
        .query_one("SELECT pg_current_wal_lsn()", &[])
        .await
        .expect("lsn");
    u64::from(r.get::<_, PgLsn>(0))
}

async fn probe(label: &str, publisher: &Client, app: &str, table: &str) {
    let mut lines = vec![];
    let insert = format!("INSERT INTO {table} (v) VALUES ('x')");
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let x = lsn(publisher).await;
        let (ms, how) = wait_applied(publisher, app, x).await;
        lines.push(format!("idle {ms:.1} ms ({how})"));
        publisher.batch_execute(&insert).await.expect("insert");
        let x = lsn(publisher).await;
        let (ms, how) = wait_applied(publisher, app, x).await;
        lines.push(format!("write {ms:.1} ms ({how})"));
        publisher.batch_execute(&insert).await.expect("insert");
        publisher
            .batch_execute(
                "CREATE TEMP TABLE IF NOT EXISTS tmp_probe (a int); DROP TABLE tmp_probe;",
            )
            .await
            .expect("ddl");
        let x = lsn(publisher).await;
        let (ms, how) = wait_applied(publisher, app, x).await;
        lines.push(format!("write+non-replicated {ms:.1} ms ({how})"));
        let _ = round;
    }
    eprintln!("{label}:\n  {}", lines.join("\n  "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn catchup_barrier_latency() {
    let (p13, p17) = tokio::join!(start(13), start(17));
    let c13 = p13.connect("postgres").await.expect("c13");
    let c17 = p17.connect("postgres").await.expect("c17");
    for c in [&c13, &c17] {
        c.batch_execute("CREATE TABLE a (id serial PRIMARY KEY, v text); CREATE TABLE b (id serial PRIMARY KEY, v text);")
            .await
            .expect("tables");
    }
    c13.batch_execute("CREATE PUBLICATION pa FOR TABLE a")
        .await
        .expect("pub");
    c17.batch_execute(&format!(
        "CREATE SUBSCRIPTION fwd CONNECTION '{}' PUBLICATION pa",
        p13.conninfo("postgres")
    ))
    .await
    .expect("sub");
    c17.batch_execute("CREATE PUBLICATION pb FOR TABLE b")
        .await
        .expect("pub");
    c13.batch_execute(&format!(
        "CREATE SUBSCRIPTION rev CONNECTION '{}' PUBLICATION pb",
        p17.conninfo("postgres")
    ))
    .await
    .expect("sub");
    tokio::time::sleep(Duration::from_secs(2)).await;
    probe(
        "13 -> 17, subscription synchronous_commit = off",
        &c13,
        "fwd",
        "a",
    )
    .await;
    probe(
        "17 -> 13, subscription synchronous_commit = off",
        &c17,
        "rev",
        "b",
    )
    .await;
    c17.batch_execute("ALTER SUBSCRIPTION fwd SET (synchronous_commit = on)")
        .await
        .expect("alter");
    c13.batch_execute("ALTER SUBSCRIPTION rev SET (synchronous_commit = on)")
        .await
        .expect("alter");
    probe(
        "13 -> 17, subscription synchronous_commit = on",
        &c13,
        "fwd",
        "a",
    )
    .await;
    probe(
        "17 -> 13, subscription synchronous_commit = on",
        &c17,
        "rev",
        "b",
    )
    .await;
}
