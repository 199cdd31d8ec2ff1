//! Mirroring with result validation, PostgreSQL 13 → 17 (issue 4): statements that behave
//! differently on 17 are reported with their fingerprint; differences caused only by
//! replication lag are not; a table changed behind pgshift's back on the target is reported
//! until FORCE RESYNC TABLE copies it again; the cutover is refused while the validation error
//! rate is above its threshold; pgbench's statements all match.

use integration::stack::{db_error, field};
use integration::{Stack, StackOptions};
use std::collections::HashMap;
use std::time::{Duration, Instant};

type Row = HashMap<String, Option<String>>;

async fn errors(stack: &Stack) -> Vec<Row> {
    stack.admin("SHOW UPGRADE ERRORS").await.unwrap()
}

/// Waits until `SHOW UPGRADE ERRORS` has a row whose statement contains `needle`.
async fn wait_error(stack: &Stack, needle: &str, timeout: Duration) -> Row {
    let deadline = Instant::now() + timeout;
    loop {
        let e = errors(stack).await;
        if let Some(r) = e.iter().find(|r| field(r, "statement").contains(needle)) {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no validation error for {needle:?} within {timeout:?}: {e:#?}\n{}",
            integration::tail_file(&stack.pgshift.log_path(), 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The validation row of `table` (or `*` for the totals).
async fn validation(stack: &Stack, table: &str) -> Option<Row> {
    stack
        .admin("SHOW UPGRADE VALIDATION")
        .await
        .unwrap()
        .into_iter()
        .find(|r| field(r, "table") == table)
}

/// Waits until the validation row of `table` satisfies `pred` (the mirror works off the
/// clients' path: its results come a little later).
async fn wait_validation(
    stack: &Stack,
    table: &str,
    what: &str,
    pred: impl Fn(&Row) -> bool,
) -> Row {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = validation(stack, table).await;
        if let Some(v) = v.as_ref().filter(|v| pred(v)) {
            return v.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{table}: {what} not reached: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn num(r: &Row, k: &str) -> u64 {
    field(r, k).parse().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_reports_what_behaves_differently_on_17() {
    let stack = Stack::start(StackOptions {
        pgbench_scale: 1,
        extra_config: "[upgrade]\napprove_cutover = true\n\n\
                       [mirror]\nenabled = true\nlevel = \"all\"\nsample_rate = 1.0\nrecheck_timeout_ms = 8000\n\n\
                       [validation]\nerror_threshold = 0.001\nmin_duration_ms = 0\n"
            .into(),
        ..Default::default()
    })
    .expect("stack");
    stack.prepare_source().unwrap();
    stack
        .source
        .psql(
            "app",
            "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric);
             INSERT INTO items SELECT g, 'item ' || g, g * 1.5 FROM generate_series(1, 100) g;
             CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL);
             INSERT INTO counter VALUES (1, 0);
             ALTER TABLE items OWNER TO app; ALTER TABLE counter OWNER TO app;",
        )
        .unwrap();
    stack.admin("START UPGRADE").await.unwrap();
    stack
        .wait_phase("replicating", Duration::from_secs(120))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // the mirror sees the phase

    let c = stack.app_client().await.unwrap();
    // Statements that behave differently on 17 (release notes of 14 and 17):
    // - the postfix factorial operator `!` was removed in 14 (syntax error on 17);
    // - factorial() of a negative number is an error since 14 (13 returns 1);
    // - EXTRACT returns numeric since 14 (13: double precision);
    // - pg_stat_bgwriter's checkpoint columns moved to pg_stat_checkpointer in 17.
    let r = c.simple_query("SELECT 5 !").await;
    assert!(
        r.is_ok(),
        "13 answers SELECT 5 !: {:?}",
        r.err().map(|e| db_error(&e))
    );
    c.simple_query("SELECT factorial(-1)").await.unwrap();
    c.query(
        "SELECT extract(epoch FROM timestamp '2020-01-02 03:04:05')",
        &[],
    )
    .await
    .unwrap();
    c.simple_query("SELECT checkpoints_timed FROM pg_stat_bgwriter")
        .await
        .unwrap();
    // Statements that behave the same.
    for i in 1..=20 {
        c.query("SELECT name, price FROM items WHERE id = $1", &[&i])
            .await
            .unwrap();
    }
    c.simple_query("SELECT count(*), sum(price) FROM items")
        .await
        .unwrap();

    let f = wait_error(&stack, "5 !", Duration::from_secs(20)).await;
    eprintln!("SELECT 5 !: {f:?}");
    assert_eq!(field(&f, "kind"), "target_error");
    assert!(field(&f, "target").contains("42601"), "{f:?}");
    assert!(!field(&f, "fingerprint").is_empty());
    let f = wait_error(&stack, "factorial", Duration::from_secs(20)).await;
    assert_eq!(field(&f, "kind"), "target_error", "{f:?}");
    let f = wait_error(&stack, "extract", Duration::from_secs(20)).await;
    assert_eq!(field(&f, "kind"), "mismatch", "{f:?}");
    let f = wait_error(&stack, "checkpoints_timed", Duration::from_secs(20)).await;
    assert_eq!(field(&f, "kind"), "target_error", "{f:?}");
    assert!(field(&f, "target").contains("42703"), "{f:?}");
    let items = wait_validation(&stack, "items", "21 compared", |v| num(v, "compared") >= 21).await;
    assert_eq!(
        num(&items, "mismatched") + num(&items, "target_errors"),
        0,
        "{items:?}"
    );

    // The cutover is refused while the error rate is above the threshold.
    let e = stack
        .admin("INITIATE CUTOVER")
        .await
        .expect_err("cutover must be refused");
    assert!(e.to_string().contains("validation error rate"), "{e}");

    // Replication lag only: the target's apply of `counter` is held up by a row lock taken
    // behind pgshift's back; reads of the row differ until it is released.
    let tgt = stack.target.connect("app").await.unwrap();
    tgt.batch_execute("BEGIN; SELECT * FROM counter WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    for _ in 0..5 {
        c.execute("UPDATE counter SET n = n + 1 WHERE id = 1", &[])
            .await
            .unwrap();
        c.query("SELECT n FROM counter WHERE id = 1", &[])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    tgt.batch_execute("COMMIT").await.unwrap();
    let counter = wait_validation(&stack, "counter", "5 reads compared", |v| {
        num(v, "compared") + num(v, "inconclusive") >= 5
    })
    .await;
    eprintln!("counter under lag: {counter:?}");
    let totals = validation(&stack, "*").await.unwrap();
    assert!(
        num(&totals, "lag_rechecked") > 0,
        "no difference was re-checked, so the lag case was not exercised: {totals:?}"
    );
    assert_eq!(
        num(&counter, "mismatched"),
        0,
        "lag reported as a mismatch: {counter:?}\n{:#?}",
        errors(&stack).await
    );

    // A table changed behind pgshift's back on the target: reported until FORCE RESYNC.
    stack
        .target
        .psql("app", "UPDATE items SET price = 0 WHERE id = 7")
        .unwrap();
    for _ in 0..3 {
        c.query("SELECT name, price FROM items WHERE id = $1", &[&7i32])
            .await
            .unwrap();
    }
    wait_validation(&stack, "items", "the changed row reported", |v| {
        num(v, "mismatched") > 0
    })
    .await;
    let r = stack.admin("FORCE RESYNC TABLE 'items'").await;
    assert!(r.is_ok(), "FORCE RESYNC: {:?}", r.err());
    assert_eq!(
        stack
            .target
            .psql("app", "SELECT price FROM items WHERE id = 7")
            .unwrap(),
        "10.5"
    );
    let v = validation(&stack, "items").await;
    assert!(
        v.as_ref().is_none_or(|v| num(v, "compared") == 0),
        "items' counters restart: {v:?}"
    );
    for _ in 0..3 {
        c.query("SELECT name, price FROM items WHERE id = $1", &[&7i32])
            .await
            .unwrap();
    }
    let v = wait_validation(&stack, "items", "3 compared", |v| num(v, "compared") >= 3).await;
    assert_eq!(num(&v, "mismatched"), 0, "after FORCE RESYNC: {v:?}");

    // One Query text holding BEGIN … COMMIT is not replayed (its COMMIT would commit the
    // dry-run on the target): the target gets the change once, through replication.
    c.batch_execute("BEGIN; UPDATE items SET price = price + 1 WHERE id = 1; COMMIT")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stack
            .source
            .psql("app", "SELECT price FROM items WHERE id = 1")
            .unwrap(),
        "2.5"
    );
    assert_eq!(
        stack
            .target
            .psql("app", "SELECT price FROM items WHERE id = 1")
            .unwrap(),
        "2.5",
        "the target applied the change once"
    );
    let totals = wait_validation(&stack, "*", "the unit counted as skipped", |v| {
        field(v, "skipped_reasons").contains("transaction control inside a multi-statement request")
    })
    .await;
    eprintln!("skipped: {}", field(&totals, "skipped_reasons"));

    // pgbench (TPC-B, prepared): its statements all match (DML dry-run on the target).
    let before = validation(&stack, "*").await.unwrap();
    let p = stack.pgbench_loop(&["-n", "-c", "2", "-j", "1", "-T", "5", "-M", "prepared"]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let p = tokio::task::spawn_blocking(move || p.stop()).await.unwrap();
    assert_eq!((p.failed, p.errors.len()), (0, 0), "{p:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    for t in [
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_history",
    ] {
        let v = validation(&stack, t)
            .await
            .unwrap_or_else(|| panic!("{t} not compared"));
        eprintln!("{t}: {v:?}");
        assert!(num(&v, "compared") > 0, "{v:?}");
        assert_eq!(
            num(&v, "mismatched") + num(&v, "target_errors"),
            0,
            "{t}: {v:?}\n{:#?}",
            errors(&stack).await
        );
    }
    let after = validation(&stack, "*").await.unwrap();
    eprintln!("totals before pgbench {before:?}\nafter {after:?}");
}
