//! A step after the cutover's swap that fails (PostgreSQL 13 → 17 from the `integration`
//! harness; the proxy is the test double of `common`): the source refuses to create the
//! reverse subscription (an event trigger raises an error, a real server error). The plan's
//! Cutover step must not go on without the way back: it retries the post-swap steps (state
//! `running`, the reason in `last_error`), never reports "traffic is already on the target"
//! while reverse replication is missing, and once the source accepts the subscription the
//! plan goes on; ROLLBACK UPGRADE then brings back what was written on the target.

mod common;

use common::*;
use control::{Controller, CutoverGate, Side, TrafficControl};
use integration::ServerOptions;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A gate that refuses while `closed` is set: the plan waits at its Cutover step until the
/// test has armed the failure.
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
}

impl CutoverGate for Gate {
    fn check(&self) -> Result<(), String> {
        if *self.closed.lock().unwrap() {
            Err("the test is arming the failure".into())
        } else {
            Ok(())
        }
    }
}

/// Refuses CREATE SUBSCRIPTION in sessions where `pgshift_test.refuse` is on (set per
/// database, so every new connection of pgshift's sees it; nothing of it is replicated).
const REFUSE: &str = "
    CREATE FUNCTION refuse_subscription() RETURNS event_trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF current_setting('pgshift_test.refuse', true) = 'on' THEN
            RAISE EXCEPTION 'injected: this server refuses CREATE SUBSCRIPTION';
        END IF;
    END $$;
    CREATE EVENT TRIGGER refuse_subscription ON ddl_command_start
        WHEN TAG IN ('CREATE SUBSCRIPTION') EXECUTE FUNCTION refuse_subscription();
    ALTER DATABASE postgres SET pgshift_test.refuse = 'on';
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_after_the_swap_is_retried_before_the_plan_goes_on() {
    init_tracing();
    let (src, tgt) = pair(ServerOptions::default(), ServerOptions::default()).await;
    let s = connect(&src).await;
    s.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'x' FROM generate_series(1, 500) g",
    )
    .await
    .expect("source schema");
    let journal = journal_path("post-swap");
    // A hold after the cutover longer than the test: the plan stays where rollback works.
    let cfg = Arc::new(unattended_config(
        &src,
        &tgt,
        &journal,
        "[]",
        600_000,
        "max_attempts = 20",
        "",
    ));
    let ctl = Controller::open(cfg).expect("open");
    let gate = Arc::new(Gate::default());
    *gate.closed.lock().unwrap() = true;
    ctl.set_cutover_gate(gate.clone());
    let traffic = FakeTraffic::from(&ctl);
    ctl.attach(traffic.clone());
    ctl.start_upgrade().await.expect("start");
    wait_status(
        &ctl,
        "the plan at the cutover gate",
        Duration::from_secs(120),
        |s| {
            assert_ne!(s.state, "error", "{s:?}");
            s.state == "waiting" && s.step.as_deref() == Some("cutover")
        },
    )
    .await;

    s.batch_execute(REFUSE).await.expect("arm the failure");
    *gate.closed.lock().unwrap() = false;

    // Swapped, and the reverse subscription refused at least twice: the plan stays in the
    // cutover, running, never in the hold after it.
    let t0 = Instant::now();
    let mut failures;
    loop {
        let st = ctl.status();
        assert_ne!(st.state, "error", "the plan gave up: {st:?}");
        assert_ne!(
            st.phase, "cut_over",
            "the plan went on without reverse replication: {st:?}"
        );
        failures = ctl
            .history(500)
            .await
            .expect("history")
            .iter()
            .filter(|e| e.message.contains("refuses CREATE SUBSCRIPTION"))
            .count();
        if failures >= 2 && traffic.route().side == Side::Target {
            assert_eq!(st.phase, "cutting_over", "{st:?}");
            let e = st.last_error.clone().unwrap_or_default();
            assert!(
                e.contains("a step after the swap failed")
                    && e.contains("refuses CREATE SUBSCRIPTION"),
                "{st:?}"
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no refused post-swap step seen: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !ctl.history(500)
            .await
            .expect("history")
            .iter()
            .any(|e| e.message.contains("traffic is already on the target")),
        "a retry skipped the post-swap steps"
    );

    // The source accepts the subscription again: the plan finishes the cutover and holds.
    s.batch_execute("ALTER DATABASE postgres RESET pgshift_test.refuse")
        .await
        .expect("disarm");
    let st = wait_status(
        &ctl,
        "the hold after the cutover",
        Duration::from_secs(60),
        |s| {
            assert_ne!(s.state, "error", "{s:?}");
            s.phase == "cut_over" && s.step.as_deref() == Some("health_check:cutover")
        },
    )
    .await;
    eprintln!(
        "POST-SWAP: {failures} refused attempts, then: {:?}",
        st.last_error
    );
    assert!(
        objects(&s).await.contains(&"sub:pgshift_rev".to_string()),
        "{:?}",
        objects(&s).await
    );

    // The way back works: a row written on the target reaches the source, traffic returns.
    let t = connect(&tgt).await;
    t.batch_execute("INSERT INTO t VALUES (1001, 'after the cutover')")
        .await
        .expect("write on the target");
    ctl.rollback().await.expect("rollback after the cutover");
    assert_eq!(traffic.route().side, Side::Source);
    wait_count(
        &s,
        "SELECT count(*) FROM t WHERE id = 1001",
        1,
        "the target's row on the source",
    )
    .await;
    ctl.shutdown();
    s.batch_execute("DROP EVENT TRIGGER refuse_subscription")
        .await
        .expect("drop trigger");
}
