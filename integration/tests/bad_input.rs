//! Bad input of every kind gets a clean error and never disturbs other clients
//! (issue 2, test d), plus the admin console's own errors.

use integration::stack::{
    connect, db_error, ADMIN_PASSWORD, ADMIN_USER, APP_PASSWORD, APP_USER, DB,
};
use integration::{Stack, StackOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Read everything the proxy sends until it closes (or 5 s pass); return the bytes.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!("proxy did not close the connection: {e}; got {out:?}"),
        }
    }
}

/// The SQLSTATE of the first ErrorResponse in `bytes`.
fn sqlstate(bytes: &[u8]) -> Option<String> {
    let pos = bytes.iter().position(|&b| b == b'E')?;
    let body = &bytes[pos + 5..];
    let mut i = 0;
    while i < body.len() && body[i] != 0 {
        let code = body[i];
        let end = body[i + 1..].iter().position(|&b| b == 0)? + i + 1;
        if code == b'C' {
            return Some(String::from_utf8_lossy(&body[i + 1..end]).into_owned());
        }
        i = end + 1;
    }
    None
}

async fn still_serving(c: &tokio_postgres::Client, what: &str) {
    let n: i64 = c
        .query_one("SELECT count(*) FROM pgbench_branches", &[])
        .await
        .unwrap_or_else(|e| panic!("after {what}: existing client broke: {}", db_error(&e)))
        .get(0);
    assert_eq!(n, 1, "after {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clean_errors_and_disturbs_nobody() {
    let extra = format!("[[users]]\nname = \"trusty\"\nauth = \"trust\"\nserver_user = \"{APP_USER}\"\nserver_password = \"{APP_PASSWORD}\"\n");
    let stack = Stack::start(StackOptions {
        pgbench_scale: 1,
        extra_config: extra,
        ..Default::default()
    })
    .expect("stack");
    let addr = format!("{}:{}", stack.pgshift.host, stack.pgshift.port);
    let existing = stack.app_client().await.expect("app client");
    // A prepared statement on the existing session, used after each bad input.
    still_serving(&existing, "start").await;

    // 1. Garbage bytes instead of a startup packet, a startup length field of 2^31-1, and a
    //    Terminate before any startup packet: PostgreSQL logs "invalid length of startup
    //    packet" and closes without a word; so does pgshift.
    for (what, bytes) in [
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (
            "huge startup length",
            vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
        ),
        ("Terminate first", vec![b'X', 0, 0, 0, 4]),
    ] {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(&bytes).unwrap();
        let got = read_to_close(&mut s);
        assert!(got.is_empty(), "{what}: closed with a reply: {got:?}");
        still_serving(&existing, what).await;
    }
    assert!(
        stack
            .pgshift
            .log()
            .matches("invalid length of startup packet")
            .count()
            >= 3,
        "the bad start-up packets are logged"
    );

    // 3. A regular message with length 2^31-1 after login (trust-free path: log in with SCRAM via
    //    tokio-postgres is not possible on a raw socket, so send it where a password is expected).
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&integration::raw::startup(APP_USER, DB))
        .unwrap();
    let mut hdr = [0u8; 1];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_exact(&mut hdr).unwrap();
    assert_eq!(hdr[0], b'R', "expected an authentication request");
    s.write_all(&[b'p', 0x7f, 0xff, 0xff, 0xff]).unwrap();
    let got = read_to_close(&mut s);
    assert_eq!(
        sqlstate(&got).as_deref(),
        Some("08P01"),
        "huge message length: {got:?}"
    );
    still_serving(&existing, "huge message length").await;

    // 4. Unknown user, wrong password, non-admin on the admin database, admin on the app database,
    //    a database the server does not have (the server's own 3D000).
    let cases = [
        (
            format!(
                "host={} port={} user=nobody password=x dbname={DB}",
                stack.pgshift.host, stack.pgshift.port
            ),
            "28P01",
        ),
        (
            format!(
                "host={} port={} user={APP_USER} password=wrong dbname={DB}",
                stack.pgshift.host, stack.pgshift.port
            ),
            "28P01",
        ),
        (
            format!(
                "host={} port={} user={APP_USER} password={APP_PASSWORD} dbname=pgshift",
                stack.pgshift.host, stack.pgshift.port
            ),
            "28000",
        ),
        (
            format!(
                "host={} port={} user={ADMIN_USER} password={ADMIN_PASSWORD} dbname={DB}",
                stack.pgshift.host, stack.pgshift.port
            ),
            "28000",
        ),
        (
            format!(
                "host={} port={} user={APP_USER} password={APP_PASSWORD} dbname=other",
                stack.pgshift.host, stack.pgshift.port
            ),
            "3D000",
        ),
    ];
    for (conninfo, want) in &cases {
        let e = match tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await {
            Ok(_) => panic!("{conninfo}: login should have failed"),
            Err(e) => e,
        };
        let code = e.as_db_error().map(|d| d.code().code().to_string());
        assert_eq!(code.as_deref(), Some(*want), "{conninfo}: {}", db_error(&e));
        still_serving(&existing, conninfo).await;
    }

    // 5. Malformed messages inside an authenticated session (a trust user, so a raw socket
    //    can log in): an oversized Query, and a Query without its terminating NUL.
    for bad in [
        vec![b'Q', 0x7f, 0xff, 0xff, 0xff],
        vec![b'Q', 0, 0, 0, 8, b's', b'e', b'l', b'1'],
    ] {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(&integration::raw::startup("trusty", DB))
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Read up to ReadyForQuery.
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(6).any(|w| w == [b'Z', 0, 0, 0, 5, b'I']) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed during login: {seen:?}");
            seen.extend_from_slice(&buf[..n]);
        }
        s.write_all(&bad).unwrap();
        let got = read_to_close(&mut s);
        assert_eq!(
            sqlstate(&got).as_deref(),
            Some("08P01"),
            "malformed {bad:?}: {got:?}"
        );
        still_serving(&existing, "malformed message in a session").await;
    }

    // 6. psql through pgshift works alongside.
    let out = std::process::Command::new(integration::client_bin("psql"))
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &stack.app_conninfo(),
            "-c",
            "SELECT 1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql through pgshift: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 7. Admin console: unknown command lists the valid ones; the console keeps working.
    let admin = connect(
        &stack
            .pgshift
            .conninfo(ADMIN_USER, ADMIN_PASSWORD, "pgshift"),
    )
    .await
    .unwrap();
    let e = admin
        .simple_query("FLY TO THE MOON")
        .await
        .expect_err("unknown command must fail");
    let msg = db_error(&e);
    assert!(msg.contains("unknown admin command"), "{msg}");
    let hint = e
        .as_db_error()
        .and_then(|d| d.hint())
        .unwrap_or_default()
        .to_string();
    for c in [
        "SHOW UPGRADE STATUS",
        "START UPGRADE",
        "INITIATE CUTOVER",
        "ROLLBACK UPGRADE",
        "SHOW CLIENTS",
        "SHOW SERVERS",
        "PAUSE",
        "RESUME",
    ] {
        assert!(hint.contains(c), "hint lacks {c}: {hint}");
    }
    let status = integration::stack::rows(admin.simple_query("show upgrade status").await.unwrap());
    assert_eq!(status.len(), 1);
    for col in [
        "phase",
        "state",
        "replication_lag_bytes",
        "lag_seconds",
        "source_weight",
        "target_weight",
        "epoch",
        "last_error",
        "updated_at",
    ] {
        assert!(
            status[0].contains_key(col),
            "SHOW UPGRADE STATUS lacks {col}"
        );
    }
    let clients = integration::stack::rows(admin.simple_query("SHOW CLIENTS").await.unwrap());
    assert!(
        clients
            .iter()
            .any(|r| r.get("user").cloned().flatten().as_deref() == Some(APP_USER)),
        "{clients:?}"
    );
    let servers = integration::stack::rows(admin.simple_query("SHOW SERVERS").await.unwrap());
    assert_eq!(servers.len(), 2);
    // Extended protocol on the console: a clear error, not a hang.
    let e = admin
        .query("SHOW CLIENTS", &[])
        .await
        .expect_err("extended protocol must be refused");
    assert!(db_error(&e).contains("simple query"), "{}", db_error(&e));
    still_serving(&existing, "admin errors").await;

    // 8. PAUSE holds new transactions (no error), RESUME releases them.
    admin.simple_query("PAUSE").await.unwrap();
    // Connecting while paused waits (it is held, not refused).
    let conninfo = stack.app_conninfo();
    let q = tokio::spawn(async move {
        let c = connect(&conninfo).await.expect("client during pause");
        c.query_one("SELECT 42", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!q.is_finished(), "a transaction ran while paused");
    admin.simple_query("RESUME").await.unwrap();
    let v = tokio::time::timeout(Duration::from_secs(10), q)
        .await
        .expect("released after RESUME")
        .unwrap()
        .unwrap();
    assert_eq!(v, 42);
    still_serving(&existing, "pause/resume").await;
    assert!(
        stack.pgshift.log().lines().all(|l| !l.contains("panicked")),
        "pgshift panicked:\n{}",
        stack.pgshift.log()
    );
}
