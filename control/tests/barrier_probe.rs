//! Measures the cutover's catch-up barrier on real servers: how long after reading the
//! publisher's `pg_current_wal_lsn()` the subscriber is seen to have applied it
//! (`pg_stat_replication.replay_lsn` or the slot's `confirmed_flush_lsn`), for an idle
//! publisher and right after a write, in both directions (13 → 17 and 17 → 13).
//! Run: `cargo test -p control --test barrier_probe -- --ignored --nocapture`.

use integration::{PgServer, ServerOptions};
use std::time::{Duration, Instant};
use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;

async fn start(major: u32, durable: bool) -> PgServer {
    let mut o = ServerOptions::default();
    if durable {
        o = o.setting("fsync", "on").setting("synchronous_commit", "on");
    }
    tokio::task::spawn_blocking(move || PgServer::start_with(major, o))
        .await
        .expect("join")
        .expect("start")
}

const NUDGE: &str =
    "BEGIN; SET LOCAL synchronous_commit = on; SELECT pg_catalog.txid_current(); COMMIT;";

async fn wait_applied(publisher: &Client, app: &str, x: u64) -> (f64, &'static str) {
    wait_applied_n(publisher, None, app, x).await
}

async fn wait_applied_n(
    publisher: &Client,
    subscriber: Option<&Client>,
    app: &str,
    x: u64,
) -> (f64, &'static str) {
    let t0 = Instant::now();
    let mut nudged = false;
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
        let cf: Option<PgLsn> = r.get(0);
        let rp: Option<PgLsn> = r.get(1);
        let cf = cf.map(u64::from).unwrap_or(0);
        let rp = rp.map(u64::from).unwrap_or(0);
        if rp >= x || cf >= x {
            return (
                t0.elapsed().as_secs_f64() * 1000.0,
                if rp >= x { "replay" } else { "confirmed_flush" },
            );
        }
        if let (Some(sub), false) = (subscriber, nudged) {
            nudged = true;
            sub.batch_execute(NUDGE).await.expect("nudge subscriber");
            publisher
                .batch_execute(NUDGE)
                .await
                .expect("nudge publisher");
        }
        if t0.elapsed() > Duration::from_secs(40) {
            return (t0.elapsed().as_secs_f64() * 1000.0, "TIMEOUT");
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

async fn probe(label: &str, publisher: &Client, subscriber_dml: &Client, app: &str, table: &str) {
    let mut lines = vec![];
    for round in 0..6 {
        // idle
        tokio::time::sleep(Duration::from_millis(300)).await;
        let x = lsn(publisher).await;
        let (ms, how) = wait_applied(publisher, app, x).await;
        lines.push(format!("idle#{round}: {ms:.1} ms ({how})"));
        // after a write
        publisher
            .batch_execute(&format!("INSERT INTO {table} (v) VALUES ('x')"))
            .await
            .expect("insert");
        let x = lsn(publisher).await;
        let (ms, how) = wait_applied(publisher, app, x).await;
        lines.push(format!("write#{round}: {ms:.1} ms ({how})"));
        // after a catalog-only transaction (skipped as empty by pgoutput 15+)
        publisher
            .batch_execute(
                "CREATE TEMP TABLE IF NOT EXISTS tmp_probe (a int); DROP TABLE tmp_probe;",
            )
            .await
            .expect("ddl");
        let x = lsn(publisher).await;
        let (ms, how) = wait_applied(publisher, app, x).await;
        lines.push(format!("catalog#{round}: {ms:.1} ms ({how})"));
        publisher
            .batch_execute(&format!("INSERT INTO {table} (v) VALUES ('x')"))
            .await
            .expect("insert");
        publisher
            .batch_execute(
                "CREATE TEMP TABLE IF NOT EXISTS tmp_probe (a int); DROP TABLE tmp_probe;",
            )
            .await
            .expect("ddl");
        let x = lsn(publisher).await;
        let (ms, how) = wait_applied_n(publisher, Some(subscriber_dml), app, x).await;
        lines.push(format!("catalog+nudge#{round}: {ms:.1} ms ({how})"));
    }
    let _ = subscriber_dml;
    eprintln!("{label}: {}", lines.join(", "));
}

async fn run(durable: bool) {
    let (p13, p17) = tokio::join!(start(13, durable), start(17, durable));
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
    let d = if durable {
        "durable"
    } else {
        "harness default (fsync/synchronous_commit off)"
    };
    probe(&format!("13 -> 17, {d}"), &c13, &c17, "fwd", "a").await;
    probe(&format!("17 -> 13, {d}"), &c17, &c13, "rev", "b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn catchup_barrier_latency() {
    run(true).await;
    run(false).await;
}
