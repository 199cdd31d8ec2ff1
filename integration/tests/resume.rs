//! `kill -9` of pgshift while replication catches up, then restart: the upgrade resumes and
//! completes (issue 2, test e). A file of its own so it does not run beside the pgbench test.

use integration::stack::{db_error, rows};
use integration::{Stack, StackOptions};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_synchronising_then_restart_resumes_and_completes() {
    let mut stack = Stack::start(StackOptions {
        pgbench_scale: 20,
        ..Default::default()
    })
    .expect("stack");
    stack
        .source
        .psql("app", "ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
        .unwrap();
    stack.admin("START UPGRADE").await.expect("START UPGRADE");
    // Kill as soon as the initial copy is under way.
    let deadline = Instant::now() + Duration::from_secs(120);
    let phase = loop {
        let s = stack.status().await.unwrap();
        let p = s["phase"].clone().unwrap_or_default();
        if p == "synchronizing" || p == "replicating" {
            break p;
        }
        assert!(Instant::now() < deadline, "no synchronizing phase: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stack.pgshift.kill9();
    eprintln!("killed pgshift in phase {phase}");
    stack.pgshift.restart().expect("restart");
    stack
        .wait_phase("replicating", Duration::from_secs(180))
        .await
        .expect("resumed to synchronised");

    // No duplicate or leftover replication objects.
    assert_eq!(
        stack
            .source
            .psql("app", "SELECT count(*) FROM pg_publication")
            .unwrap(),
        "1"
    );
    // Slots are per instance: one for each carried database (app and postgres).
    assert_eq!(
        stack
            .source
            .psql(
                "app",
                "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots"
            )
            .unwrap(),
        "pgshift_fwd,pgshift_postgres_fwd"
    );
    assert_eq!(
        stack
            .target
            .psql(
                "app",
                "SELECT string_agg(subname, ',' ORDER BY subname) FROM pg_subscription"
            )
            .unwrap(),
        "pgshift_fwd,pgshift_postgres_fwd"
    );
    // The copy is complete and the cutover works.
    let c = stack.app_client().await.unwrap();
    c.execute(
        "UPDATE pgbench_branches SET bbalance = bbalance + 7 WHERE bid = 1",
        &[],
    )
    .await
    .unwrap();
    let cut = stack
        .admin_client()
        .await
        .unwrap()
        .simple_query("INITIATE CUTOVER")
        .await;
    assert!(
        cut.is_ok(),
        "cutover: {:?}",
        cut.err().map(|e| db_error(&e))
    );
    assert_eq!(
        stack
            .target
            .psql("app", "SELECT count(*) FROM pgbench_accounts")
            .unwrap(),
        stack
            .source
            .psql("app", "SELECT count(*) FROM pgbench_accounts")
            .unwrap()
    );
    let b: i32 = c
        .query_one("SELECT bbalance FROM pgbench_branches WHERE bid = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(b, 7, "the write made before cutover is on the target");
    let s = rows(
        stack
            .admin_client()
            .await
            .unwrap()
            .simple_query("SHOW UPGRADE STATUS")
            .await
            .unwrap(),
    );
    assert_eq!(s[0]["phase"].as_deref(), Some("cut_over"));
}
