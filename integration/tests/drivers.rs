//! Driver compatibility (issue 9, part 7): the same check scripts, written against real
//! drivers installed from their registries — psycopg 3 and asyncpg (Python), node-postgres
//! (`pg`) and pgjdbc (Java) — run straight against PostgreSQL and through pgshift, and their
//! results must be identical.
//!
//! Each script (integration/drivers/{python,node,java}) prints one JSON object per line:
//! `{"phase": "p0", "check": "copy_in", "result": ...}` with results normalised so that they
//! compare between runs (no pids, times or ports: booleans such as `own_pid_matches`), or
//! `{"phase": ..., "check": ..., "skipped": "why"}` for what the driver cannot do. Every
//! driver names every check, so an unsupported one shows up as skipped, never as missing.
//!
//! A script runs in three phases on the same connections. In p0 it opens its long-lived
//! sessions and gives them state (a server-side prepared statement, SETs, SET ROLE, SET
//! SESSION AUTHORIZATION, LISTEN, LATIN1 and KOI8-R client encodings) and checks that state;
//! then it prints `{"phase": "ready", "next": "p1"}` and waits for a line on its standard
//! input. In p1 it checks the sessions' state again — first whether a notification sent from
//! another session arrives at the idle listener — and then runs every stand-alone check on
//! new connections (logins, errors, extended protocol, pipelining, COPY, cancel, two-phase
//! commit, large objects, cursors, row-level security by role, encodings, timeouts, a second
//! database, 50 concurrent connections). After another ready line, p2 checks the sessions'
//! state once more. Each driver runs three times, each in a schema of its own:
//!
//! * `direct`: against the PostgreSQL 13 source itself; the lines are answered at once;
//! * `pgshift`: through pgshift (still serving the 13); answered at once;
//! * `cutover`: through pgshift with the upgrade replicating to a 17; before p1 the test runs
//!   INITIATE CUTOVER (so p1 runs on the 17: the sessions must carry their state over, the
//!   new connections land on the 17) and before p2 ROLLBACK UPGRADE (back on the 13).
//!
//! The `pgshift` and `cutover` runs must equal the `direct` run line for line. The test
//! collects every difference of every driver and fails once, listing them all (driver, run,
//! phase, check, direct vs pgshift). Info lines (`{"info": "server_major", ...}`) are not
//! compared; they prove that the cutover run's p1 ran on the 17 and p2 on the 13 again.
//!
//! The direct and pgshift runs of all drivers go at once while the upgrade synchronises;
//! the cutover run starts once it replicates (the whole test takes about 30-40 s). The
//! checks' deliberate errors would trip pgshift's health checks after the cutover, so
//! `[health]` is relaxed. Every run's lines and stderr are kept in
//! `CARGO_TARGET_TMPDIR/drivers/`.
//!
//! A driver whose toolchain is missing (scripts/prereqs installs them all) is reported as
//! skipped with the reason; under CI (`CI` set) that is a failure instead.
//! `DRIVERS_HOLD=<seconds>` keeps the stack up after setup and prints each script's
//! environment, for running a script by hand.

use integration::stack::{db_error, stack_config, APP_PASSWORD, APP_USER, DB};
use integration::{free_port, PgServer, Pgshift, ServerOptions, Stack};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

const SOURCE_MAJOR: u32 = 13;
const TARGET_MAJOR: u32 = 17;

const MD5_USER: &str = "app_md5";
const MD5_PASSWORD: &str = "md5-secret";
/// A superuser login: SET SESSION AUTHORIZATION needs one.
const SUPER_USER: &str = "dba";
const SUPER_PASSWORD: &str = "dba-secret";
/// Roles of the row-level security checks (NOLOGIN; `app` is a member of both).
const ROLE_A: &str = "rls_alice";
const ROLE_B: &str = "rls_bob";
/// A second database of the same server.
const DB2: &str = "app2";

/// How long one script may run in all.
const RUN_TIMEOUT: Duration = Duration::from_secs(150);
/// How long the cutover run's coordinator waits for every script to reach a ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Roles on both servers (the upgrade copies the schema, not the roles).
fn roles_sql() -> String {
    format!(
        "CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}';
         CREATE ROLE {SUPER_USER} LOGIN SUPERUSER PASSWORD '{SUPER_PASSWORD}';
         CREATE ROLE {ROLE_A} NOLOGIN;
         CREATE ROLE {ROLE_B} NOLOGIN;
         GRANT {ROLE_A}, {ROLE_B} TO {APP_USER};
         SET password_encryption = 'md5';
         CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}';"
    )
}

/// The second database's one table, on the source only: the upgrade carries every database
/// of the instance, so pgshift creates the database on the target and replicates the table.
fn db2_sql() -> String {
    format!(
        "SET ROLE {APP_USER};
         CREATE TABLE marker (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO marker VALUES (1, 'the second database')"
    )
}

/// Row-level security by current_user: the rows a session sees depend on its role.
fn rls_sql() -> String {
    format!(
        "CREATE TABLE public.rls_docs (id int PRIMARY KEY, owner name NOT NULL, body text NOT NULL);
         INSERT INTO public.rls_docs VALUES (1, '{ROLE_A}', 'alice 1'), (2, '{ROLE_A}', 'alice 2'),
             (3, '{ROLE_B}', 'bob 1'), (4, '{APP_USER}', 'app 1');
         ALTER TABLE public.rls_docs ENABLE ROW LEVEL SECURITY;
         CREATE POLICY by_owner ON public.rls_docs USING (owner = current_user);
         GRANT SELECT ON public.rls_docs TO PUBLIC;"
    )
}

/// The tables of one run (one driver in one mode), in a schema of its own owned by `app`.
/// All of them exist before START UPGRADE: the scripts run no DDL outside temporary tables.
fn run_schema_sql(schema: &str) -> String {
    format!(
        "SET ROLE {APP_USER};
         CREATE SCHEMA {schema};
         CREATE TABLE {schema}.items (id serial PRIMARY KEY, n int NOT NULL, t text NOT NULL);
         CREATE TABLE {schema}.copy_rows (id int PRIMARY KEY, t text NOT NULL);
         CREATE TABLE {schema}.twopc (id int PRIMARY KEY, v text NOT NULL);
         CREATE TABLE {schema}.texts (id int PRIMARY KEY, body text NOT NULL);
         INSERT INTO {schema}.texts VALUES (1, 'café crème à la française, déjà vu'),
             (2, 'Съешь же ещё этих мягких французских булок');
         RESET ROLE;"
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Driver {
    Psycopg,
    Asyncpg,
    Node,
    Jdbc,
}

const DRIVERS: [Driver; 4] = [Driver::Psycopg, Driver::Asyncpg, Driver::Node, Driver::Jdbc];

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Psycopg => "psycopg",
            Driver::Asyncpg => "asyncpg",
            Driver::Node => "node-pg",
            Driver::Jdbc => "pgjdbc",
        }
    }

    /// A schema-safe short name.
    fn ident(self) -> &'static str {
        match self {
            Driver::Psycopg => "psycopg",
            Driver::Asyncpg => "asyncpg",
            Driver::Node => "nodepg",
            Driver::Jdbc => "pgjdbc",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Direct,
    Pgshift,
    Cutover,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Pgshift => "pgshift",
            Mode::Cutover => "cutover",
        }
    }
}

fn schema(driver: Driver, mode: Mode) -> String {
    format!("{}_{}", driver.ident(), mode.name())
}

/// Where scripts/prereqs put the drivers (the work tree's own `.cache/drivers`).
fn drivers_cache() -> PathBuf {
    integration::workspace_root().join(".cache/drivers")
}

fn scripts_dir() -> PathBuf {
    integration::workspace_root().join("integration/drivers")
}

/// pgjdbc from Debian's libpostgresql-jdbc-java (Maven Central is not reachable from these
/// machines; scripts/prereqs installs it).
const PGJDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// How to start a driver's script: the program and its arguments plus environment, or why
/// it cannot run here.
struct Launcher {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

fn on_path(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(prog))
            .find(|p| p.is_file())
    })
}

/// Compiles the Java program against pgjdbc with javac (into .cache/drivers/java); blocking.
fn compile_java() -> Result<PathBuf, String> {
    let javac = on_path("javac").ok_or("javac is not on PATH (Java 17 JDK)")?;
    on_path("java").ok_or("java is not on PATH")?;
    if !Path::new(PGJDBC_JAR).is_file() {
        return Err(format!(
            "{PGJDBC_JAR} is missing (Debian package libpostgresql-jdbc-java; run scripts/prereqs)"
        ));
    }
    let out_dir = drivers_cache().join("java/classes");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("creating {out_dir:?}: {e}"))?;
    let src = scripts_dir().join("java/DriverChecks.java");
    let out = std::process::Command::new(javac)
        .args(["-encoding", "UTF-8", "-nowarn", "-cp", PGJDBC_JAR, "-d"])
        .arg(&out_dir)
        .arg(&src)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running javac: {e}"))?;
    if !out.status.success() {
        // A compile error is the test's own bug: not a reason to skip.
        panic!(
            "javac {} failed:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out_dir)
}

fn launcher(driver: Driver, java_classes: &Result<PathBuf, String>) -> Result<Launcher, String> {
    let cache = drivers_cache();
    match driver {
        Driver::Psycopg | Driver::Asyncpg => {
            let python = cache.join("venv/bin/python");
            if !python.is_file() {
                return Err(format!(
                    "{} is missing (run scripts/prereqs)",
                    python.display()
                ));
            }
            let script = match driver {
                Driver::Psycopg => "psycopg_checks.py",
                _ => "asyncpg_checks.py",
            };
            Ok(Launcher {
                program: python,
                args: vec![scripts_dir()
                    .join("python")
                    .join(script)
                    .display()
                    .to_string()],
                env: vec![("PYTHONUNBUFFERED".into(), "1".into())],
            })
        }
        Driver::Node => {
            let node = on_path("node").ok_or("node is not on PATH")?;
            let modules = cache.join("node/node_modules");
            if !modules.join("pg/package.json").is_file() {
                return Err(format!(
                    "{} has no pg (run scripts/prereqs)",
                    modules.display()
                ));
            }
            Ok(Launcher {
                program: node,
                args: vec![scripts_dir().join("node/checks.js").display().to_string()],
                env: vec![("NODE_PATH".into(), modules.display().to_string())],
            })
        }
        Driver::Jdbc => {
            let classes = java_classes.clone()?;
            Ok(Launcher {
                program: on_path("java").ok_or("java is not on PATH")?,
                args: vec![
                    "-Xss512k".into(),
                    "-XX:+UseSerialGC".into(),
                    "-XX:TieredStopAtLevel=1".into(),
                    "-Dfile.encoding=UTF-8".into(),
                    "-cp".into(),
                    format!("{}:{PGJDBC_JAR}", classes.display()),
                    "DriverChecks".into(),
                ],
                env: vec![],
            })
        }
    }
}

/// The environment every script reads: where to connect and as whom.
fn script_env(host: &str, port: u16, schema: &str) -> Vec<(String, String)> {
    [
        ("CHK_HOST", host.to_string()),
        ("CHK_PORT", port.to_string()),
        ("CHK_DB", DB.to_string()),
        ("CHK_DB2", DB2.to_string()),
        ("CHK_SCHEMA", schema.to_string()),
        ("CHK_USER", APP_USER.to_string()),
        ("CHK_PASSWORD", APP_PASSWORD.to_string()),
        ("CHK_MD5_USER", MD5_USER.to_string()),
        ("CHK_MD5_PASSWORD", MD5_PASSWORD.to_string()),
        ("CHK_SUPER_USER", SUPER_USER.to_string()),
        ("CHK_SUPER_PASSWORD", SUPER_PASSWORD.to_string()),
        ("CHK_ROLE_A", ROLE_A.to_string()),
        ("CHK_ROLE_B", ROLE_B.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// What one script printed.
#[derive(Default)]
struct RunOutput {
    /// (phase, check) → the line's `result` or `{"skipped": why}`.
    lines: BTreeMap<(String, String), Value>,
    /// (phase, info name) → value; not compared.
    infos: BTreeMap<(String, String), Value>,
    /// Anything wrong with the run itself: exit status, time-out, lines that are not JSON.
    problems: Vec<String>,
    /// Standard output as printed.
    raw: String,
    stderr: String,
    elapsed: Duration,
}

/// Messages from the scripts to the cutover coordinator.
enum Event {
    Ready(Driver, u32),
    Ended(Driver),
}

/// Runs one script to its end. At each `{"phase": "ready"}` line it reports to `events`
/// (when given) and writes a line to the script's standard input once `release` reaches
/// that phase's number (at once without `events`).
async fn run_script(
    driver: Driver,
    launch: &Launcher,
    env: Vec<(String, String)>,
    events: Option<mpsc::UnboundedSender<Event>>,
    mut release: Option<watch::Receiver<u32>>,
) -> RunOutput {
    let started = Instant::now();
    let mut out = RunOutput::default();
    let mut cmd = tokio::process::Command::new(&launch.program);
    cmd.args(&launch.args)
        .envs(launch.env.iter().cloned())
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for var in [
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
        "PGOPTIONS",
    ] {
        cmd.env_remove(var);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            out.problems
                .push(format!("could not start {:?}: {e}", launch.program));
            if let Some(ev) = &events {
                let _ = ev.send(Event::Ended(driver));
            }
            return out;
        }
    };
    let mut stdin = child.stdin.take();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    });
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    loop {
        let line = match tokio::time::timeout_at(deadline, stdout.next_line()).await {
            Err(_) => {
                out.problems.push(format!(
                    "timed out after {RUN_TIMEOUT:?}; killed (lines so far: {})",
                    out.lines.len()
                ));
                let _ = child.start_kill();
                break;
            }
            Ok(Err(e)) => {
                out.problems.push(format!("reading its output: {e}"));
                break;
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(line))) => line,
        };
        out.raw.push_str(&line);
        out.raw.push('\n');
        let v: Value = match serde_json::from_str(&line) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                out.problems.push(format!("not a JSON object line: {line}"));
                continue;
            }
        };
        let phase = v["phase"].as_str().unwrap_or("").to_string();
        if phase == "ready" {
            let next = v["next"].as_str().unwrap_or("");
            let n: u32 = next.trim_start_matches('p').parse().unwrap_or(0);
            if let Some(ev) = &events {
                let _ = ev.send(Event::Ready(driver, n));
            }
            if let Some(rx) = release.as_mut() {
                let _ = tokio::time::timeout_at(deadline, rx.wait_for(|k| *k >= n)).await;
            }
            if let Some(w) = stdin.as_mut() {
                let _ = w.write_all(format!("go {next}\n").as_bytes()).await;
                let _ = w.flush().await;
            }
            continue;
        }
        if let Some(info) = v["info"].as_str() {
            out.infos
                .insert((phase, info.to_string()), v["value"].clone());
            continue;
        }
        let Some(check) = v["check"].as_str() else {
            out.problems.push(format!("a line without check: {line}"));
            continue;
        };
        let value = if let Some(why) = v.get("skipped") {
            serde_json::json!({ "skipped": why })
        } else {
            v["result"].clone()
        };
        if out
            .lines
            .insert((phase.clone(), check.to_string()), value)
            .is_some()
        {
            out.problems
                .push(format!("check {phase}/{check} printed twice"));
        }
    }
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    match status {
        Ok(Ok(s)) if s.success() => {}
        Ok(Ok(s)) => out.problems.push(format!("exited with {s}")),
        Ok(Err(e)) => out.problems.push(format!("wait: {e}")),
        Err(_) => {
            let _ = child.kill().await;
            out.problems
                .push("did not exit after its output ended; killed".into());
        }
    }
    out.stderr = stderr_task.await.unwrap_or_default();
    out.elapsed = started.elapsed();
    if let Some(ev) = &events {
        let _ = ev.send(Event::Ended(driver));
    }
    out
}

/// Source 13 and target 17 with what the checks need, and pgshift in front.
fn start_stack() -> Stack {
    let opts = ServerOptions {
        settings: vec![
            // Two-phase commit.
            ("max_prepared_transactions".into(), "20".into()),
            // Direct and pgshift runs of four drivers at once, each with 50 concurrent
            // connections and a few sessions.
            ("max_connections".into(), "600".into()),
        ],
        hba: vec![format!("host all {MD5_USER} 127.0.0.1/32 md5")],
        ..Default::default()
    };
    let (source, target) = std::thread::scope(|s| {
        let t = s.spawn(|| PgServer::start_with(TARGET_MAJOR, opts.clone()));
        let source = PgServer::start_with(SOURCE_MAJOR, opts.clone()).expect("source server");
        (source, t.join().unwrap().expect("target server"))
    });
    for s in [&source, &target] {
        s.psql("postgres", &roles_sql()).expect("roles");
        s.psql(
            "postgres",
            &format!("CREATE DATABASE {DB} OWNER {APP_USER}"),
        )
        .expect("database");
    }
    source
        .psql(
            "postgres",
            &format!("CREATE DATABASE {DB2} OWNER {APP_USER}"),
        )
        .expect("second database");
    source
        .psql(DB2, &db2_sql())
        .expect("second database's table");
    let mut sql = rls_sql();
    for d in DRIVERS {
        for m in [Mode::Direct, Mode::Pgshift, Mode::Cutover] {
            sql.push_str(&run_schema_sql(&schema(d, m)));
        }
    }
    source.psql(DB, &sql).expect("the runs' tables");
    // The checks fail statements on purpose (wrong password, division by zero, timeouts,
    // cancels): pgshift's health checks after the cutover must not count them against the
    // target and roll back on their own in the middle of the cutover run.
    let extra = format!(
        "[health]\nmax_error_rate = 1.0\nmax_p99_ratio = 1000000.0\n\n\
         [[users]]\nname = \"{MD5_USER}\"\npassword = \"{MD5_PASSWORD}\"\nauth = \"md5\"\n\n\
         [[users]]\nname = \"{SUPER_USER}\"\npassword = \"{SUPER_PASSWORD}\"\n"
    );
    // The MD5 user's server logins are MD5: pgshift accepts that only when `auth` lists it.
    let allow_md5 = "auth = [\"scram-sha-256\", \"md5\"]\n";
    let config = stack_config(&source, &target, free_port(), &extra)
        .replacen("[source]\n", &format!("[source]\n{allow_md5}"), 1)
        .replacen("[target]\n", &format!("[target]\n{allow_md5}"), 1);
    let pgshift = Pgshift::start(&config).expect("pgshift");
    Stack {
        source,
        target,
        pgshift,
    }
}

/// Runs an admin command; the error as text.
async fn admin(stack: &Stack, command: &str) -> Result<String, String> {
    let c = stack.admin_client().await.map_err(|e| format!("{e:#}"))?;
    match c.simple_query(command).await {
        Ok(msgs) => Ok(format!("{:?}", integration::stack::rows(msgs))),
        Err(e) => Err(db_error(&e)),
    }
}

/// Drives the cutover run: once every script waits before p1, INITIATE CUTOVER; once every
/// script waits before p2, ROLLBACK UPGRADE. Returns what went wrong on the way.
async fn coordinate(
    stack: &Stack,
    drivers: BTreeSet<Driver>,
    mut events: mpsc::UnboundedReceiver<Event>,
    release: watch::Sender<u32>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ended = BTreeSet::new();
    let mut ready: BTreeMap<Driver, u32> = BTreeMap::new();
    for (phase, command, expect) in [
        (1u32, "INITIATE CUTOVER", "cut_over"),
        (2, "ROLLBACK UPGRADE", "rolled_back"),
    ] {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        while drivers
            .iter()
            .any(|d| !ended.contains(d) && ready.get(d).copied().unwrap_or(0) < phase)
        {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Event::Ready(d, n))) => {
                    ready.insert(d, n);
                }
                Ok(Some(Event::Ended(d))) => {
                    ended.insert(d);
                }
                Ok(None) => break,
                Err(_) => {
                    let waiting: Vec<_> = drivers
                        .iter()
                        .filter(|d| {
                            !ended.contains(*d) && ready.get(*d).copied().unwrap_or(0) < phase
                        })
                        .map(|d| d.name())
                        .collect();
                    problems.push(format!(
                        "cutover run: {waiting:?} not ready for p{phase} within {READY_TIMEOUT:?}; going on without them"
                    ));
                    break;
                }
            }
        }
        let t0 = Instant::now();
        match admin(stack, command).await {
            Ok(_) => eprintln!("[drivers] {command}: done in {:?}", t0.elapsed()),
            Err(e) => problems.push(format!("cutover run: {command} failed: {e}")),
        }
        match stack.status().await {
            Ok(s) if s.get("phase").cloned().flatten().as_deref() == Some(expect) => {}
            Ok(s) => problems.push(format!(
                "cutover run: after {command} the phase is not {expect}: {s:?}"
            )),
            Err(e) => problems.push(format!("cutover run: SHOW UPGRADE STATUS: {e:#}")),
        }
        let _ = release.send(phase);
    }
    problems
}

/// A short form of a value for the report.
fn show(v: Option<&Value>) -> String {
    match v {
        None => "(no line)".into(),
        Some(v) => {
            let s = v.to_string();
            if s.chars().count() > 400 {
                format!("{}…", s.chars().take(400).collect::<String>())
            } else {
                s
            }
        }
    }
}

fn is_skip(v: &Value) -> bool {
    v.get("skipped").is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_give_identical_results_direct_and_through_pgshift_with_cutover_and_rollback() {
    let t0 = Instant::now();
    let java = tokio::task::spawn_blocking(compile_java);
    let stack = tokio::task::spawn_blocking(start_stack).await.unwrap();
    let java_classes = java.await.unwrap();
    eprintln!("[drivers] stack up in {:?}", t0.elapsed());

    let mut launchers = BTreeMap::new();
    let mut skipped_drivers = Vec::new();
    for d in DRIVERS {
        match launcher(d, &java_classes) {
            Ok(l) => {
                launchers.insert(d, l);
            }
            Err(why) => {
                eprintln!("[drivers] SKIPPED driver {}: {why}", d.name());
                skipped_drivers.push(format!("{}: {why}", d.name()));
            }
        }
    }

    if let Some(secs) = std::env::var("DRIVERS_HOLD")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        for (host, port, what) in [
            (stack.source.host.clone(), stack.source.port, "direct"),
            (stack.pgshift.host.clone(), stack.pgshift.port, "pgshift"),
        ] {
            let env = script_env(&host, port, &schema(Driver::Psycopg, Mode::Direct));
            let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            eprintln!("[drivers] DRIVERS_HOLD {what}: {}", env.join(" "));
        }
        eprintln!(
            "[drivers] admin: {}",
            stack.pgshift.conninfo(
                integration::stack::ADMIN_USER,
                integration::stack::ADMIN_PASSWORD,
                "pgshift"
            )
        );
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }

    // The upgrade synchronises while the direct and pgshift runs go on (they write only into
    // tables that exist on both sides by then; the cutover run starts once it replicates).
    let upgrade = admin(&stack, "START UPGRADE").await;

    let mut runs: BTreeMap<(Driver, Mode), RunOutput> = BTreeMap::new();
    let t_runs = Instant::now();
    {
        let mut tasks = Vec::new();
        for (&d, l) in &launchers {
            for mode in [Mode::Direct, Mode::Pgshift] {
                let (host, port) = match mode {
                    Mode::Direct => (stack.source.host.clone(), stack.source.port),
                    _ => (stack.pgshift.host.clone(), stack.pgshift.port),
                };
                let env = script_env(&host, port, &schema(d, mode));
                tasks.push(async move { ((d, mode), run_script(d, l, env, None, None).await) });
            }
        }
        for (k, out) in futures_join_all(tasks).await {
            runs.insert(k, out);
        }
    }
    eprintln!(
        "[drivers] direct and pgshift runs done in {:?}",
        t_runs.elapsed()
    );

    let replicating = match upgrade {
        Ok(_) => stack
            .wait_phase("replicating", Duration::from_secs(120))
            .await
            .map(|_| ()),
        Err(e) => Err(anyhow::anyhow!("START UPGRADE: {e}")),
    };
    let mut problems: Vec<String> = skipped_drivers
        .iter()
        .filter(|_| std::env::var_os("CI").is_some())
        .map(|s| format!("driver skipped under CI: {s}"))
        .collect();
    match replicating {
        Ok(_) => {
            let t_cut = Instant::now();
            let (ev_tx, ev_rx) = mpsc::unbounded_channel();
            let (rel_tx, rel_rx) = watch::channel(0u32);
            let mut tasks = Vec::new();
            for (&d, l) in &launchers {
                let env = script_env(
                    &stack.pgshift.host,
                    stack.pgshift.port,
                    &schema(d, Mode::Cutover),
                );
                let (ev, rel) = (ev_tx.clone(), rel_rx.clone());
                tasks.push(async move {
                    (
                        (d, Mode::Cutover),
                        run_script(d, l, env, Some(ev), Some(rel)).await,
                    )
                });
            }
            drop(ev_tx);
            let drivers: BTreeSet<Driver> = launchers.keys().copied().collect();
            let (outs, coord) = tokio::join!(
                futures_join_all(tasks),
                coordinate(&stack, drivers, ev_rx, rel_tx)
            );
            for (k, out) in outs {
                runs.insert(k, out);
            }
            problems.extend(coord);
            eprintln!("[drivers] cutover run done in {:?}", t_cut.elapsed());
        }
        Err(e) => problems.push(format!(
            "the upgrade did not reach replicating, no cutover run: {e:#}"
        )),
    }

    // Every run's lines as printed, for reading after a failure.
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("drivers");
    let _ = std::fs::create_dir_all(&out_dir);
    for ((d, m), out) in &runs {
        let path = out_dir.join(format!("{}_{}.jsonl", d.ident(), m.name()));
        let _ = std::fs::write(&path, &out.raw);
        let _ = std::fs::write(path.with_extension("stderr"), &out.stderr);
    }
    eprintln!("[drivers] every run's output: {}", out_dir.display());

    let (report, diffs, summary) = compare(&launchers, &runs, &mut problems);
    eprintln!("{report}");
    eprintln!(
        "[drivers] {} differences, {} problems, whole test {:?}",
        diffs.len(),
        problems.len(),
        t0.elapsed()
    );
    if !diffs.is_empty() || !problems.is_empty() {
        let mut msg = String::new();
        if !summary.is_empty() {
            msg.push_str("checks that differ from the direct run (driver run phase):\n");
            for (check, wheres) in &summary {
                msg.push_str(&format!("  {check}: {}\n", wheres.join(", ")));
            }
        }
        if !diffs.is_empty() {
            msg.push_str(&format!(
                "{} results differ from the direct run (driver / run / phase / check: direct vs other):\n",
                diffs.len()
            ));
            for d in &diffs {
                msg.push_str(&format!("  {d}\n"));
            }
        }
        if !problems.is_empty() {
            msg.push_str("problems:\n");
            for p in &problems {
                msg.push_str(&format!("  {p}\n"));
            }
        }
        for ((d, m), out) in &runs {
            // (A check's unexpected error is in its line already; its traceback is in the
            // run's stderr, kept with its output in CARGO_TARGET_TMPDIR/drivers.)
            if !out.problems.is_empty() {
                let tail: Vec<&str> = out.stderr.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                msg.push_str(&format!(
                    "stderr of {} {} (tail):\n{}\n",
                    d.name(),
                    m.name(),
                    tail.join("\n")
                ));
            }
        }
        panic!("{msg}");
    }
}

/// Awaits all futures concurrently, results in the order given.
/// (They borrow the launchers, so they are polled in place rather than spawned.)
async fn futures_join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut outs: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if outs[i].is_some() {
                continue;
            }
            match f.as_mut().poll(cx) {
                std::task::Poll::Ready(v) => outs[i] = Some(v),
                std::task::Poll::Pending => pending = true,
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outs.into_iter().map(|o| o.unwrap()).collect()
}

/// Compares every run with its driver's direct run. Returns a table of every check per
/// driver, the differences, and per check where it differs (driver, run, phase); adds what
/// is wrong with the runs themselves to `problems`.
fn compare(
    launchers: &BTreeMap<Driver, Launcher>,
    runs: &BTreeMap<(Driver, Mode), RunOutput>,
    problems: &mut Vec<String>,
) -> (String, Vec<String>, BTreeMap<String, Vec<String>>) {
    let mut summary: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut report =
        String::from("[drivers] results (= same as direct, DIFF, skip: the driver cannot):\n");
    let mut diffs = Vec::new();
    // Every driver names every check (as a result or as skipped).
    let all_checks: BTreeSet<(String, String)> = runs
        .iter()
        .filter(|((_, m), _)| *m == Mode::Direct)
        .flat_map(|(_, o)| o.lines.keys().cloned())
        .collect();
    for &d in launchers.keys() {
        let empty = RunOutput::default();
        let direct = runs.get(&(d, Mode::Direct)).unwrap_or(&empty);
        for (mode, out) in runs.iter().filter(|((dd, _), _)| *dd == d) {
            for p in &out.problems {
                problems.push(format!("{} {} run: {p}", d.name(), mode.1.name()));
            }
        }
        for key in &all_checks {
            if !direct.lines.contains_key(key) {
                problems.push(format!(
                    "{} prints no line for check {}/{} (neither a result nor skipped)",
                    d.name(),
                    key.0,
                    key.1
                ));
            }
        }
        for (key, v) in &direct.lines {
            if v.get("unexpected_error").is_some() {
                problems.push(format!(
                    "{} direct run: check {}/{} failed against PostgreSQL itself (the script is wrong): {}",
                    d.name(),
                    key.0,
                    key.1,
                    show(Some(v))
                ));
            }
        }
        // The cutover run must have run where it should.
        if let Some(cut) = runs.get(&(d, Mode::Cutover)) {
            for (phase, info, want) in [
                ("p0", "server_major", SOURCE_MAJOR),
                ("p1", "server_major", TARGET_MAJOR),
                ("p1", "new_connection_server_major", TARGET_MAJOR),
                ("p2", "server_major", SOURCE_MAJOR),
            ] {
                let got = cut.infos.get(&(phase.to_string(), info.to_string()));
                if got.and_then(|v| v.as_u64()) != Some(want as u64) {
                    problems.push(format!(
                        "{} cutover run: {info} in {phase} is {} instead of {want}",
                        d.name(),
                        show(got)
                    ));
                }
            }
        }
        report.push_str(&format!("  {}:\n", d.name()));
        let keys: BTreeSet<&(String, String)> = runs
            .iter()
            .filter(|((dd, _), _)| *dd == d)
            .flat_map(|(_, o)| o.lines.keys())
            .collect();
        let mut skips: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for key in keys {
            let dv = direct.lines.get(key);
            let mut cols = Vec::new();
            for mode in [Mode::Pgshift, Mode::Cutover] {
                let Some(out) = runs.get(&(d, mode)) else {
                    cols.push(format!("{}: not run", mode.name()));
                    continue;
                };
                let ov = out.lines.get(key);
                if ov == dv {
                    let same = if dv.is_some_and(is_skip) { "skip" } else { "=" };
                    cols.push(format!("{}: {same}", mode.name()));
                } else {
                    cols.push(format!("{}: DIFF", mode.name()));
                    summary.entry(key.1.clone()).or_default().push(format!(
                        "{} {} {}",
                        d.name(),
                        mode.name(),
                        key.0
                    ));
                    diffs.push(format!(
                        "{} / {} / {} / {}: direct {} vs {} {}",
                        d.name(),
                        mode.name(),
                        key.0,
                        key.1,
                        show(dv),
                        mode.name(),
                        show(ov)
                    ));
                }
            }
            if let Some(v) = dv.filter(|v| is_skip(v)) {
                let why = v["skipped"].as_str().unwrap_or("").to_string();
                skips.entry(why).or_default().insert(key.1.clone());
            }
            report.push_str(&format!(
                "    {:<4}{:<34}{}\n",
                key.0,
                key.1,
                cols.join("  ")
            ));
        }
        for (why, checks) in &skips {
            let checks: Vec<&str> = checks.iter().map(String::as_str).collect();
            report.push_str(&format!("    SKIPPED {}: {why}\n", checks.join(", ")));
        }
        for mode in [Mode::Direct, Mode::Pgshift, Mode::Cutover] {
            if let Some(o) = runs.get(&(d, mode)) {
                report.push_str(&format!("    {} run took {:.1?}\n", mode.name(), o.elapsed));
            }
        }
    }
    (report, diffs, summary)
}
