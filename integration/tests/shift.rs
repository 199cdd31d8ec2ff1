//! Weighted shift with one-way replication (issue 3, item 4): only transactions the
//! classifier proves read-only move to the target, in the configured share.

use integration::stack::db_error;
use integration::{Stack, StackOptions};
use std::process::Stdio;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transactions_follow_the_weight_and_writes_stay_on_the_source() {
    let stack = Stack::start(StackOptions {
        pgbench_scale: 1,
        ..Default::default()
    })
    .expect("stack");
    stack.source.psql("app", "ALTER TABLE pgbench_history REPLICA IDENTITY FULL; CREATE TABLE w (id serial PRIMARY KEY, port int); ALTER TABLE w OWNER TO app").unwrap();

    // Refused before replication keeps the target current.
    let e = stack
        .admin("SHIFT TRAFFIC 30")
        .await
        .expect_err("no shift before replicating");
    assert!(e.to_string().contains("cannot shift traffic"), "{e}");
    stack.admin("START UPGRADE").await.unwrap();
    stack
        .wait_phase("replicating", Duration::from_secs(120))
        .await
        .unwrap();
    let e = stack
        .admin("SHIFT TRAFFIC 130")
        .await
        .expect_err("percent over 100");
    assert!(e.to_string().contains("0 to 100"), "{e}");
    stack.admin("SHIFT TRAFFIC 30").await.unwrap();

    let (src_port, tgt_port) = (stack.source.port.to_string(), stack.target.port.to_string());
    let c = stack.app_client().await.unwrap();
    // 1,000 read-only transactions (simple protocol): the share on the target is 30 % ± 5.
    let mut on_target = 0;
    for _ in 0..1000 {
        let rows = c.simple_query("SHOW port").await.unwrap();
        let port = integration::stack::rows(rows)
            .remove(0)
            .remove("port")
            .flatten()
            .unwrap();
        assert!(port == src_port || port == tgt_port, "{port}");
        if port == tgt_port {
            on_target += 1;
        }
    }
    let share = on_target as f64 / 10.0;
    eprintln!("observed share on the target: {share}% (weight 30%)");
    assert!(
        (25.0..=35.0).contains(&share),
        "observed {share}% for a weight of 30%"
    );

    // Writes (and reads inside a read-write transaction) never go to the target.
    for _ in 0..200 {
        let r = c
            .query_one(
                "INSERT INTO w (port) VALUES (inet_server_port()) RETURNING port",
                &[],
            )
            .await
            .map_err(|e| db_error(&e))
            .unwrap();
        assert_eq!(
            r.get::<_, Option<i32>>(0).map(|p| p.to_string()),
            Some(src_port.clone()),
            "a write ran on the target"
        );
    }
    c.batch_execute("BEGIN").await.unwrap();
    for _ in 0..50 {
        let rows = integration::stack::rows(c.simple_query("SHOW port").await.unwrap());
        assert_eq!(
            rows[0]["port"].as_deref(),
            Some(src_port.as_str()),
            "a read inside BEGIN left the transaction's side"
        );
    }
    c.batch_execute("COMMIT").await.unwrap();

    // Extended protocol with named prepared statements (pgbench -S -M prepared): no errors,
    // and the target serves a share of it.
    stack.admin("SHIFT TRAFFIC 50").await.unwrap();
    let commits = |s: &integration::PgServer| -> i64 {
        s.psql(
            "app",
            "SELECT xact_commit FROM pg_stat_database WHERE datname = 'app'",
        )
        .unwrap()
        .parse()
        .unwrap()
    };
    let before = commits(&stack.target);
    let out = stack
        .pgbench(&[
            "-n", "-S", "-M", "prepared", "-c", "4", "-j", "2", "-t", "500",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("number of failed transactions: 0 (0.000%)"),
        "{stdout}"
    );
    tokio::time::sleep(Duration::from_millis(800)).await; // statistics are flushed at most once a second
    let served = commits(&stack.target) - before;
    eprintln!("target committed {served} transactions of 2000 at weight 50%");
    assert!(
        served > 600,
        "the target served only {served} of 2000 read-only transactions at weight 50%"
    );

    // Back to 0: everything on the source again.
    stack.admin("SHIFT TRAFFIC 0").await.unwrap();
    for _ in 0..100 {
        let rows = integration::stack::rows(c.simple_query("SHOW port").await.unwrap());
        assert_eq!(rows[0]["port"].as_deref(), Some(src_port.as_str()));
    }
}
