//! Client connection limits (issue 10 part 6): `[proxy] max_client_connections` and
//! `[[users]] max_connections` refuse logins past them with SQLSTATE 53300 and PostgreSQL's
//! words, the admin console still gets in, the open sessions keep working, and a closed
//! session gives its place back.

use integration::stack::{
    connect, create_app_database, db_error, stack_config, APP_PASSWORD, APP_USER, DB,
};
use integration::{free_port, PgServer, Pgshift};

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
