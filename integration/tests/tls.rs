//! TLS between clients and pgshift with real clients: libpq's `psql` in every `sslmode`
//! (`require`, `verify-full` against a CA the test makes, `channel_binding=require`, so
//! SCRAM-SHA-256-PLUS), psycopg (its libpq 17+ also with `sslnegotiation=direct`, PostgreSQL
//! 17's direct TLS with ALPN), node-postgres; `[proxy.tls] mode = "require"` refusing plain
//! clients; client certificates (`client_ca`, as `clientcert=verify-full`); certificates
//! reloaded on SIGHUP while a TLS session stays open; and no downgrade of the backend login (a
//! server asking for MD5 is refused unless `auth` lists it).

use integration::certs::{CertFiles, TestCa};
use integration::stack::{
    create_app_database, stack_config, ADMIN_PASSWORD, ADMIN_USER, APP_PASSWORD, APP_USER, DB,
};
use integration::{client_bin, free_port, new_run_dir, PgServer, Pgshift, ServerOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Source 13 and target 17 with the application role and database (no data).
fn servers(source_opts: ServerOptions, target_opts: ServerOptions) -> (PgServer, PgServer) {
    let source = PgServer::start_with(13, source_opts).expect("source");
    let target = PgServer::start_with(17, target_opts).expect("target");
    for s in [&source, &target] {
        create_app_database(s).unwrap();
    }
    (source, target)
}

/// `[proxy.tls]` for `mode` with `server` as certificate, optionally requiring client
/// certificates from `client_ca`. TOML sub-table of `[proxy]`: appended after the generated
/// configuration, it still belongs to `[proxy]`.
fn tls_table(mode: &str, server: &CertFiles, client_ca: Option<&Path>) -> String {
    let mut t = format!(
        "\n[proxy.tls]\nmode = \"{mode}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        server.cert.display(),
        server.key.display()
    );
    if let Some(ca) = client_ca {
        t.push_str(&format!("client_ca = \"{}\"\n", ca.display()));
    }
    t
}

fn start_pgshift(source: &PgServer, target: &PgServer, tls: &str) -> Pgshift {
    let config = stack_config(source, target, free_port(), tls);
    Pgshift::start(&config).expect("pgshift starts")
}

/// `psql` with `conninfo` (a libpq key=value string), password in the environment; runs `sql`
/// (several `-c` when it holds `\n`-separated commands).
fn psql(conninfo: &str, password: &str, sql: &str) -> Output {
    let mut cmd = Command::new(client_bin("psql"));
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conninfo]);
    for c in sql.split('\n') {
        cmd.arg("-c").arg(c);
    }
    cmd.env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        // No ~/.postgresql/root.crt or client certificate of the machine's user may take part.
        .env("PGSSLROOTCERT", "/nonexistent/root.crt")
        .env("PGSSLCERT", "/nonexistent/client.crt")
        .env("PGSSLKEY", "/nonexistent/client.key")
        .stdin(Stdio::null())
        .output()
        .expect("running psql")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

/// psql must succeed; its output.
#[track_caller]
fn psql_ok(conninfo: &str, password: &str, sql: &str) -> String {
    let o = psql(conninfo, password, sql);
    assert!(
        o.status.success(),
        "psql {conninfo} failed: {}\n{}",
        stderr(&o),
        stdout(&o)
    );
    stdout(&o)
}

/// psql must fail; its error output.
#[track_caller]
fn psql_err(conninfo: &str, password: &str, sql: &str) -> String {
    let o = psql(conninfo, password, sql);
    assert!(
        !o.status.success(),
        "psql {conninfo} should have failed but printed: {}",
        stdout(&o)
    );
    stderr(&o)
}

fn app(p: &Pgshift, host: &str, extra: &str) -> String {
    format!(
        "host={host} port={} dbname={DB} user={APP_USER} {extra}",
        p.port
    )
}

fn drivers_cache() -> PathBuf {
    integration::cache_dir().join("drivers")
}

/// Runs `code` with the drivers' Python venv; None (and a plain message) when it is missing.
fn python(code: &str, env: &[(&str, String)]) -> Option<Output> {
    let py = drivers_cache().join("venv/bin/python");
    if !py.is_file() {
        eprintln!(
            "SKIPPED the Python driver part: {} is missing (run scripts/prereqs)",
            py.display()
        );
        return None;
    }
    let mut cmd = Command::new(py);
    cmd.arg("-c").arg(code).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Some(cmd.output().expect("running python"))
}

/// Runs `code` with node and the drivers' node_modules; None when they are missing.
fn node(code: &str, env: &[(&str, String)]) -> Option<Output> {
    let modules = drivers_cache().join("node/node_modules");
    if !modules.join("pg/package.json").is_file() {
        eprintln!(
            "SKIPPED the Node.js driver part: {} has no pg (run scripts/prereqs)",
            modules.display()
        );
        return None;
    }
    let mut cmd = Command::new("node");
    cmd.arg("-e")
        .arg(code)
        .env("NODE_PATH", &modules)
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Some(cmd.output().expect("running node"))
}

#[test]
fn tls_required_psql_psycopg_and_node_postgres() {
    let dir = new_run_dir("tls-certs").unwrap();
    let ca = TestCa::new(&dir, "ca").unwrap();
    let other_ca = TestCa::new(&dir, "other-ca").unwrap();
    let server = ca.server("server", &["localhost", "127.0.0.1"]).unwrap();
    let (source, target) = servers(ServerOptions::default(), ServerOptions::default());
    let p = start_pgshift(&source, &target, &tls_table("require", &server, None));
    let root = ca.ca_pem.display().to_string();

    // verify-full by name and by IP address, SCRAM-SHA-256-PLUS required.
    for host in ["localhost", "127.0.0.1"] {
        let out = psql_ok(
            &app(
                &p,
                host,
                &format!("sslmode=verify-full sslrootcert={root} channel_binding=require"),
            ),
            APP_PASSWORD,
            "\\conninfo\nSELECT current_user, count(*) FROM pg_class",
        );
        assert!(out.contains("SSL connection"), "{host}: {out}");
        assert!(out.contains(&format!("{APP_USER}|")), "{host}: {out}");
    }
    // require: encrypted, not verified; the admin console over TLS too.
    let out = psql_ok(
        &app(&p, "127.0.0.1", "sslmode=require"),
        APP_PASSWORD,
        "SELECT 1",
    );
    assert_eq!(out, "1");
    let out = psql_ok(
        &format!(
            "host=127.0.0.1 port={} dbname=pgshift user={ADMIN_USER} sslmode=verify-full sslrootcert={root} channel_binding=require",
            p.port
        ),
        ADMIN_PASSWORD,
        "SHOW UPGRADE STATUS",
    );
    assert!(!out.is_empty());

    // A CA that did not sign the certificate: libpq refuses pgshift.
    let err = psql_err(
        &app(
            &p,
            "localhost",
            &format!(
                "sslmode=verify-full sslrootcert={}",
                other_ca.ca_pem.display()
            ),
        ),
        APP_PASSWORD,
        "SELECT 1",
    );
    assert!(err.contains("certificate verify failed"), "{err}");
    // A name the certificate does not hold.
    let wrong_name = ca.server("wrong-name", &["db.example.com"]).unwrap();
    let q = start_pgshift(&source, &target, &tls_table("require", &wrong_name, None));
    let err = psql_err(
        &app(
            &q,
            "localhost",
            &format!("sslmode=verify-full sslrootcert={root}"),
        ),
        APP_PASSWORD,
        "SELECT 1",
    );
    assert!(err.contains("does not match host name"), "{err}");
    drop(q);

    // Plain clients are refused with PostgreSQL's own message and SQLSTATE 28000.
    let err = psql_err(
        &app(&p, "127.0.0.1", "sslmode=disable"),
        APP_PASSWORD,
        "SELECT 1",
    );
    assert!(
        err.contains("no pg_hba.conf entry") && err.contains("no encryption"),
        "{err}"
    );
    // A wrong password over TLS is still a password failure, not a TLS one.
    let err = psql_err(
        &app(&p, "127.0.0.1", "sslmode=require"),
        "wrong",
        "SELECT 1",
    );
    assert!(err.contains("password authentication failed"), "{err}");

    // psycopg: SSLRequest, and PostgreSQL 17's direct TLS (ALPN) when its libpq has it.
    let env = [
        ("CHK_PORT", p.port.to_string()),
        ("CHK_ROOT", root.clone()),
        ("CHK_PASSWORD", APP_PASSWORD.to_string()),
    ];
    let code = r#"
import os, psycopg
base = f"host=localhost port={os.environ['CHK_PORT']} dbname=app user=app password={os.environ['CHK_PASSWORD']} sslmode=verify-full sslrootcert={os.environ['CHK_ROOT']}"
variants = [("sslrequest", base + " channel_binding=require")]
if psycopg.pq.version() >= 170000:
    variants.append(("direct", base + " sslnegotiation=direct"))
else:
    print("SKIPPED direct TLS: psycopg's libpq", psycopg.pq.version(), "predates PostgreSQL 17")
for name, dsn in variants:
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use, name
        v = conn.execute("SELECT current_user, 6 * 7").fetchone()
        print(name, v[0], v[1])
"#;
    if let Some(o) = python(code, &env) {
        assert!(o.status.success(), "psycopg over TLS: {}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains("sslrequest app 42"), "{out}");
        if !out.contains("SKIPPED") {
            assert!(out.contains("direct app 42"), "{out}");
        } else {
            eprintln!("{out}");
        }
    }

    // node-postgres with the CA and host name checked.
    let code = r#"
const fs = require('fs');
const { Client } = require('pg');
(async () => {
  const c = new Client({ host: 'localhost', port: +process.env.CHK_PORT, database: 'app', user: 'app',
    password: process.env.CHK_PASSWORD, ssl: { ca: fs.readFileSync(process.env.CHK_ROOT), rejectUnauthorized: true } });
  await c.connect();
  const r = await c.query('SELECT current_user AS u, 6 * 7 AS n');
  console.log('node', r.rows[0].u, r.rows[0].n);
  await c.end();
  const bad = new Client({ host: '127.0.0.1', port: +process.env.CHK_PORT, database: 'app', user: 'app',
    password: process.env.CHK_PASSWORD, ssl: false });
  try { await bad.connect(); console.log('plain accepted'); } catch (e) { console.log('plain refused', e.code); }
})().catch(e => { console.error(e); process.exit(1); });
"#;
    if let Some(o) = node(code, &env) {
        assert!(o.status.success(), "node-postgres over TLS: {}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains("node app 42"), "{out}");
        assert!(out.contains("plain refused 28000"), "{out}");
    }
}

#[test]
fn client_certificates_name_the_user() {
    let dir = new_run_dir("tls-certs").unwrap();
    let ca = TestCa::new(&dir, "ca").unwrap();
    let clients = TestCa::new(&dir, "clients").unwrap();
    let stranger = TestCa::new(&dir, "stranger").unwrap();
    let server = ca.server("server", &["localhost"]).unwrap();
    let app_cert = clients.client("app", APP_USER).unwrap();
    let other_cert = clients.client("other", "someone-else").unwrap();
    let forged = stranger.client("forged", APP_USER).unwrap();
    let (source, target) = servers(ServerOptions::default(), ServerOptions::default());
    let p = start_pgshift(
        &source,
        &target,
        &tls_table("require", &server, Some(&clients.ca_pem)),
    );
    let with = |c: &CertFiles| {
        app(
            &p,
            "localhost",
            &format!(
                "sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
                ca.ca_pem.display(),
                c.cert.display(),
                c.key.display()
            ),
        )
    };
    // The user's own certificate (and the password, as clientcert=verify-full with scram).
    assert_eq!(
        psql_ok(&with(&app_cert), APP_PASSWORD, "SELECT current_user"),
        APP_USER
    );
    // No certificate.
    let err = psql_err(
        &app(
            &p,
            "localhost",
            &format!("sslmode=verify-full sslrootcert={}", ca.ca_pem.display()),
        ),
        APP_PASSWORD,
        "SELECT 1",
    );
    assert!(
        err.contains("connection requires a valid client certificate"),
        "{err}"
    );
    // A certificate of another user.
    let err = psql_err(&with(&other_cert), APP_PASSWORD, "SELECT 1");
    assert!(
        err.contains("certificate validation (clientcert=verify-full) failed"),
        "{err}"
    );
    // The right name, signed by a CA pgshift does not trust: the handshake fails.
    let err = psql_err(&with(&forged), APP_PASSWORD, "SELECT 1");
    assert!(
        !err.contains("current_user") && (err.contains("certificate") || err.contains("SSL")),
        "{err}"
    );
}

/// Polls psql with `conninfo` until it succeeds (true) or 15 s pass (false).
fn wait_psql_ok(conninfo: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if psql(conninfo, APP_PASSWORD, "SELECT 1").status.success() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn certificates_reload_on_sighup_without_dropping_sessions() {
    let dir = new_run_dir("tls-certs").unwrap();
    let ca1 = TestCa::new(&dir, "ca1").unwrap();
    let ca2 = TestCa::new(&dir, "ca2").unwrap();
    let first = ca1.server("first", &["localhost"]).unwrap();
    let second = ca2.server("second", &["localhost"]).unwrap();
    // pgshift reads these paths; the test swaps their contents.
    let live = CertFiles {
        cert: dir.join("live.crt"),
        key: dir.join("live.key"),
    };
    let install = |c: &CertFiles| {
        std::fs::copy(&c.cert, &live.cert).unwrap();
        integration::certs::write_private(&live.key, &std::fs::read(&c.key).unwrap()).unwrap();
    };
    install(&first);
    let (source, target) = servers(ServerOptions::default(), ServerOptions::default());
    let p = start_pgshift(&source, &target, &tls_table("allow", &live, None));
    let verify = |ca: &TestCa| {
        app(
            &p,
            "localhost",
            &format!("sslmode=verify-full sslrootcert={}", ca.ca_pem.display()),
        )
    };

    // A TLS session that stays open across the reloads: psql reading statements from a pipe.
    let mut session = Command::new(client_bin("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &verify(&ca1),
        ])
        .env("PGPASSWORD", APP_PASSWORD)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = session.stdin.take().unwrap();
    let mut output = BufReader::new(session.stdout.take().unwrap());
    let mut ask = |sql: &str| -> String {
        writeln!(input, "{sql}").unwrap();
        input.flush().unwrap();
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        line.trim().to_string()
    };
    assert_eq!(ask("SELECT 'before';"), "before");

    install(&second);
    let hup = |p: &Pgshift| {
        let pid = p.pid().expect("pgshift runs") as i32;
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    };
    hup(&p);
    assert!(
        wait_psql_ok(&verify(&ca2)),
        "the certificate of ca2 was not served after SIGHUP; log:\n{}",
        p.log()
    );
    let err = psql_err(&verify(&ca1), APP_PASSWORD, "SELECT 1");
    assert!(err.contains("certificate verify failed"), "{err}");
    assert_eq!(ask("SELECT 'after';"), "after", "the open TLS session");

    // A broken certificate file on reload: the last good set-up stays, with an error logged.
    std::fs::write(&live.cert, "not a certificate").unwrap();
    hup(&p);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !p.log().contains("live.crt") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        p.log().contains("live.crt"),
        "no error about the broken file:\n{}",
        p.log()
    );
    psql_ok(&verify(&ca2), APP_PASSWORD, "SELECT 1");
    assert_eq!(ask("SELECT 'still';"), "still");
    drop(input);
    assert!(session.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_logins_are_not_downgraded_to_md5() {
    // The source asks every user for MD5 (their passwords are stored as MD5).
    let (source, target) = servers(
        ServerOptions {
            hba: vec!["host all all 127.0.0.1/32 md5".into()],
            ..Default::default()
        },
        ServerOptions::default(),
    );
    source
        .psql(
            "postgres",
            &format!(
                "SET password_encryption = 'md5'; ALTER ROLE {APP_USER} PASSWORD '{APP_PASSWORD}'; ALTER ROLE postgres PASSWORD 'postgres'"
            ),
        )
        .unwrap();
    let p = start_pgshift(&source, &target, "");
    // A session's backend login.
    let err = psql_err(&app(&p, "127.0.0.1", ""), APP_PASSWORD, "SELECT 1");
    assert!(
        err.contains("MD5") && err.contains("`auth`") && err.contains("nothing was sent"),
        "the refusal should name MD5 and the auth setting: {err}"
    );
    // The control plane's (tokio-postgres) login: preflight refuses, nothing is changed.
    let stack = integration::Stack {
        source,
        target,
        pgshift: p,
    };
    let err = stack.admin("START UPGRADE").await.unwrap_err().to_string();
    assert!(
        err.contains("nothing was changed") && err.contains("MD5") && err.contains("`auth`"),
        "{err}"
    );
    let log = stack.pgshift.log();
    assert!(!log.contains(APP_PASSWORD), "a password in the log");
    let integration::Stack {
        source,
        target,
        pgshift: p,
    } = stack;
    drop(p);

    // Listing md5 in [source] auth accepts it: the refusal was the policy, not the set-up.
    let config = stack_config(&source, &target, free_port(), "").replacen(
        "[target]",
        "auth = [\"scram-sha-256\", \"md5\"]\n\n[target]",
        1,
    );
    let q = Pgshift::start(&config).unwrap();
    assert_eq!(
        psql_ok(
            &app(&q, "127.0.0.1", ""),
            APP_PASSWORD,
            "SELECT current_user"
        ),
        APP_USER
    );
}

/// `[source]` and `[target]` TLS keys: `sslmode` and, when given, `sslrootcert`.
fn server_tls(config: &str, host: &str, sslmode: &str, root: Option<&Path>) -> String {
    let mut keys = format!("sslmode = \"{sslmode}\"\n");
    if let Some(r) = root {
        keys.push_str(&format!("sslrootcert = \"{}\"\n", r.display()));
    }
    config
        .replace("[source]\n", &format!("[source]\n{keys}"))
        .replace("[target]\n", &format!("[target]\n{keys}"))
        .replace(
            "host = \"127.0.0.1\"\nport",
            &format!("host = \"{host}\"\nport"),
        )
}

/// pgshift in front of `source` and `target`, reaching both at `host` in `sslmode`.
fn serve(
    source: &PgServer,
    target: &PgServer,
    host: &str,
    sslmode: &str,
    root: Option<&Path>,
) -> Pgshift {
    let config = stack_config(source, target, free_port(), "");
    Pgshift::start(&server_tls(&config, host, sslmode, root)).expect("pgshift starts")
}

/// Whether the backend of a session through `p` uses TLS, as the server sees it.
fn backend_ssl(p: &Pgshift) -> Result<String, String> {
    let o = psql(
        &app(p, "127.0.0.1", ""),
        APP_PASSWORD,
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    if o.status.success() {
        Ok(stdout(&o))
    } else {
        Err(stderr(&o))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_over_tls_in_every_sslmode() {
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let dir = new_run_dir("tls-certs").unwrap();
    let ca = TestCa::new(&dir, "ca").unwrap();
    let other_ca = TestCa::new(&dir, "other-ca").unwrap();
    // Valid for localhost only: 127.0.0.1 is the wrong name under verify-full.
    let cert = ca.server("pg", &["localhost"]).unwrap();
    // Both servers refuse every connection without TLS.
    let opts = || ServerOptions {
        ssl: Some(cert.clone()),
        hba: vec![
            "hostnossl all all 127.0.0.1/32 reject".into(),
            "hostnossl replication all 127.0.0.1/32 reject".into(),
        ],
        ..Default::default()
    };
    let (source, target) = servers(opts(), opts());
    step("servers up");
    // Every sslmode, one session each.
    let p = serve(&source, &target, "127.0.0.1", "disable", None);
    let err = backend_ssl(&p).unwrap_err();
    // PostgreSQL 14 and later say "no encryption", 13 "SSL off".
    assert!(
        err.contains("rejects connection")
            && (err.contains("no encryption") || err.contains("SSL off")),
        "disable: {err}"
    );
    drop(p);
    step("disable");
    for mode in ["prefer", "require"] {
        let p = serve(&source, &target, "127.0.0.1", mode, None);
        assert_eq!(backend_ssl(&p).unwrap(), "t", "{mode}");
        step(mode);
    }
    let p = serve(&source, &target, "127.0.0.1", "verify-ca", Some(&ca.ca_pem));
    assert_eq!(backend_ssl(&p).unwrap(), "t", "verify-ca");
    drop(p);
    step("verify-ca");
    let p = serve(
        &source,
        &target,
        "127.0.0.1",
        "verify-ca",
        Some(&other_ca.ca_pem),
    );
    let err = backend_ssl(&p).unwrap_err();
    assert!(
        err.contains("TLS handshake (sslmode verify-ca)") && err.contains("certificate"),
        "verify-ca with another CA: {err}"
    );
    drop(p);
    step("modes checked");
    // verify-full with a name the certificate does not hold: a clear error, nothing started.
    let p = serve(
        &source,
        &target,
        "127.0.0.1",
        "verify-full",
        Some(&ca.ca_pem),
    );
    let err = backend_ssl(&p).unwrap_err();
    assert!(
        err.contains("not valid for name"),
        "verify-full, wrong name: {err}"
    );
    let stack = integration::Stack {
        source,
        target,
        pgshift: p,
    };
    let err = stack.admin("START UPGRADE").await.unwrap_err().to_string();
    assert!(
        err.contains("nothing was changed") && err.contains("not valid for name"),
        "{err}"
    );
    assert_eq!(
        stack.status().await.unwrap()["phase"].as_deref(),
        Some("idle")
    );
    let integration::Stack {
        source,
        target,
        pgshift: p,
    } = stack;
    drop(p);

    step("wrong name refused");
    // verify-full by name: the whole upgrade over TLS (sessions, control plane, pg_dump and
    // psql of the schema copy, the subscription), since the servers take nothing else.
    let p = serve(
        &source,
        &target,
        "localhost",
        "verify-full",
        Some(&ca.ca_pem),
    );
    let stack = integration::Stack {
        source,
        target,
        pgshift: p,
    };
    let app_c = stack.app_client().await.unwrap();
    app_c
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, v text);
             INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 100) g",
        )
        .await
        .unwrap();
    let r = stack.admin("START UPGRADE").await;
    assert!(r.is_ok(), "START UPGRADE over TLS: {r:?}");
    stack
        .wait_phase("replicating", Duration::from_secs(120))
        .await
        .expect("synchronised over TLS");
    step("replicating");
    let walsenders_over_tls = stack
        .source
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.backend_type = 'walsender' AND s.ssl",
        )
        .unwrap();
    assert_ne!(
        walsenders_over_tls, "0",
        "the subscription's connection uses TLS"
    );
    app_c
        .execute("INSERT INTO items VALUES (101, 'last')", &[])
        .await
        .unwrap();
    stack
        .admin("INITIATE CUTOVER")
        .await
        .expect("cutover over TLS");
    step("cut over");
    let on_target: i64 = app_c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_target, 101);
    let direct = stack.target.psql(DB, "SELECT count(*) FROM items").unwrap();
    assert_eq!(direct, "101");
    let ssl: bool = app_c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the session's backend on the target uses TLS");
}
