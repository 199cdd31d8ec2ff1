//! The upgrade controller against real servers: PostgreSQL 13 (source) and 17 (target) from the
//! `integration` harness, driven by an operator (`approve_cutover = true`: the plan stops
//! before the cutover). The proxy is replaced by a test double of [`TrafficControl`] made of
//! atomics; the databases, the journal and replication are real.

mod common;

use common::*;
use control::{Controller, RouteState, Side, TrafficControl};
use integration::ServerOptions;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------

/// Preflight collects every problem, each with what to change: a source with
/// wal_level = replica, tables without primary key or replica identity, roles missing on the
/// target. START UPGRADE ends in state error with all of them in last_error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_lists_every_problem() {
    init_tracing();
    let (src, tgt) = pair(
        ServerOptions::default().setting("wal_level", "replica"),
        ServerOptions::default(),
    )
    .await;
    let s = connect(&src).await;
    s.batch_execute(
        "CREATE ROLE app_owner;
         CREATE SCHEMA app AUTHORIZATION app_owner;
         CREATE TABLE app.no_pk (a int, b text);
         CREATE TABLE public.\"Log Lines\" (line text);
         CREATE TABLE public.nothing (id int PRIMARY KEY);
         ALTER TABLE public.nothing REPLICA IDENTITY NOTHING;
         CREATE TABLE public.ok_full (a int);
         ALTER TABLE public.ok_full REPLICA IDENTITY FULL;
         CREATE TABLE public.ok_pk (id int PRIMARY KEY);
         CREATE TABLE public.ok_idx (a int NOT NULL);
         CREATE UNIQUE INDEX ok_idx_a ON public.ok_idx (a);
         ALTER TABLE public.ok_idx REPLICA IDENTITY USING INDEX ok_idx_a;
         CREATE SEQUENCE public.counter;",
    )
    .await
    .expect("source schema");

    let journal = journal_path("preflight");
    let mut cfg = make_config(&src, &tgt, &journal);
    cfg.users.push(config::UserConfig {
        name: "app".into(),
        password: Some("x".into()),
        auth: config::AuthMethod::ScramSha256,
        server_user: Some("app_user".into()),
        server_password: None,
        password_secret: None,
        server_password_secret: None,
        admin: false,
        max_connections: None,
    });
    let ctl = Controller::open(Arc::new(cfg)).expect("open");
    ctl.attach(FakeTraffic::from(&ctl));

    let report = ctl.preflight().await;
    eprintln!("preflight failures:\n{}", report.failures.join("\n"));
    let all = report.failures.join("\n");
    for needle in [
        "source: wal_level is 'replica'; set wal_level = logical in postgresql.conf and restart",
        "source: table app.no_pk has no primary key",
        "source: table public.\"Log Lines\" has no primary key",
        "source: table public.nothing has REPLICA IDENTITY NOTHING",
        "target: role app_owner does not exist",
        "target: role app_user does not exist (server_user of configured user app)",
    ] {
        assert!(
            all.contains(needle),
            "preflight should report {needle:?}; got:\n{all}"
        );
    }
    for fine in ["ok_full", "ok_pk", "ok_idx"] {
        assert!(
            !all.contains(fine),
            "{fine} is fine, but preflight reported:\n{all}"
        );
    }
    assert_eq!(report.sequences, vec!["public.counter".to_string()]);

    // START UPGRADE answers with every problem at once and changes nothing.
    let err = ctl
        .start_upgrade()
        .await
        .expect_err("start must fail")
        .message;
    assert!(err.starts_with("preflight found"), "{err}");
    assert_eq!(ctl.status().phase, "idle");
    assert!(
        err.contains("wal_level is 'replica'")
            && err.contains("app.no_pk")
            && err.contains("role app_owner"),
        "{err}"
    );
    // Nothing was created.
    assert!(objects(&s).await.is_empty());
    assert!(objects(&connect(&tgt).await).await.is_empty());
    ctl.shutdown();
}

/// The whole cycle on 13 → 17: start → synchronised → cutover (pause measured) → writes on the
/// target → rollback → those writes are on the source, forward replication runs again →
/// cutover again → rollback → rollback again removes every object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_and_rollback_lose_nothing() {
    init_tracing();
    let (src, tgt) = pair(ServerOptions::default(), ServerOptions::default()).await;
    let s = connect(&src).await;
    let t = connect(&tgt).await;
    s.batch_execute(SOURCE_SCHEMA).await.expect("source schema");

    let journal = journal_path("cycle");
    let cfg = Arc::new(make_config(&src, &tgt, &journal));
    let ctl = Controller::open(cfg.clone()).expect("open");
    assert_eq!(ctl.serving_side(), (Side::Source, 1));
    let traffic = FakeTraffic::from(&ctl);
    ctl.attach(traffic.clone());

    // Cutover before the upgrade is refused.
    let e = ctl
        .initiate_cutover()
        .await
        .expect_err("cutover with no upgrade");
    assert!(e.message.contains("START UPGRADE"), "{e}");

    assert!(ctl
        .start_upgrade()
        .await
        .expect("start")
        .contains("upgrade started"));
    let e = ctl.start_upgrade().await.expect_err("second start");
    assert!(e.message.contains("already"), "{e}");
    let st = wait_phase(&ctl, "replicating", 120).await;
    assert_eq!(st.state, "waiting");
    assert_eq!((st.source_weight, st.target_weight, st.epoch), (100, 0, 1));
    assert!(
        st.updated_at.ends_with('Z') && st.updated_at.len() == 24,
        "{}",
        st.updated_at
    );

    // The initial copy is complete; later writes stream.
    assert_eq!(count(&t, "SELECT count(*) FROM app.accounts").await, 5000);
    assert_eq!(count(&t, "SELECT count(*) FROM app.events").await, 20000);
    assert_eq!(
        count(&t, "SELECT count(*) FROM public.\"Mixed Case\"").await,
        100
    );
    s.batch_execute(
        "INSERT INTO app.accounts (name) VALUES ('late'); UPDATE public.audit SET msg = 'updated'",
    )
    .await
    .unwrap();
    wait_count(
        &t,
        "SELECT count(*) FROM app.accounts",
        5001,
        "streamed insert",
    )
    .await;
    wait_count(
        &t,
        "SELECT count(*) FROM public.audit WHERE msg = 'updated'",
        1,
        "streamed update (replica identity full)",
    )
    .await;
    // The collector reports lag.
    let st = wait_status(&ctl, "lag figures", Duration::from_secs(10), |s| {
        s.replication_lag_bytes.is_some() && s.lag_seconds.is_some()
    })
    .await;
    eprintln!(
        "lag while replicating: {:?} bytes, {:?} s",
        st.replication_lag_bytes, st.lag_seconds
    );

    // Cutover with an idle source.
    let t0 = Instant::now();
    let msg = ctl
        .initiate_cutover()
        .await
        .unwrap_or_else(|e| panic!("cutover: {e}"));
    eprintln!("CUTOVER ({:?} wall): {msg}", t0.elapsed());
    assert!(msg.contains("pause"), "{msg}");
    assert_eq!(
        traffic.route(),
        RouteState {
            side: Side::Target,
            epoch: 2,
            paused: false
        }
    );
    assert_eq!(*traffic.switches.lock().unwrap(), vec![(Side::Target, 2)]);
    assert_eq!(ctl.serving_side(), (Side::Target, 2));
    let st = ctl.status();
    assert_eq!(
        (
            st.phase.as_str(),
            st.state.as_str(),
            st.source_weight,
            st.target_weight
        ),
        ("cut_over", "running", 0, 100)
    );
    assert_eq!(
        objects(&t).await,
        vec!["pub:pgshift_rev_pub", "slot:pgshift_rev"]
    );
    assert_eq!(
        objects(&s).await,
        vec!["pub:pgshift_pub", "sub:pgshift_rev"]
    );

    // Sequences: the target continues after the source's values.
    let src_acc: i64 = count(&s, "SELECT last_value FROM app.accounts_id_seq").await;
    let src_ev: i64 = count(&s, "SELECT last_value FROM app.events_id_seq").await;
    assert_eq!(
        count(&t, "SELECT last_value FROM app.accounts_id_seq").await,
        src_acc
    );
    assert_eq!(
        count(&t, "SELECT last_value FROM app.events_id_seq").await,
        src_ev
    );
    assert_eq!(count(&t, "SELECT nextval('app.invoice_no')").await, 1007);
    assert_eq!(
        count(
            &t,
            "SELECT count(*) FROM pg_sequences WHERE sequencename = 'never_used'"
        )
        .await,
        0
    );

    // Writes on the target (where the proxy now routes them), with default ids: no conflicts.
    t.batch_execute(
        "INSERT INTO app.accounts (name) SELECT 'on target ' || g FROM generate_series(1, 50) g;
         INSERT INTO app.events (account, payload) VALUES (1, '{\"on\": \"target\"}');
         UPDATE app.accounts SET balance = balance + 1 WHERE id = 1;
         DELETE FROM public.\"Mixed Case\" WHERE v <= 10;",
    )
    .await
    .expect("writes on the target");
    let st = wait_status(&ctl, "reverse lag", Duration::from_secs(10), |s| {
        s.replication_lag_bytes.is_some()
    })
    .await;
    eprintln!(
        "reverse lag: {:?} bytes, {:?} s",
        st.replication_lag_bytes, st.lag_seconds
    );

    // Rollback after cutover: the same protocol back; nothing written on the target is lost.
    let msg = ctl
        .rollback()
        .await
        .unwrap_or_else(|e| panic!("rollback: {e}"));
    eprintln!("ROLLBACK: {msg}");
    assert_eq!(
        traffic.route(),
        RouteState {
            side: Side::Source,
            epoch: 3,
            paused: false
        }
    );
    let st = ctl.status();
    assert_eq!(
        (st.phase.as_str(), st.state.as_str()),
        ("rolled_back", "done")
    );
    assert_eq!(
        count(
            &s,
            "SELECT count(*) FROM app.accounts WHERE name LIKE 'on target%'"
        )
        .await,
        50
    );
    assert_eq!(
        count(
            &s,
            "SELECT count(*) FROM app.events WHERE payload->>'on' = 'target'"
        )
        .await,
        1
    );
    assert_eq!(
        count(&s, "SELECT count(*) FROM public.\"Mixed Case\"").await,
        90
    );
    assert_eq!(
        count(
            &s,
            "SELECT count(*) FROM app.accounts WHERE id = 1 AND balance = 2"
        )
        .await,
        1
    );
    // Sequences came back too.
    assert_eq!(
        count(&s, "SELECT last_value FROM app.accounts_id_seq").await,
        count(&t, "SELECT last_value FROM app.accounts_id_seq").await
    );
    s.batch_execute("INSERT INTO app.accounts (name) VALUES ('source again')")
        .await
        .expect("insert on source after rollback");
    assert_eq!(
        objects(&s).await,
        vec!["pub:pgshift_pub", "slot:pgshift_fwd"]
    );
    assert_eq!(
        objects(&t).await,
        vec!["pub:pgshift_rev_pub", "sub:pgshift_fwd"]
    );
    // Forward replication runs again.
    wait_count(
        &t,
        "SELECT count(*) FROM app.accounts WHERE name = 'source again'",
        1,
        "forward after rollback",
    )
    .await;

    // INITIATE CUTOVER is allowed again from rolled_back.
    let msg = ctl
        .initiate_cutover()
        .await
        .unwrap_or_else(|e| panic!("second cutover: {e}"));
    eprintln!("CUTOVER 2: {msg}");
    assert_eq!(
        traffic.route(),
        RouteState {
            side: Side::Target,
            epoch: 4,
            paused: false
        }
    );
    let msg = ctl
        .rollback()
        .await
        .unwrap_or_else(|e| panic!("second rollback: {e}"));
    eprintln!("ROLLBACK 2: {msg}");
    assert_eq!(traffic.route().side, Side::Source);

    // A rollback from rolled_back (forward replication running) removes replication.
    let msg = ctl
        .rollback()
        .await
        .unwrap_or_else(|e| panic!("teardown: {e}"));
    assert!(msg.contains("removed"), "{msg}");
    assert!(objects(&s).await.is_empty(), "{:?}", objects(&s).await);
    assert!(objects(&t).await.is_empty(), "{:?}", objects(&t).await);
    assert_eq!(
        ctl.rollback().await.expect("idempotent"),
        "already rolled back; nothing to do"
    );
    assert_eq!(traffic.pauses.load(Ordering::SeqCst), 4);
    assert_eq!(traffic.resumes.load(Ordering::SeqCst), 0);

    let steps = ctl.steps().await.expect("steps");
    let keys: Vec<&str> = steps.iter().map(|s| s.key.as_str()).collect();
    for k in [
        "validate_input",
        "schema_copy",
        "subscription",
        "wait_for_sync",
        "cutover.drain",
        "cutover.swap",
        "switchback.swap",
        "teardown",
    ] {
        assert!(keys.contains(&k), "step {k} missing from {keys:?}");
    }
    ctl.shutdown();
}

/// Drain deadline: a session that never leaves its transaction makes the cutover give up,
/// resume traffic on the source and leave forward replication running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_abandoned_at_drain_deadline_and_after_crash() {
    init_tracing();
    let (src, tgt) = pair(ServerOptions::default(), ServerOptions::default()).await;
    let s = connect(&src).await;
    let t = connect(&tgt).await;
    s.batch_execute(
        "CREATE TABLE t (id serial PRIMARY KEY, v text); INSERT INTO t (v) VALUES ('a')",
    )
    .await
    .unwrap();
    let journal = journal_path("drain");
    let mut cfg = make_config(&src, &tgt, &journal);
    cfg.upgrade.drain_timeout_ms = 300;
    cfg.upgrade.catchup_timeout_ms = 1500;
    let cfg = Arc::new(cfg);
    let ctl = Controller::open(cfg.clone()).expect("open");
    let traffic = FakeTraffic::from(&ctl);
    ctl.attach(traffic.clone());
    ctl.start_upgrade().await.expect("start");
    wait_phase(&ctl, "replicating", 120).await;

    // 1. Drain deadline.
    traffic.busy.store(3, Ordering::SeqCst);
    let e = ctl
        .initiate_cutover()
        .await
        .expect_err("drain must time out");
    assert_eq!(
        e.message,
        "drain deadline passed: 3 sessions still in a transaction; cutover abandoned, traffic stays on the source"
    );
    assert_eq!(
        traffic.route(),
        RouteState {
            side: Side::Source,
            epoch: 1,
            paused: false
        }
    );
    let st = ctl.status();
    assert_eq!(
        (st.phase.as_str(), st.state.as_str()),
        ("replicating", "error")
    );
    assert_eq!(st.last_error.as_deref(), Some(e.message.as_str()));
    assert_eq!(
        objects(&t).await,
        vec!["pub:pgshift_rev_pub", "sub:pgshift_fwd"]
    );

    // 1b. A transaction left open on the target (outside pgshift) blocks the reverse slot's
    //     creation: statement_timeout ends it, the cutover is abandoned and everything is as before.
    traffic.busy.store(0, Ordering::SeqCst);
    let t2 = connect(&tgt).await;
    t2.batch_execute("BEGIN; SELECT txid_current();")
        .await
        .unwrap();
    let t0 = Instant::now();
    let e = ctl
        .initiate_cutover()
        .await
        .expect_err("slot creation must time out");
    eprintln!("abandoned after {:?}: {e}", t0.elapsed());
    assert!(
        e.message.contains("creating replication slot pgshift_rev")
            && e.message.contains("statement timeout"),
        "{e}"
    );
    assert!(
        e.message.contains("cutover") || e.message.contains("slot"),
        "{e}"
    );
    assert_eq!(
        traffic.route(),
        RouteState {
            side: Side::Source,
            epoch: 1,
            paused: false
        }
    );
    t2.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        objects(&t).await,
        vec!["pub:pgshift_rev_pub", "sub:pgshift_fwd"],
        "forward re-enabled, no reverse slot"
    );
    s.batch_execute("INSERT INTO t (v) VALUES ('after timeout')")
        .await
        .unwrap();
    wait_count(
        &t,
        "SELECT count(*) FROM t",
        2,
        "forward replication after the abandoned cutover",
    )
    .await;

    // 2. A crash inside the pause (before the swap): the process dies while draining.
    traffic.busy.store(1, Ordering::SeqCst);
    let c2 = ctl.clone();
    let task = tokio::spawn(async move { c2.initiate_cutover().await });
    wait_status(&ctl, "cutting_over", Duration::from_secs(10), |s| {
        s.phase == "cutting_over"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    task.abort();
    let _ = task.await;
    ctl.shutdown();
    drop(ctl);
    // Make the state as bad as a crash after stop_apply and slot creation could leave it.
    t.batch_execute("ALTER SUBSCRIPTION pgshift_fwd DISABLE")
        .await
        .unwrap();
    t.query(
        "SELECT pg_create_logical_replication_slot('pgshift_rev', 'pgoutput')",
        &[],
    )
    .await
    .unwrap();

    let ctl = Controller::open(cfg.clone()).expect("reopen");
    assert_eq!(ctl.serving_side(), (Side::Source, 1));
    let traffic = FakeTraffic::from(&ctl);
    ctl.attach(traffic.clone());
    let st = wait_status(&ctl, "abandoned cutover", Duration::from_secs(20), |s| {
        s.phase == "replicating"
    })
    .await;
    assert_eq!(st.state, "error");
    assert!(
        st.last_error
            .as_deref()
            .unwrap_or("")
            .contains("cutover abandoned"),
        "{st:?}"
    );
    assert_eq!(
        objects(&t).await,
        vec!["pub:pgshift_rev_pub", "sub:pgshift_fwd"],
        "forward enabled, reverse slot gone"
    );
    s.batch_execute("INSERT INTO t (v) VALUES ('after crash')")
        .await
        .unwrap();
    wait_count(
        &t,
        "SELECT count(*) FROM t",
        3,
        "forward replication after the crash",
    )
    .await;

    // 3. A crash right after the swap was journaled (switch_to dies): the restart finishes the
    //    post-swap steps.
    traffic.busy.store(0, Ordering::SeqCst);
    traffic.die_on_switch.store(true, Ordering::SeqCst);
    let c2 = ctl.clone();
    let res = tokio::spawn(async move { c2.initiate_cutover().await }).await;
    assert!(
        res.is_err_and(|e| e.is_panic()),
        "switch_to should have panicked"
    );
    ctl.shutdown();
    drop(ctl);
    let ctl = Controller::open(cfg.clone()).expect("reopen after swap");
    assert_eq!(
        ctl.serving_side(),
        (Side::Target, 2),
        "the swap was journaled before switch_to"
    );
    let traffic = FakeTraffic::from(&ctl);
    ctl.attach(traffic.clone());
    let st = wait_status(&ctl, "finished cutover", Duration::from_secs(30), |s| {
        s.phase == "cut_over"
    })
    .await;
    // The plan goes on after the cutover (health checks, then DetachOld).
    assert_eq!(st.state, "running", "{st:?}");
    assert_eq!(
        objects(&s).await,
        vec!["pub:pgshift_pub", "sub:pgshift_rev"]
    );
    assert_eq!(
        objects(&t).await,
        vec!["pub:pgshift_rev_pub", "slot:pgshift_rev"]
    );
    t.batch_execute("INSERT INTO t (v) VALUES ('on target')")
        .await
        .unwrap();
    wait_count(
        &s,
        "SELECT count(*) FROM t",
        4,
        "reverse replication after the resumed cutover",
    )
    .await;
    ctl.shutdown();
}

/// Restart in the middle of the initial copy: a new Controller on the same journal keeps
/// waiting (no duplicate-object errors). Then a rollback before cutover removes every object,
/// and START UPGRADE starts afresh on a target that holds the schema and rows already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_mid_sync_then_rollback_and_restart() {
    init_tracing();
    // No table sync workers on the target: the initial copy waits until we allow it.
    let (src, tgt) = pair(
        ServerOptions::default(),
        ServerOptions::default().setting("max_sync_workers_per_subscription", "0"),
    )
    .await;
    let s = connect(&src).await;
    let t = connect(&tgt).await;
    s.batch_execute(SOURCE_SCHEMA).await.expect("source schema");
    let journal = journal_path("resume");
    let cfg = Arc::new(make_config(&src, &tgt, &journal));

    let ctl = Controller::open(cfg.clone()).expect("open");
    ctl.attach(FakeTraffic::from(&ctl));
    ctl.start_upgrade().await.expect("start");
    wait_status(&ctl, "synchronizing", Duration::from_secs(60), |s| {
        assert_ne!(s.state, "error", "{s:?}");
        s.phase == "synchronizing"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ctl.sync_progress(), Some((0, 4)));
    // "Crash".
    ctl.shutdown();
    drop(ctl);

    let ctl = Controller::open(cfg.clone()).expect("reopen");
    assert_eq!(ctl.status().phase, "synchronizing");
    ctl.attach(FakeTraffic::from(&ctl));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = ctl.status();
    assert_eq!(
        (st.phase.as_str(), st.state.as_str()),
        ("synchronizing", "running"),
        "{st:?}"
    );
    set_sync_workers(&t, 2).await.unwrap();
    wait_phase(&ctl, "replicating", 120).await;
    assert_eq!(count(&t, "SELECT count(*) FROM app.events").await, 20000);
    let events = ctl.events(200).await.unwrap();
    assert!(
        events.iter().any(|e| e.actor == "resume"),
        "the resumed plan is journaled"
    );
    assert!(
        !events.iter().any(|e| e.message.contains("already exists")),
        "no duplicate-object errors"
    );

    // Rollback before cutover: every object goes.
    let msg = ctl.rollback().await.expect("rollback");
    assert!(msg.contains("removed"), "{msg}");
    assert!(objects(&s).await.is_empty(), "{:?}", objects(&s).await);
    assert!(objects(&t).await.is_empty(), "{:?}", objects(&t).await);
    let st = ctl.status();
    assert_eq!(
        (st.phase.as_str(), st.state.as_str()),
        ("rolled_back", "done")
    );
    let e = ctl
        .initiate_cutover()
        .await
        .expect_err("no cutover without replication");
    assert!(e.message.contains("START UPGRADE"), "{e}");

    // Afresh: the target has the schema and all rows; the source moved on.
    s.batch_execute("INSERT INTO app.accounts (name) VALUES ('between attempts'); DELETE FROM app.events WHERE id <= 100")
        .await
        .unwrap();
    assert!(ctl
        .start_upgrade()
        .await
        .expect("restart")
        .contains("upgrade 2"));
    wait_phase(&ctl, "replicating", 120).await;
    assert_eq!(count(&t, "SELECT count(*) FROM app.accounts").await, 5001);
    assert_eq!(count(&t, "SELECT count(*) FROM app.events").await, 19900);
    let steps = ctl.steps().await.unwrap();
    let schema = steps
        .iter()
        .find(|s| s.key == "schema_copy")
        .expect("schema_copy step");
    assert!(
        schema
            .detail
            .as_deref()
            .unwrap_or("")
            .starts_with("skipped"),
        "{schema:?}"
    );

    // Rollback while synchronizing (a third attempt, stopped mid-copy).
    ctl.rollback().await.expect("rollback 2");
    set_sync_workers(&t, 0).await.unwrap();
    ctl.start_upgrade().await.expect("start 3");
    wait_status(&ctl, "synchronizing", Duration::from_secs(60), |s| {
        s.phase == "synchronizing"
    })
    .await;
    let msg = ctl.rollback().await.expect("rollback while synchronizing");
    assert!(msg.contains("removed"), "{msg}");
    assert!(objects(&s).await.is_empty(), "{:?}", objects(&s).await);
    assert!(objects(&t).await.is_empty(), "{:?}", objects(&t).await);

    // Rollback while the plan is creating the objects (its CREATE SUBSCRIPTION may still be
    // running on the target when the plan task is stopped): nothing may appear afterwards.
    for attempt in 0..2 {
        ctl.start_upgrade().await.expect("start 4");
        wait_status(&ctl, "init_replication", Duration::from_secs(60), |s| {
            s.phase == "init_replication" || s.phase == "synchronizing"
        })
        .await;
        if attempt == 1 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let msg = ctl
            .rollback()
            .await
            .expect("rollback during init_replication");
        eprintln!("rollback during init_replication: {msg}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(objects(&s).await.is_empty(), "{:?}", objects(&s).await);
        assert!(objects(&t).await.is_empty(), "{:?}", objects(&t).await);
    }
    ctl.shutdown();
}

/// Cutover and rollback while two sessions write continuously through the fake proxy: every
/// row written on either side ends up on both, ids from the synced sequences never collide, and
/// the pause stays short. `PGSHIFT_DURABLE=1` runs the servers with fsync and synchronous_commit
/// on (the harness turns them off for speed) to measure a realistic pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_under_write_load_loses_nothing() {
    init_tracing();
    let durable = durable();
    let (src, tgt) = pair(ServerOptions::default(), ServerOptions::default()).await;
    let s = connect(&src).await;
    let t = connect(&tgt).await;
    s.batch_execute(
        "CREATE TABLE load (id bigserial PRIMARY KEY, writer int NOT NULL, n int NOT NULL, side text, epoch int8,
                            UNIQUE (writer, n, epoch));
         INSERT INTO load (writer, n) SELECT 0, g FROM generate_series(1, 1000) g;",
    )
    .await
    .expect("schema");
    let journal = journal_path("load");
    let cfg = Arc::new(make_config(&src, &tgt, &journal));
    let ctl = Controller::open(cfg).expect("open");
    let traffic = FakeTraffic::from(&ctl);
    ctl.attach(traffic.clone());
    ctl.start_upgrade().await.expect("start");

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = vec![];
    for id in 1..=2 {
        let (a, b) = (connect(&src).await, connect(&tgt).await);
        writers.push(tokio::spawn(writer(
            traffic.clone(),
            a,
            b,
            id,
            stop.clone(),
        )));
    }
    wait_phase(&ctl, "replicating", 120).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cut = ctl
        .initiate_cutover()
        .await
        .unwrap_or_else(|e| panic!("cutover under load: {e}"));
    eprintln!("CUTOVER UNDER LOAD (durable={durable}): {cut}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let back = ctl
        .rollback()
        .await
        .unwrap_or_else(|e| panic!("rollback under load: {e}"));
    eprintln!("ROLLBACK UNDER LOAD (durable={durable}): {back}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut on_src, mut on_tgt) = (0, 0);
    for w in writers {
        let (a, b) = w.await.expect("writer");
        on_src += a;
        on_tgt += b;
    }
    eprintln!("rows written: {on_src} while on the source, {on_tgt} while on the target");
    assert!(on_tgt > 0 && on_src > 0, "both sides took writes");
    let total = 1000 + on_src + on_tgt;
    assert_eq!(
        count(&s, "SELECT count(*) FROM load").await,
        total,
        "every row is on the source"
    );
    wait_count(
        &t,
        "SELECT count(*) FROM load",
        total,
        "every row reaches the target again",
    )
    .await;
    let ids = |rows: Vec<tokio_postgres::Row>| {
        rows.iter()
            .map(|r| r.get::<_, i64>(0))
            .collect::<std::collections::BTreeSet<i64>>()
    };
    let on_s = ids(s.query("SELECT id FROM load", &[]).await.unwrap());
    let on_t = ids(t.query("SELECT id FROM load", &[]).await.unwrap());
    let missing_s: Vec<_> = on_t.difference(&on_s).take(20).collect();
    let missing_t: Vec<_> = on_s.difference(&on_t).take(20).collect();
    assert!(
        missing_s.is_empty() && missing_t.is_empty(),
        "ids missing on the source {missing_s:?}, on the target {missing_t:?}"
    );
    assert_eq!(
        count(&t, "SELECT count(*) FROM load WHERE side = 'target'").await,
        on_tgt,
        "rows written on the target"
    );
    ctl.shutdown();
}
