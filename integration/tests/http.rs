//! The HTTP server of pgshift on real servers: /metrics counts the transactions made through
//! pgshift, /progress, /clients, /servers, the upgrade commands, and `pgshift status`.

use integration::stack::{APP_USER, DB};
use integration::{free_port, Stack, StackOptions};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One HTTP/1.1 request; (status, content type, body).
fn http(port: u16, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to the HTTP port {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("end of headers");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line of {head}"));
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "unexpected chunked answer to {method} {path}"
    );
    (status, ctype, body.to_string())
}

fn get_json(port: u16, path: &str) -> Value {
    let (status, ctype, body) = http(port, "GET", path);
    assert_eq!(status, 200, "GET {path}: {body}");
    assert!(ctype.starts_with("application/json"), "GET {path}: {ctype}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn post(port: u16, path: &str) -> (u16, Value) {
    let (status, _, body) = http(port, "POST", path);
    let v: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("POST {path}: {e}: {body}"));
    (status, v)
}

/// The value of the first sample line of `text` that starts with `prefix` (0 when absent).
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn metrics(port: u16) -> String {
    let (status, ctype, body) = http(port, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    body
}

/// Polls /metrics until `pred` holds (the control-plane gauges are sampled every second).
async fn wait_metrics(port: u16, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = metrics(port);
        if pred(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what} not in /metrics:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_metrics_progress_clients_and_upgrade_commands() {
    let port = free_port();
    let stack = Stack::start(StackOptions {
        pgbench_scale: 1,
        extra_config: format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"),
        ..Default::default()
    })
    .expect("stack");
    stack
        .source
        .psql(DB, "ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
        .unwrap();

    // /health, as soon as the HTTP port is up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "HTTP port {port} not listening; log:\n{}",
            stack.pgshift.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, body) = http(port, "GET", "/health");
    assert_eq!((status, body.as_str()), (200, "ok"));

    // Transactions through pgshift are counted per side, errors too.
    let before = metrics(port);
    let app = stack.app_client().await.expect("app client");
    for _ in 0..20 {
        app.simple_query("SELECT 1").await.expect("SELECT 1");
    }
    // Last: the client has the ErrorResponse before the ReadyForQuery that ends the unit has
    // passed the proxy (a query sent meanwhile would join the same unit).
    app.simple_query("SELECT 1/0")
        .await
        .expect_err("division by zero");
    let m = wait_metrics(port, "21 transactions", |m| {
        sample(m, "pgshift_transactions_total{side=\"source\"}")
            - sample(&before, "pgshift_transactions_total{side=\"source\"}")
            >= 21.0
    })
    .await;
    for name in [
        "pgshift_client_connections{",
        "pgshift_busy_sessions ",
        "pgshift_routing_paused ",
        "pgshift_transactions_total{side=\"source\"}",
        "pgshift_transaction_errors_total{side=\"source\"}",
        "pgshift_transaction_duration_seconds_bucket{side=\"source\",le=\"+Inf\"}",
        "pgshift_logins_accepted_total{kind=\"app\"}",
        "pgshift_upgrade_phase{phase=\"idle\"}",
        "pgshift_upgrade_state{state=\"idle\"}",
        "pgshift_replication_lag_bytes ",
        "pgshift_traffic_weight_percent{side=\"source\"}",
        "pgshift_routing_epoch ",
        "pgshift_upgrades_started_total ",
        "pgshift_upgrades_failed_total ",
    ] {
        assert!(
            m.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics:\n{m}"
        );
    }
    let delta = |text: &str, name: &str| sample(text, name) - sample(&before, name);
    assert_eq!(
        delta(&m, "pgshift_transactions_total{side=\"source\"}"),
        21.0,
        "{m}"
    );
    assert_eq!(
        delta(&m, "pgshift_transaction_errors_total{side=\"source\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        delta(
            &m,
            "pgshift_transaction_duration_seconds_count{side=\"source\"}"
        ),
        21.0,
        "{m}"
    );
    assert!(
        sample(&m, "pgshift_client_connections{side=\"source\"}") >= 1.0,
        "{m}"
    );
    assert!(
        sample(&m, "pgshift_logins_accepted_total{kind=\"app\"}") >= 1.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "pgshift_traffic_weight_percent{side=\"source\"}"),
        100.0
    );

    // /progress from memory.
    let p = get_json(port, "/progress");
    for field in [
        "phase",
        "state",
        "percent",
        "step",
        "health",
        "replication_lag_bytes",
        "lag_seconds",
        "source_weight",
        "target_weight",
        "epoch",
        "last_error",
        "updated_at",
    ] {
        assert!(p.get(field).is_some(), "/progress lacks {field}: {p}");
    }
    assert_eq!(p["phase"], "idle", "{p}");
    assert_eq!(p["source_weight"], 100, "{p}");
    assert_eq!(p["target_weight"], 0, "{p}");
    assert_eq!(p["epoch"], 1, "{p}");

    // /clients and /servers: the rows of SHOW CLIENTS / SHOW SERVERS.
    let clients = get_json(port, "/clients");
    let list = clients.as_array().expect("array");
    let mine = list
        .iter()
        .find(|c| c["user"] == APP_USER && c["side"] == "source")
        .unwrap_or_else(|| panic!("the app session is not in /clients: {clients}"));
    assert_eq!(mine["database"], DB);
    assert_eq!(mine["state"], "idle");
    assert!(mine["pid"].as_i64().is_some() && mine["backend_pid"].as_i64().unwrap_or(0) > 0);
    let admin_rows = stack.admin("SHOW CLIENTS").await.unwrap();
    assert!(admin_rows
        .iter()
        .any(|r| r["pid"].as_deref() == Some(&mine["pid"].to_string())));
    let servers = get_json(port, "/servers");
    let servers = servers.as_array().expect("array");
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0]["side"], "source");
    assert_eq!(servers[0]["role"], "serving");
    assert_eq!(servers[0]["port"], stack.source.port);
    assert_eq!(servers[1]["role"], "standby");
    assert!(servers[0]["clients"].as_u64().unwrap_or(0) >= 1);

    // Unknown endpoints and refused commands.
    let (status, _, body) = http(port, "GET", "/nope");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("GET /progress"), "{body}");
    let (status, v) = post(port, "/upgrade/cutover");
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["ok"], false);
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .contains("START UPGRADE"),
        "{v}"
    );

    // POST /upgrade/start, then /progress shows the phase advancing past the initial copy.
    let (status, v) = post(port, "/upgrade/start");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], true);
    assert!(!v["message"].as_str().unwrap_or("").is_empty(), "{v}");
    // Phases up to the end of the initial copy; any other means replication is streaming.
    const SETUP: &[&str] = &[
        "idle",
        "preflight",
        "provisioning",
        "schema_copy",
        "init_replication",
        "synchronizing",
    ];
    let mut seen = Vec::<String>::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = get_json(port, "/progress");
        let phase = p["phase"].as_str().unwrap_or("").to_string();
        assert_ne!(p["state"], "error", "{p}");
        if seen.last() != Some(&phase) {
            seen.push(phase.clone());
        }
        if !SETUP.contains(&phase.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the initial copy did not finish; phases seen {seen:?}; last {p}\n{}",
            stack.pgshift.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("phases seen through /progress: {seen:?}");
    assert!(seen.len() >= 2, "the phase did not advance: {seen:?}");
    assert_ne!(seen[0], "idle", "{seen:?}");

    // `pgshift status` prints the phase of /progress (read just before or just after, as the
    // plan may move on meanwhile).
    let bin = integration::pgshift_bin().unwrap();
    let status_json = || {
        let out = std::process::Command::new(&bin)
            .args(["status", "--format", "json", "--config"])
            .arg(&stack.pgshift.config_path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "pgshift status failed: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str::<Value>(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    };
    let p_before = get_json(port, "/progress");
    let st = status_json();
    let p_after = get_json(port, "/progress");
    assert!(
        st["phase"] == p_before["phase"] || st["phase"] == p_after["phase"],
        "pgshift status: {st}; /progress before {p_before}, after {p_after}"
    );
    for field in [
        "state",
        "epoch",
        "source_weight",
        "target_weight",
        "updated_at",
    ] {
        assert!(
            st.get(field).is_some(),
            "pgshift status lacks {field}: {st}"
        );
    }
    let out = std::process::Command::new(&bin)
        .args(["status", "--config"])
        .arg(&stack.pgshift.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let phase_line = text
        .lines()
        .find(|l| l.starts_with("phase "))
        .unwrap_or_else(|| panic!("no phase line: {text}"));
    let shown = phase_line.split_whitespace().nth(1).unwrap_or("");
    assert!(
        !SETUP.contains(&shown) && !shown.is_empty(),
        "pgshift status (text): {text}"
    );

    // The control-plane metrics follow.
    let m = wait_metrics(port, "the phase and the first steps", |m| {
        sample(m, "pgshift_upgrade_phase{phase=\"idle\"}") == 0.0
            && sample(m, "pgshift_upgrade_phase{phase=\"synchronizing\"}") == 0.0
            && m.contains("pgshift_upgrade_step_duration_seconds_count{step=")
    })
    .await;
    assert_eq!(sample(&m, "pgshift_upgrades_started_total "), 1.0, "{m}");
    let current: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("pgshift_upgrade_phase{") && l.ends_with(" 1"))
        .collect();
    assert_eq!(current.len(), 1, "exactly one current phase: {current:?}");

    // A second start is refused; rollback removes replication again.
    let (status, v) = post(port, "/upgrade/start");
    assert_eq!(status, 409, "{v}");
    let (status, v) = post(port, "/upgrade/rollback");
    assert_eq!(status, 200, "{v}");
    let p = get_json(port, "/progress");
    assert_eq!(p["phase"], "rolled_back", "{p}");
    // The session made before all this still works.
    app.simple_query("SELECT 1").await.expect("SELECT 1 after");
}
