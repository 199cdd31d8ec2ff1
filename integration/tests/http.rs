//! The HTTP server of pgshift on real servers: /metrics counts the transactions made through
//! pgshift, /progress, /clients, /servers, the upgrade commands, and `pgshift status`; the
//! bearer token (401 without it or with a wrong one, nothing done), the public endpoints, the
//! JSON content type of POSTs (415), the 403 of a configuration without a token, and the
//! start-ups refused for a non-loopback address without a token and a readable token file.

use integration::http::HttpAnswer;
use integration::stack::{stack_config, APP_USER, DB};
use integration::{free_port, Pgshift, Stack, StackOptions};
use serde_json::Value;
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn get_json(pg: &Pgshift, path: &str) -> Value {
    let a = pg.http_get(path).unwrap();
    assert_eq!(a.status, 200, "GET {path}: {}", a.body);
    assert!(
        a.content_type().starts_with("application/json"),
        "GET {path}: {}",
        a.content_type()
    );
    a.json().unwrap()
}

fn post(pg: &Pgshift, path: &str) -> (u16, Value) {
    let a = pg.http_post(path).unwrap();
    (a.status, a.json().unwrap())
}

/// A refusal: `status`, JSON `{"ok": false, "sqlstate": sqlstate, "message": ...}` whose
/// message contains `fragment`; returns the message.
fn refused(a: &HttpAnswer, status: u16, sqlstate: &str, fragment: &str) -> String {
    assert_eq!(a.status, status, "{a:?}");
    let v = a.json().unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["sqlstate"], sqlstate, "{v}");
    let m = v["message"].as_str().unwrap_or("").to_string();
    assert!(m.contains(fragment), "{m:?} lacks {fragment:?}");
    assert_eq!(
        v.as_object().map(|o| o.len()),
        Some(3),
        "a refusal carries nothing else: {v}"
    );
    m
}

/// The value of the first sample line of `text` that starts with `prefix` (0 when absent).
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// GET /metrics without the token (it is public by default).
fn metrics(pg: &Pgshift) -> String {
    let a = pg.http_raw("GET", "/metrics", &[], "").unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.content_type().starts_with("text/plain"), "{a:?}");
    a.body
}

/// Polls /metrics until `pred` holds (the control-plane gauges are sampled every second).
async fn wait_metrics(pg: &Pgshift, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = metrics(pg);
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
    let a = stack.pgshift.http_raw("GET", "/health", &[], "").unwrap();
    assert_eq!((a.status, a.body.as_str()), (200, "ok"), "public, no token");
    let token = stack
        .pgshift
        .http_token()
        .expect("the harness adds a token")
        .to_string();

    // Without the token: 401 with a Bearer challenge, and nothing is shown or done.
    for (method, path) in [
        ("GET", "/progress"),
        ("GET", "/clients"),
        ("GET", "/servers"),
        ("GET", "/databases"),
        ("GET", "/nope"),
        ("POST", "/upgrade/start"),
        ("POST", "/upgrade/cutover"),
        ("POST", "/upgrade/rollback"),
    ] {
        let a = stack
            .pgshift
            .http_raw(method, path, &[("Content-Type", "application/json")], "{}")
            .unwrap();
        refused(
            &a,
            401,
            "28000",
            "needs a token: send Authorization: Bearer <token>",
        );
        assert_eq!(
            a.header("www-authenticate"),
            "Bearer realm=\"pgshift\"",
            "{a:?}"
        );
        // A wrong token, another scheme, an empty one: refused too.
        let wrong = format!("Bearer {token}x");
        for (auth, sqlstate) in [
            (wrong.as_str(), "28P01"),
            ("Bearer nope", "28P01"),
            ("Basic YWRtaW46YWRtaW4tc2VjcmV0", "28000"),
            ("Bearer ", "28000"),
            (&token[..], "28000"),
        ] {
            let a = stack
                .pgshift
                .http_raw(
                    method,
                    path,
                    &[
                        ("Content-Type", "application/json"),
                        ("Authorization", auth),
                    ],
                    "{}",
                )
                .unwrap();
            refused(&a, 401, sqlstate, path);
            assert!(!a.body.contains(&token), "{a:?}");
            if sqlstate == "28P01" {
                assert_eq!(
                    a.header("www-authenticate"),
                    "Bearer realm=\"pgshift\", error=\"invalid_token\""
                );
            }
        }
    }
    // The scheme is case-insensitive (RFC 7235).
    let lower = format!("bearer {token}");
    let a = stack
        .pgshift
        .http_raw("GET", "/progress", &[("Authorization", lower.as_str())], "")
        .unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    // POSTs need a JSON content type, even with the token: a form cannot send them.
    let auth = format!("Bearer {token}");
    for ctype in [
        None,
        Some("application/x-www-form-urlencoded"),
        Some("text/plain"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let mut h = vec![("Authorization", auth.as_str())];
        h.extend(ctype.map(|c| ("Content-Type", c)));
        let a = stack
            .pgshift
            .http_raw("POST", "/upgrade/start", &h, "")
            .unwrap();
        refused(&a, 415, "0A000", "needs Content-Type: application/json");
    }
    let p = get_json(&stack.pgshift, "/progress");
    assert_eq!(p["phase"], "idle", "no refused POST started anything: {p}");
    assert_eq!(
        sample(&metrics(&stack.pgshift), "pgshift_upgrades_started_total "),
        0.0
    );

    // Transactions through pgshift are counted per side, errors too.
    let before = metrics(&stack.pgshift);
    let app = stack.app_client().await.expect("app client");
    for _ in 0..20 {
        app.simple_query("SELECT 1").await.expect("SELECT 1");
    }
    // Last: the client has the ErrorResponse before the ReadyForQuery that ends the unit has
    // passed the proxy (a query sent meanwhile would join the same unit).
    app.simple_query("SELECT 1/0")
        .await
        .expect_err("division by zero");
    let m = wait_metrics(&stack.pgshift, "21 transactions", |m| {
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
    let p = get_json(&stack.pgshift, "/progress");
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
    let clients = get_json(&stack.pgshift, "/clients");
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
    let servers = get_json(&stack.pgshift, "/servers");
    let servers = servers.as_array().expect("array");
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0]["side"], "source");
    assert_eq!(servers[0]["role"], "serving");
    assert_eq!(servers[0]["port"], stack.source.port);
    assert_eq!(servers[1]["role"], "standby");
    assert!(servers[0]["clients"].as_u64().unwrap_or(0) >= 1);

    // Unknown endpoints and refused commands.
    let a = stack.pgshift.http_get("/nope").unwrap();
    assert_eq!(a.status, 404, "{a:?}");
    assert!(a.body.contains("GET /progress"), "{a:?}");
    let (status, v) = post(&stack.pgshift, "/upgrade/cutover");
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
    let (status, v) = post(&stack.pgshift, "/upgrade/start");
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
        let p = get_json(&stack.pgshift, "/progress");
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

    // Replication streams and the plan waits for INITIATE CUTOVER (approve_cutover): a
    // cutover or rollback without the token is refused and changes nothing.
    let before = get_json(&stack.pgshift, "/progress");
    for path in ["/upgrade/cutover", "/upgrade/rollback"] {
        let a = stack
            .pgshift
            .http_raw("POST", path, &[("Content-Type", "application/json")], "{}")
            .unwrap();
        refused(&a, 401, "28000", path);
    }
    let after = get_json(&stack.pgshift, "/progress");
    assert!(
        !SETUP.contains(&after["phase"].as_str().unwrap_or(""))
            && !["cutover", "completed", "rolled_back"]
                .contains(&after["phase"].as_str().unwrap_or("")),
        "{after}"
    );
    assert_eq!(
        (&after["epoch"], &after["source_weight"]),
        (&before["epoch"], &before["source_weight"]),
        "before {before}, after {after}"
    );
    assert_eq!(
        stack.app_server_major().await.unwrap(),
        13,
        "still on the source"
    );

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
    // --token wins over the configuration's token: a wrong one is refused with a hint.
    let out = std::process::Command::new(&bin)
        .args(["status", "--token", "wrong-token", "--config"])
        .arg(&stack.pgshift.config_path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("answered 401") && err.contains("--token or PGSHIFT_HTTP_TOKEN"),
        "{err}"
    );
    assert!(!err.contains(&token), "{err}");
    let p_before = get_json(&stack.pgshift, "/progress");
    let st = status_json();
    let p_after = get_json(&stack.pgshift, "/progress");
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
    let m = wait_metrics(&stack.pgshift, "the phase and the first steps", |m| {
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
    let (status, v) = post(&stack.pgshift, "/upgrade/start");
    assert_eq!(status, 409, "{v}");
    let (status, v) = post(&stack.pgshift, "/upgrade/rollback");
    assert_eq!(status, 200, "{v}");
    let p = get_json(&stack.pgshift, "/progress");
    assert_eq!(p["phase"], "rolled_back", "{p}");
    // The session made before all this still works.
    app.simple_query("SELECT 1").await.expect("SELECT 1 after");
}

/// Runs `pgshift serve --config <dir>/pgshift.toml` with `config`, expecting it to exit at
/// once; returns (success, stderr). Killed (and failed) if it is still running after 30 s.
fn serve_expecting_exit(dir: &std::path::Path, config: &str) -> (bool, String) {
    let path = dir.join("pgshift.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = std::process::Command::new(integration::pgshift_bin().unwrap())
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pgshift serve did not refuse to start with:\n{config}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.success(), err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_without_token_and_refused_start_ups() {
    let stack = Stack::start(StackOptions {
        pgbench_scale: 0,
        extra_config: "[http]\nlisten = \"\"\n".into(),
        ..Default::default()
    })
    .expect("stack");
    // A second pgshift on the same servers whose [http] has no token.
    let config = |http: &str| {
        stack_config(&stack.source, &stack.target, free_port(), http)
            .lines()
            .filter(|l| !l.starts_with("token = "))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    let hp = free_port();
    let bare = config(&format!("[http]\nlisten = \"127.0.0.1:{hp}\"\n"));
    assert!(!bare.contains("token"), "{bare}");
    let pg = Pgshift::start(&bare).expect("pgshift without a token");
    assert_eq!(pg.http_token(), None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.http_raw("GET", "/health", &[], "").is_err() {
        assert!(Instant::now() < deadline, "no HTTP; log:\n{}", pg.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Sessions exist, yet /clients shows none of them: 403, and the commands do nothing.
    let app = integration::stack::connect(&pg.conninfo(APP_USER, "app-secret", DB))
        .await
        .unwrap();
    app.simple_query("SELECT 1").await.unwrap();
    let a = pg.http_get("/clients").unwrap();
    let m = refused(
        &a,
        403,
        "42501",
        "GET /clients is disabled: no [http] token",
    );
    assert!(m.contains("set a token"), "{m}");
    for path in ["/upgrade/start", "/upgrade/cutover", "/upgrade/rollback"] {
        let a = pg.http_post(path).unwrap();
        refused(&a, 403, "42501", &format!("POST {path} is disabled"));
    }
    // A token sent anyway does not open them.
    let a = pg
        .http_raw(
            "GET",
            "/clients",
            &[("Authorization", "Bearer anything")],
            "",
        )
        .unwrap();
    assert_eq!(a.status, 403, "{a:?}");
    // The rest answers, and shows that nothing started.
    let p = get_json(&pg, "/progress");
    assert_eq!(
        (p["phase"].as_str(), p["epoch"].as_u64()),
        (Some("idle"), Some(1)),
        "{p}"
    );
    assert_eq!(get_json(&pg, "/servers").as_array().map(Vec::len), Some(2));
    let m = metrics(&pg);
    assert_eq!(sample(&m, "pgshift_upgrades_started_total "), 0.0, "{m}");
    let pubs = stack
        .source
        .psql(DB, "SELECT count(*) FROM pg_publication")
        .unwrap();
    assert_eq!(pubs.trim(), "0", "no publication was made");
    drop(app);
    drop(pg);

    let dir = std::env::temp_dir().join(format!("pgshift-http-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // Not loopback, no token: refused at start-up, on stderr, exit code non-zero.
    for wide in ["0.0.0.0", "[::]"] {
        let (ok, err) = serve_expecting_exit(
            &dir,
            &config(&format!("[http]\nlisten = \"{wide}:{hp}\"\n")),
        );
        assert!(!ok, "{err}");
        assert!(
            err.contains("http.listen")
                && err.contains("is not a loopback address and no token is set")
                && err.contains("set [http] token or token_file"),
            "{err}"
        );
    }

    // A token file its group or others may read: refused, naming the file, not the token.
    use std::os::unix::fs::PermissionsExt;
    let file = dir.join("http-token");
    std::fs::write(&file, "file-token-Secret-9\n").unwrap();
    let with_file = config(&format!(
        "[http]\nlisten = \"0.0.0.0:{hp}\"\ntoken_file = \"{}\"\n",
        file.display()
    ));
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let (ok, err) = serve_expecting_exit(&dir, &with_file);
        assert!(!ok, "{err}");
        assert!(
            err.contains(&format!(
                "token_file {} has mode {mode:04o}",
                file.display()
            )) && err.contains("chmod 600"),
            "{err}"
        );
        assert!(!err.contains("Secret-9"), "{err}");
    }
    // 0600: it starts, on 0.0.0.0, and the file's token opens the API.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pg = Pgshift::start(&with_file).expect("pgshift with a 0600 token file");
    assert_eq!(pg.http_token(), Some("file-token-Secret-9"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.http_raw("GET", "/health", &[], "").is_err() {
        assert!(Instant::now() < deadline, "no HTTP; log:\n{}", pg.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pg.http_raw("GET", "/clients", &[], "").unwrap().status, 401);
    assert!(get_json(&pg, "/clients").as_array().is_some());
    assert!(!pg.log().contains("Secret-9"), "the token is never logged");
    // `pgshift status` reads the token file of the configuration; PGSHIFT_HTTP_TOKEN wins.
    let status = |env: Option<&str>| {
        let mut c = std::process::Command::new(&pg.bin);
        c.args(["status", "--format", "json", "--config"])
            .arg(&pg.config_path)
            .env_remove("PGSHIFT_HTTP_TOKEN");
        if let Some(t) = env {
            c.env("PGSHIFT_HTTP_TOKEN", t);
        }
        c.output().unwrap()
    };
    let out = status(None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = status(Some("not-it"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("answered 401"));
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}
