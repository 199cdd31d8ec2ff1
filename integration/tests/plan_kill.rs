//! `kill -9` of the real pgshift process at each kill point of the unattended plan (issue 3,
//! item 7), then a restart on the same journal: the plan finishes (phase `done`, traffic on
//! the 17), no acknowledged write is lost, and no replication object is left over or made
//! twice. The kill points inside the cutover are hit with `PGSHIFT_FAILPOINT` (the process
//! SIGKILLs itself when the cutover pauses traffic, or when it publishes the new serving side
//! after journaling the swap); the others by `kill -9` from here at the right phase.

use integration::load::{missing_ids, Writer};
use integration::{Stack, StackOptions};
use std::time::{Duration, Instant};

use integration::stack::{field as get, replication_objects};

/// A stack whose plan runs unattended to the end (no approval, no decommission).
async fn stack(shift: &str, hold_ms: u64, failpoint: Option<&str>) -> (Stack, Writer) {
    let stack = Stack::start(StackOptions {
        pgbench_scale: 10,
        extra_config: format!(
            "[upgrade]\nshift = {shift}\nshift_hold_ms = {hold_ms}\npoll_interval_ms = 100\n\
             drain_timeout_ms = 5000\ncatchup_timeout_ms = 20000\nbackoff_initial_ms = 200\n\n\
             [health]\ninterval_ms = 250\nmax_p99_ratio = 100.0\n"
        ),
        env: failpoint
            .map(|f| vec![("PGSHIFT_FAILPOINT".to_string(), f.to_string())])
            .unwrap_or_default(),
        ..Default::default()
    })
    .expect("stack");
    stack.prepare_source().unwrap();
    let writer = Writer::start(stack.app_conninfo(), "acked", Duration::from_millis(5));
    (stack, writer)
}

/// After the restart: the plan finishes, traffic is on the 17, nothing lost or left over.
async fn finish(stack: &Stack, writer: Writer, t0: Instant) {
    let s = stack
        .wait_for("phase done", Duration::from_secs(180), |s| {
            get(s, "phase") == "done"
        })
        .await;
    eprintln!("plan done {:.1?} after the start: {s:?}", t0.elapsed());
    // Writes go on through pgshift on the 17.
    let before = writer.acked_count();
    let deadline = Instant::now() + Duration::from_secs(20);
    while writer.acked_count() < before + 50 {
        assert!(
            Instant::now() < deadline,
            "the writer makes no progress after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v = stack.app_server_major().await.unwrap();
    assert_eq!(v, 17, "clients are on the target");
    let written = writer.stop().await;
    eprintln!(
        "{} writes acknowledged; {} errors while pgshift was down (first: {:?})",
        written.acked.len(),
        written.errors.len(),
        written.errors.first()
    );
    let lost = missing_ids(&stack.target, "app", "acked", &written.acked).unwrap();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes missing on the target: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert_eq!(replication_objects(&stack.source), "", "left on the source");
    assert_eq!(replication_objects(&stack.target), "", "left on the target");
    let hist = stack.admin("SHOW UPGRADE HISTORY").await.unwrap();
    let dup: Vec<String> = hist
        .iter()
        .map(|r| get(r, "message"))
        .filter(|m| m.contains("already exists"))
        .collect();
    assert!(dup.is_empty(), "duplicate objects attempted: {dup:?}");
    assert!(
        hist.iter().any(|r| get(r, "actor") == "resume"),
        "the resumed plan is journaled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_wait_for_sync() {
    let t0 = Instant::now();
    let (mut stack, writer) = stack("[]", 1000, None).await;
    stack.admin("START UPGRADE").await.unwrap();
    let s = stack
        .wait_for("wait_for_sync", Duration::from_secs(60), |s| {
            get(s, "step") == "wait_for_sync"
        })
        .await;
    stack.pgshift.kill9();
    eprintln!("killed in {s:?}");
    // (Table synchronisation slots of the subscription come and go besides these.)
    let ours = |o: String| {
        o.split(',')
            .filter(|x| x.contains(":pgshift"))
            .collect::<Vec<_>>()
            .join(",")
    };
    // The whole instance is carried: database postgres has its own slot (its publication is
    // in database postgres, not listed here).
    let forward = "pub:pgshift_pub,slot:pgshift_fwd,slot:pgshift_postgres_fwd";
    assert_eq!(ours(replication_objects(&stack.source)), forward);
    stack.pgshift.restart().expect("restart");
    // Exactly one of each forward object after the resume.
    stack
        .wait_for("resumed", Duration::from_secs(30), |s| {
            get(s, "state") == "running" || get(s, "phase") != "synchronizing"
        })
        .await;
    let o = ours(replication_objects(&stack.source));
    assert!(
        o == forward || o.is_empty(),
        "source after the restart: {o}"
    );
    finish(&stack, writer, t0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_shift_steps() {
    let t0 = Instant::now();
    let (mut stack, writer) = stack("[25, 25, 50]", 3000, None).await;
    stack.admin("START UPGRADE").await.unwrap();
    stack
        .wait_for("the first hold", Duration::from_secs(90), |s| {
            get(s, "step") == "health_check:1" && get(s, "target_weight") == "25"
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.pgshift.kill9();
    stack.pgshift.restart().expect("restart");
    // The journaled weight is back in force at once, and the plan goes on from there.
    let s = stack.status().await.unwrap();
    let w: u32 = get(&s, "target_weight").parse().unwrap();
    assert!(w >= 25, "weight after the restart: {s:?}");
    let share = target_share(&stack).await;
    eprintln!("after the restart: weight {w} %, observed share on the target {share} %");
    assert!(share > 5.0, "the restarted proxy does not shift: {share} %");
    finish(&stack, writer, t0).await;
}

/// The share (%) of 200 read-only transactions (`SHOW port`) that the target answered.
async fn target_share(stack: &Stack) -> f64 {
    let c = stack.app_client().await.unwrap();
    let tgt = stack.target.port.to_string();
    let mut n = 0;
    for _ in 0..200 {
        let r = integration::stack::rows(c.simple_query("SHOW port").await.unwrap());
        if r[0]["port"].as_deref() == Some(tgt.as_str()) {
            n += 1;
        }
    }
    f64::from(n) / 2.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_cutover_before_the_swap() {
    let t0 = Instant::now();
    let (mut stack, writer) = stack("[]", 1000, Some("pause")).await;
    stack.admin("START UPGRADE").await.unwrap();
    stack.crashed_at_failpoint("Pause").await;
    stack.pgshift.restart().expect("restart");
    finish(&stack, writer, t0).await;
    let hist = stack.admin("SHOW UPGRADE HISTORY").await.unwrap();
    assert!(
        hist.iter()
            .any(|r| get(r, "message").contains("cutover interrupted by a restart before the swap")),
        "the abandoned attempt is in the history"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_cutover_after_the_swap() {
    let t0 = Instant::now();
    let (mut stack, writer) = stack("[]", 1000, Some("switch")).await;
    stack.admin("START UPGRADE").await.unwrap();
    stack.crashed_at_failpoint("Switch").await;
    stack.pgshift.restart().expect("restart");
    // The swap was journaled before the crash: the restarted proxy serves the target at once.
    let s = stack.status().await.unwrap();
    assert_eq!(get(&s, "epoch"), "2", "{s:?}");
    let v = stack.app_server_major().await.unwrap();
    assert_eq!(
        v, 17,
        "the restarted proxy serves the side the journal says"
    );
    finish(&stack, writer, t0).await;
}

/// `pgshift upgrade --config FILE` runs the whole plan by itself (no START UPGRADE); run again
/// on the finished journal it changes nothing and keeps serving the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgshift_upgrade_runs_the_plan_and_a_second_run_does_nothing() {
    let t0 = Instant::now();
    let (mut stack, writer) = stack("[50]", 1000, None).await;
    stack
        .pgshift
        .start_again("upgrade")
        .expect("pgshift upgrade");
    let s = stack
        .wait_for("phase done", Duration::from_secs(180), |s| {
            get(s, "phase") == "done"
        })
        .await;
    eprintln!("`pgshift upgrade` done after {:.1?}: {s:?}", t0.elapsed());
    let before = stack.admin("SHOW UPGRADE HISTORY").await.unwrap().len();
    stack
        .pgshift
        .start_again("upgrade")
        .expect("pgshift upgrade again");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = stack.status().await.unwrap();
    assert_eq!(
        (get(&s, "phase").as_str(), get(&s, "state").as_str()),
        ("done", "done")
    );
    let new: Vec<String> = stack
        .history_lines()
        .await
        .unwrap()
        .into_iter()
        .skip(before)
        .collect();
    assert!(new.is_empty(), "the second run journaled: {new:#?}");
    let v = stack.app_server_major().await.unwrap();
    assert_eq!(v, 17);
    let written = writer.stop().await;
    let lost = missing_ids(&stack.target, "app", "acked", &written.acked).unwrap();
    assert!(lost.is_empty(), "{} acknowledged writes lost", lost.len());
}
