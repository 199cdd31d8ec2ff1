//! The HTTP server of pgshift on real servers: /metrics counts the transactions made through
//! pgshift, /progress, /clients, /servers, the upgrade commands, and `pgshift status`; the
//! bearer token (401 without it or with a wrong one, nothing done), the public endpoints, the
//! JSON content type of POSTs (415), the 403 of a configuration without a token, and the
//! start-ups refused for a non-loopback address without a token and a readable token file;
//! and `[http.tls]` with curl and a test CA: HTTPS only on the port, the server certificate
//! checked, the token still required, client certificates (`client_ca`), `pgshift status
//! --cacert`, the certificate reloaded on SIGHUP, start-ups refused for a key file others may
//! read.

use integration::certs::{CertFiles, TestCa};
use integration::http::HttpAnswer;
use integration::stack::{stack_config, APP_USER, DB};
use integration::{free_port, Pgshift, Stack, StackOptions};
use serde_json::Value;
use std::net::TcpStream;
use std::path::Path;
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

// ----------------------------------------------------------------------------------------
// [http.tls]: HTTPS with a test CA (no PostgreSQL server needed: nothing here reaches one)
// ----------------------------------------------------------------------------------------

/// A configuration whose `[source]` and `[target]` are closed loopback ports (pgshift starts
/// without reaching them), with `[http]` on `http_port` and `tls_keys` as `[http.tls]`.
fn https_config(http_port: u16, token: Option<&str>, tls_keys: &str) -> String {
    let token = token
        .map(|t| format!("token = \"{t}\"\n"))
        .unwrap_or_default();
    format!(
        "[proxy]\nlisten = \"127.0.0.1:{}\"\n\n\
         [source]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"{DB}\"\nuser = \"postgres\"\n\n\
         [target]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"{DB}\"\nuser = \"postgres\"\n\n\
         [[users]]\nname = \"{APP_USER}\"\npassword = \"app-secret\"\n\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\n{token}\n[http.tls]\n{tls_keys}",
        free_port(),
        free_port(),
        free_port()
    )
}

fn tls_keys(server: &CertFiles, client_ca: Option<&Path>) -> String {
    let mut t = format!(
        "cert = \"{}\"\nkey = \"{}\"\n",
        server.cert.display(),
        server.key.display()
    );
    if let Some(ca) = client_ca {
        t.push_str(&format!("client_ca = \"{}\"\n", ca.display()));
    }
    t
}

/// What one `curl` run gave: its exit code, the HTTP status (`000` when there was no HTTP
/// answer), the body and its error output.
#[derive(Debug)]
struct Curl {
    exit: i32,
    code: String,
    body: String,
    stderr: String,
}

/// `curl` (OpenSSL: a TLS stack that is not pgshift's) on `url` with `args`; `header`, when
/// given, is sent from standard input (`-H @-`) so that no token is on a command line.
fn curl(url: &str, args: &[&str], header: Option<&str>) -> Curl {
    let mut cmd = std::process::Command::new("curl");
    // -q first: no ~/.curlrc; no proxy from the environment.
    cmd.args(["-q", "-sS", "--noproxy", "*", "--max-time", "10"])
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if header.is_some() {
        cmd.args(["-H", "@-"]).stdin(std::process::Stdio::piped());
    } else {
        cmd.stdin(std::process::Stdio::null());
    }
    cmd.arg(url);
    let mut child = cmd
        .spawn()
        .expect("running curl (Debian package curl, installed by scripts/prereqs)");
    if let Some(h) = header {
        std::io::Write::write_all(
            &mut child.stdin.take().unwrap(),
            format!("{h}\n").as_bytes(),
        )
        .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    Curl {
        exit: out.status.code().unwrap_or(-1),
        code: code.to_string(),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// Polls `GET /health` with `args` until it answers 200 (pgshift binds the HTTP port after
/// the proxy's, which is what [`Pgshift::start`] waits for).
fn wait_https(pg: &Pgshift, url: &str, args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let c = curl(url, args, None);
        if c.code == "200" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not answer 200: {c:?}; log:\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `pgshift status --format json --config <pg's> args...`, with no token in the environment.
fn status_with(pg: &Pgshift, args: &[&str]) -> std::process::Output {
    std::process::Command::new(&pg.bin)
        .args(["status", "--format", "json", "--config"])
        .arg(&pg.config_path)
        .args(args)
        .env_remove("PGSHIFT_HTTP_TOKEN")
        .output()
        .unwrap()
}

/// The TLS handshake of `curl` failed: no HTTP answer, one of `exits` (curl's 35 is a failed
/// handshake, 56 a TLS 1.3 alert read after it, when the server refuses the client's
/// certificate; 60 an untrusted server certificate) and `fragment` in its error.
#[track_caller]
fn refused_by_tls(c: &Curl, exits: &[i32], fragment: &str) {
    assert_eq!(c.code, "000", "{c:?}");
    assert!(exits.contains(&c.exit), "{c:?}");
    assert!(c.stderr.contains(fragment), "{c:?} lacks {fragment:?}");
}

#[test]
fn https_with_a_test_ca_the_token_and_client_certificates() {
    let started = Instant::now();
    let dir = integration::new_run_dir("http-tls").unwrap();
    let ca = TestCa::new(&dir, "ca").unwrap();
    let ca2 = TestCa::new(&dir, "ca2").unwrap();
    let other = TestCa::new(&dir, "other").unwrap();
    let clients = TestCa::new(&dir, "clients").unwrap();
    let first = ca.server("first", &["localhost", "127.0.0.1"]).unwrap();
    let second = ca2.server("second", &["localhost", "127.0.0.1"]).unwrap();
    let ops = clients.client("ops", "ops").unwrap();
    let stranger = other.client("stranger", "ops").unwrap();
    // pgshift reads these paths; the test swaps their contents for the reload.
    let live = CertFiles {
        cert: dir.join("live.crt"),
        key: dir.join("live.key"),
    };
    let install = |c: &CertFiles| {
        std::fs::copy(&c.cert, &live.cert).unwrap();
        integration::certs::write_private(&live.key, &std::fs::read(&c.key).unwrap()).unwrap();
    };
    install(&first);
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let (ca_pem, ca2_pem, other_pem) = (path(&ca.ca_pem), path(&ca2.ca_pem), path(&other.ca_pem));
    let token = "https-Token-4711";
    let bearer = format!("Authorization: Bearer {token}");

    let hp = free_port();
    let pg = Pgshift::start(&https_config(hp, Some(token), &tls_keys(&live, None))).unwrap();
    let url = |host: &str, p: &str| format!("https://{host}:{hp}{p}");
    let health = url("127.0.0.1", "/health");
    wait_https(&pg, &health, &["--cacert", &ca_pem]);

    // Trusted CA: by address and by name.
    for host in ["127.0.0.1", "localhost"] {
        let c = curl(&url(host, "/health"), &["--cacert", &ca_pem], None);
        assert_eq!((c.code.as_str(), c.body.as_str()), ("200", "ok"), "{c:?}");
    }
    // Plain HTTP on the same port: no HTTP answer (curl reads a TLS alert), with curl and the
    // harness' own client.
    let c = curl(&format!("http://127.0.0.1:{hp}/health"), &[], None);
    assert_ne!(c.exit, 0, "{c:?}");
    assert_ne!(c.code, "200", "{c:?}");
    let plain = pg.http_raw("GET", "/health", &[], "");
    assert!(
        !matches!(&plain, Ok(a) if a.status == 200),
        "plain HTTP was answered: {plain:?}"
    );
    // A client that trusts another CA refuses the server.
    refused_by_tls(
        &curl(&health, &["--cacert", &other_pem], None),
        &[60],
        "certificate problem",
    );
    // A connection that never finishes its handshake holds up no other, nor does garbage.
    let stalled = TcpStream::connect(("127.0.0.1", hp)).unwrap();
    let mut garbage = TcpStream::connect(("127.0.0.1", hp)).unwrap();
    std::io::Write::write_all(&mut garbage, &[0x16, 3, 1, 0xff, 0xff, 0, 0, 0]).unwrap();
    let c = curl(&health, &["--cacert", &ca_pem], None);
    assert_eq!(c.code, "200", "{c:?}");

    // The token is still required over TLS; /metrics and /health stay public.
    let progress = url("127.0.0.1", "/progress");
    let c = curl(&progress, &["--cacert", &ca_pem], None);
    assert_eq!(c.code, "401", "{c:?}");
    assert!(c.body.contains("\"sqlstate\":\"28000\""), "{c:?}");
    let c = curl(
        &progress,
        &["--cacert", &ca_pem],
        Some("Authorization: Bearer not-it"),
    );
    assert_eq!(c.code, "401", "{c:?}");
    let c = curl(&progress, &["--cacert", &ca_pem], Some(&bearer));
    assert_eq!(c.code, "200", "{c:?}");
    let p: Value = serde_json::from_str(&c.body).unwrap();
    assert_eq!(p["phase"], "idle", "{p}");
    let c = curl(
        &url("localhost", "/clients"),
        &["--cacert", &ca_pem],
        Some(&bearer),
    );
    assert_eq!(c.code, "200", "{c:?}");
    let c = curl(&url("127.0.0.1", "/metrics"), &["--cacert", &ca_pem], None);
    assert_eq!(c.code, "200", "{c:?}");
    assert!(c.body.contains("pgshift_"), "{c:?}");

    // `pgshift status` over HTTPS: needs --cacert, checks the server against it.
    let out = status_with(&pg, &["--cacert", &ca_pem]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(st["phase"], "idle", "{st}");
    let out = status_with(&pg, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("speaks HTTPS") && err.contains("--cacert"),
        "{err}"
    );
    let out = status_with(&pg, &["--cacert", &other_pem]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("TLS handshake") && err.contains("UnknownIssuer"),
        "{err}"
    );

    // SIGHUP: the certificate of ca2 is served from then on.
    install(&second);
    let hup = |p: &Pgshift| {
        let pid = p.pid().expect("pgshift runs") as i32;
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    };
    hup(&pg);
    wait_https(&pg, &health, &["--cacert", &ca2_pem]);
    refused_by_tls(
        &curl(&health, &["--cacert", &ca_pem], None),
        &[60],
        "certificate problem",
    );
    // A key its group may read, on reload: refused, the last good set-up stays.
    std::fs::set_permissions(
        &live.key,
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    hup(&pg);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !pg.log().contains("has mode 0640") {
        assert!(Instant::now() < deadline, "no reload error:\n{}", pg.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let c = curl(&health, &["--cacert", &ca2_pem], None);
    assert_eq!(c.code, "200", "{c:?}");
    drop((stalled, garbage));
    let log = pg.log();
    assert!(log.contains("TLS handshake failed ([http.tls])"), "{log}");
    assert!(!log.contains(token), "the token is never logged");
    assert!(!log.contains("panicked"), "{log}");
    drop(pg);

    // client_ca: mutual TLS. No certificate, or one of another CA: the handshake fails.
    let hp = free_port();
    let pg = Pgshift::start(&https_config(
        hp,
        Some(token),
        &tls_keys(&first, Some(&clients.ca_pem)),
    ))
    .unwrap();
    let health = format!("https://127.0.0.1:{hp}/health");
    let progress = format!("https://127.0.0.1:{hp}/progress");
    let (ops_cert, ops_key) = (path(&ops.cert), path(&ops.key));
    let with_cert = ["--cacert", &ca_pem, "--cert", &ops_cert, "--key", &ops_key];
    wait_https(&pg, &health, &with_cert);
    refused_by_tls(
        &curl(&health, &["--cacert", &ca_pem], None),
        &[35, 56],
        "alert",
    );
    let (s_cert, s_key) = (path(&stranger.cert), path(&stranger.key));
    refused_by_tls(
        &curl(
            &health,
            &["--cacert", &ca_pem, "--cert", &s_cert, "--key", &s_key],
            None,
        ),
        &[35, 56],
        "alert",
    );
    // The right certificate: served, and the token still counts.
    let c = curl(&health, &with_cert, None);
    assert_eq!((c.code.as_str(), c.body.as_str()), ("200", "ok"), "{c:?}");
    let c = curl(&progress, &with_cert, None);
    assert_eq!(c.code, "401", "{c:?}");
    let c = curl(&progress, &with_cert, Some(&bearer));
    assert_eq!(c.code, "200", "{c:?}");
    // `pgshift status` shows the client certificate given with --cert / --key.
    let out = status_with(&pg, &["--cacert", &ca_pem]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--cert and --key"),
        "{err}"
    );
    let out = status_with(&pg, &with_cert);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = pg.log();
    assert!(log.contains("TLS handshake failed ([http.tls])"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    drop(pg);

    // Refused start-ups: a key file its group or others may read, cert without key, a
    // missing file, and (TLS or not) a wide address without a token.
    let loose = CertFiles {
        cert: first.cert.clone(),
        key: dir.join("loose.key"),
    };
    std::fs::copy(&first.key, &loose.key).unwrap();
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(
            &loose.key,
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .unwrap();
        let (ok, err) = serve_expecting_exit(
            &dir,
            &https_config(free_port(), Some(token), &tls_keys(&loose, None)),
        );
        assert!(!ok, "{err}");
        assert!(
            err.contains(&format!(
                "[http.tls] key {} has mode {mode:04o}",
                loose.key.display()
            )) && err.contains("chmod 600"),
            "{err}"
        );
        assert!(!err.contains("PRIVATE KEY"), "{err}");
    }
    let only_cert = format!("cert = \"{}\"\n", first.cert.display());
    let (ok, err) = serve_expecting_exit(&dir, &https_config(free_port(), Some(token), &only_cert));
    assert!(
        !ok && err.contains("http.tls.key: is required with [http.tls] cert"),
        "{err}"
    );
    let missing = CertFiles {
        cert: dir.join("missing.crt"),
        key: first.key.clone(),
    };
    let (ok, err) = serve_expecting_exit(
        &dir,
        &https_config(free_port(), Some(token), &tls_keys(&missing, None)),
    );
    assert!(
        !ok && err.contains("[http.tls] cert: cannot read certificates from")
            && err.contains("missing.crt"),
        "{err}"
    );
    let wide = https_config(free_port(), None, &tls_keys(&first, None))
        .replace("listen = \"127.0.0.1:", "listen = \"0.0.0.0:");
    let (ok, err) = serve_expecting_exit(&dir, &wide);
    assert!(
        !ok && err.contains("http.listen")
            && err.contains("is not a loopback address and no token is set"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("https test took {:.1?}", started.elapsed());
}
