//! Proves the harness: real PostgreSQL 13 and 17 side by side, SQL through both client paths,
//! native logical replication 13 → 17, and driving a pgshift-like binary. Also warms the
//! binary cache for the other tests.

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use integration::{free_port, PgServer, Pgshift, ServerOptions};

fn start_timed(major: u32) -> PgServer {
    let started = Instant::now();
    let server =
        PgServer::start(major).unwrap_or_else(|e| panic!("starting PostgreSQL {major}: {e:#}"));
    eprintln!(
        "PostgreSQL {} (major {major}) on port {} started in {:.2?}",
        server.binaries.version,
        server.port,
        started.elapsed()
    );
    server
}

async fn wait_for_row(client: &tokio_postgres::Client, id: i32) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = client
            .query("SELECT v FROM t WHERE id = $1", &[&id])
            .await
            .expect("query on the subscriber");
        if let Some(row) = rows.first() {
            return row.get(0);
        }
        assert!(
            Instant::now() < deadline,
            "row {id} did not arrive on the subscriber within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_13_and_17_side_by_side_with_logical_replication() {
    // Both start at once, from two threads: the install and user setup must cope.
    let (mut pg13, pg17) = std::thread::scope(|s| {
        let a = s.spawn(|| start_timed(13));
        let b = s.spawn(|| start_timed(17));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(pg13.port, pg17.port);
    assert_eq!(pg13.host, "127.0.0.1");
    assert_eq!(
        pg13.url("postgres"),
        format!(
            "postgres://postgres:postgres@127.0.0.1:{}/postgres",
            pg13.port
        )
    );

    // server_version_num through tokio-postgres and through psql.
    for (server, major) in [(&pg13, 13), (&pg17, 17)] {
        let client = server.connect("postgres").await.unwrap();
        let row = client
            .query_one("SHOW server_version_num", &[])
            .await
            .unwrap();
        let num: i32 = row.get::<_, String>(0).parse().unwrap();
        assert_eq!(num / 10000, major, "server_version_num {num} via connect()");
        let num: i32 = server
            .psql("postgres", "SHOW server_version_num")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(num / 10000, major, "server_version_num {num} via psql()");
        // Settings the harness promises.
        assert_eq!(
            server.psql("postgres", "SHOW wal_level").unwrap(),
            "logical"
        );
        assert_eq!(
            server.psql("postgres", "SHOW listen_addresses").unwrap(),
            "127.0.0.1"
        );
        assert_eq!(
            server
                .psql(
                    "postgres",
                    "SELECT datcollate FROM pg_database WHERE datname = current_database()"
                )
                .unwrap(),
            "C"
        );
        assert_eq!(
            server.psql("postgres", "SHOW server_encoding").unwrap(),
            "UTF8"
        );
        assert_eq!(
            server.psql("postgres", "SHOW max_connections").unwrap(),
            "200"
        );
    }

    // psql's errors carry the server's message.
    let err = pg13
        .psql("postgres", "SELECT * FROM no_such_table")
        .unwrap_err();
    assert!(format!("{err:#}").contains("no_such_table"), "{err:#}");

    // Native logical replication 13 → 17: initial copy, then streaming.
    pg13.create_database("app").unwrap();
    pg17.create_database("app").unwrap();
    pg13.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'copied'); CREATE PUBLICATION pub FOR TABLE t",
    )
    .unwrap();
    let sub = pg17.connect("app").await.unwrap();
    sub.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let started = Instant::now();
    sub.batch_execute(&format!(
        "CREATE SUBSCRIPTION sub CONNECTION '{}' PUBLICATION pub",
        pg13.conninfo("app").replace('\'', "''")
    ))
    .await
    .unwrap();
    assert_eq!(wait_for_row(&sub, 1).await, "copied");
    let publisher = pg13.connect("app").await.unwrap();
    publisher
        .execute("INSERT INTO t VALUES (2, 'streamed')", &[])
        .await
        .unwrap();
    assert_eq!(wait_for_row(&sub, 2).await, "streamed");
    eprintln!(
        "logical replication 13 -> 17: both rows arrived in {:.2?}",
        started.elapsed()
    );
    sub.batch_execute("DROP SUBSCRIPTION sub").await.unwrap();

    // pgbench's tables through Debian's pgbench (15) against 17.
    pg17.create_database("bench").unwrap();
    pg17.pgbench_init("bench", 1).unwrap();
    assert_eq!(
        pg17.psql("bench", "SELECT count(*) FROM pgbench_accounts")
            .unwrap(),
        "100000"
    );

    // Restart keeps port and data; kill stops at once.
    let started = Instant::now();
    pg13.restart().unwrap();
    eprintln!("PostgreSQL 13 restarted in {:.2?}", started.elapsed());
    assert_eq!(pg13.psql("app", "SELECT count(*) FROM t").unwrap(), "2");
    let log = pg13.log_path();
    assert!(log.exists(), "{} missing", log.display());
    let dir = pg13.dir.clone();
    pg13.kill();
    assert!(
        TcpStream::connect(("127.0.0.1", pg13.port)).is_err(),
        "killed server still accepts connections"
    );
    drop(pg13);
    if std::env::var_os("PGSHIFT_KEEP_DATA").is_none() {
        assert!(!dir.exists(), "{} not removed on drop", dir.display());
    }
}

#[test]
fn server_options_override_defaults() {
    let opts = ServerOptions::default()
        .setting("max_connections", "42")
        .setting("cluster_name", "it's quoted");
    let server = PgServer::start_with(17, opts).unwrap();
    assert_eq!(
        server.psql("postgres", "SHOW max_connections").unwrap(),
        "42"
    );
    assert_eq!(
        server.psql("postgres", "SHOW cluster_name").unwrap(),
        "it's quoted"
    );
}

#[test]
fn free_ports_are_not_repeated() {
    let ports: std::collections::HashSet<u16> = (0..50).map(|_| free_port()).collect();
    assert_eq!(ports.len(), 50);
}

/// A stand-in for pgshift: takes `serve --config FILE`, listens on `[proxy] listen`, notes each
/// start in `./data/starts` (relative to its working directory).
const STAND_IN: &str = r#"#!/bin/sh
[ "$1" = serve ] && [ "$2" = --config ] || { echo "usage: serve --config FILE" >&2; exit 2; }
exec python3 -c '
import re, socket, sys, os
cfg = open(sys.argv[1]).read()
port = int(re.search(r"listen\s*=\s*\"[^\"]*:(\d+)\"", cfg).group(1))
os.makedirs("data", exist_ok=True)
open("data/starts", "a").write("start\n")
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen()
print("stand-in listening on", port, flush=True)
while True:
    s.accept()[0].close()
' "$3"
"#;

#[test]
fn pgshift_driver_with_a_stand_in() {
    let dir = std::env::temp_dir().join(format!("pgshift-stand-in-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("stand-in");
    std::fs::write(&bin, STAND_IN).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();

    let port = free_port();
    let config = format!("[proxy]\nlisten = \"127.0.0.1:{port}\"\n");
    let mut shift = Pgshift::start_binary(&bin, &config).unwrap();
    assert_eq!(shift.port, port);
    assert!(shift.config_path.exists());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert!(
        shift
            .log()
            .contains(&format!("stand-in listening on {port}")),
        "{}",
        shift.log()
    );

    shift.restart().unwrap();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    let starts = std::fs::read_to_string(shift.dir.join("data/starts")).unwrap();
    assert_eq!(
        starts.lines().count(),
        2,
        "restart must keep the working directory"
    );

    shift.kill9();
    assert!(!shift.is_running());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    let run_dir = shift.dir.clone();
    drop(shift);
    if std::env::var_os("PGSHIFT_KEEP_DATA").is_none() {
        assert!(!run_dir.exists());
    }

    // A binary that dies at start: the error says so and carries its output.
    let broken = dir.join("broken");
    std::fs::write(&broken, "#!/bin/sh\necho 'broken on purpose' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = Pgshift::start_binary(&broken, &config)
        .map(|_| ())
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("broken on purpose") && msg.contains("exited"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The real binary builds from inside `cargo test` (cargo's build lock is not held while
/// tests run), and in the profile of the running tests.
#[test]
fn pgshift_binary_builds_from_inside_cargo_test() {
    let started = Instant::now();
    let bin = integration::pgshift_bin().unwrap();
    eprintln!(
        "pgshift_bin() -> {} in {:.2?}",
        bin.display(),
        started.elapsed()
    );
    assert!(bin.is_file(), "{}", bin.display());
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    assert!(
        bin.parent().unwrap().ends_with(profile),
        "{} is not a {profile} build",
        bin.display()
    );
    // Once per process: the second call is immediate.
    let again = Instant::now();
    assert_eq!(integration::pgshift_bin().unwrap(), bin);
    assert!(again.elapsed() < Duration::from_secs(1));
}
