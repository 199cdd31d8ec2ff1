//! A whole-instance upgrade (issue 9, part 5): with no `[upgrade] databases`, every database
//! of the source is carried, each with its own schema copy, publication and subscription, and
//! all are switched under one pause. Three application databases under pgbench (and a writer
//! of acknowledged ids each) go through a cutover and a rollback with no failed transaction
//! and no lost write; one database exists on the target beforehand, one is created there by
//! pgshift.

use integration::load::{missing_ids, PgbenchLoop, Writer};
use integration::stack::{field, ACKED_TABLE_SQL, APP_PASSWORD, APP_USER, REPLICA_IDENTITY_SQL};
use integration::{PgServer, Stack, StackOptions};
use std::time::{Duration, Instant};

/// The application databases besides `app`: `shop` exists (empty) on the target, `crm` does
/// not.
const OTHERS: [&str; 2] = ["shop", "crm"];

/// pgbench tables owned by the application user, with a replica identity for pgbench_history,
/// and the writer's table.
fn app_tables_sql() -> String {
    format!(
        "ALTER TABLE pgbench_accounts OWNER TO app; ALTER TABLE pgbench_branches OWNER TO app;
         ALTER TABLE pgbench_tellers OWNER TO app; ALTER TABLE pgbench_history OWNER TO app;
         {REPLICA_IDENTITY_SQL}; {ACKED_TABLE_SQL}"
    )
}

/// Row count and md5 of pgbench's tables and `acked` in `db`: equal on two servers when
/// their data is.
fn digest(s: &PgServer, db: &str) -> String {
    let mut out = Vec::new();
    for (t, k) in [
        ("pgbench_accounts", "aid"),
        ("pgbench_branches", "bid"),
        ("pgbench_tellers", "tid"),
        ("pgbench_history", "tid, bid, aid, delta, mtime"),
        ("acked", "id"),
    ] {
        out.push(
            s.psql(
                db,
                &format!(
                    "SELECT count(*) || ' ' || md5(coalesce(string_agg(t::text, ',' ORDER BY {k}), '')) FROM {t} t"
                ),
            )
            .unwrap_or_else(|e| format!("{t}: {e:#}")),
        );
    }
    out.join("; ")
}

/// pgbench (TPC-B, prepared) through pgshift on database `db`, in back-to-back runs.
fn pgbench_on(stack: &Stack, db: &str) -> PgbenchLoop {
    let (host, port, db) = (
        stack.pgshift.host.clone(),
        stack.pgshift.port,
        db.to_string(),
    );
    PgbenchLoop::start(move || {
        let mut c =
            integration::pgbench(&["-n", "-c", "3", "-j", "1", "-T", "4", "-M", "prepared"]);
        c.args(["-h", &host, "-p", &port.to_string(), "-U", APP_USER, &db])
            .env("PGPASSWORD", APP_PASSWORD);
        c
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_instance_of_three_databases_through_cutover_and_rollback() {
    let stack = Stack::start(StackOptions::default()).expect("stack");
    stack.prepare_source().expect("prepare app");
    for db in OTHERS {
        stack
            .source
            .psql("postgres", &format!("CREATE DATABASE {db} OWNER app"))
            .expect("database");
        stack.source.pgbench_init(db, 1).expect("pgbench -i");
        stack.source.psql(db, &app_tables_sql()).expect("tables");
    }
    stack
        .target
        .psql("postgres", "CREATE DATABASE shop OWNER app")
        .expect("shop on the target");

    let dbs = ["app", OTHERS[0], OTHERS[1]];
    let loads: Vec<PgbenchLoop> = dbs.iter().map(|db| pgbench_on(&stack, db)).collect();
    let writers: Vec<Writer> = dbs
        .iter()
        .map(|db| {
            Writer::start(
                stack.pgshift.conninfo(APP_USER, APP_PASSWORD, db),
                "acked",
                Duration::from_millis(5),
            )
        })
        .collect();

    let t0 = Instant::now();
    stack.admin("START UPGRADE").await.expect("START UPGRADE");
    let s = stack
        .wait_phase("replicating", Duration::from_secs(180))
        .await
        .expect("every database synchronised");
    eprintln!("synchronised after {:?}: {s:?}", t0.elapsed());

    // Every database of the instance is carried, [source] dbname first.
    let rows = stack.admin("SHOW UPGRADE DATABASES").await.unwrap();
    let names: Vec<String> = rows.iter().map(|r| field(r, "database")).collect();
    assert_eq!(names.first().map(String::as_str), Some("app"), "{rows:?}");
    for db in ["crm", "postgres", "shop"] {
        assert!(names.iter().any(|n| n == db), "{db} carried: {rows:?}");
    }
    for r in &rows {
        assert_eq!(field(r, "tables_ready"), field(r, "tables_total"), "{r:?}");
        assert!(field(r, "subscription").ends_with("_fwd"), "{r:?}");
    }
    let crm = rows.iter().find(|r| field(r, "database") == "crm").unwrap();
    assert_eq!(field(crm, "subscription"), "pgshift_crm_fwd", "{crm:?}");
    assert_eq!(field(crm, "tables_total"), "5", "{crm:?}");
    // pgshift made crm on the target like the source's, owned by the same role.
    assert_eq!(
        stack
            .target
            .psql(
                "postgres",
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'crm'"
            )
            .unwrap(),
        "app"
    );

    // The load runs on every database for a while before the cutover.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cut = stack.admin("INITIATE CUTOVER").await;
    assert!(cut.is_ok(), "cutover: {cut:?}");
    let s = stack.status().await.unwrap();
    assert_eq!(s["phase"].as_deref(), Some("cut_over"), "{s:?}");
    let swap = stack
        .history_lines()
        .await
        .unwrap()
        .into_iter()
        .rfind(|l| l.starts_with("swap"))
        .unwrap_or_default();
    eprintln!("cutover: {swap}");
    assert!(swap.contains("4 databases"), "{swap}");

    // Writes of every database now land on the target.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for db in dbs {
        let c = integration::stack::connect(&stack.pgshift.conninfo(APP_USER, APP_PASSWORD, db))
            .await
            .unwrap();
        let v: String = c
            .query_one("SHOW server_version_num", &[])
            .await
            .unwrap()
            .get(0);
        assert!(v.starts_with("17"), "{db} is on the target: {v}");
    }

    let rb = stack.admin("ROLLBACK UPGRADE").await;
    assert!(rb.is_ok(), "rollback: {rb:?}");
    let s = stack.status().await.unwrap();
    assert_eq!(s["phase"].as_deref(), Some("rolled_back"), "{s:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut written = Vec::new();
    for w in writers {
        written.push(w.stop().await);
    }
    let totals: Vec<_> = loads.into_iter().map(|l| l.stop()).collect();
    for (db, (t, w)) in dbs.iter().zip(totals.iter().zip(&written)) {
        eprintln!(
            "{db}: {} pgbench transactions, {} failed; {} ids acknowledged",
            t.transactions,
            t.failed,
            w.acked.len()
        );
        assert!(t.transactions > 0, "{db}: {t:?}");
        assert_eq!(t.failed, 0, "{db}: pgbench failed transactions: {t:?}");
        assert!(t.errors.is_empty(), "{db}: pgbench errors: {:?}", t.errors);
        assert!(w.errors.is_empty(), "{db}: writer errors: {:?}", w.errors);
        assert!(!w.acked.is_empty(), "{db}: nothing written");
        // Back on the source: everything acknowledged on either side is there.
        let lost = missing_ids(&stack.source, db, "acked", &w.acked).unwrap();
        assert!(lost.is_empty(), "{db}: acknowledged writes lost: {lost:?}");
    }
    // And forward replication runs again in every database: the target converges.
    let deadline = Instant::now() + Duration::from_secs(60);
    for db in dbs {
        loop {
            let (a, b) = (digest(&stack.source, db), digest(&stack.target, db));
            if a == b {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{db}: source {a} and target {b} did not converge"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
