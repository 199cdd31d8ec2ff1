//! Sessions that hold what a backend switch cannot carry (issue 9, part 4): temporary tables,
//! session advisory locks, WITH HOLD cursors, through real pgshift on PostgreSQL 13 → 17.
//! pgshift asks the server what a session holds after a unit whose text hints at it, shows it
//! in SHOW CLIENTS, never shifts such a session's reads, and a cutover waits for them, then
//! refuses naming them (`[upgrade] pinned = "refuse"`) or lets them end with FATAL 57P01 when
//! they would move (`"terminate"`). A session is never moved silently without its state.

use integration::stack::db_error;
use integration::{Stack, StackOptions};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// `SHOW CLIENTS`' pinned column by pid.
async fn pinned(stack: &Stack) -> HashMap<String, String> {
    stack
        .admin("SHOW CLIENTS")
        .await
        .expect("SHOW CLIENTS")
        .into_iter()
        .map(|r| {
            (
                r["pid"].clone().unwrap_or_default(),
                r["pinned"].clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// pgshift's pid of a client (its BackendKeyData pid is what `pg_backend_pid()` does not
/// show through a proxy): the row whose backend_pid is the server's.
async fn pgshift_pid(stack: &Stack, c: &tokio_postgres::Client) -> String {
    let row = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("backend pid");
    let backend: i32 = row.get(0);
    stack
        .admin("SHOW CLIENTS")
        .await
        .expect("SHOW CLIENTS")
        .into_iter()
        .find(|r| r["backend_pid"].as_deref() == Some(&backend.to_string()))
        .and_then(|r| r["pid"].clone())
        .expect("the client in SHOW CLIENTS")
}

async fn wait_pinned(stack: &Stack, pid: &str, want: &str) {
    let t0 = Instant::now();
    loop {
        let p = pinned(stack).await;
        if p.get(pid).map(String::as_str) == Some(want) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "session {pid}: pinned {:?}, want {want:?}",
            p.get(pid)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_holding_what_cannot_move_hold_the_cutover_or_end_plainly() {
    let mut stack = Stack::start(StackOptions {
        pgbench_scale: 1,
        extra_config: "[upgrade]\napprove_cutover = true\ndrain_timeout_ms = 1500\npinned = \"refuse\"\n\n[health]\nmax_p99_ratio = 100.0\n".into(),
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

    let a = stack.app_client().await.unwrap();
    let b = stack.app_client().await.unwrap();
    let c = stack.app_client().await.unwrap();
    let d = stack.app_client().await.unwrap();
    let (pa, pb, pc, pd) = (
        pgshift_pid(&stack, &a).await,
        pgshift_pid(&stack, &b).await,
        pgshift_pid(&stack, &c).await,
        pgshift_pid(&stack, &d).await,
    );
    a.batch_execute("CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (1)")
        .await
        .unwrap();
    b.query_one("SELECT pg_advisory_lock(42)", &[])
        .await
        .unwrap();
    c.batch_execute("BEGIN; DECLARE cur CURSOR WITH HOLD FOR SELECT 1; COMMIT")
        .await
        .unwrap();
    // A false hint costs one check and pins nothing.
    d.query_one("SELECT 'temperature held'", &[]).await.unwrap();
    wait_pinned(&stack, &pa, "temporary tables").await;
    wait_pinned(&stack, &pb, "session advisory locks").await;
    wait_pinned(&stack, &pc, "WITH HOLD cursors").await;
    assert_eq!(pinned(&stack).await[&pd], "");

    // Reads of a pinned session are never shifted: its temporary table is only here.
    stack.admin("SHIFT TRAFFIC 100").await.unwrap();
    for _ in 0..30 {
        let r = a
            .query_one("SELECT x FROM scratch", &[])
            .await
            .map_err(|e| db_error(&e))
            .expect("a pinned session's read");
        assert_eq!(r.get::<_, i32>(0), 1);
    }
    stack.admin("SHIFT TRAFFIC 0").await.unwrap();

    // The cutover waits drain_timeout_ms, then refuses, naming them; traffic stays.
    let t0 = Instant::now();
    let e = stack
        .admin("INITIATE CUTOVER")
        .await
        .expect_err("a cutover with pinned sessions");
    let e = e.to_string();
    eprintln!("PINNED: refused after {:?}: {e}", t0.elapsed());
    for want in [
        format!("pid {pa}"),
        format!("pid {pb}"),
        format!("pid {pc}"),
        "temporary tables".to_string(),
        "pinned = \"terminate\"".to_string(),
    ] {
        assert!(e.contains(&want), "{want} not in {e}");
    }
    assert!(!e.contains(&format!("pid {pd}")), "{e}");
    let st = stack.status().await.unwrap();
    assert_eq!(st["phase"].as_deref(), Some("replicating"), "{st:?}");
    let r = a
        .query_one(
            "SELECT current_setting('server_version_num')::int / 10000",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i32>(0), 13, "traffic left the source");

    // They let go: the cutover goes through, every session carries on on the target.
    a.batch_execute("DROP TABLE scratch").await.unwrap();
    b.query_one("SELECT pg_advisory_unlock(42)", &[])
        .await
        .unwrap();
    c.batch_execute("CLOSE cur").await.unwrap();
    for p in [&pa, &pb, &pc] {
        wait_pinned(&stack, p, "").await;
    }
    stack.admin("INITIATE CUTOVER").await.expect("cutover");
    for (cl, name) in [(&a, "a"), (&b, "b"), (&c, "c"), (&d, "d")] {
        let r = cl
            .query_one(
                "SELECT current_setting('server_version_num')::int / 10000",
                &[],
            )
            .await
            .map_err(|e| db_error(&e))
            .unwrap_or_else(|e| panic!("session {name} after the cutover: {e}"));
        assert_eq!(r.get::<_, i32>(0), 17, "session {name}");
    }

    // pinned = "terminate": the rollback waits, then goes on; the pinned session ends with
    // FATAL 57P01 at its next query instead of running on the source without its table.
    let text = std::fs::read_to_string(&stack.pgshift.config_path).unwrap();
    std::fs::write(
        &stack.pgshift.config_path,
        text.replace("pinned = \"refuse\"", "pinned = \"terminate\""),
    )
    .unwrap();
    drop((a, b, c, d));
    stack.pgshift.restart().unwrap();
    stack
        .wait_phase("cut_over", Duration::from_secs(30))
        .await
        .unwrap();
    let a = stack.app_client().await.unwrap();
    let b = stack.app_client().await.unwrap();
    let pa = pgshift_pid(&stack, &a).await;
    a.batch_execute("CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
    wait_pinned(&stack, &pa, "temporary tables").await;
    stack
        .admin("ROLLBACK UPGRADE")
        .await
        .expect("rollback under pinned = terminate");
    let e = a
        .query_one("SELECT count(*) FROM scratch", &[])
        .await
        .expect_err("the pinned session ends at its move");
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "57P01", "{}", db_error(&e));
    assert!(
        db.message().contains("temporary tables"),
        "{}",
        db.message()
    );
    let r = b
        .query_one(
            "SELECT current_setting('server_version_num')::int / 10000",
            &[],
        )
        .await
        .map_err(|e| db_error(&e))
        .expect("an unpinned session after the rollback");
    assert_eq!(r.get::<_, i32>(0), 13);
    let log = stack.pgshift.log();
    assert!(
        log.contains("cannot move to another server"),
        "no log line for the ended session"
    );
}
