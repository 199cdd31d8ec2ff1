//! Prepared transactions (`PREPARE TRANSACTION`) at a cutover, PostgreSQL 13 → 17 from the
//! `integration` harness (the proxy is the test double of `common`). Logical replication sends
//! a prepared transaction only at its COMMIT PREPARED, so a switch with one open would leave
//! its changes behind and send its COMMIT PREPARED to a server that never saw it. The cutover
//! waits for it (up to `drain_timeout_ms`), and refuses, naming it, when it stays open.

mod common;

use common::*;
use control::{Controller, Side, TrafficControl};
use integration::ServerOptions;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn with_2pc() -> ServerOptions {
    ServerOptions {
        settings: vec![("max_prepared_transactions".into(), "10".into())],
        ..ServerOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_waits_for_prepared_transactions_and_refuses_one_left_open() {
    init_tracing();
    let (src, tgt) = pair(with_2pc(), with_2pc()).await;
    let s = connect(&src).await;
    s.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'before')",
    )
    .await
    .expect("source schema");
    let journal = journal_path("prepared");
    let ctl = Controller::open(Arc::new(make_config(&src, &tgt, &journal))).expect("open");
    let traffic = FakeTraffic::from(&ctl);
    ctl.attach(traffic.clone());
    ctl.start_upgrade().await.expect("start");
    wait_phase(&ctl, "replicating", 120).await;

    // Left open: the cutover refuses after drain_timeout_ms (2 s), naming it; nothing moved.
    let a = connect(&src).await;
    a.batch_execute(
        "BEGIN; INSERT INTO t VALUES (2, 'left open'); PREPARE TRANSACTION 'pgshift-test-open'",
    )
    .await
    .expect("prepare");
    let t0 = Instant::now();
    let e = ctl
        .initiate_cutover()
        .await
        .expect_err("a cutover with a prepared transaction open");
    assert!(
        e.message.contains("'pgshift-test-open'") && e.message.contains("prepared transaction"),
        "{e}"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(traffic.route().side, Side::Source);
    eprintln!("PREPARED: refused after {:?}: {e}", t0.elapsed());

    // Committed while the cutover waits: the cutover goes through, and the transaction's
    // row is on the target.
    let ctl2 = ctl.clone();
    let cut = tokio::spawn(async move { ctl2.initiate_cutover().await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        traffic.route().side,
        Side::Source,
        "cut over past an open prepared transaction"
    );
    a.batch_execute("COMMIT PREPARED 'pgshift-test-open'")
        .await
        .expect("commit prepared");
    let r = cut.await.expect("join").expect("cutover once committed");
    eprintln!("PREPARED: {r}");
    assert_eq!(traffic.route().side, Side::Target);
    let t = connect(&tgt).await;
    assert_eq!(count(&t, "SELECT count(*) FROM t WHERE id = 2").await, 1);

    // The same on the way back: a prepared transaction on the target holds the rollback.
    t.batch_execute(
        "BEGIN; INSERT INTO t VALUES (3, 'on the target'); PREPARE TRANSACTION 'pgshift-test-back'",
    )
    .await
    .expect("prepare on the target");
    let ctl3 = ctl.clone();
    let back = tokio::spawn(async move { ctl3.rollback().await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(traffic.route().side, Side::Target);
    t.batch_execute("COMMIT PREPARED 'pgshift-test-back'")
        .await
        .expect("commit prepared on the target");
    back.await.expect("join").expect("rollback once committed");
    assert_eq!(traffic.route().side, Side::Source);
    wait_count(
        &s,
        "SELECT count(*) FROM t WHERE id = 3",
        1,
        "the target's prepared row on the source",
    )
    .await;
    ctl.shutdown();
}
