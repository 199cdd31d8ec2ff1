//! `[upgrade] ddl` (issue 11): DDL sent through pgshift while logical replication runs is
//! refused with SQLSTATE 55000 by default, in both protocols, with the transaction state the
//! server itself gives a failed statement; before START UPGRADE, once the upgrade is done and
//! in a database the upgrade does not carry it goes through; `allow` lets it through meanwhile. PostgreSQL 13 → 17, `logical` driver.

use integration::stack::db_error;
use integration::{Stack, StackOptions};
use std::time::Duration;

/// The SQLSTATE and message of a failed statement.
fn refused(r: Result<impl std::fmt::Debug, tokio_postgres::Error>) -> (String, String) {
    let e = r.expect_err("the statement must be refused");
    let d = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e}"));
    (d.code().code().to_string(), d.message().to_string())
}

fn columns(server: &integration::PgServer, table: &str) -> String {
    server
        .psql(
            "app",
            &format!(
                "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = '{table}'"
            ),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_is_refused_while_replication_runs_and_goes_through_before_and_after() {
    let stack = Stack::start(StackOptions {
        pgbench_scale: 0,
        extra_config:
            "[upgrade]\napprove_cutover = true\nshift_hold_ms = 500\npoll_interval_ms = 100\ndatabases = [\"app\"]\n"
                .into(),
        ..Default::default()
    })
    .expect("stack");
    let c = stack.app_client().await.unwrap();
    // Before the upgrade: DDL through pgshift is the application's business.
    c.batch_execute("CREATE TABLE early (id int PRIMARY KEY)")
        .await
        .map_err(|e| db_error(&e))
        .unwrap();
    stack.admin("START UPGRADE").await.unwrap();
    stack
        .wait_state("waiting", Duration::from_secs(120))
        .await
        .expect("replicating, waiting for the cutover");

    // Simple protocol.
    let (code, msg) = refused(c.simple_query("CREATE TABLE t2 (id int)").await);
    assert_eq!(code, "55000", "{msg}");
    assert!(
        msg.starts_with("CREATE TABLE is refused: pgshift is upgrading this database"),
        "{msg}"
    );
    // Extended protocol (Parse/Bind/Execute).
    let (code, msg) = refused(c.execute("ALTER TABLE early ADD COLUMN x int", &[]).await);
    assert_eq!(
        (code.as_str(), msg.starts_with("ALTER TABLE is refused")),
        ("55000", true),
        "{msg}"
    );
    // The command words only: no identifier, no literal (a password) in the message.
    let (_, msg) = refused(c.simple_query("ALTER ROLE app PASSWORD 'n3w-Secret'").await);
    assert!(
        msg.starts_with("ALTER ROLE is refused") && !msg.contains("n3w-Secret"),
        "{msg}"
    );
    // A multi-statement Query: what precedes the DDL ran in its implicit transaction, which
    // the error rolls back, as PostgreSQL does for a failing statement.
    refused(
        c.simple_query(
            "INSERT INTO early VALUES (1); DROP TABLE early; INSERT INTO early VALUES (2)",
        )
        .await,
    );
    // Inside a transaction block: the block fails like on a server error (25P02 after it).
    c.batch_execute("BEGIN; INSERT INTO early VALUES (3)")
        .await
        .unwrap();
    let (code, _) = refused(c.simple_query("CREATE INDEX ON early (id)").await);
    assert_eq!(code, "55000");
    let (code, _) = refused(c.simple_query("SELECT 1").await);
    assert_eq!(code, "25P02", "the transaction block must be failed");
    c.batch_execute("ROLLBACK").await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM early", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "no write of a refused unit may stay");
    // Temporary objects are the session's own.
    c.batch_execute(
        "CREATE TEMP TABLE scratch (a int); INSERT INTO scratch VALUES (1); DROP TABLE scratch",
    )
    .await
    .map_err(|e| db_error(&e))
    .unwrap();
    // Writes go on, and the refused DDL never reached a server.
    c.execute("INSERT INTO early VALUES (4)", &[])
        .await
        .unwrap();
    assert_eq!(columns(&stack.source, "early"), "id");
    assert_eq!(
        stack
            .source
            .psql("app", "SELECT to_regclass('t2') IS NULL")
            .unwrap(),
        "t"
    );
    // A database the upgrade does not carry is not replicated: its DDL goes through.
    let other = integration::stack::connect(&stack.pgshift.conninfo(
        integration::stack::APP_USER,
        integration::stack::APP_PASSWORD,
        "postgres",
    ))
    .await
    .unwrap();
    other
        .batch_execute("CREATE TABLE app_notes (id int); DROP TABLE app_notes")
        .await
        .map_err(|e| db_error(&e))
        .expect("DDL in a database the upgrade does not carry");
    let st = stack.status().await.unwrap();
    assert_eq!(integration::stack::field(&st, "state"), "waiting", "{st:?}");

    // Once the upgrade is done, DDL goes through again (now to the target).
    drop(c);
    stack.admin("INITIATE CUTOVER").await.unwrap();
    stack
        .wait_phase("done", Duration::from_secs(120))
        .await
        .expect("done");
    let c = stack.app_client().await.unwrap();
    c.batch_execute("ALTER TABLE early ADD COLUMN x int")
        .await
        .map_err(|e| db_error(&e))
        .unwrap();
    assert_eq!(columns(&stack.target, "early"), "id,x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_allow_lets_it_through_to_the_serving_side() {
    let stack = Stack::start(StackOptions {
        pgbench_scale: 0,
        extra_config:
            "[upgrade]\napprove_cutover = true\nddl = \"allow\"\npoll_interval_ms = 100\n".into(),
        ..Default::default()
    })
    .expect("stack");
    stack
        .source
        .psql(
            "app",
            "CREATE TABLE t (id int PRIMARY KEY); ALTER TABLE t OWNER TO app",
        )
        .unwrap();
    stack.admin("START UPGRADE").await.unwrap();
    stack
        .wait_state("waiting", Duration::from_secs(120))
        .await
        .expect("replicating");
    let c = stack.app_client().await.unwrap();
    c.batch_execute("ALTER TABLE t ADD COLUMN note text")
        .await
        .map_err(|e| db_error(&e))
        .unwrap();
    assert_eq!(columns(&stack.source, "t"), "id,note");
    assert_eq!(
        columns(&stack.target, "t"),
        "id",
        "allow runs it on the serving side only"
    );
    let log = stack.pgshift.log();
    assert!(
        log.contains("DDL through pgshift while replication runs") && log.contains("ALTER TABLE"),
        "the warning names the command"
    );
}
