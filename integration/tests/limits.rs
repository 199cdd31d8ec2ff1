//! Client connection limits (issue 10 part 6): `[proxy] max_client_connections` and
//! `[[users]] max_connections` refuse logins past them with SQLSTATE 53300 and PostgreSQL's
//! words, the admin console still gets in, the open sessions keep working, and a closed
//! session gives its place back.

use integration::stack::{
    connect, create_app_database, db_error, stack_config, APP_PASSWORD, APP_USER, DB,
};
use integration::{free_port, raw, PgServer, Pgshift};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_refuse_with_53300_and_free_on_close() {
    let source = PgServer::start(13).unwrap();
    let target = PgServer::start(17).unwrap();
    for s in [&source, &target] {
        create_app_database(s).unwrap();
    }
    let extra = format!(
        "[[users]]\nname = \"other\"\npassword = \"other-secret\"\nserver_user = \"{APP_USER}\"\nserver_password = \"{APP_PASSWORD}\"\n"
    );
    let config = stack_config(&source, &target, free_port(), &extra)
        .replacen("[proxy]\n", "[proxy]\nmax_client_connections = 3\n", 1)
        .replacen(
            &format!("name = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\"\n"),
            &format!("name = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\"\nmax_connections = 2\n"),
            1,
        );
    assert!(config.contains("max_connections = 2"), "{config}");
    let p = Pgshift::start(&config).unwrap();
    let (app_ci, other_ci) = (
        p.conninfo(APP_USER, APP_PASSWORD, DB),
        p.conninfo("other", "other-secret", DB),
    );
    let app = || connect(&app_ci);
    let other = || connect(&other_ci);
    let refused = |r: anyhow::Result<tokio_postgres::Client>| match r {
        Ok(_) => panic!("login past the limit was accepted"),
        Err(e) => e.to_string(),
    };

    let a1 = app().await.unwrap();
    let a2 = app().await.unwrap();
    // The user's own limit.
    let e = refused(app().await);
    assert!(e.contains("too many connections for role \"app\""), "{e}");
    let o1 = other().await.unwrap();
    // The total.
    let e = refused(other().await);
    assert!(e.contains("sorry, too many clients already"), "{e}");
    // The admin console still gets in.
    let admin = connect(&p.conninfo("admin", "admin-secret", "pgshift"))
        .await
        .unwrap();
    let clients = admin.simple_query("SHOW CLIENTS").await.unwrap();
    assert!(clients.len() >= 3, "{clients:?}");
    // The open sessions keep working.
    for c in [&a1, &a2, &o1] {
        let v: i32 = c
            .query_one("SELECT 6 * 7", &[])
            .await
            .map_err(|e| db_error(&e))
            .unwrap()
            .get(0);
        assert_eq!(v, 42);
    }
    // A closed session gives its place back (the server side notices the close at once).
    drop(a1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let o2 = loop {
        match other().await {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(
                    e.to_string().contains("53300") || e.to_string().contains("too many"),
                    "{e}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the place of a closed session did not come back: {e}"),
        }
    };
    let v: i32 = o2.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 1);
    drop((a2, o1, o2, admin));
}

/// VmRSS and VmHWM (peak) of process `pid`, in bytes (Linux `/proc/<pid>/status`).
fn rss(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

/// The memory budget (issue 10 part 6): 16 clients at once each send 12 MiB queries (192
/// MiB buffered without a budget); with `session_memory_bytes` = 64 MiB they take turns,
/// every query succeeds, and pgshift's peak RSS stays under its idle RSS plus the budget
/// plus a fixed overhead. Then a client that sends the start of a 40 MiB message and stalls
/// holds 40 MiB: a second 40 MiB message waits `memory_wait_ms` and is refused with 53200
/// (without taking memory), while small and 12 MiB queries of other clients go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_from_many_clients_stay_within_the_memory_budget() {
    use tokio::io::AsyncWriteExt;
    const MIB: usize = 1 << 20;
    const BUDGET: usize = 64 * MIB;
    let source = PgServer::start(13).unwrap();
    let target = PgServer::start(17).unwrap();
    for s in [&source, &target] {
        create_app_database(s).unwrap();
    }
    let extra = format!(
        "[[users]]\nname = \"raw\"\nauth = \"trust\"\nserver_user = \"{APP_USER}\"\nserver_password = \"{APP_PASSWORD}\"\n"
    );
    let config = stack_config(&source, &target, free_port(), &extra).replacen(
        "[proxy]\n",
        &format!(
            "[proxy]\nsession_memory_bytes = {BUDGET}\nmax_message_bytes = {}\nmemory_wait_ms = 4000\n",
            48 * MIB
        ),
        1,
    );
    let p = Pgshift::start(&config).unwrap();
    let pid = p.pid().expect("pgshift runs");
    let ci = p.conninfo(APP_USER, APP_PASSWORD, DB);
    let warm = connect(&ci).await.unwrap();
    warm.simple_query("SELECT 1").await.unwrap();
    let (idle_rss, _) = rss(pid);

    let big = |n: usize| format!("SELECT length('{}')", "x".repeat(n));
    let query = std::sync::Arc::new(big(12 * MIB));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (ci, q) = (ci.clone(), query.clone());
        tasks.push(tokio::spawn(async move {
            let c = connect(&ci).await.unwrap();
            for _ in 0..3 {
                let rows = c.simple_query(&q).await.map_err(|e| db_error(&e)).unwrap();
                let v = rows.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                });
                assert_eq!(v.as_deref(), Some((12 * MIB).to_string().as_str()));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (_, peak) = rss(pid);
    let over_idle = peak.saturating_sub(idle_rss);
    eprintln!(
        "pgshift RSS idle {} MiB, peak {} MiB: {} MiB over idle (budget {} MiB)",
        idle_rss >> 20,
        peak >> 20,
        over_idle >> 20,
        BUDGET >> 20
    );
    assert!(
        over_idle < (BUDGET + 40 * MIB) as u64,
        "peak RSS {} MiB over idle: above the {} MiB budget plus 40 MiB",
        over_idle >> 20,
        BUDGET >> 20
    );

    // A stalled 40 MiB message holds its memory; another one is refused after the wait.
    let header = |n: usize| {
        let mut m = vec![b'Q'];
        m.extend_from_slice(&((n + 4) as u32).to_be_bytes());
        m
    };
    let mut stalled = raw::session(p.port, "raw", DB).await;
    let mut start = header(40 * MIB);
    start.extend_from_slice(b"SELECT length('");
    start.extend(std::iter::repeat_n(b'x', MIB));
    stalled.write_all(&start).await.unwrap();
    let mut refused = raw::session(p.port, "raw", DB).await;
    let mut second = header(40 * MIB);
    second.extend_from_slice(b"SELECT 1");
    let t0 = std::time::Instant::now();
    refused.write_all(&second).await.unwrap();
    // Meanwhile the others go on: a small query and a 12 MiB one (24 MiB are free).
    let v: i32 = warm.query_one("SELECT 6 * 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
    warm.simple_query(&query)
        .await
        .map_err(|e| db_error(&e))
        .unwrap();
    let (tag, body) = raw::read_msg(&mut refused).await.expect("an error");
    assert_eq!(tag, b'E');
    let (code, message) = raw::error_fields(&body);
    assert_eq!(code, "53200", "{message}");
    assert!(message.contains("session_memory_bytes"), "{message}");
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(3900),
        "refused after {:?}, before memory_wait_ms",
        t0.elapsed()
    );
    assert!(
        raw::read_msg(&mut refused).await.is_none(),
        "closed after the error"
    );
    // The stalled client's memory comes back when it goes.
    drop(stalled);
    let mut again = raw::session(p.port, "raw", DB).await;
    let q = big(40 * MIB - 40);
    let mut m = header(q.len() + 1);
    m.extend_from_slice(q.as_bytes());
    m.push(0);
    again.write_all(&m).await.unwrap();
    loop {
        let (tag, body) = raw::read_msg(&mut again).await.expect("an answer");
        assert_ne!(tag, b'E', "{:?}", raw::error_fields(&body));
        if tag == b'Z' {
            break;
        }
    }
    let (_, peak) = rss(pid);
    eprintln!("peak RSS after the 40 MiB messages: {} MiB", peak >> 20);
    let metrics = p.log();
    assert!(!metrics.contains("panicked"), "{metrics}");
}
