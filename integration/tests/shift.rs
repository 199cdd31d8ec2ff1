//! Weighted shift with one-way replication (issue 3, item 4): only transactions the
//! classifier proves read-only move to the target, in the configured share.

use integration::stack::db_error;
use integration::{Stack, StackOptions};
use std::process::Stdio;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transactions_follow_the_weight_and_writes_stay_on_the_source() {
    // The health checks guard manual shifts too; latency noise of a loaded test machine must
    // not take the weight away while the split is measured.
    let stack = Stack::start(StackOptions {
        pgbench_scale: 1,
        extra_config: "[upgrade]\napprove_cutover = true\n\n[health]\nmax_p99_ratio = 100.0\n"
            .into(),
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

/// The target dies (immediate shutdown) while it serves all the read-only transactions
/// (SHIFT TRAFFIC 100): the ones it was running when it went are run again on the source, the
/// next ones cannot connect to it and stay on the source, and the health check takes the
/// weight away. pgbench sees no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_dying_under_shifted_reads_costs_clients_no_error() {
    let mut stack = Stack::start(StackOptions {
        pgbench_scale: 1,
        extra_config:
            "[upgrade]\napprove_cutover = true\n\n[health]\ninterval_ms = 200\nwindow_ms = 2000\n"
                .into(),
        ..Default::default()
    })
    .expect("stack");
    stack
        .source
        .psql("app", "ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
        .unwrap();
    stack.admin("START UPGRADE").await.unwrap();
    stack
        .wait_phase("replicating", Duration::from_secs(120))
        .await
        .unwrap();
    stack.admin("SHIFT TRAFFIC 100").await.unwrap();
    let reads = stack.pgbench_loop(&[
        "-n", "-S", "-M", "prepared", "-c", "4", "-j", "1", "-T", "3",
    ]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack.target.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reads = tokio::task::spawn_blocking(move || reads.stop())
        .await
        .unwrap();
    let log = stack.pgshift.log();
    let replayed = log
        .matches("running the shifted read-only transaction again")
        .count();
    let fell_back = log
        .matches("cannot open a connection for a shifted read-only transaction")
        .count();
    eprintln!("{reads:?}; {replayed} ran again on the source, {fell_back} stayed there");
    assert_eq!(
        (reads.failed, reads.errors.len()),
        (0, 0),
        "clients saw the target die: {reads:?}"
    );
    assert!(reads.transactions > 1000, "{reads:?}");
    assert!(
        replayed + fell_back > 0,
        "no shifted transaction met the dead target?\n{}",
        integration::tail_file(&stack.pgshift.log_path(), 30)
    );
    let s = stack.status().await.unwrap();
    assert_eq!(
        s["target_weight"].as_deref(),
        Some("0"),
        "the health check took the weight away: {s:?}"
    );
    assert!(
        s["last_error"]
            .as_deref()
            .is_some_and(|e| e.contains("health check failed")),
        "{s:?}"
    );
}
