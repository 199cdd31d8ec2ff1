//! The whole plan against real servers (PostgreSQL 13 → 17 from the `integration` harness):
//! unattended with local provisioning, the weighted shift with health checks (a failing target
//! moves traffic back and pauses the plan; lag raises an alert), and a rollback during
//! provisioning. The proxy is the test double of `common`, whose traffic counters are driven
//! by real queries ([`Load`]).

mod common;

use common::*;
use control::provider::{euid, lookup_user, Local};
use control::{Controller, Side, TrafficControl};
use integration::{binaries, free_port, ServerOptions, PG_OS_USER};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A server pgshift provisions in a test: stopped (immediate) and deleted when dropped, even
/// when the test fails.
struct Provisioned {
    bindir: PathBuf,
    dir: PathBuf,
}

impl Drop for Provisioned {
    fn drop(&mut self) {
        let data = self.dir.join("t17");
        if data.join("postmaster.pid").exists() {
            let mut cmd = std::process::Command::new(self.bindir.join("pg_ctl"));
            cmd.arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            if let Some(u) = run_as() {
                let u = lookup_user(&u).expect("server user");
                cmd.uid(u.uid).gid(u.gid);
            }
            let _ = cmd.status();
        }
        if std::env::var_os("PGSHIFT_KEEP_DATA").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The system user servers run as when the tests run as root (the harness's).
fn run_as() -> Option<String> {
    (euid() == 0).then(|| PG_OS_USER.to_string())
}

fn run_as_line() -> String {
    run_as()
        .map(|u| format!("run_as = \"{u}\"\n"))
        .unwrap_or_default()
}

/// `[target]` + `[target.provision]` for a PostgreSQL 17 that pgshift makes in `dir/t17`.
fn provisioned_target(dir: &Path, port: u16, dbname: &str) -> (String, PathBuf) {
    let bindir = binaries(17).expect("PostgreSQL 17 binaries").bindir;
    let text = format!(
        "[target]\nhost = \"127.0.0.1\"\nport = {port}\ndbname = \"{dbname}\"\nuser = \"postgres\"\npassword = \"tgt-pw\"\n\n\
         [target.provision]\nprovider = \"local\"\nmajor = 17\nbindir = \"{}\"\ndata_dir = \"{}\"\n{}\
         settings = {{ fsync = false, synchronous_commit = \"off\", max_connections = 50, shared_buffers = \"32MB\" }}\n",
        bindir.display(),
        dir.join("t17").display(),
        run_as_line()
    );
    (text, bindir)
}

fn test_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pgshift-plan-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("test dir");
    d
}

/// The acceptance run: START UPGRADE on a 13 source, unattended to the end: ValidateInput,
/// ProvisionTarget (initdb of a 17 with the source's roles and database), replication, the
/// weighted shift 25/25/50 with health checks under read traffic, cutover, the hold after it,
/// DetachOld, DecommissionSource (final pg_dump, then the source stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unattended_plan_13_to_17_with_local_provisioning() {
    init_tracing();
    let t0 = Instant::now();
    let mut src = start(13, ServerOptions::default()).await;
    let s = connect(&src).await;
    s.batch_execute("CREATE ROLE app_owner NOLOGIN; CREATE ROLE app_user LOGIN PASSWORD 'app-pw' CONNECTION LIMIT 20; GRANT app_owner TO app_user")
        .await
        .expect("roles");
    s.batch_execute("CREATE DATABASE app OWNER app_owner")
        .await
        .expect("db");
    let a = src.connect("app").await.expect("connect app");
    a.batch_execute(
        "SET ROLE app_owner;
         CREATE SCHEMA shop;
         CREATE TABLE shop.items (id serial PRIMARY KEY, name text NOT NULL, price numeric);
         INSERT INTO shop.items (name, price) SELECT 'item ' || g, g FROM generate_series(1, 3000) g;
         RESET ROLE;
         GRANT USAGE ON SCHEMA shop TO app_user;
         GRANT SELECT ON shop.items TO app_user;",
    )
    .await
    .expect("source schema");

    let dir = test_dir("unattended");
    let port = free_port();
    let (target, bindir) = provisioned_target(&dir, port, "app");
    let _guard = Provisioned {
        bindir,
        dir: dir.clone(),
    };
    let dump = dir.join("dumps").join("final.dump");
    let journal = dir.join("state").join("pgshift.db");
    let text = format!(
        "[journal]\npath = \"{}\"\n\n{}\n{target}\n\
         [source.provision]\nmajor = 13\nbindir = \"{}\"\ndata_dir = \"{}\"\n{}\n\
         [[users]]\nname = \"app\"\npassword = \"x\"\nserver_user = \"app_user\"\n\n\
         [upgrade]\ndrain_timeout_ms = 2000\ncatchup_timeout_ms = 10000\npoll_interval_ms = 100\n\
         shift = [25, 25, 50]\nshift_hold_ms = 1500\ndecommission_source = true\nfinal_dump = \"{}\"\n\n\
         [health]\ninterval_ms = 200\nwindow_ms = 2000\nmin_transactions = 20\n\n\
         [replication]\npg_dump = \"{}\"\npsql = \"{}\"\n",
        journal.display(),
        server_toml("source", &src, "app"),
        src.binaries.bindir.display(),
        src.datadir.display(),
        run_as_line(),
        dump.display(),
        integration::client_bin("pg_dump").display(),
        integration::client_bin("psql").display()
    );
    let cfg = Arc::new(load_config(&text));
    let ctl = Controller::open(cfg.clone()).expect("open");
    let traffic = FakeTraffic::from(&ctl);
    ctl.attach(traffic.clone());
    let load = Load::start(traffic.clone(), &src, ("127.0.0.1", port, "tgt-pw")).await;

    let msg = ctl
        .start_upgrade()
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    assert!(msg.contains("unattended"), "{msg}");
    let mut seen_phases = vec![];
    let st = loop {
        let st = ctl.status();
        if seen_phases.last() != Some(&st.phase) {
            eprintln!(
                "[{:>5} ms] phase {} ({}%, step {:?})",
                t0.elapsed().as_millis(),
                st.phase,
                st.percent,
                st.step
            );
            seen_phases.push(st.phase);
        }
        if st.state == "error" || (st.phase == "done" && st.state == "done") {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(55) {
            print_history(&ctl, 80).await;
            panic!("plan not done in time: {st:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (on_src, on_tgt) = load.finish().await;
    if st.state == "error" {
        print_history(&ctl, 80).await;
        panic!("plan failed: {st:?}");
    }
    eprintln!(
        "plan done in {:?}; load: {on_src} on source, {on_tgt} on target",
        t0.elapsed()
    );
    print_history(&ctl, 200).await;
    for p in ["provisioning", "health_check", "cut_over", "done"] {
        assert!(
            seen_phases.iter().any(|s| *s == p),
            "phase {p} not seen in {seen_phases:?}"
        );
    }
    // A one-table initial copy can be over within one 20 ms poll: the step's journal says it.
    let steps = ctl.steps().await.unwrap();
    assert!(
        seen_phases.iter().any(|s| *s == "synchronizing")
            || steps
                .iter()
                .any(|s| s.key == "wait_for_sync" && s.status == control::journal::StepStatus::Done),
        "no initial copy seen in {seen_phases:?}"
    );
    assert_eq!(st.percent, 100);
    assert_eq!((st.source_weight, st.target_weight), (0, 100));
    assert_eq!(st.last_error, None);
    assert_eq!(
        traffic.weight_history(),
        vec![25, 50, 100, 0],
        "shift weights, then 0 at the swap"
    );
    assert_eq!(traffic.route().side, Side::Target);
    let stats = traffic.stats();
    assert!(stats.target.transactions > 100, "{stats:?}");
    assert_eq!(stats.target.errors, 0, "{stats:?}");

    // Every plan step is done, once.
    let steps = ctl.steps().await.unwrap();
    for (key, _) in ctl.plan() {
        let s = steps
            .iter()
            .find(|s| s.key == key)
            .unwrap_or_else(|| panic!("step {key} missing"));
        assert_eq!(s.status, control::journal::StepStatus::Done, "{s:?}");
        assert_eq!(s.attempts, 1, "{s:?}");
    }
    let detail = |k: &str| {
        steps
            .iter()
            .find(|s| s.key == k)
            .and_then(|s| s.detail.clone())
            .unwrap_or_default()
    };
    assert!(
        detail("provision_target").contains("initdb of PostgreSQL 17"),
        "{}",
        detail("provision_target")
    );
    assert!(
        detail("provision_target").contains("app_owner"),
        "{}",
        detail("provision_target")
    );
    assert!(detail("configure_params").contains("logical driver"));
    assert!(detail("install_extension").contains("logical driver"));
    assert!(
        detail("health_check:2").starts_with("passed"),
        "{}",
        detail("health_check:2")
    );
    assert!(
        detail("decommission_source").contains("source server stopped"),
        "{}",
        detail("decommission_source")
    );
    let history = ctl.history(500).await.unwrap();
    assert!(history
        .iter()
        .any(|h| h.step.as_deref() == Some("shift_traffic:3") && h.kind == "step"));

    // The target: made by pgshift, the roles with their passwords, the data, no replication left.
    assert!(dir.join("t17").join(control::provider::MARKER).exists());
    let app = integration::stack::connect(&format!(
        "host=127.0.0.1 port={port} user=app_user password=app-pw dbname=app"
    ))
    .await
    .expect("app_user logs in on the target with the source's password");
    assert_eq!(count(&app, "SELECT count(*) FROM shop.items").await, 3000);
    let t = integration::stack::connect(&format!(
        "host=127.0.0.1 port={port} user=postgres password=tgt-pw dbname=app"
    ))
    .await
    .expect("target");
    assert!(objects(&t).await.is_empty(), "{:?}", objects(&t).await);
    assert_eq!(
        count(
            &t,
            "SELECT current_setting('server_version_num')::int8 / 10000"
        )
        .await,
        17
    );
    assert_eq!(
        count(
            &t,
            "SELECT count(*) FROM pg_roles WHERE rolname = 'app_user' AND rolconnlimit = 20"
        )
        .await,
        1
    );
    // The source: dumped, then stopped; its data kept.
    let bytes = std::fs::read(&dump).expect("final dump");
    assert!(bytes.starts_with(b"PGDMP"), "custom-format dump");
    assert!(!listening(src.port), "the source was stopped");
    assert!(
        src.datadir.join("PG_VERSION").exists(),
        "the source's data is kept"
    );
    // A second START UPGRADE says it is done.
    let e = ctl.start_upgrade().await.expect_err("done");
    assert!(e.message.contains("done"), "{e}");
    let e = ctl
        .rollback()
        .await
        .expect_err("no rollback after DetachOld");
    assert!(e.message.contains("no longer possible"), "{e}");
    ctl.shutdown();
    src.kill();
    eprintln!("test took {:?}", t0.elapsed());
}

/// A failing target during the weighted shift: first an error rate above the limit (weight
/// back to the previous step's), then RESUME UPGRADE, then the target server stopped (all back
/// on the source). Each time within a second, with the reason in the status and the history,
/// and the plan paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_target_moves_traffic_back_within_a_second() {
    init_tracing();
    let (src, mut tgt) = pair(ServerOptions::default(), ServerOptions::default()).await;
    let s = connect(&src).await;
    s.batch_execute("CREATE TABLE t (id serial PRIMARY KEY, v text); INSERT INTO t (v) SELECT 'x' FROM generate_series(1, 1000)")
        .await
        .unwrap();
    let journal = journal_path("failing");
    let cfg = Arc::new(unattended_config(
        &src,
        &tgt,
        &journal,
        "[25, 25, 50]",
        4000,
        "",
        // The target's failure is what must be detected here, not the latency noise of a
        // loaded 2-core machine (p99 ratios of 3-4 seen before the stop).
        "max_error_rate = 0.05\nmax_p99_ratio = 100.0",
    ));
    let ctl = Controller::open(cfg).expect("open");
    let traffic = FakeTraffic::from(&ctl);
    ctl.attach(traffic.clone());
    let load = Load::start(
        traffic.clone(),
        &src,
        ("127.0.0.1", tgt.port, &tgt.password),
    )
    .await;
    ctl.start_upgrade().await.expect("start");
    wait_step_done(&ctl, "shift_traffic:2", 50).await;
    assert_eq!(traffic.weight(), 50);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let st = ctl.status();
    assert_eq!(
        (st.phase.as_str(), st.state.as_str()),
        ("health_check", "running")
    );
    assert!(
        st.health.as_deref().unwrap_or("").starts_with("ok"),
        "{st:?}"
    );

    // 1. Errors on the target: back to 25 %.
    let t1 = Instant::now();
    load.fail_target.store(true, Ordering::SeqCst);
    while traffic.weight() != 25 {
        assert!(
            t1.elapsed() < Duration::from_secs(3),
            "weight still {}",
            traffic.weight()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let seen = t1.elapsed();
    load.fail_target.store(false, Ordering::SeqCst);
    let r = reaction(&ctl).await;
    eprintln!(
        "ERROR-RATE ROLLBACK: weight 50 -> 25 seen {:.0} ms after the errors began; detection -> weight published {:.3} ms; {}",
        seen.as_secs_f64() * 1000.0,
        r.reaction_ms,
        r.reason
    );
    assert_eq!((r.from_weight, r.to_weight), (50, 25));
    assert!(seen < Duration::from_secs(1), "{seen:?}");
    assert!(r.reaction_ms < 100.0, "{r:?}");
    let st = wait_status(&ctl, "paused", Duration::from_secs(5), |s| {
        s.state == "paused"
    })
    .await;
    assert_eq!(st.target_weight, 25);
    assert!(
        st.last_error
            .as_deref()
            .unwrap_or("")
            .contains("error rate"),
        "{st:?}"
    );
    let h = ctl.history(50).await.unwrap();
    assert!(
        h.iter()
            .any(|e| e.kind == "health" && e.message.contains("published")),
        "{h:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(traffic.weight(), 25, "paused: nothing moves");

    // 2. RESUME UPGRADE: shift step 2 again.
    let m = ctl.resume_upgrade().await.expect("resume");
    eprintln!("{m}");
    wait_status(&ctl, "weight 50 again", Duration::from_secs(10), |s| {
        s.target_weight == 50
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ctl.status().state, "running");

    // 3. The target server goes away: everything back on the source.
    let t2 = Instant::now();
    let tgt = tokio::task::spawn_blocking(move || {
        tgt.kill();
        tgt
    })
    .await
    .unwrap();
    let killed = Instant::now();
    while traffic.weight() != 0 {
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "weight still {}",
            traffic.weight()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let after_kill = killed.elapsed();
    let r = reaction(&ctl).await;
    eprintln!(
        "TARGET-DOWN ROLLBACK: weight 50 -> 0 seen {:.0} ms after the server was down ({:.0} ms after pg_ctl stop -m immediate began); detection -> weight published {:.3} ms; {}",
        after_kill.as_secs_f64() * 1000.0,
        t2.elapsed().as_secs_f64() * 1000.0,
        r.reaction_ms,
        r.reason
    );
    // The target's failing transactions may be judged one round before the probe finds the
    // server gone (50 → 25, then 25 → 0): either way everything is back within the second.
    assert_eq!(r.to_weight, 0, "{r:?}");
    assert!(after_kill < Duration::from_secs(1), "{after_kill:?}");
    let st = wait_status(&ctl, "paused", Duration::from_secs(5), |s| {
        s.state == "paused"
    })
    .await;
    assert_eq!((st.source_weight, st.target_weight), (100, 0));
    let err = st.last_error.unwrap_or_default();
    assert!(err.contains("health check failed"), "{err}");
    let steps = ctl.steps().await.unwrap();
    assert!(
        !steps.iter().any(|s| s.key.starts_with("shift_traffic")
            && s.status == control::journal::StepStatus::Done),
        "the shift steps run again on RESUME UPGRADE: {steps:?}"
    );
    let (_, on_tgt) = load.finish().await;
    assert!(on_tgt > 0);
    ctl.shutdown();
    drop(tgt);
}

/// Replication lag above its limit for longer than the grace stops the shift (state alert),
/// without moving traffic; RESUME UPGRADE goes on once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_over_its_limit_raises_an_alert() {
    init_tracing();
    let (src, tgt) = pair(ServerOptions::default(), ServerOptions::default()).await;
    let s = connect(&src).await;
    s.batch_execute(
        "CREATE TABLE t (id serial PRIMARY KEY, v text); INSERT INTO t (v) VALUES ('a')",
    )
    .await
    .unwrap();
    let journal = journal_path("lag");
    let cfg = Arc::new(unattended_config(
        &src,
        &tgt,
        &journal,
        "[50, 50]",
        5000,
        "approve_cutover = true",
        "max_lag_bytes = 65536\nlag_grace_ms = 1000",
    ));
    let ctl = Controller::open(cfg).expect("open");
    let traffic = FakeTraffic::from(&ctl);
    ctl.attach(traffic.clone());
    ctl.start_upgrade().await.expect("start");
    wait_step_done(&ctl, "shift_traffic:1", 50).await;

    // Hold the apply worker on a lock on the target and write on the source.
    let t = connect(&tgt).await;
    t.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // Many small transactions: the apply worker waits on the lock inside the first one, and
    // the later commits pile up behind it (the slot's confirmed position stays put).
    let t0 = Instant::now();
    for _ in 0..150 {
        s.batch_execute("INSERT INTO t (v) SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 30)")
            .await
            .unwrap();
    }
    let st = wait_status(&ctl, "alert", Duration::from_secs(15), |s| {
        s.state == "alert"
    })
    .await;
    eprintln!("LAG ALERT after {:?}: {:?}", t0.elapsed(), st.last_error);
    assert_eq!(st.phase, "health_check");
    assert_eq!(st.target_weight, 50, "no rollback on lag");
    assert!(
        st.last_error
            .as_deref()
            .unwrap_or("")
            .contains("replication lag"),
        "{st:?}"
    );
    assert!(ctl.last_health_reaction().is_none());
    let h = ctl.history(50).await.unwrap();
    assert!(h.iter().any(|e| e.kind == "alert"), "{h:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(ctl.status().state, "alert", "the plan stays stopped");

    // Lag gone: resume; the plan goes on to the next shift step.
    t.batch_execute("COMMIT").await.unwrap();
    wait_status(&ctl, "lag back", Duration::from_secs(20), |s| {
        s.replication_lag_bytes.is_some_and(|b| b < 65536)
    })
    .await;
    ctl.resume_upgrade().await.expect("resume");
    wait_status(
        &ctl,
        "waiting for INITIATE CUTOVER",
        Duration::from_secs(30),
        |s| {
            assert_ne!(s.state, "error", "{s:?}");
            s.state == "waiting"
        },
    )
    .await;
    let st = ctl.status();
    assert_eq!(
        (st.phase.as_str(), st.target_weight, st.step.as_deref()),
        ("replicating", 100, Some("cutover"))
    );
    assert_eq!(traffic.weight_history(), vec![50, 100]);
    ctl.shutdown();
}

/// ROLLBACK UPGRADE while the target is being provisioned stops what runs and removes what
/// pgshift made; a data directory pgshift did not make is refused before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_during_provisioning_removes_what_it_made() {
    init_tracing();
    let src = start(13, ServerOptions::default()).await;
    let s = connect(&src).await;
    s.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let dir = test_dir("rollback-provision");
    let port = free_port();
    let (target, bindir) = provisioned_target(&dir, port, "postgres");
    let _guard = Provisioned {
        bindir,
        dir: dir.clone(),
    };
    let journal = dir.join("state").join("pgshift.db");
    let text = config_text(
        &src,
        &target,
        &journal,
        "shift = [50]\nshift_hold_ms = 1000",
        "",
    );
    let cfg = Arc::new(load_config(&text));
    let local = Local::target(&cfg).unwrap();

    // Someone else's directory: refused, nothing changed.
    std::fs::create_dir_all(dir.join("t17")).unwrap();
    std::fs::write(dir.join("t17").join("PG_VERSION"), "17\n").unwrap();
    let ctl = Controller::open(cfg.clone()).expect("open");
    ctl.attach(FakeTraffic::from(&ctl));
    let e = ctl.start_upgrade().await.expect_err("foreign data_dir");
    assert!(e.message.contains("was not made by pgshift"), "{e}");
    assert_eq!(ctl.status().phase, "idle");
    std::fs::remove_dir_all(dir.join("t17")).unwrap();

    // Roll back in the middle of provisioning.
    ctl.start_upgrade().await.expect("start");
    wait_status(&ctl, "provisioning", Duration::from_secs(20), |s| {
        s.phase == "provisioning"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t0 = Instant::now();
    let msg = ctl
        .rollback()
        .await
        .unwrap_or_else(|e| panic!("rollback: {e}"));
    eprintln!("ROLLBACK during provisioning ({:?}): {msg}", t0.elapsed());
    let st = ctl.status();
    assert_eq!(
        (st.phase.as_str(), st.state.as_str()),
        ("rolled_back", "done"),
        "{st:?}"
    );
    assert!(
        !dir.join("t17").exists(),
        "the data directory pgshift made is gone"
    );
    assert!(!dir.join("t17.pgshift-initdb").exists());
    assert!(!local.made_by_pgshift());
    assert!(!listening(port), "no server left on the target's port");
    assert!(objects(&s).await.is_empty(), "{:?}", objects(&s).await);
    let h = ctl.history(100).await.unwrap();
    assert!(h
        .iter()
        .any(|e| e.kind == "signal" && e.message == "ROLLBACK UPGRADE"));

    // Again, after provisioning finished (the server runs): stopped and deleted too.
    ctl.start_upgrade().await.expect("start again");
    wait_status(&ctl, "provisioned", Duration::from_secs(40), |s| {
        assert_ne!(s.state, "error", "{s:?}");
        s.phase != control::Phase::Idle
            && !matches!(
                s.phase.as_str(),
                "preflight" | "provisioning" | "rolled_back"
            )
    })
    .await;
    assert!(listening(port));
    let msg = ctl
        .rollback()
        .await
        .unwrap_or_else(|e| panic!("rollback 2: {e}"));
    eprintln!("ROLLBACK after provisioning: {msg}");
    assert!(msg.contains("deleted"), "{msg}");
    assert!(!dir.join("t17").exists());
    assert!(!listening(port));
    assert!(objects(&s).await.is_empty(), "{:?}", objects(&s).await);
    ctl.shutdown();
}

/// After the cutover, during the hold before DetachOld, a failing target rolls traffic back to
/// the source (the cutover protocol the other way), with the reason in the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_target_after_cutover_rolls_back_to_the_source() {
    init_tracing();
    let (src, tgt) = pair(ServerOptions::default(), ServerOptions::default()).await;
    let s = connect(&src).await;
    s.batch_execute("CREATE TABLE t (id serial PRIMARY KEY, v text); INSERT INTO t (v) SELECT 'x' FROM generate_series(1, 1000)")
        .await
        .unwrap();
    let journal = journal_path("after-cutover");
    let cfg = Arc::new(unattended_config(
        &src,
        &tgt,
        &journal,
        "[]",
        20000,
        "",
        "max_error_rate = 0.05",
    ));
    let ctl = Controller::open(cfg).expect("open");
    let traffic = FakeTraffic::from(&ctl);
    ctl.attach(traffic.clone());
    let load = Load::start(
        traffic.clone(),
        &src,
        ("127.0.0.1", tgt.port, &tgt.password),
    )
    .await;
    ctl.start_upgrade().await.expect("start");
    wait_status(
        &ctl,
        "the hold after the cutover",
        Duration::from_secs(40),
        |s| {
            assert_ne!(s.state, "error", "{s:?}");
            s.step.as_deref() == Some("health_check:cutover")
        },
    )
    .await;
    assert_eq!(traffic.route().side, Side::Target);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t1 = Instant::now();
    load.fail_target.store(true, Ordering::SeqCst);
    while traffic.route().side != Side::Source {
        assert!(
            t1.elapsed() < Duration::from_secs(15),
            "still on the target: {:?}",
            ctl.status()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let back = t1.elapsed();
    load.fail_target.store(false, Ordering::SeqCst);
    let st = wait_status(&ctl, "rolled back", Duration::from_secs(15), |s| {
        s.phase == "rolled_back" && s.last_error.is_some()
    })
    .await;
    let r = reaction(&ctl).await;
    eprintln!(
        "AFTER-CUTOVER ROLLBACK: traffic back on the source {:.0} ms after the errors began; detection -> switched back {:.0} ms; {}",
        back.as_secs_f64() * 1000.0,
        r.reaction_ms,
        st.last_error.as_deref().unwrap_or("")
    );
    assert!(r.rolled_back);
    assert!(st.last_error.unwrap().contains("after the cutover"));
    assert_eq!(traffic.route().epoch, 3);
    // Forward replication runs again; the plan can cut over again later.
    let c = connect(&src).await;
    assert_eq!(
        objects(&c).await,
        vec!["pub:pgshift_pub", "slot:pgshift_fwd"]
    );
    load.finish().await;
    ctl.shutdown();
}

/// The last health reaction: it is recorded just after the weight is published, so a test
/// that saw the weight change may look a moment too early.
async fn reaction(ctl: &Controller) -> control::HealthReaction {
    let t = Instant::now();
    loop {
        if let Some(r) = ctl.last_health_reaction() {
            return r;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no health reaction recorded"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
