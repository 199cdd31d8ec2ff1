//! Kill points of the unattended plan (13 → 17, real servers): the controller is dropped as a
//! `kill -9` would leave things (its tasks stop where they are; the journal and the servers
//! stay) and a new one is opened on the same journal with a restarted proxy double. Each time
//! the plan resumes and finishes, with no leftover or duplicate replication objects.

mod common;

use common::*;
use control::{Controller, Side, TrafficControl};
use integration::ServerOptions;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Waits for the plan to finish (phase done) and checks what every finished run must show.
async fn finish(
    ctl: &Controller,
    src: &integration::PgServer,
    tgt: &integration::PgServer,
    t0: Instant,
) {
    let st = wait_status(ctl, "phase done", Duration::from_secs(50), |s| {
        if s.state == "error" {
            panic!("plan failed: {s:?}");
        }
        s.phase == "done"
    })
    .await;
    eprintln!("plan done {:?} after start", t0.elapsed());
    assert_eq!(
        (st.state.as_str(), st.percent, st.target_weight),
        ("done", 100, 100)
    );
    assert_eq!(ctl.serving_side().0, Side::Target);
    let (s, t) = (connect(src).await, connect(tgt).await);
    assert!(
        objects(&s).await.is_empty(),
        "source: {:?}",
        objects(&s).await
    );
    assert!(
        objects(&t).await.is_empty(),
        "target: {:?}",
        objects(&t).await
    );
    let history = ctl.history(1000).await.unwrap();
    assert!(
        !history.iter().any(|e| e.message.contains("already exists")),
        "no duplicate-object errors"
    );
    for (key, _) in ctl.plan() {
        let steps = ctl.steps().await.unwrap();
        let s = steps
            .iter()
            .find(|s| s.key == key)
            .unwrap_or_else(|| panic!("step {key} missing"));
        assert_eq!(s.status, control::journal::StepStatus::Done, "{s:?}");
    }
}

const LOAD_TABLE: &str = "CREATE TABLE load (id bigserial PRIMARY KEY, writer int NOT NULL, n int NOT NULL, side text, epoch int8,
                                         UNIQUE (writer, n, epoch))";

/// Two writers through the (old) proxy double until `stop`; returns their handles.
async fn writers(
    traffic: &Arc<FakeTraffic>,
    src: &integration::PgServer,
    tgt: &integration::PgServer,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(i64, i64)>> {
    let mut v = vec![];
    for id in 1..=2 {
        let (a, b) = (connect(src).await, connect(tgt).await);
        v.push(tokio::spawn(writer(
            traffic.clone(),
            a,
            b,
            id,
            stop.clone(),
        )));
    }
    v
}

/// Stops the writers; every row they had acknowledged must be on the target at the end.
async fn acknowledged(
    stop: &Arc<AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<(i64, i64)>>,
) -> i64 {
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for h in handles {
        let (a, b) = h.await.expect("writer");
        total += a + b;
    }
    total
}

/// The forward replication objects, exactly once each.
async fn forward_objects(src: &integration::PgServer, tgt: &integration::PgServer) {
    let (s, t) = (connect(src).await, connect(tgt).await);
    assert_eq!(
        objects(&s).await,
        vec!["pub:pgshift_pub", "slot:pgshift_fwd"]
    );
    assert_eq!(
        objects(&t).await,
        vec!["pub:pgshift_rev_pub", "sub:pgshift_fwd"]
    );
}

/// Killed while WaitForSync waits for the initial copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_wait_for_sync() {
    init_tracing();
    let t0 = Instant::now();
    let (src, tgt) = pair(
        ServerOptions::default(),
        ServerOptions::default().setting("max_sync_workers_per_subscription", "0"),
    )
    .await;
    connect(&src)
        .await
        .batch_execute(SOURCE_SCHEMA)
        .await
        .unwrap();
    let journal = journal_path("kill-sync");
    let cfg = Arc::new(unattended_config(
        &src, &tgt, &journal, "[50, 50]", 500, "", "",
    ));
    let ctl = Controller::open(cfg.clone()).expect("open");
    ctl.attach(FakeTraffic::from(&ctl));
    ctl.start_upgrade().await.expect("start");
    wait_status(&ctl, "synchronizing", Duration::from_secs(30), |s| {
        s.phase == "synchronizing"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    forward_objects(&src, &tgt).await;
    ctl.shutdown();
    drop(ctl);

    let ctl = Controller::open(cfg).expect("reopen");
    assert_eq!(ctl.status().phase, "synchronizing");
    ctl.attach(FakeTraffic::from(&ctl));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = ctl.status();
    assert_eq!(
        (st.phase.as_str(), st.state.as_str()),
        ("synchronizing", "running")
    );
    forward_objects(&src, &tgt).await;
    set_sync_workers(&connect(&tgt).await, 2).await.unwrap();
    finish(&ctl, &src, &tgt, t0).await;
    assert_eq!(
        count(&connect(&tgt).await, "SELECT count(*) FROM app.events").await,
        20000
    );
    let h = ctl.history(500).await.unwrap();
    assert!(
        h.iter().any(|e| e.actor == "resume"),
        "the resumed plan is journaled"
    );
    ctl.shutdown();
}

/// Killed between two shift steps (after a PAUSE / RESUME in the first hold): the restarted
/// proxy gets the journaled weight back at once, and the plan goes on from the next step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_between_shift_steps() {
    init_tracing();
    let t0 = Instant::now();
    let (src, tgt) = pair(ServerOptions::default(), ServerOptions::default()).await;
    connect(&src)
        .await
        .batch_execute(SOURCE_SCHEMA)
        .await
        .unwrap();
    let journal = journal_path("kill-shift");
    let cfg = Arc::new(unattended_config(
        &src,
        &tgt,
        &journal,
        "[25, 25, 50]",
        1500,
        "",
        "",
    ));
    let ctl = Controller::open(cfg.clone()).expect("open");
    let traffic = FakeTraffic::from(&ctl);
    ctl.attach(traffic.clone());
    ctl.start_upgrade().await.expect("start");
    wait_status(&ctl, "the first hold", Duration::from_secs(40), |s| {
        assert_ne!(s.state, "error", "{s:?}");
        s.step.as_deref() == Some("health_check:1")
    })
    .await;

    // PAUSE / RESUME inside the first hold.
    let m = ctl.pause_upgrade().await.expect("pause");
    eprintln!("{m}");
    let st = ctl.status();
    assert_eq!((st.state.as_str(), st.target_weight), ("paused", 25));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ctl.status().state, "paused");
    assert!(ctl
        .pause_upgrade()
        .await
        .expect("pause again")
        .contains("already"));
    ctl.resume_upgrade().await.expect("resume");

    wait_step_done(&ctl, "health_check:1", 20).await;
    ctl.shutdown();
    drop(ctl);
    // The kill lands right after health_check:1 (weight 25), or just after shift_traffic:2
    // published 50 when the plan was quicker than this test.
    let before = traffic.weight_history();
    eprintln!("killed with weights {before:?}");
    assert!(before == vec![25] || before == vec![25, 50], "{before:?}");
    let seen = *before.last().unwrap();

    let ctl = Controller::open(cfg).expect("reopen");
    // The journal is written before the weight is published: a kill between the two (the
    // journal write of shift_traffic:2 finishing on its blocking thread after the plan task
    // was dropped) leaves the journal one step ahead of what the proxy saw. The restart
    // publishes the journaled weight.
    let w = ctl.journaled_weight();
    assert!(
        w == seen || (seen == 25 && w == 50),
        "journaled {w}, proxy saw {before:?}"
    );
    let traffic = FakeTraffic::from(&ctl);
    ctl.attach(traffic.clone());
    assert_eq!(traffic.weight(), w, "attach publishes the journaled weight");
    finish(&ctl, &src, &tgt, t0).await;
    let mut want = vec![w];
    want.extend([25u8, 50, 100].into_iter().filter(|x| *x > w));
    want.push(0);
    assert_eq!(traffic.weight_history(), want);
    let steps = ctl.steps().await.unwrap();
    let hc1 = steps.iter().find(|s| s.key == "health_check:1").unwrap();
    assert_eq!(
        hc1.attempts, 2,
        "the hold interrupted by the pause ran again: {hc1:?}"
    );
    ctl.shutdown();
}

/// Killed inside the cutover, in the pause before the swap: the restart abandons that attempt
/// (traffic stays on the source, the reverse slot goes) and the unattended plan cuts over again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_inside_cutover_before_the_swap() {
    init_tracing();
    let t0 = Instant::now();
    let (src, tgt) = pair(ServerOptions::default(), ServerOptions::default()).await;
    connect(&src)
        .await
        .batch_execute(SOURCE_SCHEMA)
        .await
        .unwrap();
    connect(&src).await.batch_execute(LOAD_TABLE).await.unwrap();
    let journal = journal_path("kill-cut-before");
    let cfg = Arc::new(unattended_config(&src, &tgt, &journal, "[]", 500, "", ""));
    let ctl = Controller::open(cfg.clone()).expect("open");
    let traffic = FakeTraffic::from(&ctl);
    traffic.die_on_pause.store(true, Ordering::SeqCst);
    ctl.attach(traffic.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let w = writers(&traffic, &src, &tgt, &stop).await;
    ctl.start_upgrade().await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(40);
    while !traffic.died.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "no cutover: {:?}", ctl.status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The proxy dies with pgshift: its sessions stop.
    let written = acknowledged(&stop, w).await;
    assert_eq!(ctl.status().phase, "cutting_over");
    ctl.shutdown();
    drop(ctl);

    let ctl = Controller::open(cfg).expect("reopen");
    assert_eq!(ctl.serving_side(), (Side::Source, 1));
    let traffic = FakeTraffic::from(&ctl);
    ctl.attach(traffic.clone());
    finish(&ctl, &src, &tgt, t0).await;
    assert_eq!(*traffic.switches.lock().unwrap(), vec![(Side::Target, 2)]);
    eprintln!("{written} rows acknowledged on the source before the crash");
    assert!(written > 0);
    assert_eq!(
        count(&connect(&tgt).await, "SELECT count(*) FROM load").await,
        written,
        "no acknowledged write lost"
    );
    let h = ctl.history(500).await.unwrap();
    assert!(
        h.iter().any(|e| e
            .message
            .contains("cutover interrupted by a restart before the swap")),
        "the abandoned attempt is in the history"
    );
    ctl.shutdown();
}

/// Killed inside the cutover right after the swap was journaled: the restart finishes the
/// post-swap steps (reverse subscription, old subscription dropped) and the plan goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_inside_cutover_after_the_swap() {
    init_tracing();
    let t0 = Instant::now();
    let (src, tgt) = pair(ServerOptions::default(), ServerOptions::default()).await;
    connect(&src)
        .await
        .batch_execute(SOURCE_SCHEMA)
        .await
        .unwrap();
    connect(&src).await.batch_execute(LOAD_TABLE).await.unwrap();
    let journal = journal_path("kill-cut-after");
    let cfg = Arc::new(unattended_config(
        &src, &tgt, &journal, "[100]", 500, "", "",
    ));
    let ctl = Controller::open(cfg.clone()).expect("open");
    let traffic = FakeTraffic::from(&ctl);
    traffic.die_on_switch.store(true, Ordering::SeqCst);
    ctl.attach(traffic.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let w = writers(&traffic, &src, &tgt, &stop).await;
    ctl.start_upgrade().await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(40);
    while !traffic.died.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "no cutover: {:?}", ctl.status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let written = acknowledged(&stop, w).await;
    ctl.shutdown();
    drop(ctl);

    let ctl = Controller::open(cfg).expect("reopen");
    assert_eq!(
        ctl.serving_side(),
        (Side::Target, 2),
        "the swap was journaled before switch_to"
    );
    assert_eq!(
        ctl.journaled_weight(),
        0,
        "weight 0 journaled with the swap"
    );
    let traffic = FakeTraffic::from(&ctl);
    ctl.attach(traffic.clone());
    assert_eq!(traffic.weight(), 0);
    finish(&ctl, &src, &tgt, t0).await;
    eprintln!("{written} rows acknowledged on the source before the crash");
    assert!(written > 0);
    assert_eq!(
        count(&connect(&tgt).await, "SELECT count(*) FROM load").await,
        written,
        "no acknowledged write lost"
    );
    ctl.shutdown();
}
