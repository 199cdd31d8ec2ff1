//! `kill -9` of pgshift at the kill points of the unattended plan with the `bidirectional`
//! driver (issue 11, part 5), PostgreSQL 16 → 17: while WaitForSync sets up the reverse
//! direction, inside the cutover before the swap (`PGSHIFT_FAILPOINT=pause`) and after it
//! (`switch`). After a restart on the same journal the plan finishes (phase `done`, traffic
//! on the 17), no acknowledged write is lost, and no replication object is left over.

use integration::load::{missing_ids, Writer};
use integration::stack::{field as get, replication_objects};
use integration::{Stack, StackOptions};
use std::time::{Duration, Instant};

/// A 16 → 17 stack whose plan runs unattended to the end with the bidirectional driver; the
/// schema is made on both servers (the harness's pg_dump 15 cannot dump a 16).
async fn stack(failpoint: Option<&str>) -> (Stack, Writer) {
    let stack = Stack::start(StackOptions {
        source_major: 16,
        target_major: 17,
        pgbench_scale: 0,
        extra_config: "[replication]\ndriver = \"bidirectional\"\ncopy_schema = false\n\n\
             [upgrade]\nshift = [25, 25, 50]\nshift_hold_ms = 1000\npoll_interval_ms = 100\n\
             drain_timeout_ms = 5000\ncatchup_timeout_ms = 20000\nbackoff_initial_ms = 200\n\
             databases = [\"app\"]\n\n\
             [health]\ninterval_ms = 250\nmax_p99_ratio = 100.0\n"
            .into(),
        env: failpoint
            .map(|f| vec![("PGSHIFT_FAILPOINT".to_string(), f.to_string())])
            .unwrap_or_default(),
        ..Default::default()
    })
    .expect("stack");
    for s in [&stack.source, &stack.target] {
        s.psql(
            "app",
            &format!(
                "{}; CREATE TABLE items (id bigserial PRIMARY KEY, v text); ALTER TABLE items OWNER TO app",
                integration::stack::ACKED_TABLE_SQL
            ),
        )
        .unwrap();
    }
    stack
        .source
        .psql(
            "app",
            "INSERT INTO items (v) SELECT 'x' FROM generate_series(1, 200000)",
        )
        .unwrap();
    let writer = Writer::start(stack.app_conninfo(), "acked", Duration::from_millis(5));
    (stack, writer)
}

/// After the restart: the plan finishes, nothing lost or left over.
async fn finish(stack: &Stack, writer: Writer) {
    stack
        .wait_for("phase done", Duration::from_secs(180), |s| {
            get(s, "phase") == "done"
        })
        .await;
    let before = writer.acked_count();
    let deadline = Instant::now() + Duration::from_secs(20);
    while writer.acked_count() < before + 50 {
        assert!(Instant::now() < deadline, "no writes after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stack.app_server_major().await.unwrap(), 17);
    let written = writer.stop().await;
    let lost = missing_ids(&stack.target, "app", "acked", &written.acked).unwrap();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert_eq!(replication_objects(&stack.source), "", "left on the source");
    assert_eq!(replication_objects(&stack.target), "", "left on the target");
    let hist = stack.admin("SHOW UPGRADE HISTORY").await.unwrap();
    assert!(hist.iter().any(|r| get(r, "actor") == "resume"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidirectional_kill_9_during_wait_for_sync_then_inside_the_cutover() {
    let (mut stack, writer) = stack(Some("pause")).await;
    stack.admin("START UPGRADE").await.unwrap();
    stack
        .wait_for("wait_for_sync", Duration::from_secs(60), |s| {
            get(s, "step") == "wait_for_sync"
        })
        .await;
    stack.pgshift.kill9();
    // Restarted with the cutover failpoint still set: the plan resumes, sets the reverse
    // direction up once, shifts, and dies again when the cutover pauses traffic.
    stack.pgshift.restart().expect("restart");
    stack.crashed_at_failpoint("Pause").await;
    let subs = stack
        .source
        .psql("app", "SELECT count(*) FROM pg_subscription")
        .unwrap();
    assert_eq!(subs.trim(), "1", "one reverse subscription on the source");
    stack.pgshift.restart().expect("restart");
    finish(&stack, writer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidirectional_kill_9_inside_cutover_after_the_swap() {
    let (mut stack, writer) = stack(Some("switch")).await;
    stack.admin("START UPGRADE").await.unwrap();
    stack.crashed_at_failpoint("Switch").await;
    stack.pgshift.restart().expect("restart");
    let s = stack.status().await.unwrap();
    assert_eq!(get(&s, "epoch"), "2", "{s:?}");
    assert_eq!(stack.app_server_major().await.unwrap(), 17);
    finish(&stack, writer).await;
}
