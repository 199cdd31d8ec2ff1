//! The cutover gate (the proxy's validation results, [`CutoverGate`]) against real servers,
//! PostgreSQL 13 → 17 from the `integration` harness; the gate and the proxy are test doubles.
//! With `approve_cutover`, INITIATE CUTOVER is refused while the gate refuses; unattended,
//! the plan's Cutover step waits (state `waiting`, reason shown, one history entry), PAUSE /
//! RESUME / ROLLBACK and a restart work while it waits, and it cuts over by itself once the
//! gate passes. Also the positions the mirror's lag-aware re-check reads.

mod common;

use common::*;
use control::{Controller, CutoverGate, Side, TrafficControl};
use integration::ServerOptions;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A gate that refuses with `reason` while it is set, and counts how often it is asked.
#[derive(Default)]
struct Gate {
    reason: Mutex<Option<String>>,
    calls: AtomicUsize,
}

impl Gate {
    fn refusing(reason: &str) -> Arc<Gate> {
        let g = Arc::new(Gate::default());
        g.set(Some(reason));
        g
    }
    fn set(&self, reason: Option<&str>) {
        *self.reason.lock().unwrap() = reason.map(str::to_string);
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl CutoverGate for Gate {
    fn check(&self) -> Result<(), String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.reason.lock().unwrap().clone() {
            Some(r) => Err(r),
            None => Ok(()),
        }
    }
}

const HIGH: &str = "validation error rate 0.8 % is above [validation] error_threshold 0.1 %";
const HIGHER: &str = "validation error rate 1.2 % is above [validation] error_threshold 0.1 %";

async fn history_count(ctl: &Controller, needle: &str) -> usize {
    ctl.history(500)
        .await
        .expect("history")
        .iter()
        .filter(|e| e.message.contains(needle))
        .count()
}

async fn wait_gate_waiting(ctl: &Controller, reason: &str) -> control::UpgradeStatus {
    wait_status(
        ctl,
        "the plan waiting at the cutover gate",
        Duration::from_secs(120),
        |s| {
            assert!(s.state != "error", "upgrade failed: {s:?}");
            s.state == "waiting"
                && s.step.as_deref() == Some("cutover")
                && s.last_error.as_deref().is_some_and(|e| e.contains(reason))
        },
    )
    .await
}

/// approve_cutover = true: INITIATE CUTOVER is refused with the gate's reason (nothing
/// paused, nothing changed) and goes through once the gate passes; the plan's own approval
/// wait is unchanged. Then the unattended plan on the same servers: it waits at the gate
/// (state `waiting`, reason in last_error, one history entry however long it waits, the gate
/// asked every poll interval), ROLLBACK UPGRADE while it waits, START again, INITIATE CUTOVER
/// refused, PAUSE / RESUME, a restart of the controller, and once the gate passes it cuts over
/// by itself and runs to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_waits_for_the_validation_gate() {
    init_tracing();
    let (src, tgt) = pair(ServerOptions::default(), ServerOptions::default()).await;
    let s = connect(&src).await;
    let t = connect(&tgt).await;
    s.batch_execute(SOURCE_SCHEMA).await.expect("source schema");

    // ---- approve_cutover = true --------------------------------------------------------
    let journal = journal_path("gate-approve");
    let cfg = Arc::new(make_config(&src, &tgt, &journal));
    let ctl = Controller::open(cfg.clone()).expect("open");
    let gate = Gate::refusing(HIGH);
    ctl.set_cutover_gate(gate.clone());
    // A second gate is ignored: the first one stays.
    ctl.set_cutover_gate(Arc::new(Gate::default()));
    let traffic = FakeTraffic::from(&ctl);
    ctl.attach(traffic.clone());

    // Positions before replication runs: the source's position works, waiting does not.
    let lsn0 = ctl.source_current_lsn().await.expect("source lsn");
    assert!(lsn0 > 0);
    let e = ctl
        .wait_target_applied(lsn0, Duration::from_millis(100))
        .await
        .expect_err("no replication yet");
    assert!(e.message.contains("forward replication must run"), "{e}");

    ctl.start_upgrade().await.expect("start");
    let st = wait_phase(&ctl, "replicating", 120).await;
    assert_eq!(st.state, "waiting");
    assert!(st.last_error.is_none(), "{st:?}");

    let e = ctl
        .initiate_cutover()
        .await
        .expect_err("the gate refuses the cutover");
    assert_eq!(e.message, format!("cutover refused: {HIGH}"));
    assert_eq!(traffic.pauses.load(Ordering::SeqCst), 0, "nothing paused");
    let st = ctl.status();
    assert_eq!(
        (st.phase.as_str(), st.state.as_str()),
        ("replicating", "waiting")
    );
    assert_eq!(traffic.route().side, Side::Source);
    assert_eq!(
        history_count(&ctl, &format!("cutover refused: {HIGH}")).await,
        1
    );

    // The mirror's re-check: the target applies what the source has.
    s.batch_execute(
        "INSERT INTO app.accounts (name) SELECT 'lsn ' || g FROM generate_series(1, 100) g",
    )
    .await
    .expect("insert");
    let lsn = ctl.source_current_lsn().await.expect("source lsn");
    assert!(lsn > lsn0);
    let t0 = Instant::now();
    assert!(ctl
        .wait_target_applied(lsn, Duration::from_secs(30))
        .await
        .expect("wait applied"));
    eprintln!("target applied the source's position in {:?}", t0.elapsed());
    assert_eq!(
        count(
            &t,
            "SELECT count(*) FROM app.accounts WHERE name LIKE 'lsn %'"
        )
        .await,
        100
    );
    // Seen applied already: answers at once.
    let t0 = Instant::now();
    assert!(ctl
        .wait_target_applied(lsn, Duration::from_secs(1))
        .await
        .unwrap());
    assert!(
        t0.elapsed() < Duration::from_millis(50),
        "{:?}",
        t0.elapsed()
    );
    // A position the source has not reached: false after the timeout.
    let t0 = Instant::now();
    assert!(!ctl
        .wait_target_applied(lsn + (1 << 40), Duration::from_millis(300))
        .await
        .unwrap());
    assert!(t0.elapsed() >= Duration::from_millis(300));

    assert!(gate.calls() >= 1);
    gate.set(None);
    let m = ctl
        .initiate_cutover()
        .await
        .expect("cutover once the gate passes");
    eprintln!("cutover: {m}");
    assert_eq!(traffic.route().side, Side::Target);
    let e = ctl
        .wait_target_applied(lsn, Duration::from_millis(100))
        .await
        .expect_err("traffic on the target");
    assert!(e.message.contains("traffic on the target"), "{e}");
    // A rollback is never gated.
    gate.set(Some(HIGH));
    ctl.rollback().await.expect("rollback to the source");
    assert_eq!(traffic.route().side, Side::Source);
    let e = ctl.initiate_cutover().await.expect_err("gated again");
    assert!(e.message.starts_with("cutover refused: "), "{e}");
    ctl.rollback().await.expect("remove replication");
    assert_eq!(ctl.status().phase, "rolled_back");
    ctl.shutdown();
    drop(ctl);

    // ---- unattended ----------------------------------------------------------------------
    let journal = journal_path("gate-unattended");
    let cfg = Arc::new(unattended_config(&src, &tgt, &journal, "[]", 500, "", ""));
    let ctl = Controller::open(cfg.clone()).expect("open");
    let gate = Gate::refusing(HIGH);
    ctl.set_cutover_gate(gate.clone());
    let traffic = FakeTraffic::from(&ctl);
    ctl.attach(traffic.clone());

    // ROLLBACK UPGRADE while the plan waits at the gate.
    ctl.start_upgrade().await.expect("start");
    let st = wait_gate_waiting(&ctl, HIGH).await;
    assert_eq!(st.phase, "replicating");
    assert!(
        st.last_error
            .as_deref()
            .unwrap()
            .starts_with(&format!("cutover waits: {HIGH}")),
        "{st:?}"
    );
    let m = ctl.rollback().await.expect("rollback while waiting");
    eprintln!("rollback: {m}");
    let st = ctl.status();
    assert_eq!(
        (st.phase.as_str(), st.state.as_str()),
        ("rolled_back", "done")
    );
    assert_eq!(traffic.route().side, Side::Source);
    assert!(
        traffic.switches.lock().unwrap().is_empty(),
        "no cutover happened"
    );

    // Again, to the end.
    ctl.start_upgrade().await.expect("start again");
    wait_gate_waiting(&ctl, HIGH).await;
    let calls = gate.calls();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Asked every poll interval (100 ms).
    assert!(gate.calls() >= calls + 5, "{} -> {}", calls, gate.calls());
    // A new reason shows in the status; the history has one entry for the wait.
    gate.set(Some(HIGHER));
    wait_gate_waiting(&ctl, HIGHER).await;
    let id = ctl.steps().await.unwrap();
    assert!(
        !id.iter().any(|s| s.key == "cutover"),
        "the cutover step does not start while it waits: {id:?}"
    );
    let e = ctl.initiate_cutover().await.expect_err("refused");
    assert_eq!(e.message, format!("cutover refused: {HIGHER}"));
    assert_eq!(traffic.pauses.load(Ordering::SeqCst), 0);

    // PAUSE / RESUME while it waits.
    let m = ctl.pause_upgrade().await.expect("pause");
    eprintln!("pause: {m}");
    assert_eq!(ctl.status().state, "paused");
    let calls = gate.calls();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        gate.calls() <= calls + 1,
        "a paused plan does not ask the gate"
    );
    ctl.resume_upgrade().await.expect("resume");
    wait_gate_waiting(&ctl, HIGHER).await;

    // A restart while it waits: the new controller's plan waits again by itself.
    ctl.shutdown();
    drop(ctl);
    let ctl = Controller::open(cfg.clone()).expect("reopen");
    assert_eq!(ctl.status().state, "waiting");
    let gate2 = Gate::refusing(HIGHER);
    ctl.set_cutover_gate(gate2.clone());
    let traffic = FakeTraffic::from(&ctl);
    ctl.attach(traffic.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_gate_waiting(&ctl, HIGHER).await;
    assert!(gate2.calls() >= 2, "the resumed plan asks the gate");
    assert_eq!(traffic.route().side, Side::Source);

    // One entry per wait in the history (start, resume, restart: 3), not one per check.
    let waits = history_count(&ctl, "cutover waits: ").await;
    assert_eq!(waits, 4, "rollback's wait + 3 waits of the second run");

    // The gate passes: the plan cuts over by itself and runs to the end.
    gate2.set(None);
    let st = wait_status(&ctl, "plan done", Duration::from_secs(120), |s| {
        assert!(s.state != "error", "upgrade failed: {s:?}");
        s.phase == "done"
    })
    .await;
    assert_eq!(st.state, "done");
    assert!(st.last_error.is_none(), "{st:?}");
    assert_eq!(traffic.route().side, Side::Target);
    assert_eq!(history_count(&ctl, "cutover allowed after").await, 1);
    print_history(&ctl, 30).await;
    ctl.shutdown();
}
