//! Roles hold (issue 10 part 5): with the `mirror` replication driver and mirroring
//! validation at level `all`, an application user's transactions that try to leave its
//! role (`RESET ROLE`, `SET ROLE postgres`, `SET SESSION AUTHORIZATION postgres`) and then
//! act as a superuser (`COPY … TO PROGRAM`, `ALTER ROLE … SUPERUSER`) are refused on the
//! other server as they were on the one serving the client: before cutover (applied and
//! dry-run on the 17) and after it (applied back on the 13). The applier and the mirror
//! workers log in as the unit's own user, so nothing of superuser is there to take.

use integration::stack::field as get;
use integration::{PgServer, Stack, StackOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The attempts, each a transaction (or a statement) the source refuses. `{f}`: a file the
/// attempt asks the server to create; `{n}`: a number unique to the attempt.
const ATTEMPTS: &[&str] = &[
    "BEGIN; INSERT INTO esc VALUES ({n}); RESET ROLE; COPY (SELECT 1) TO PROGRAM 'touch {f}'; COMMIT",
    "BEGIN; INSERT INTO esc VALUES ({n}); SET ROLE postgres; COPY (SELECT 1) TO PROGRAM 'touch {f}'; COMMIT",
    "BEGIN; INSERT INTO esc VALUES ({n}); SET SESSION AUTHORIZATION postgres; ALTER ROLE app SUPERUSER; COMMIT",
    "BEGIN; INSERT INTO esc VALUES ({n}); RESET ROLE; ALTER ROLE app SUPERUSER; COMMIT",
    "COPY (SELECT {n}) TO PROGRAM 'touch {f}'",
    "ALTER ROLE app SUPERUSER",
];

/// Attempts that reach their `COPY … TO PROGRAM` on a server (the others fail before it):
/// each leaves one refusal in the log of every server that runs it.
const COPY_REACHED: usize = 2;

/// What the servers' logs hold of refused `COPY … TO PROGRAM` (PostgreSQL 13: "must be
/// superuser or a member of the pg_execute_server_program role to COPY to or from an
/// external program"; 17: "permission denied to COPY to or from an external program").
fn copy_refusals(s: &PgServer) -> usize {
    std::fs::read_to_string(s.log_path())
        .unwrap_or_default()
        .matches("COPY to or from an external program")
        .count()
}

/// Runs every attempt through pgshift as the application user (each must fail), then a
/// marker row that commits; returns the marker.
async fn attempt_escapes(stack: &Stack, dir: &Path, round: i32) -> i32 {
    let c = stack.app_client().await.unwrap();
    for (i, a) in ATTEMPTS.iter().enumerate() {
        let n = round * 100 + i as i32;
        let f = dir.join(format!("escape-{n}"));
        let sql = a
            .replace("{n}", &n.to_string())
            .replace("{f}", &f.display().to_string());
        let r = c.batch_execute(&sql).await;
        assert!(r.is_err(), "the serving server allowed: {sql}");
        // The session is usable again (an aborted block was ended by the error's COMMIT,
        // or is ended here).
        let _ = c.batch_execute("ROLLBACK").await;
    }
    let marker = round * 100 + 99;
    c.batch_execute(&format!("INSERT INTO esc VALUES ({marker})"))
        .await
        .unwrap();
    marker
}

/// Waits until `s` has the marker row (the applier is past every attempt).
async fn wait_applied(stack: &Stack, s: &PgServer, marker: i32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = s
            .psql(
                "app",
                &format!("SELECT count(*) FROM esc WHERE id = {marker}"),
            )
            .unwrap_or_default();
        if n == "1" {
            return;
        }
        let st = stack.status().await.unwrap();
        assert_ne!(
            get(&st, "state"),
            "error",
            "applying stopped: {st:?}\n{}",
            integration::tail_file(&stack.pgshift.log_path(), 60)
        );
        assert!(
            Instant::now() < deadline,
            "marker {marker} not applied: {st:?}\n{}",
            integration::tail_file(&stack.pgshift.log_path(), 60)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn no_escape(dir: &Path, src: &PgServer, tgt: &PgServer) {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        files.is_empty(),
        "a server ran COPY TO PROGRAM for the application user: {files:?}"
    );
    for s in [src, tgt] {
        assert_eq!(
            s.psql("app", "SELECT rolsuper FROM pg_roles WHERE rolname = 'app'")
                .unwrap(),
            "f",
            "the application role became a superuser on the {}",
            s.major
        );
        // Only the markers committed; every attempt's INSERT rolled back.
        assert_eq!(
            s.psql("app", "SELECT count(*) FROM esc WHERE id % 100 <> 99")
                .unwrap(),
            "0"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_units_role_escape_is_refused_on_the_other_server_in_both_directions() {
    let stack = Stack::start(StackOptions {
        pgbench_scale: 1,
        source_settings: vec![("wal_level".into(), "replica".into())],
        extra_config: "[replication]\ndriver = \"mirror\"\n\n\
                       [upgrade]\napprove_cutover = true\nshift = []\npoll_interval_ms = 200\n\
                       drain_timeout_ms = 5000\n\n\
                       [mirror]\nenabled = true\nlevel = \"all\"\nsample_rate = 1.0\n\n\
                       [validation]\nmin_duration_ms = 0\n"
            .into(),
        ..Default::default()
    })
    .expect("stack");
    let (src, tgt) = (&stack.source, &stack.target);
    stack.prepare_source().unwrap();
    src.psql(
        "app",
        "CREATE TABLE esc (id int PRIMARY KEY); ALTER TABLE esc OWNER TO app",
    )
    .unwrap();
    let dir = integration::new_run_dir("escape").unwrap();

    stack.admin("START UPGRADE").await.expect("START UPGRADE");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = stack.status().await.unwrap();
        assert!(
            !matches!(get(&s, "state").as_str(), "error" | "paused" | "alert"),
            "plan stopped: {s:?}\n{}",
            integration::tail_file(&stack.pgshift.log_path(), 100)
        );
        if get(&s, "state") == "waiting" {
            break;
        }
        assert!(Instant::now() < deadline, "not at the cutover: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Before cutover: the 13 serves and refuses; the applier (and the mirror's dry-runs)
    // run the same units on the 17 as `app`, which refuses them too.
    let before = copy_refusals(tgt);
    let marker = attempt_escapes(&stack, &dir, 1).await;
    wait_applied(&stack, tgt, marker).await;
    no_escape(&dir, src, tgt);
    let on_target = copy_refusals(tgt) - before;
    assert!(
        on_target >= COPY_REACHED,
        "the 17 refused {on_target} COPY TO PROGRAM (the applier runs {COPY_REACHED})"
    );

    // A session of the application role on the 17 itself may not move the applier's
    // position (that would skip or repeat other users' transactions), nor read it.
    let app = integration::stack::connect(&format!(
        "host={} port={} dbname=app user=app password=app-secret",
        tgt.host, tgt.port
    ))
    .await
    .unwrap();
    for sql in [
        "SELECT pgshift_mirror.mark(gen, 0, 1) FROM (SELECT 1::bigint AS gen) g",
        "SELECT * FROM pgshift_mirror.applied",
        "DELETE FROM pgshift_mirror.appliers",
    ] {
        let e = app.batch_execute(sql).await.expect_err(sql);
        assert_eq!(
            e.code().map(|c| c.code()),
            Some("42501"),
            "{sql}: {}",
            integration::stack::db_error(&e)
        );
    }
    let gen = tgt
        .psql("app", "SELECT max(gen) FROM pgshift_mirror.applied")
        .unwrap();
    let e = app
        .batch_execute(&format!("SELECT pgshift_mirror.mark({gen}, 0, 1)"))
        .await
        .expect_err("mark by the application role");
    assert!(
        integration::stack::db_error(&e).contains("not pgshift's applier"),
        "{}",
        integration::stack::db_error(&e)
    );

    let r = stack.admin("INITIATE CUTOVER").await;
    assert!(
        r.is_ok(),
        "cutover: {r:?}\n{}",
        integration::tail_file(&stack.pgshift.log_path(), 100)
    );
    // After cutover: the 17 serves and refuses; the applier runs the units on the 13.
    let before = copy_refusals(src);
    let marker = attempt_escapes(&stack, &dir, 2).await;
    wait_applied(&stack, src, marker).await;
    no_escape(&dir, src, tgt);
    let on_source = copy_refusals(src) - before;
    assert!(
        on_source >= COPY_REACHED,
        "the 13 refused {on_source} COPY TO PROGRAM (the applier runs {COPY_REACHED})"
    );
    let log = std::fs::read_to_string(stack.pgshift.log_path()).unwrap();
    assert!(
        log.contains("applier connected") && log.contains("user=\"app\""),
        "the applier did not log in as app:\n{}",
        integration::tail_file(&stack.pgshift.log_path(), 60)
    );
}
