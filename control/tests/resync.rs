//! FORCE RESYNC TABLE against real servers, PostgreSQL 13 → 17 from the `integration`
//! harness, replicating with native logical replication (publication FOR ALL TABLES): a table
//! changed behind pgshift's back on the target is copied again, consistently, while a writer
//! keeps changing it on the source; replication goes on; refusals name the problem; an
//! interrupted resync refuses the cutover and runs again after a restart.

mod common;

use common::*;
use control::Controller;
use integration::ServerOptions;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// count and md5 of the ordered rows of app.accounts.
const ACCOUNTS: &str = "SELECT count(*)::text || ' ' || COALESCE(md5(string_agg(format('%s|%s|%s', id, name, balance), ',' ORDER BY id)), '')
                          FROM app.accounts";
const MIXED: &str = "SELECT count(*)::text || ' ' || COALESCE(md5(string_agg(format('%s|%s', k, v), ',' ORDER BY k)), '')
                       FROM public.\"Mixed Case\"";

async fn digest(c: &Client, sql: &str) -> String {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Inserts into, updates and deletes from app.accounts on the source until stopped (deletes
/// only rows it inserted: the others are referenced by app.events). Returns the inserts.
fn writer(c: Client, stop: Arc<AtomicBool>, n: Arc<AtomicI64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            let i = n.fetch_add(1, Ordering::SeqCst) + 1;
            c.execute(
                "INSERT INTO app.accounts (name, balance) VALUES ($1, $2::int4)",
                &[&format!("w{i}"), &(i as i32)],
            )
            .await
            .expect("writer insert");
            if i % 3 == 0 {
                c.execute(
                    "UPDATE app.accounts SET balance = balance + 1 WHERE id = $1",
                    &[&((i % 5000) as i32 + 1)],
                )
                .await
                .expect("writer update");
            }
            if i % 5 == 0 {
                c.execute(
                    "DELETE FROM app.accounts WHERE id = (SELECT min(id) FROM app.accounts WHERE name LIKE 'w%')",
                    &[],
                )
                .await
                .expect("writer delete");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

async fn history_has(ctl: &Controller, needle: &str) -> bool {
    ctl.history(1000)
        .await
        .expect("history")
        .iter()
        .any(|e| e.message.contains(needle))
}

async fn wait_history(ctl: &Controller, needle: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !history_has(ctl, needle).await {
        if Instant::now() > deadline {
            print_history(ctl, 40).await;
            panic!("no history entry with {needle:?} within {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The subscription's publications and the tables not ready, on the target.
async fn subscription_state(t: &Client) -> (Vec<String>, i64) {
    let r = t
        .query_one(
            "SELECT s.subpublications::text[],
                    (SELECT count(*) FROM pg_subscription_rel sr WHERE sr.srsubid = s.oid AND sr.srsubstate NOT IN ('r', 's'))
               FROM pg_subscription s WHERE s.subname = 'pgshift_fwd'",
            &[],
        )
        .await
        .expect("subscription");
    (r.get(0), r.get(1))
}

/// Waits until the target has applied everything the source has now.
async fn caught_up(ctl: &Controller) {
    let lsn = ctl.source_current_lsn().await.expect("source lsn");
    assert!(
        ctl.wait_target_applied(lsn, Duration::from_secs(30))
            .await
            .expect("wait applied"),
        "the target did not catch up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_resync_recopies_a_table_while_traffic_continues() {
    init_tracing();
    let (src, tgt) = pair(ServerOptions::default(), ServerOptions::default()).await;
    let s = connect(&src).await;
    let t = connect(&tgt).await;
    s.batch_execute(SOURCE_SCHEMA).await.expect("source schema");
    s.batch_execute("CREATE VIEW public.v AS SELECT 1 AS one;")
        .await
        .expect("more schema");

    let journal = journal_path("resync");
    let cfg = Arc::new(make_config(&src, &tgt, &journal));
    let ctl = Controller::open(cfg.clone()).expect("open");
    ctl.attach(FakeTraffic::from(&ctl));

    // Wrong phase: nothing to resync before the upgrade.
    let e = ctl.force_resync("app.accounts").await.expect_err("idle");
    assert!(e.message.contains("START UPGRADE"), "{e}");

    ctl.start_upgrade().await.expect("start");
    wait_phase(&ctl, "replicating", 120).await;
    // Made after the start (the preflight refuses unlogged tables): FORCE RESYNC must
    // refuse it too.
    s.batch_execute("CREATE UNLOGGED TABLE public.scratch (id int PRIMARY KEY)")
        .await
        .expect("unlogged table");

    // Refusals, each naming the problem.
    for (name, want) in [
        ("", "needs a table name"),
        ("app.nope", "unknown table app.nope"),
        ("public.v", "is a view, not a table"),
        ("public.scratch", "is unlogged"),
        ("public.scratch", "not in publication pgshift_pub"),
        ("pg_catalog.pg_class", "not in publication pgshift_pub"),
        ("a.b.c.d", "unknown table a.b.c.d"),
    ] {
        let e = ctl.force_resync(name).await.expect_err(name);
        assert!(e.message.contains(want), "{name}: {e}");
    }
    ctl.shift_traffic(10).await.expect("shift");
    let e = ctl.force_resync("app.accounts").await.expect_err("weight");
    assert!(e.message.contains("SHIFT TRAFFIC 0 first"), "{e}");
    ctl.shift_traffic(0).await.expect("shift back");

    // A writer keeps changing app.accounts on the source.
    let stop = Arc::new(AtomicBool::new(false));
    let inserted = Arc::new(AtomicI64::new(0));
    let w = writer(connect(&src).await, stop.clone(), inserted.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Behind pgshift's back, on the target (replica role: app.events references the rows).
    t.batch_execute(
        "SET session_replication_role = replica;
         UPDATE app.accounts SET balance = -1 WHERE id % 10 = 0;
         DELETE FROM app.accounts WHERE id % 7 = 0;
         RESET session_replication_role;",
    )
    .await
    .expect("tamper");
    assert!(count(&t, "SELECT count(*) FROM app.accounts WHERE balance = -1").await > 0);
    assert_eq!(
        count(&s, "SELECT count(*) FROM app.accounts WHERE balance = -1").await,
        0
    );

    // An open transaction on the source holds the resync at its first wait, so that what a
    // resync under way refuses can be checked.
    let blocker = connect(&src).await;
    blocker
        .batch_execute("BEGIN; INSERT INTO public.audit (msg) VALUES ('open transaction')")
        .await
        .expect("open transaction");
    let c2 = ctl.clone();
    let resync = tokio::spawn(async move { c2.force_resync("app.accounts").await });
    wait_history(&ctl, "resync:app.accounts: started", 30).await;
    let e = ctl
        .initiate_cutover()
        .await
        .expect_err("cutover during a resync");
    assert!(
        e.message
            .contains("cutover refused: FORCE RESYNC TABLE app.accounts is under way"),
        "{e}"
    );
    let e = ctl
        .shift_traffic(10)
        .await
        .expect_err("shift during a resync");
    assert!(
        e.message
            .contains("FORCE RESYNC TABLE app.accounts is under way"),
        "{e}"
    );
    let e = ctl
        .force_resync("public.\"Mixed Case\"")
        .await
        .expect_err("two at once");
    assert!(e.message.contains("one at a time"), "{e}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !resync.is_finished(),
        "the resync waits for the open transaction"
    );
    blocker.batch_execute("COMMIT").await.expect("commit");
    let t0 = Instant::now();
    let m = resync.await.expect("join").expect("force resync");
    eprintln!("FORCE RESYNC TABLE app.accounts in {:?}: {m}", t0.elapsed());
    assert!(m.starts_with("app.accounts copied again"), "{m}");
    assert!(
        m.contains("DELETE app.accounts (referenced by foreign keys)"),
        "{m}"
    );
    assert!(history_has(&ctl, "resync:app.accounts: done").await);

    // The writer went on all along; stop it and compare.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    w.await.expect("writer");
    eprintln!("writer: {} inserts", inserted.load(Ordering::SeqCst));
    caught_up(&ctl).await;
    let (ds, dt) = (digest(&s, ACCOUNTS).await, digest(&t, ACCOUNTS).await);
    eprintln!("app.accounts source {ds}, target {dt}");
    assert_eq!(ds, dt, "app.accounts differs after the resync");
    assert_eq!(
        count(&t, "SELECT count(*) FROM app.events").await,
        count(&s, "SELECT count(*) FROM app.events").await
    );
    let (pubs, not_ready) = subscription_state(&t).await;
    assert_eq!((pubs, not_ready), (vec!["pgshift_pub".to_string()], 0));
    let pubs: Vec<String> = s
        .query("SELECT pubname::text FROM pg_publication ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        pubs,
        vec!["pgshift_pub".to_string()],
        "the resync publication is gone"
    );

    // Replication of new writes continues.
    s.batch_execute(
        "INSERT INTO app.accounts (name) SELECT 'after ' || g FROM generate_series(1, 50) g",
    )
    .await
    .expect("insert");
    wait_count(
        &t,
        "SELECT count(*) FROM app.accounts WHERE name LIKE 'after %'",
        50,
        "after the resync",
    )
    .await;

    // Again on a table no foreign key references (TRUNCATE), interrupted once it has left
    // the subscription (a reader on the target holds the TRUNCATE up meanwhile): the cutover
    // is refused, and a restart runs the resync again.
    t.batch_execute("UPDATE public.\"Mixed Case\" SET v = -v WHERE v % 3 = 0")
        .await
        .expect("tamper");
    assert_ne!(digest(&s, MIXED).await, digest(&t, MIXED).await);
    let reader = connect(&tgt).await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM public.\"Mixed Case\"")
        .await
        .expect("reader");
    let c2 = ctl.clone();
    let resync = tokio::spawn(async move { c2.force_resync("public.\"Mixed Case\"").await });
    wait_history(&ctl, "public.\"Mixed Case\": out of replication", 60).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!resync.is_finished(), "the TRUNCATE waits for the reader");
    resync.abort();
    let _ = resync.await;
    reader.batch_execute("ROLLBACK").await.expect("reader ends");
    let e = ctl
        .initiate_cutover()
        .await
        .expect_err("the table is left out");
    assert!(e.message.contains("cutover refused"), "{e}");
    assert!(
        e.message.contains("FORCE RESYNC TABLE did not finish"),
        "{e}"
    );
    assert_eq!(ctl.status().phase, control::Phase::Replicating);
    s.batch_execute("INSERT INTO public.\"Mixed Case\" VALUES ('written meanwhile', 1)")
        .await
        .expect("insert");

    ctl.shutdown();
    drop(ctl);
    let ctl = Controller::open(cfg.clone()).expect("reopen");
    ctl.attach(FakeTraffic::from(&ctl));
    wait_step_done(&ctl, "resync:public.\"Mixed Case\"", 120).await;
    caught_up(&ctl).await;
    assert_eq!(digest(&s, MIXED).await, digest(&t, MIXED).await);
    assert_eq!(subscription_state(&t).await.1, 0);

    // Idempotent: once more on a table that is fine.
    let m = ctl
        .force_resync("public.\"Mixed Case\"")
        .await
        .expect("resync again");
    assert!(m.contains("TRUNCATE public.\"Mixed Case\""), "{m}");
    caught_up(&ctl).await;
    assert_eq!(digest(&s, MIXED).await, digest(&t, MIXED).await);
    assert_eq!(digest(&s, ACCOUNTS).await, digest(&t, ACCOUNTS).await);

    // Everything in place: the cutover goes through, and a resync is refused afterwards.
    ctl.initiate_cutover().await.expect("cutover");
    let e = ctl
        .force_resync("app.accounts")
        .await
        .expect_err("after cutover");
    assert!(e.message.contains("traffic on the target"), "{e}");
    ctl.rollback().await.expect("rollback");
    ctl.rollback().await.expect("remove replication");
    assert!(objects(&s).await.is_empty(), "{:?}", objects(&s).await);
    print_history(&ctl, 40).await;
    ctl.shutdown();
}
