//! The preflight checks that find late failures early (issue 12, item 4), against a source
//! that trips each at once: an extension the target's major does not have (`adminpack`,
//! gone in PostgreSQL 17), a large object, an unlogged table, and a transaction open longer
//! than `[upgrade] long_transaction_ms`. START UPGRADE names every one with what to do,
//! and creates nothing; with each fixed, it starts.

use integration::stack::{connect, field, replication_objects};
use integration::{Stack, StackOptions};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_upgrade_names_every_late_failure_at_once() {
    let stack = Stack::start(StackOptions {
        pgbench_scale: 0,
        extra_config:
            "[upgrade]\napprove_cutover = true\nlong_transaction_ms = 200\npoll_interval_ms = 100\n"
                .into(),
        ..Default::default()
    })
    .expect("stack");
    // A transaction that holds an xid, open from the start.
    let open = connect(&stack.source.conninfo("app")).await.unwrap();
    open.batch_execute("BEGIN; SELECT txid_current()")
        .await
        .unwrap();
    stack
        .source
        .psql(
            "app",
            "CREATE EXTENSION adminpack; SELECT lo_create(0); \
             CREATE UNLOGGED TABLE cache (k int PRIMARY KEY, v text); \
             CREATE TABLE kept (k int PRIMARY KEY); \
             CREATE TABLE m (k int, at date, PRIMARY KEY (k, at)) PARTITION BY RANGE (at); \
             CREATE TABLE m_2026 PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
        )
        .unwrap();
    // Until the transaction is older than the limit (the set-up above usually took longer).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stack
        .source
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND xact_start < now() - interval '250 ms'",
        )
        .unwrap()
        != "1"
    {
        assert!(std::time::Instant::now() < deadline, "the open transaction is not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = stack
        .admin("START UPGRADE")
        .await
        .expect_err("preflight refuses");
    let msg = e.to_string();
    for want in [
        "extension adminpack (version 2.1 on the source) is not available on the target server",
        "1 large object(s)",
        "unlogged table(s) public.cache: logical replication does not carry unlogged tables",
        "transaction(s) open longer than [upgrade] long_transaction_ms (200 ms): pid",
        "let them finish, or end them",
    ] {
        assert!(msg.contains(want), "missing {want:?} in: {msg}");
    }
    assert_eq!(replication_objects(&stack.source), "", "nothing created");

    // Each fixed as the messages say: the upgrade starts and replicates.
    open.batch_execute("COMMIT").await.unwrap();
    stack
        .source
        .psql(
            "app",
            "DROP EXTENSION adminpack; SELECT lo_unlink(oid) FROM pg_largeobject_metadata; \
             ALTER TABLE cache SET LOGGED",
        )
        .unwrap();
    stack.admin("START UPGRADE").await.expect("starts");
    let st = stack
        .wait_state("waiting", Duration::from_secs(120))
        .await
        .expect("replicating");
    assert_eq!(field(&st, "phase"), "replicating", "{st:?}");
    let notes = stack.history_lines().await.unwrap().join("\n");
    assert!(
        notes.contains("1 partitioned table(s): replicated partition by partition"),
        "{notes}"
    );
}
