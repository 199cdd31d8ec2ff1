//! The main job end to end on real servers: PostgreSQL 13 → 17 through pgshift under load
//! (issue 2, tests a, b, c and e).

use integration::stack::db_error;
use integration::{Stack, StackOptions};
use std::collections::HashSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SETUP_SQL: &str = "
    CREATE TABLE acked (id bigint PRIMARY KEY, at timestamptz DEFAULT now());
    CREATE TABLE seq_items (id bigserial PRIMARY KEY, v text);
    CREATE TABLE ident_items (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
    CREATE SEQUENCE standalone_seq;
";

/// `count|md5 of the ordered ids` of `table` on a server.
fn fingerprint(s: &integration::PgServer, table: &str) -> String {
    s.psql("app", &format!("SELECT count(*) || '|' || coalesce(md5(string_agg(id::text, ',' ORDER BY id)), '') FROM {table}")).unwrap()
}

async fn wait_equal(
    stack: &Stack,
    what: &str,
    f: impl Fn(&integration::PgServer) -> String,
    timeout: Duration,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (a, b) = (f(&stack.source), f(&stack.target));
        if a == b {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: source {a} and target {b} did not converge within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_upgrade_13_to_17_under_pgbench_with_cutover_and_rollback() {
    let stack = Stack::start(StackOptions {
        pgbench_scale: 10,
        ..Default::default()
    })
    .expect("stack");
    stack.source.psql("app", SETUP_SQL).unwrap();
    stack.source.psql("app", "ALTER TABLE acked OWNER TO app; ALTER TABLE seq_items OWNER TO app; ALTER TABLE ident_items OWNER TO app; ALTER SEQUENCE standalone_seq OWNER TO app").unwrap();

    // Preflight names the offender: pgbench_history has no primary key.
    let e = stack
        .admin("START UPGRADE")
        .await
        .expect_err("preflight must refuse pgbench_history");
    assert!(e.to_string().contains("pgbench_history"), "{e}");
    stack
        .source
        .psql("app", "ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
        .unwrap();

    // pgbench through pgshift for the whole upgrade.
    let mut pgbench = stack
        .pgbench(&["-n", "-c", "16", "-j", "2", "-T", "150", "-M", "prepared"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgbench");

    // A writer of unique ids: every id acknowledged must survive.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    let writer = {
        let (stop, acked) = (stop.clone(), acked.clone());
        let c = stack.app_client().await.expect("writer client");
        tokio::spawn(async move {
            let stmt = c
                .prepare("INSERT INTO acked (id) VALUES ($1)")
                .await
                .expect("prepare");
            let mut errors = Vec::new();
            let mut id = 0i64;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                match c.execute(&stmt, &[&id]).await {
                    Ok(1) => acked.lock().unwrap().push(id),
                    Ok(n) => errors.push(format!("id {id}: {n} rows")),
                    Err(e) => errors.push(format!("id {id}: {}", db_error(&e))),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            errors
        })
    };

    // Sequence users before the upgrade; this session also carries SETs that must follow it.
    let app = stack.app_client().await.unwrap();
    app.batch_execute("SET work_mem = '7MB'; SET application_name = 'upgrade-test'")
        .await
        .unwrap();
    app.batch_execute("SET statement_timeout = '55s'")
        .await
        .unwrap();
    let mut before = HashSet::new();
    for i in 0..50 {
        let r = app
            .query_one(
                "INSERT INTO seq_items (v) VALUES ($1) RETURNING id",
                &[&format!("b{i}")],
            )
            .await
            .unwrap();
        before.insert(r.get::<_, i64>(0));
        app.execute(
            "INSERT INTO ident_items (v) VALUES ($1)",
            &[&format!("b{i}")],
        )
        .await
        .unwrap();
    }
    let sa: i64 = app
        .query_one("SELECT nextval('standalone_seq')", &[])
        .await
        .unwrap()
        .get(0);
    let max_ident: i32 = app
        .query_one("SELECT max(id) FROM ident_items", &[])
        .await
        .unwrap()
        .get(0);

    let t0 = Instant::now();
    let r = stack.admin("START UPGRADE").await.expect("START UPGRADE");
    assert!(r.is_empty());
    let s = stack
        .wait_phase("replicating", Duration::from_secs(180))
        .await
        .expect("synchronised");
    eprintln!("synchronised after {:?}: {s:?}", t0.elapsed());
    assert!(
        s["replication_lag_bytes"].is_some(),
        "lag is reported: {s:?}"
    );

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
    let s = stack.status().await.unwrap();
    assert_eq!(s["phase"].as_deref(), Some("cut_over"), "{s:?}");
    let servers = stack.admin("SHOW SERVERS").await.unwrap();
    let serving: Vec<_> = servers
        .iter()
        .filter(|r| r["role"].as_deref() == Some("serving"))
        .collect();
    assert_eq!(serving[0]["side"].as_deref(), Some("target"));

    // Sequences: inserts on the target never collide with ids handed out before.
    for i in 0..50 {
        let r = app
            .query_one(
                "INSERT INTO seq_items (v) VALUES ($1) RETURNING id",
                &[&format!("a{i}")],
            )
            .await
            .expect("seq insert after cutover");
        let id: i64 = r.get(0);
        assert!(
            !before.contains(&id) && id > *before.iter().max().unwrap(),
            "sequence id {id} reused"
        );
        let r = app
            .query_one(
                "INSERT INTO ident_items (v) VALUES ($1) RETURNING id",
                &[&format!("a{i}")],
            )
            .await
            .expect("identity insert after cutover");
        assert!(r.get::<_, i32>(0) > max_ident);
    }
    let sa2: i64 = app
        .query_one("SELECT nextval('standalone_seq')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(sa2 > sa, "standalone sequence went back: {sa2} <= {sa}");
    let on_target = stack
        .target
        .psql("app", "SELECT count(*) FROM seq_items WHERE v LIKE 'a%'")
        .unwrap();
    assert_eq!(
        on_target, "50",
        "post-cutover rows are written on the target"
    );
    let v: String = app
        .query_one("SHOW server_version_num", &[])
        .await
        .unwrap()
        .get(0);
    assert!(v.starts_with("17"), "the application now talks to 17: {v}");

    // Every client moved (16 pgbench clients, the writer, this client).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let clients = stack.admin("SHOW CLIENTS").await.unwrap();
    let app_clients: Vec<_> = clients
        .iter()
        .filter(|r| r["user"].as_deref() == Some("app"))
        .collect();
    let s = stack.status().await.unwrap();
    assert_eq!(
        s["phase"].as_deref(),
        Some("cut_over"),
        "still cut over 3 s later: {s:?}"
    );
    assert!(app_clients.len() >= 18, "{clients:?}");
    assert!(
        app_clients
            .iter()
            .all(|r| r["side"].as_deref() == Some("target")),
        "{clients:?}\n{s:?}"
    );

    tokio::time::sleep(Duration::from_secs(20)).await;
    let rb = stack
        .admin_client()
        .await
        .unwrap()
        .simple_query("ROLLBACK UPGRADE")
        .await;
    assert!(rb.is_ok(), "rollback: {:?}", rb.err().map(|e| db_error(&e)));
    let s = stack.status().await.unwrap();
    assert_eq!(s["phase"].as_deref(), Some("rolled_back"), "{s:?}");
    let v: String = app
        .query_one("SHOW server_version_num", &[])
        .await
        .unwrap()
        .get(0);
    assert!(v.starts_with("13"), "the application is back on 13: {v}");
    tokio::time::sleep(Duration::from_secs(20)).await;

    assert!(
        pgbench.try_wait().unwrap().is_none(),
        "pgbench ended before the scenario did; make -T longer"
    );
    stop.store(true, Ordering::Relaxed);
    let errors = writer.await.unwrap();
    assert!(errors.is_empty(), "the writer saw errors: {errors:?}");

    let out = tokio::task::spawn_blocking(move || pgbench.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("pgbench:\n{stdout}\n{stderr}");
    assert!(out.status.success(), "pgbench failed: {stderr}");
    assert!(
        stdout.contains("number of failed transactions: 0 (0.000%)"),
        "{stdout}"
    );
    assert!(
        !stderr.contains("aborted") && !stderr.contains("error"),
        "a pgbench client failed: {stderr}"
    );

    // Acknowledged writes are all on the serving side (the source after rollback)…
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 1000, "writer made progress: {}", acked.len());
    let on_source: HashSet<i64> = stack
        .source
        .psql("app", "SELECT id FROM acked")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let missing: Vec<_> = acked.iter().filter(|id| !on_source.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    // …and once replication converges both sides hold the same rows.
    let fp = wait_equal(
        &stack,
        "acked",
        |s| fingerprint(s, "acked"),
        Duration::from_secs(60),
    )
    .await;
    eprintln!("acked converged: {fp}");
    wait_equal(
        &stack,
        "seq_items",
        |s| fingerprint(s, "seq_items"),
        Duration::from_secs(30),
    )
    .await;
    wait_equal(
        &stack,
        "pgbench_accounts",
        |s| {
            s.psql(
                "app",
                "SELECT count(*), sum(abalance) FROM pgbench_accounts",
            )
            .unwrap()
        },
        Duration::from_secs(30),
    )
    .await;
    wait_equal(
        &stack,
        "pgbench_history",
        |s| {
            s.psql("app", "SELECT count(*), sum(delta) FROM pgbench_history")
                .unwrap()
        },
        Duration::from_secs(30),
    )
    .await;
    assert!(
        !stack.pgshift.log().contains("panicked"),
        "{}",
        stack.pgshift.log()
    );
}
