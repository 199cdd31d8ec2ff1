//! Loader tests: every error is checked for its line, and secrets for their absence.

use crate::*;
use std::collections::HashMap;

/// A complete, valid configuration. Line numbers below are relied on by tests that edit it.
const FULL: &str = r#"# pgshift test config
[proxy]
listen = "0.0.0.0:6543"
admin_database = "admin"
workers = 4
max_message_bytes = 1048576
connect_timeout_ms = 1000
client_login_timeout_ms = 2000

[journal]
path = "/var/lib/pgshift/state.db"

[source]
host = "old.db"
port = 5433
dbname = "shop"
user = "upgrader"
password = "src-Secret-1"
replication_conninfo = "host=old.internal dbname=shop user=repl password='repl-Secret-2'"

[target]
host = "new.db"
dbname = "shop"
user = "upgrader"
password = "tgt-Secret-3"

[[users]]
name = "app"
password = "app-Secret-4"
server_user = "app_backend"
server_password = "backend-Secret-5"

[[users]]
name = "ops"
password = "ops-Secret-6"
auth = "md5"
admin = true

[[users]]
name = "reporting"
auth = "trust"

[upgrade]
drain_timeout_ms = 2000
catchup_timeout_ms = 3000
poll_interval_ms = 100
auto_start = true

[replication]
driver = "logical"
object_prefix = "pgs_1"
copy_schema = false
pg_dump = "/usr/lib/postgresql/17/bin/pg_dump"
psql = "/usr/lib/postgresql/17/bin/psql"
"#;

const SECRETS: &[&str] = &[
    "src-Secret-1",
    "repl-Secret-2",
    "tgt-Secret-3",
    "app-Secret-4",
    "backend-Secret-5",
    "ops-Secret-6",
    "Secret",
];

/// The smallest valid configuration.
const MINIMAL: &str = r#"[source]
host = "old"
dbname = "db"
user = "u"

[target]
host = "new"
dbname = "db"
user = "u"

[[users]]
name = "app"
password = "pw"
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<Config, ConfigError> {
    load_str_with_env(text, "test.toml", no_env)
}

fn load_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    load_str_with_env(text, "test.toml", move |k| map.get(k).cloned())
}

/// Loads `text`, expecting failure; returns the error's display.
fn fail(text: &str) -> String {
    match load(text) {
        Ok(cfg) => panic!("expected an error, loaded {cfg:?}"),
        Err(e) => {
            let s = e.to_string();
            assert_no_secret(&s);
            s
        }
    }
}

fn assert_no_secret(s: &str) {
    for secret in SECRETS {
        assert!(!s.contains(secret), "secret {secret:?} leaked in: {s}");
    }
}

/// `FULL` with line `line` (1-based) replaced by `with`.
fn full_with_line(line: usize, with: &str) -> String {
    let mut lines: Vec<&str> = FULL.lines().collect();
    lines[line - 1] = with;
    lines.join("\n") + "\n"
}

/// `FULL` with the first line equal to `old` replaced by `new`, asserting that it exists.
fn full_replace(old: &str, new: &str) -> String {
    let line = FULL
        .lines()
        .position(|l| l == old)
        .unwrap_or_else(|| panic!("no line {old:?}"));
    full_with_line(line + 1, new)
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l == needle)
        .map(|p| p + 1)
        .unwrap_or_else(|| panic!("no line {needle:?}"))
}

/// Asserts that the error for `text` is exactly one problem at `line` whose message
/// contains `fragment`.
fn expect_one(text: &str, line: usize, fragment: &str) {
    let err = load(text).expect_err("expected an error");
    let shown = err.to_string();
    assert_no_secret(&shown);
    assert_eq!(err.problems().len(), 1, "{shown}");
    let p = &err.problems()[0];
    assert_eq!(p.line, Some(line), "{shown}");
    assert!(p.message.contains(fragment), "{shown:?} lacks {fragment:?}");
    assert!(shown.starts_with(&format!("test.toml:{line}:")), "{shown}");
}

#[test]
fn full_example_loads() {
    let c = load(FULL).unwrap();
    assert_eq!(c.proxy.listen, "0.0.0.0:6543");
    assert_eq!(c.proxy.admin_database, "admin");
    assert_eq!(c.proxy.workers, 4);
    assert_eq!(c.proxy.max_message_bytes, 1 << 20);
    assert_eq!(c.proxy.connect_timeout_ms, 1000);
    assert_eq!(c.proxy.client_login_timeout_ms, 2000);
    assert_eq!(
        c.journal.path,
        std::path::PathBuf::from("/var/lib/pgshift/state.db")
    );
    assert_eq!(
        (
            c.source.host.as_str(),
            c.source.port,
            c.source.dbname.as_str()
        ),
        ("old.db", 5433, "shop")
    );
    assert_eq!(c.source.password.as_deref(), Some("src-Secret-1"));
    assert!(c
        .source
        .replication_conninfo()
        .contains("host=old.internal"));
    assert_eq!(c.target.port, 5432);
    assert!(c
        .target
        .replication_conninfo()
        .contains("password='tgt-Secret-3'"));
    assert_eq!(c.users.len(), 3);
    assert_eq!(c.users[0].auth, AuthMethod::ScramSha256);
    assert_eq!(c.users[0].server_user(), "app_backend");
    assert_eq!(c.users[0].server_password(), Some("backend-Secret-5"));
    assert!(!c.users[0].admin);
    assert_eq!(c.users[1].auth, AuthMethod::Md5);
    assert_eq!(c.users[1].server_user(), "ops");
    assert_eq!(c.users[1].server_password(), Some("ops-Secret-6"));
    assert!(c.users[1].admin);
    assert_eq!(c.users[2].auth, AuthMethod::Trust);
    assert_eq!(c.users[2].password, None);
    assert_eq!(c.upgrade.drain_timeout_ms, 2000);
    assert_eq!(c.upgrade.catchup_timeout_ms, 3000);
    assert_eq!(c.upgrade.poll_interval_ms, 100);
    assert!(c.upgrade.auto_start);
    assert_eq!(c.replication.driver, Driver::Logical);
    assert_eq!(c.replication.object_prefix, "pgs_1");
    assert!(!c.replication.copy_schema);
    assert_eq!(
        c.replication.psql,
        std::path::PathBuf::from("/usr/lib/postgresql/17/bin/psql")
    );
}

#[test]
fn inline_tables_and_dotted_keys_load() {
    let text = r#"source = { host = "a", dbname = "d", user = "u" }
target.host = "b"
target.dbname = "d"
target.user = "u"
users = [{ name = "app", auth = "trust" }]
"#;
    let c = load(text).unwrap();
    assert_eq!(c.source.host, "a");
    assert_eq!(c.target.host, "b");
    assert_eq!(c.users[0].name, "app");
    // Validation still finds lines through inline tables and arrays.
    let bad = text.replace("name = \"app\"", "name = \"\"");
    expect_one(&bad, 5, "users[0].name: must not be empty");
}

#[test]
fn defaults() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.proxy.listen, "127.0.0.1:6432");
    assert_eq!(c.proxy.admin_database, "pgshift");
    assert_eq!(c.proxy.workers, 0);
    assert_eq!(c.proxy.max_message_bytes, 256 * 1024 * 1024);
    assert_eq!(c.proxy.connect_timeout_ms, 5000);
    assert_eq!(c.proxy.client_login_timeout_ms, 15000);
    assert_eq!(
        c.journal.path,
        std::path::PathBuf::from("./data/pgshift.db")
    );
    assert_eq!(c.source.port, 5432);
    assert_eq!(c.source.password, None);
    assert_eq!(c.source.replication_conninfo, None);
    assert_eq!(c.source.replication_conninfo(), c.source.conninfo());
    assert_eq!(c.users[0].auth, AuthMethod::ScramSha256);
    assert_eq!(c.users[0].server_user, None);
    assert_eq!(c.users[0].server_user(), "app");
    assert_eq!(c.users[0].server_password(), Some("pw"));
    assert!(!c.users[0].admin);
    assert_eq!(c.upgrade.drain_timeout_ms, 10000);
    assert_eq!(c.upgrade.pinned, PinnedPolicy::Refuse);
    assert_eq!(c.upgrade.ddl, DdlPolicy::Block);
    assert_eq!(c.upgrade.pause_lag_bytes, 262144);
    assert_eq!(c.upgrade.long_transaction_ms, 300000);
    assert_eq!(c.upgrade.catchup_timeout_ms, 30000);
    assert_eq!(c.upgrade.poll_interval_ms, 500);
    assert!(!c.upgrade.auto_start);
    assert_eq!(c.replication.driver, Driver::Logical);
    assert_eq!(c.replication.object_prefix, "pgshift");
    assert!(c.replication.copy_schema);
    assert_eq!(c.replication.pg_dump, std::path::PathBuf::from("pg_dump"));
    assert_eq!(c.replication.psql, std::path::PathBuf::from("psql"));
}

#[test]
fn substitution_with_and_without_default_and_escape() {
    let text = r#"[proxy]
listen = "${LISTEN_HOST:-127.0.0.1}:${LISTEN_PORT:-7000}"
admin_database = "lit$${NOT_A_VAR}"
workers = ${WORKERS}
# a comment mentioning ${UNSET_IN_COMMENT} is left alone

[source]
host = "${PGHOST}"
dbname = '${PGDATABASE}'
user = "u"
password = "${PGPASSWORD}"

[target]
host = "new"
dbname = "${EMPTY:-fallback}"
user = "u"

[[users]]
name = "app"
password = "${APP_PASSWORD:-default pw}"
"#;
    let c = load_env(
        text,
        &[
            ("LISTEN_PORT", "7100"),
            ("WORKERS", "3"),
            ("PGHOST", "db.example"),
            ("PGDATABASE", "shop"),
            ("PGPASSWORD", "quo\"te\\back\nslash"),
            ("EMPTY", ""),
        ],
    )
    .unwrap();
    assert_eq!(c.proxy.listen, "127.0.0.1:7100");
    assert_eq!(c.proxy.admin_database, "lit${NOT_A_VAR}");
    assert_eq!(c.proxy.workers, 3);
    assert_eq!(c.source.host, "db.example");
    assert_eq!(c.source.dbname, "shop");
    assert_eq!(c.source.password.as_deref(), Some("quo\"te\\back\nslash"));
    assert_eq!(c.target.dbname, "fallback");
    assert_eq!(c.users[0].password.as_deref(), Some("default pw"));
}

#[test]
fn process_environment_is_used_by_load_str() {
    // PATH is set in any test environment; its value must reach the config unchanged.
    let path = std::env::var("PATH").unwrap_or_default();
    let text = MINIMAL.replace(
        "host = \"old\"",
        "host = \"old\"\nreplication_conninfo = \"${PATH}\"",
    );
    let c = load_str(&text, "env.toml").unwrap();
    assert_eq!(
        c.source.replication_conninfo.as_deref(),
        Some(path.as_str())
    );
}

#[test]
fn unset_variable_is_an_error_with_its_line() {
    let text = full_replace(
        r#"host = "new.db""#,
        r#"host = "${PGSHIFT_TEST_UNSET_HOST}""#,
    );
    let line = line_of(&text, r#"host = "${PGSHIFT_TEST_UNSET_HOST}""#);
    let shown = fail(&text);
    assert_eq!(shown, format!("test.toml:{line}:9: environment variable `PGSHIFT_TEST_UNSET_HOST` is not set (give a default with `${{PGSHIFT_TEST_UNSET_HOST:-default}}`)"));

    // All unset variables are reported together.
    let text = format!("a = '${{ONE}}'\n\nb = \"${{TWO}}\"\n{MINIMAL}");
    let err = load(&text).unwrap_err();
    let lines: Vec<_> = err
        .problems()
        .iter()
        .map(|p| {
            (
                p.line,
                p.message.contains("`ONE`") || p.message.contains("`TWO`"),
            )
        })
        .collect();
    assert_eq!(lines, vec![(Some(1), true), (Some(3), true)]);
}

#[test]
fn bad_substitutions() {
    expect_one(
        &full_with_line(3, r#"listen = "${LISTEN"#),
        3,
        "unterminated `${`",
    );
    expect_one(
        &full_with_line(3, r#"listen = "${9X}""#),
        3,
        "not a variable name",
    );
    // A value that cannot be inserted without changing the meaning is refused, unechoed.
    let text = full_with_line(18, "password = '${PW}'");
    let err = load_env(&text, &[("PW", "it's-Secret")]).unwrap_err();
    assert_eq!(err.problems()[0].line, Some(18));
    assert!(!err.to_string().contains("it's-Secret"), "{err}");
    let err = load_env(&full_with_line(15, "port = ${PORT}"), &[("PORT", "54\n32")]).unwrap_err();
    assert_eq!(err.problems()[0].line, Some(15));
}

#[test]
fn parse_errors_use_original_columns_after_substitution() {
    // The substituted value is much longer than `${H}`; the column still points at the
    // original text (the `x` after the string).
    let text = full_with_line(14, r#"host = "${H}" x"#);
    let err = load_env(&text, &[("H", "a-very-long-host-name.example.com")]).unwrap_err();
    let p = &err.problems()[0];
    assert_eq!((p.line, p.column), (Some(14), Some(15)), "{err}");
}

#[test]
fn syntax_error_has_line_and_column() {
    let shown = fail(&full_with_line(24, "dbname = \"shop"));
    assert!(shown.starts_with("test.toml:24:"), "{shown}");
    let shown = fail(&full_with_line(30, "name = app"));
    assert!(shown.starts_with("test.toml:30:8: "), "{shown}");
    assert_eq!(shown.lines().count(), 1);
    // Duplicate keys are syntax errors too.
    let shown = fail(&full_with_line(
        6,
        "max_message_bytes = 1\nmax_message_bytes = 2",
    ));
    assert!(shown.starts_with("test.toml:7:1: duplicate key"), "{shown}");
}

#[test]
fn unknown_key_has_its_line() {
    expect_one(
        &full_with_line(5, "wokers = 4"),
        5,
        "unknown field `wokers`",
    );
    let text = full_with_line(42, "admn = true");
    let shown = fail(&text);
    assert!(
        shown.starts_with("test.toml:42:1: unknown field `admn`, expected one of"),
        "{shown}"
    );
    expect_one(&full_with_line(1, "[proxi]"), 1, "unknown field `proxi`");
}

#[test]
fn wrong_type_and_missing_field_have_lines() {
    expect_one(&full_with_line(15, r#"port = "5433""#), 15, "invalid type");
    expect_one(&full_with_line(15, "port = 70000"), 15, "expected u16");
    expect_one(
        &full_with_line(36, r#"auth = "password""#),
        36,
        "unknown variant `password`",
    );
    // Missing `host` in [target]: reported at the table header.
    expect_one(&full_with_line(22, ""), 21, "missing field `host`");
    // Missing a whole required section.
    let text: String = MINIMAL.lines().skip(5).collect::<Vec<_>>().join("\n");
    let shown = fail(&text);
    assert_eq!(shown, "test.toml:1:1: missing required section [source]");
}

#[test]
fn passwords_are_never_echoed() {
    // A password of the wrong type: the value must not appear.
    for line in [18, 25, 29, 31] {
        let key = FULL
            .lines()
            .nth(line - 1)
            .and_then(|l| l.split(' ').next())
            .unwrap();
        let text = full_with_line(line, &format!("{key} = 987654321"));
        let err = load(&text).unwrap_err();
        let shown = err.to_string();
        assert!(!shown.contains("987654321"), "{shown}");
        assert_eq!(
            shown,
            format!(
                "test.toml:{line}:{}: `{key}` must be a string (the value is not shown)",
                key.len() + 4
            )
        );
    }
    // A conninfo of the wrong type.
    let text = full_with_line(19, "replication_conninfo = 123456789");
    assert!(!load(&text).unwrap_err().to_string().contains("123456789"));
    // A value from the environment in a wrong-typed place is not echoed either.
    let text = full_with_line(15, "port = ${PGPORT}");
    let err = load_env(&text, &[("PGPORT", "424242")])
        .unwrap_err()
        .to_string();
    assert!(
        !err.contains("424242") && err.contains("PGPORT") && err.starts_with("test.toml:15:8:"),
        "{err}"
    );
    // Validation errors about users and servers carry no passwords (checked by `fail`).
    fail(&full_replace(r#"name = "ops""#, r#"name = "app""#));
    fail(&full_replace(r#"host = "new.db""#, r#"host = """#));
}

#[test]
fn debug_hides_passwords() {
    let c = load(FULL).unwrap();
    let dbg = format!("{c:?}");
    assert_no_secret(&dbg);
    assert!(dbg.contains(r#"password: Some("***")"#), "{dbg}");
    assert!(dbg.contains(r#"server_password: Some("***")"#), "{dbg}");
    assert!(dbg.contains("password='***'"), "{dbg}");
    assert!(dbg.contains("password: None"), "{dbg}"); // the trust user
    let pretty = format!("{c:#?}");
    assert_no_secret(&pretty);
}

/// Each semantic check, alone, at the line of the offending key.
#[test]
fn each_semantic_check_has_its_line() {
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"listen = "0.0.0.0:6543""#,
            r#"listen = "6543""#,
            "proxy.listen: `6543` is not host:port",
        ),
        (
            r#"listen = "0.0.0.0:6543""#,
            r#"listen = "db host:1""#,
            "proxy.listen:",
        ),
        (
            r#"listen = "0.0.0.0:6543""#,
            r#"listen = "::1:6543""#,
            "IPv6",
        ),
        (
            r#"admin_database = "admin""#,
            r#"admin_database = """#,
            "proxy.admin_database: must not be empty",
        ),
        (
            "max_message_bytes = 1048576",
            "max_message_bytes = 1023",
            "proxy.max_message_bytes: 1023 is out of range",
        ),
        (
            "max_message_bytes = 1048576",
            "max_message_bytes = 1073741824",
            "1073741823 (1 GiB - 1)",
        ),
        (
            "workers = 4",
            "session_memory_bytes = 1000",
            "proxy.session_memory_bytes: 1000 is below max_message_bytes (1048576)",
        ),
        (
            "workers = 4",
            "memory_wait_ms = 0",
            "proxy.memory_wait_ms: must be greater than 0",
        ),
        (
            "connect_timeout_ms = 1000",
            "connect_timeout_ms = 0",
            "proxy.connect_timeout_ms: must be greater than 0",
        ),
        (
            "client_login_timeout_ms = 2000",
            "client_login_timeout_ms = 0",
            "proxy.client_login_timeout_ms",
        ),
        (
            r#"path = "/var/lib/pgshift/state.db""#,
            r#"path = """#,
            "journal.path: must not be empty",
        ),
        (
            r#"host = "old.db""#,
            r#"host = "  ""#,
            "source.host: must not be empty",
        ),
        (
            "port = 5433",
            "port = 0",
            "source.port: must be between 1 and 65535",
        ),
        (
            r#"user = "upgrader""#,
            r#"user = """#,
            "source.user: must not be empty",
        ),
        (
            r#"replication_conninfo = "host=old.internal dbname=shop user=repl password='repl-Secret-2'""#,
            r#"replication_conninfo = "" "#,
            "source.replication_conninfo: must not be empty",
        ),
        (
            r#"host = "new.db""#,
            r#"host = """#,
            "target.host: must not be empty",
        ),
        (
            r#"name = "app""#,
            r#"name = """#,
            "users[0].name: must not be empty",
        ),
        (
            r#"password = "ops-Secret-6""#,
            r#"password = """#,
            "users[1].password: must not be empty",
        ),
        (
            r#"server_user = "app_backend""#,
            r#"server_user = """#,
            "users[0].server_user: must not be empty",
        ),
        (
            "drain_timeout_ms = 2000",
            "drain_timeout_ms = 0",
            "upgrade.drain_timeout_ms: must be greater than 0",
        ),
        (
            "catchup_timeout_ms = 3000",
            "catchup_timeout_ms = 0",
            "upgrade.catchup_timeout_ms",
        ),
        (
            "poll_interval_ms = 100",
            "poll_interval_ms = 0",
            "upgrade.poll_interval_ms",
        ),
        (
            r#"object_prefix = "pgs_1""#,
            r#"object_prefix = "Pgs""#,
            "replication.object_prefix: `Pgs` is not a valid prefix",
        ),
        (
            r#"object_prefix = "pgs_1""#,
            r#"object_prefix = "1pgs""#,
            "replication.object_prefix",
        ),
        (
            r#"object_prefix = "pgs_1""#,
            r#"object_prefix = "pg-s""#,
            "replication.object_prefix",
        ),
        (
            r#"object_prefix = "pgs_1""#,
            r#"object_prefix = "a_prefix_that_is_much_longer_than_forty_chars""#,
            "at most 40 characters",
        ),
        (
            r#"pg_dump = "/usr/lib/postgresql/17/bin/pg_dump""#,
            r#"pg_dump = """#,
            "replication.pg_dump",
        ),
        (
            r#"psql = "/usr/lib/postgresql/17/bin/psql""#,
            r#"psql = """#,
            "replication.psql",
        ),
    ];
    for (old, new, fragment) in cases {
        let text = full_replace(old, new);
        expect_one(&text, line_of(&text, new), fragment);
    }

    // The second of two users with one name; the message names the first one's line.
    let text = full_replace(r#"name = "ops""#, r#"name = "app""#);
    expect_one(
        &text,
        34,
        "users[1].name: duplicate user `app` (see users[0].name, line 28)",
    );

    // Lines that occur twice in FULL (first occurrence is in [source]).
    let text = full_with_line(23, r#"dbname = """#);
    expect_one(&text, 23, "target.dbname: must not be empty");
    let text = full_with_line(24, r#"user = """#);
    expect_one(&text, 24, "target.user: must not be empty");
}

#[test]
fn missing_password_without_the_key_points_at_the_user() {
    // users[0] without a `password` line: the problem is at its [[users]] header.
    let text = full_with_line(29, "");
    expect_one(
        &text,
        27,
        "users[0].password: is required unless auth = \"trust\" (user `app`)",
    );
    // Same when a trust user is switched to md5.
    let text = full_with_line(41, r#"auth = "md5""#);
    expect_one(
        &text,
        39,
        "users[2].password: is required unless auth = \"trust\" (user `reporting`)",
    );
}

#[test]
fn source_and_target_must_differ() {
    let text = full_with_line(22, r#"host = "OLD.db""#);
    let text = text.replace("[target]\n", "[target]\nport = 5433\n");
    let err = load(&text).unwrap_err();
    assert_eq!(err.to_string(), "test.toml:21: target: is the same database as [source] (OLD.db:5433/shop); the target must be another server or database (see source, line 13)");
    // Another database on the same server is fine.
    let text = text.replace(
        "dbname = \"shop\"\nuser = \"upgrader\"\npassword = \"tgt",
        "dbname = \"shop2\"\nuser = \"upgrader\"\npassword = \"tgt",
    );
    load(&text).unwrap();
}

#[test]
fn at_least_one_user() {
    let text: String = MINIMAL.lines().take(9).collect::<Vec<_>>().join("\n");
    expect_one(&text, 1, "users: no [[users]] entry");
    let text = format!("users = []\n{text}");
    expect_one(&text, 1, "users: no [[users]] entry");
    let text = text.replace("users = []\n", "# c\n\nusers = []\n");
    expect_one(&text, 3, "users: no [[users]] entry");
}

#[test]
fn all_semantic_errors_reported_together_in_file_order() {
    let text = full_replace(r#"object_prefix = "pgs_1""#, r#"object_prefix = "X""#);
    let text = text.replace(r#"listen = "0.0.0.0:6543""#, r#"listen = "nope""#);
    let text = text.replace("port = 5433", "port = 0");
    let text = text.replace(r#"name = "reporting""#, r#"name = "app""#);
    let err = load(&text).unwrap_err();
    let shown = err.to_string();
    assert_no_secret(&shown);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 4, "{shown}");
    assert!(
        lines[0].starts_with("test.toml:3: proxy.listen:"),
        "{shown}"
    );
    assert!(
        lines[1].starts_with("test.toml:15: source.port:"),
        "{shown}"
    );
    assert!(
        lines[2].starts_with("test.toml:40: users[2].name: duplicate user `app`"),
        "{shown}"
    );
    assert!(
        lines[3].starts_with("test.toml:51: replication.object_prefix:"),
        "{shown}"
    );
    assert_eq!(
        err.problems().iter().map(|p| p.line).collect::<Vec<_>>(),
        vec![Some(3), Some(15), Some(40), Some(51)]
    );
}

#[test]
fn unreadable_file() {
    let err = load_file(std::path::Path::new("/nonexistent/pgshift.toml")).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.starts_with("/nonexistent/pgshift.toml: cannot read the configuration file:"),
        "{shown}"
    );
    assert_eq!(err.problems()[0].line, None);
}

const EXAMPLE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/pgshift.example.toml");

#[test]
fn example_file_loads() {
    let c = load_file(std::path::Path::new(EXAMPLE_PATH)).unwrap_or_else(|e| panic!("{e}"));
    // Without any environment the documented defaults are what loads.
    let text = std::fs::read_to_string(EXAMPLE_PATH).unwrap();
    let d = load_str_with_env(&text, EXAMPLE_PATH, no_env).unwrap_or_else(|e| panic!("{e}"));
    // The optional sections are written out with their defaults.
    assert_eq!(
        format!("{:?}", d.proxy),
        format!("{:?}", ProxyConfig::default())
    );
    assert_eq!(
        format!("{:?}", d.journal),
        format!("{:?}", JournalConfig::default())
    );
    assert_eq!(
        format!("{:?}", d.upgrade),
        format!("{:?}", UpgradeConfig::default())
    );
    assert_eq!(
        format!("{:?}", d.replication),
        format!("{:?}", ReplicationConfig::default())
    );
    assert_eq!(
        format!("{:?}", d.health),
        format!("{:?}", HealthConfig::default())
    );
    assert_eq!(
        format!("{:?}", d.mirror),
        format!("{:?}", MirrorConfig::default())
    );
    assert_eq!(
        format!("{:?}", d.validation),
        format!("{:?}", ValidationConfig::default())
    );
    assert!(d.source.provision.is_none() && d.target.provision.is_none());
    assert_eq!(
        format!("{:?}", d.http),
        format!("{:?}", HttpConfig::default())
    );
    assert!(!c.users.is_empty());
}

/// Every key the types accept appears in the example (set, or commented out as `# key =`).
/// The accepted keys are read from the parser's own "expected one of" list, so a field
/// added later without documentation fails here.
#[test]
fn example_file_documents_every_key() {
    let example = std::fs::read_to_string(EXAMPLE_PATH).unwrap();
    let documented = |key: &str| {
        example.lines().any(|l| {
            let l = l.trim_start().trim_start_matches('#').trim_start();
            l.starts_with(&format!("{key} ="))
                || l.starts_with(&format!("[{key}]"))
                || l.starts_with(&format!("[[{key}]]"))
                || (l.starts_with('[') && l.contains(&format!(".{key}]")))
        })
    };
    let probes = [
        format!("zz_probe = 1\n{MINIMAL}"),
        MINIMAL.replace("[source]\n", "[source]\nzz_probe = 1\n"),
        MINIMAL.replace("[[users]]\n", "[[users]]\nzz_probe = 1\n"),
        format!("[proxy]\nzz_probe = 1\n{MINIMAL}"),
        format!("[journal]\nzz_probe = 1\n{MINIMAL}"),
        format!("[upgrade]\nzz_probe = 1\n{MINIMAL}"),
        format!("[replication]\nzz_probe = 1\n{MINIMAL}"),
        format!("[upgrade.timeouts]\nzz_probe = 1\n{MINIMAL}"),
        format!("[health]\nzz_probe = 1\n{MINIMAL}"),
        format!("{MINIMAL}\n[target.provision]\nzz_probe = 1\n"),
        format!("[http]\nzz_probe = 1\n{MINIMAL}"),
        format!("{MINIMAL}\n[http.tls]\nzz_probe = 1\n"),
        format!("[mirror]\nzz_probe = 1\n{MINIMAL}"),
        format!("[validation]\nzz_probe = 1\n{MINIMAL}"),
    ];
    let mut checked = 0;
    for probe in probes {
        let msg = load(&probe).unwrap_err().to_string();
        // "unknown field `zz_probe`, expected one of `a`, `b`, `c`" ("expected `a` or `b`"
        // for two, "expected `a`" for one).
        let list = msg
            .split(", expected ")
            .nth(1)
            .unwrap_or_else(|| panic!("{msg}"));
        let list = list.trim_start_matches("one of ");
        for key in list
            .split(", ")
            .flat_map(|k| k.split(" or "))
            .map(|k| k.trim_matches('`'))
        {
            assert!(
                documented(key),
                "pgshift.example.toml does not document `{key}`"
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked}");
}

#[test]
fn http_listen_default_disabled_and_invalid() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.http.listen, "127.0.0.1:9187");
    assert_eq!(c.http.listen_addr(), Some("127.0.0.1:9187"));

    let c = load(&format!("{MINIMAL}\n[http]\nlisten = \"\"\n")).unwrap();
    assert_eq!(c.http.listen_addr(), None, "an empty listen disables HTTP");

    for ok in ["127.0.0.2:9999", "[::1]:9187", "localhost:0"] {
        let c = load(&format!("{MINIMAL}\n[http]\nlisten = \"{ok}\"\n")).unwrap();
        assert_eq!(c.http.listen_addr(), Some(ok));
    }

    for (bad, fragment) in [
        ("9187", "http.listen: `9187` is not host:port"),
        (
            "localhost:99999",
            "http.listen: `localhost:99999` has no valid port",
        ),
        ("::1:9187", "IPv6 address goes in brackets"),
        ("db host:1", "neither an IP address nor a host name"),
    ] {
        let text = format!("{MINIMAL}\n[http]\nlisten = \"{bad}\"\n");
        let line = line_of(&text, &format!("listen = \"{bad}\""));
        expect_one(&text, line, fragment);
        assert!(fail(&text).contains("use \"\" to disable the HTTP server"));
    }

    let text = format!("{MINIMAL}\n[http]\nport = 9187\n");
    let err = fail(&text);
    assert!(err.contains("unknown field `port`"), "{err}");
}

#[test]
fn http_token_public_and_loopback() {
    let c = load(MINIMAL).unwrap();
    assert!(!c.http.has_token());
    assert_eq!(c.http.public, ["/metrics", "/health"]);
    assert_eq!(c.http.resolve_token().unwrap(), None);

    let text = format!("{MINIMAL}\n[http]\ntoken = \"tok-Secret-7\"\npublic = []\n");
    let c = load(&text).unwrap();
    assert!(c.http.has_token() && c.http.public.is_empty());
    assert_eq!(
        c.http.resolve_token().unwrap().as_deref(),
        Some("tok-Secret-7")
    );
    let shown = format!("{c:?}");
    assert!(!shown.contains("tok-Secret-7"), "{shown}");
    assert!(shown.contains("token: Some(\"***\")"), "{shown}");

    // Not on loopback: only with a token.
    for wide in [
        "0.0.0.0:9999",
        "10.1.2.3:9187",
        "[::]:9187",
        "pgshift.internal:9187",
    ] {
        let text = format!("{MINIMAL}\n[http]\nlisten = \"{wide}\"\n");
        let line = line_of(&text, &format!("listen = \"{wide}\""));
        expect_one(&text, line, "is not a loopback address and no token is set");
        assert!(fail(&text).contains("set [http] token or token_file"));
        load(&format!(
            "{MINIMAL}\n[http]\nlisten = \"{wide}\"\ntoken = \"t\"\n"
        ))
        .unwrap();
        load(&format!(
            "{MINIMAL}\n[http]\nlisten = \"{wide}\"\ntoken_file = \"/nonexistent\"\n"
        ))
        .unwrap();
    }
    for lo in ["127.0.0.1:1", "127.9.9.9:1", "[::1]:1", "LOCALHOST:1"] {
        load(&format!("{MINIMAL}\n[http]\nlisten = \"{lo}\"\n")).unwrap();
    }

    for (body, key_line, fragment) in [
        (
            "token = \"a\"\ntoken_file = \"/t\"\n",
            "token_file = \"/t\"",
            "http.token_file: is set together with token",
        ),
        ("token = \"\"\n", "token = \"\"", "http.token: is empty"),
        (
            "token = \"two words\"\n",
            "token = \"two words\"",
            "http.token: may only hold visible ASCII",
        ),
        (
            "token = \"caf\u{e9}\"\n",
            "token = \"caf\u{e9}\"",
            "visible ASCII",
        ),
        (
            "token_file = \"\"\n",
            "token_file = \"\"",
            "http.token_file: must not be empty",
        ),
        (
            "public = [\"/metrics\", \"/upgrade/cutover\"]\n",
            "public = [\"/metrics\", \"/upgrade/cutover\"]",
            "http.public[1]: `/upgrade/cutover` cannot be public",
        ),
        (
            "public = [\"/clients\"]\n",
            "public = [\"/clients\"]",
            "`/clients` cannot be public",
        ),
        (
            "public = [\"/metric\"]\n",
            "public = [\"/metric\"]",
            "`/metric` is not an endpoint; endpoints: /metrics, /progress",
        ),
    ] {
        let text = format!("{MINIMAL}\n[http]\n{body}");
        let line = line_of(&text, key_line);
        expect_one(&text, line, fragment);
    }
}

#[test]
fn http_tls_keys() {
    let c = load(MINIMAL).unwrap();
    assert!(!c.http.tls.enabled(), "HTTPS is off by default");
    let text = format!(
        "{MINIMAL}\n[http]\nlisten = \"127.0.0.1:9443\"\n\n[http.tls]\ncert = \"/s.pem\"\nkey = \"/s.key\"\nclient_ca = \"/ca.pem\"\n"
    );
    let c = load(&text).unwrap();
    assert!(c.http.tls.enabled());
    assert_eq!(
        c.http.tls.client_ca.as_deref(),
        Some(std::path::Path::new("/ca.pem"))
    );
    for (body, key_line, fragment) in [
        // A missing key is shown at its table.
        (
            "cert = \"/s.pem\"\n",
            "[http.tls]",
            "http.tls.key: is required with [http.tls] cert",
        ),
        (
            "key = \"/s.key\"\n",
            "[http.tls]",
            "http.tls.cert: is required with [http.tls] key",
        ),
        (
            "client_ca = \"/ca.pem\"\n",
            "client_ca = \"/ca.pem\"",
            "http.tls.client_ca: needs [http.tls] cert and key",
        ),
        (
            "cert = \"\"\nkey = \"/s.key\"\n",
            "cert = \"\"",
            "http.tls.cert: must not be empty",
        ),
    ] {
        let text = format!("{MINIMAL}\n[http.tls]\n{body}");
        let line = line_of(&text, key_line);
        expect_one(&text, line, fragment);
    }
    // TLS does not stand in for the token: a wide address still needs one.
    let text = format!(
        "{MINIMAL}\n[http]\nlisten = \"0.0.0.0:9443\"\n\n[http.tls]\ncert = \"/s.pem\"\nkey = \"/s.key\"\n"
    );
    expect_one(
        &text,
        line_of(&text, "listen = \"0.0.0.0:9443\""),
        "is not a loopback address and no token is set",
    );
    let e = fail(&format!("{MINIMAL}\n[http.tls]\ncerts = \"/s.pem\"\n"));
    assert!(e.contains("unknown field `certs`"), "{e}");
}

#[test]
fn http_token_file_mode_and_content() {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = std::env::temp_dir().join(format!("pgshift-config-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, mode: u32, text: &str| {
        let p = dir.join(name);
        let _ = std::fs::remove_file(&p);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&p)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
        // The umask may have narrowed the mode: set it as the case needs.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let cfg = |p: &std::path::Path| {
        load(&format!(
            "{MINIMAL}\n[http]\ntoken_file = \"{}\"\n",
            p.display()
        ))
        .unwrap()
    };
    let ok = write("ok", 0o600, "tok-Secret-8\n");
    assert_eq!(
        cfg(&ok).http.resolve_token().unwrap().as_deref(),
        Some("tok-Secret-8")
    );
    let ro = write("ro", 0o400, "  tok-Secret-8  ");
    assert_eq!(
        cfg(&ro).http.resolve_token().unwrap().as_deref(),
        Some("tok-Secret-8")
    );
    for (name, mode) in [("world", 0o644), ("group", 0o640), ("gw", 0o620)] {
        let p = write(name, mode, "tok-Secret-8\n");
        let e = cfg(&p).http.resolve_token().unwrap_err();
        assert!(
            e.contains(&format!("has mode {mode:04o}")) && e.contains("chmod 600"),
            "{e}"
        );
        assert!(e.contains(&p.display().to_string()), "{e}");
        assert!(!e.contains("tok-Secret-8"), "{e}");
    }
    let empty = write("empty", 0o600, "\n");
    let e = cfg(&empty).http.resolve_token().unwrap_err();
    assert!(e.contains("the token is empty"), "{e}");
    let spaced = write("spaced", 0o600, "tok Secret\n");
    let e = cfg(&spaced).http.resolve_token().unwrap_err();
    assert!(e.contains("visible ASCII") && !e.contains("Secret"), "{e}");
    let e = cfg(&dir.join("missing")).http.resolve_token().unwrap_err();
    assert!(e.contains("missing") && e.contains("No such file"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plan_health_and_provision_keys() {
    let c = load(MINIMAL).unwrap();
    assert!(c.upgrade.shift.is_empty());
    assert_eq!(c.upgrade.shift_hold_ms, 60000);
    assert!(!c.upgrade.approve_cutover && !c.upgrade.decommission_source);
    assert_eq!(c.upgrade.final_dump, None);
    assert_eq!(
        (
            c.upgrade.history_retention_days,
            c.upgrade.max_attempts,
            c.upgrade.backoff_initial_ms,
            c.upgrade.backoff_max_ms
        ),
        (90, 5, 1000, 60000)
    );
    let t = &c.upgrade.timeouts;
    assert_eq!(
        [
            t.validate_input_ms,
            t.provision_target_ms,
            t.configure_params_ms,
            t.install_extension_ms,
            t.init_replication_ms,
            t.wait_for_sync_ms,
            t.shift_traffic_ms,
            t.health_check_ms,
            t.cutover_ms,
            t.detach_old_ms,
            t.decommission_source_ms
        ],
        [30000, 900000, 300000, 180000, 1800000, 86400000, 600000, 300000, 60000, 300000, 600000]
    );
    let h = &c.health;
    assert_eq!(
        (h.interval_ms, h.window_ms, h.min_transactions),
        (1000, 10000, 20)
    );
    assert_eq!((h.max_error_rate, h.max_p99_ratio), (0.01, 3.0));
    assert_eq!(
        (h.max_lag_bytes, h.max_lag_seconds, h.lag_grace_ms),
        (67108864, 30.0, 30000)
    );
    assert_eq!(h.on_failure, OnFailure::Previous);
    assert!(c.target.provision.is_none());

    let text = MINIMAL.replace(
        "[target]\nhost = \"new\"\ndbname = \"db\"\nuser = \"u\"\n",
        "[target]\nhost = \"new\"\ndbname = \"db\"\nuser = \"u\"\npassword = \"tgt-Secret-3\"\n",
    ) + r#"
[upgrade]
shift = [25, 25, 50]
shift_hold_ms = 500
approve_cutover = true
decommission_source = true
final_dump = "/tmp/final.dump"
max_attempts = 2
pinned = "terminate"
ddl = "allow"

[upgrade.timeouts]
cutover_ms = 5000

[health]
interval_ms = 100
on_failure = "source"

[target.provision]
major = 17
data_dir = "/var/lib/pgshift/t17"
run_as = "postgres"
settings = { shared_buffers = "256MB", max_connections = 300, jit = false, random_page_cost = 1.1 }

[source.provision]
major = 13
data_dir = "/var/lib/postgresql/13/main"
"#;
    let c = load(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.upgrade.shift, vec![25, 25, 50]);
    assert!(c.upgrade.approve_cutover && c.upgrade.decommission_source);
    assert_eq!(c.upgrade.timeouts.cutover_ms, 5000);
    assert_eq!(c.upgrade.timeouts.detach_old_ms, 300000);
    assert_eq!(c.health.on_failure, OnFailure::Source);
    assert_eq!(c.upgrade.pinned, PinnedPolicy::Terminate);
    assert_eq!(c.upgrade.ddl, DdlPolicy::Allow);
    let p = c.target.provision.as_ref().unwrap();
    assert_eq!(
        (p.provider, p.major, p.run_as.as_deref()),
        (Provider::Local, Some(17), Some("postgres"))
    );
    assert_eq!(p.settings["shared_buffers"].to_conf(), "'256MB'");
    assert_eq!(p.settings["max_connections"].to_conf(), "300");
    assert_eq!(p.settings["jit"].to_conf(), "off");
    assert_eq!(p.settings["random_page_cost"].to_conf(), "1.1");
    assert_eq!(c.source.provision.as_ref().unwrap().major(), 13);
    let shown = format!("{:?}", c.target);
    assert!(
        shown.contains("provision") && !shown.contains("tgt-Secret-3"),
        "{shown}"
    );

    // Each check, alone, at its line.
    let cases: &[(&str, &str, &str)] = &[
        ("shift = [25, 25, 50]", "shift = [25, 0, 50]", "upgrade.shift[1]: 0 is out of range"),
        ("shift = [25, 25, 50]", "shift = [60, 50]", "upgrade.shift: [60, 50] adds up to 110 %"),
        ("shift_hold_ms = 500", "shift_hold_ms = 0", "upgrade.shift_hold_ms: must be greater than 0"),
        ("final_dump = \"/tmp/final.dump\"", "final_dump = \"\"", "upgrade.final_dump: must not be empty"),
        ("max_attempts = 2", "max_attempts = 0", "upgrade.max_attempts: must be at least 1"),
        ("pinned = \"terminate\"", "pinned = \"kill\"", "unknown variant `kill`, expected `refuse` or `terminate`"),
        ("ddl = \"allow\"", "ddl = \"ignore\"", "unknown variant `ignore`, expected one of `block`, `replicate`, `allow`"),
        ("ddl = \"allow\"", "ddl = \"replicate\"", "upgrade.ddl: \"replicate\" needs [replication] driver = \"pgactive\""),
        ("max_attempts = 2", "backoff_max_ms = 10", "upgrade.backoff_max_ms: 10 is below backoff_initial_ms (1000)"),
        ("cutover_ms = 5000", "cutover_ms = 0", "upgrade.timeouts.cutover_ms: must be greater than 0"),
        ("interval_ms = 100", "interval_ms = 0", "health.interval_ms: must be greater than 0"),
        ("interval_ms = 100", "window_ms = 10", "health.window_ms: 10 is shorter than interval_ms (1000)"),
        ("on_failure = \"source\"", "max_error_rate = 1.5", "health.max_error_rate: 1.5 is out of range"),
        ("on_failure = \"source\"", "max_p99_ratio = 0.0", "health.max_p99_ratio"),
        ("on_failure = \"source\"", "max_lag_bytes = 0", "health.max_lag_bytes: must be greater than 0"),
        ("on_failure = \"source\"", "max_lag_seconds = -1.0", "health.max_lag_seconds"),
        ("major = 17", "major = 9", "target.provision.major: 9 is not a PostgreSQL major"),
        ("data_dir = \"/var/lib/pgshift/t17\"", "data_dir = \"\"", "target.provision.data_dir: must not be empty"),
        ("run_as = \"postgres\"", "run_as = \" \"", "target.provision.run_as: must not be empty"),
        ("run_as = \"postgres\"", "bindir = \"\"", "target.provision.bindir: must not be empty"),
        (
            "settings = { shared_buffers = \"256MB\", max_connections = 300, jit = false, random_page_cost = 1.1 }",
            "settings = { port = 5999 }",
            "target.provision.settings: `port` is [target] port (5432)",
        ),
        (
            "settings = { shared_buffers = \"256MB\", max_connections = 300, jit = false, random_page_cost = 1.1 }",
            "settings = { wal_level = \"replica\" }",
            "needs wal_level = logical",
        ),
        (
            "settings = { shared_buffers = \"256MB\", max_connections = 300, jit = false, random_page_cost = 1.1 }",
            "settings = { \"bad name\" = 1 }",
            "invalid setting(s) bad name",
        ),
        ("major = 13", "major = 19", "source.provision.major: 19 is not"),
    ];
    for (old, new, fragment) in cases {
        let line = line_of(&text, old);
        let mut lines: Vec<&str> = text.lines().collect();
        lines[line - 1] = new;
        let edited = lines.join("\n") + "\n";
        expect_one(&edited, line, fragment);
    }
    // [target.provision] needs the target's password; the problem points at [target].
    let edited = text.replace("password = \"tgt-Secret-3\"\n", "");
    expect_one(
        &edited,
        line_of(&edited, "[target]"),
        "target.password: is required with [target.provision]",
    );
    // Unknown provider: a parse error at its line.
    let edited = text.replace("major = 17", "provider = \"rds2\"\nmajor = 17");
    let err = fail(&edited);
    assert!(
        err.starts_with(&format!(
            "test.toml:{}:",
            line_of(&edited, "provider = \"rds2\"")
        )),
        "{err}"
    );
}

#[test]
fn rds_provision_keys() {
    let text = r#"[source]
host = "orders.c1.us-east-1.rds.amazonaws.com"
dbname = "orders"
user = "pgshift"

[target]
host = "orders-pg17.c1.us-east-1.rds.amazonaws.com"
dbname = "orders"
user = "pgshift"
password = "tgt-Secret-3"

[target.provision]
provider = "rds"
source_db_instance_id = "orders"
engine_version = "17.4"
region = "us-east-1"
instance_class = "db.r6g.large"
tags = { team = "orders" }
parameters = { work_mem = "64MB", "rds.force_ssl" = 1 }
allow_source_reboot = true

[[users]]
name = "app"
password = "x"
"#;
    let c = load(text).unwrap_or_else(|e| panic!("{e}"));
    let p = c.target.provision.as_ref().unwrap();
    assert_eq!((p.provider, p.major(), p.major), (Provider::Rds, 17, None));
    assert_eq!(p.source_db_instance_id.as_deref(), Some("orders"));
    assert!(p.allow_source_reboot && !p.final_snapshot_on_rollback);
    assert_eq!((p.wait_poll_ms, p.api_attempts), (10_000, 6));
    assert_eq!(p.parameters["work_mem"].to_plain(), "64MB");
    assert_eq!(p.parameters["rds.force_ssl"].to_plain(), "1");
    let cases: &[(&str, &str, &str)] = &[
        (
            "source_db_instance_id = \"orders\"",
            "source_db_instance_id = \"9orders\"",
            "target.provision.source_db_instance_id: `9orders` is not an RDS identifier",
        ),
        (
            "source_db_instance_id = \"orders\"",
            "db_instance_id = \"new--db\"",
            "target.provision.source_db_instance_id: is required with provider = \"rds\"",
        ),
        (
            "engine_version = \"17.4\"",
            "engine_version = \"latest\"",
            "target.provision.engine_version: `latest` is not an engine version",
        ),
        (
            "engine_version = \"17.4\"",
            "engine_version = \"8.4\"",
            "major 8 is not one pgshift provisions",
        ),
        (
            "engine_version = \"17.4\"",
            "data_dir = \"/x\"",
            "target.provision.data_dir: is a key of provider = \"local\"",
        ),
        (
            "region = \"us-east-1\"",
            "settings = { a = 1 }",
            "server parameters of an RDS instance go in `parameters`",
        ),
        (
            "region = \"us-east-1\"",
            "endpoint_url = \"localhost:5000\"",
            "target.provision.endpoint_url: `localhost:5000` is not an http:// or https:// URL",
        ),
        (
            "region = \"us-east-1\"",
            "backup_retention_days = 40",
            "must be between 0 and 35",
        ),
        (
            "region = \"us-east-1\"",
            "db_instance_id = \"orders\"",
            "is the source's identifier",
        ),
        (
            "region = \"us-east-1\"",
            "major = 16",
            "target.provision.major: 16 disagrees with engine_version `17.4`",
        ),
        (
            "tags = { team = \"orders\" }",
            "tags = { \"aws:x\" = \"y\" }",
            "reserved by AWS",
        ),
    ];
    for (old, new, fragment) in cases {
        let line = line_of(text, old);
        let mut lines: Vec<&str> = text.lines().collect();
        lines[line - 1] = new;
        let edited = lines.join("\n") + "\n";
        let err = fail(&edited);
        assert!(err.contains(fragment), "{new}: {err}");
    }
    // Keys of rds with local, and rds for the source.
    let local = format!(
        "{MINIMAL}\n[target.provision]\nmajor = 17\ndata_dir = \"/t\"\nengine_version = \"17.4\"\n"
    );
    let err = fail(&local.replace("[target]\n", "[target]\npassword = \"p\"\n"));
    assert!(
        err.contains("target.provision.engine_version: is a key of provider = \"rds\""),
        "{err}"
    );
    let src = format!("{MINIMAL}\n[source.provision]\nprovider = \"rds\"\n");
    let err = fail(&src);
    assert!(
        err.contains("source.provision.provider: \"rds\" is for [target.provision]"),
        "{err}"
    );
    let err = fail(&format!(
        "{MINIMAL}\n[source.provision]\ndata_dir = \"/s\"\n"
    ));
    assert!(
        err.contains("source.provision.major: is required with provider = \"local\""),
        "{err}"
    );
}

#[test]
fn mirror_and_validation_keys() {
    let c = load(MINIMAL).unwrap();
    let m = &c.mirror;
    assert!(!m.enabled);
    assert_eq!(m.sample_rate, 1.0);
    assert_eq!(m.level, MirrorLevel::Reads);
    assert_eq!((m.queue_length, m.connections), (1000, 2));
    assert_eq!(
        (
            m.lock_timeout_ms,
            m.statement_timeout_ms,
            m.recheck_timeout_ms,
            m.max_answer_bytes
        ),
        (100, 5000, 5000, 1_048_576)
    );
    assert_eq!(c.validation.error_threshold, 0.001);
    assert_eq!(c.validation.min_duration_ms, 300_000);

    let text = format!(
        "{MINIMAL}
[mirror]
enabled = true
sample_rate = 0.25
level = \"dml\"
queue_length = 50
connections = 4
lock_timeout_ms = 20
statement_timeout_ms = 1000
recheck_timeout_ms = 2000
max_answer_bytes = 4096

[validation]
error_threshold = 0.02
min_duration_ms = 0
"
    );
    let c = load(&text).unwrap_or_else(|e| panic!("{e}"));
    let m = &c.mirror;
    assert!(m.enabled);
    assert_eq!(m.sample_rate, 0.25);
    assert_eq!(m.level, MirrorLevel::Dml);
    assert_eq!(m.level.as_str(), "dml");
    assert_eq!((m.queue_length, m.connections), (50, 4));
    assert_eq!(
        (
            m.lock_timeout_ms,
            m.statement_timeout_ms,
            m.recheck_timeout_ms,
            m.max_answer_bytes
        ),
        (20, 1000, 2000, 4096)
    );
    assert_eq!(c.validation.error_threshold, 0.02);
    assert_eq!(c.validation.min_duration_ms, 0);
    let all = text.replace("level = \"dml\"", "level = \"all\"");
    assert_eq!(load(&all).unwrap().mirror.level, MirrorLevel::All);
    // Edges that are allowed.
    for (old, new) in [
        ("sample_rate = 0.25", "sample_rate = 0.0"),
        ("sample_rate = 0.25", "sample_rate = 1"),
        ("connections = 4", "connections = 64"),
        ("queue_length = 50", "queue_length = 1"),
        ("max_answer_bytes = 4096", "max_answer_bytes = 1073741824"),
    ] {
        let edited = text.replace(old, new);
        load(&edited).unwrap_or_else(|e| panic!("{new}: {e}"));
    }
    let edited = text.replace("error_threshold = 0.02", "error_threshold = 0");
    assert_eq!(load(&edited).unwrap().validation.error_threshold, 0.0);

    // Each check, alone, at its line.
    let cases: &[(&str, &str, &str)] = &[
        (
            "sample_rate = 0.25",
            "sample_rate = 1.5",
            "mirror.sample_rate: 1.5 is out of range: a fraction between 0 and 1",
        ),
        (
            "sample_rate = 0.25",
            "sample_rate = -0.1",
            "mirror.sample_rate: -0.1 is out of range",
        ),
        (
            "sample_rate = 0.25",
            "sample_rate = nan",
            "mirror.sample_rate: NaN is out of range",
        ),
        (
            "queue_length = 50",
            "queue_length = 0",
            "mirror.queue_length: must be at least 1",
        ),
        (
            "connections = 4",
            "connections = 0",
            "mirror.connections: 0 is out of range: must be between 1 and 64",
        ),
        (
            "connections = 4",
            "connections = 65",
            "mirror.connections: 65 is out of range",
        ),
        (
            "lock_timeout_ms = 20",
            "lock_timeout_ms = 0",
            "mirror.lock_timeout_ms: must be greater than 0",
        ),
        (
            "statement_timeout_ms = 1000",
            "statement_timeout_ms = 0",
            "mirror.statement_timeout_ms: must be greater than 0",
        ),
        (
            "recheck_timeout_ms = 2000",
            "recheck_timeout_ms = 0",
            "mirror.recheck_timeout_ms: must be greater than 0",
        ),
        (
            "max_answer_bytes = 4096",
            "max_answer_bytes = 0",
            "mirror.max_answer_bytes: 0 is out of range: must be between 1 and 1073741824",
        ),
        (
            "max_answer_bytes = 4096",
            "max_answer_bytes = 1073741825",
            "mirror.max_answer_bytes: 1073741825 is out of range",
        ),
        (
            "error_threshold = 0.02",
            "error_threshold = 2",
            "validation.error_threshold: 2 is out of range: a fraction between 0 and 1",
        ),
        (
            "error_threshold = 0.02",
            "error_threshold = -0.5",
            "validation.error_threshold: -0.5 is out of range",
        ),
    ];
    for (old, new, fragment) in cases {
        let line = line_of(&text, old);
        let edited = text.replace(old, new);
        expect_one(&edited, line, fragment);
    }
    // Several at once: every one reported, in file order.
    let edited = text
        .replace("queue_length = 50", "queue_length = 0")
        .replace("error_threshold = 0.02", "error_threshold = 7.0");
    let err = load(&edited).unwrap_err();
    let lines: Vec<Option<usize>> = err.problems().iter().map(|p| p.line).collect();
    assert_eq!(
        lines,
        vec![
            Some(line_of(&text, "queue_length = 50")),
            Some(line_of(&text, "error_threshold = 0.02"))
        ],
        "{err}"
    );
    // Unknown level, wrong type, unknown key: parse errors at their line.
    for (old, new, fragment) in [
        (
            "level = \"dml\"",
            "level = \"writes\"",
            "unknown variant `writes`",
        ),
        ("connections = 4", "connections = -1", "expected u32"),
        ("enabled = true", "enabled = \"yes\"", "invalid type"),
        (
            "min_duration_ms = 0",
            "min_duration = 0",
            "unknown field `min_duration`",
        ),
    ] {
        let edited = text.replace(old, new);
        let err = fail(&edited);
        assert!(
            err.starts_with(&format!("test.toml:{}:", line_of(&text, old))),
            "{err}"
        );
        assert!(err.contains(fragment), "{err}");
    }
}

#[test]
fn mirror_driver_keys() {
    let c = load(MINIMAL).unwrap();
    let r = &c.replication;
    assert_eq!(r.driver, crate::Driver::Logical);
    assert_eq!((r.copy_jobs, r.apply_batch), (4, 64));
    assert_eq!(r.queue_dir, std::path::PathBuf::from("./data/mirror-queue"));

    let text = format!(
        "{MINIMAL}
[replication]
driver = \"mirror\"
copy_jobs = 8
apply_batch = 16
queue_dir = \"/var/lib/pgshift/queue\"
"
    );
    let c = load(&text).unwrap_or_else(|e| panic!("{e}"));
    let r = &c.replication;
    assert_eq!(r.driver, crate::Driver::Mirror);
    assert_eq!(r.driver.as_str(), "mirror");
    assert_eq!((r.copy_jobs, r.apply_batch), (8, 16));
    for (old, new) in [
        ("copy_jobs = 8", "copy_jobs = 1"),
        ("copy_jobs = 8", "copy_jobs = 64"),
        ("apply_batch = 16", "apply_batch = 1"),
        ("apply_batch = 16", "apply_batch = 1024"),
    ] {
        load(&text.replace(old, new)).unwrap_or_else(|e| panic!("{new}: {e}"));
    }
    let cases: &[(&str, &str, &str)] = &[
        (
            "copy_jobs = 8",
            "copy_jobs = 0",
            "replication.copy_jobs: 0 is out of range: 1 to 64",
        ),
        (
            "copy_jobs = 8",
            "copy_jobs = 65",
            "replication.copy_jobs: 65 is out of range",
        ),
        (
            "apply_batch = 16",
            "apply_batch = 0",
            "replication.apply_batch: 0 is out of range: 1 to 1024",
        ),
        (
            "apply_batch = 16",
            "apply_batch = 1025",
            "replication.apply_batch: 1025 is out of range",
        ),
        (
            "queue_dir = \"/var/lib/pgshift/queue\"",
            "queue_dir = \"\"",
            "replication.queue_dir: must not be empty",
        ),
        (
            "apply_batch = 16",
            "apply_batch = 16\nsequence_gap = 5",
            "replication.sequence_gap: 5 is out of range",
        ),
        (
            "driver = \"mirror\"",
            "driver = \"pgactive2\"",
            "unknown variant `pgactive2`, expected one of `logical`, `mirror`, `bidirectional`",
        ),
    ];
    for (old, new, fragment) in cases {
        let err = fail(&text.replace(old, new));
        assert!(err.contains(fragment), "{new}: {err}");
    }
}

#[test]
fn upgrade_databases() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.upgrade.databases, None, "absent: the whole instance");
    let c = load(&format!(
        "{MINIMAL}\n[upgrade]\ndatabases = [\"db\", \"shop\"]\n"
    ))
    .unwrap();
    assert_eq!(
        c.upgrade.databases.as_deref(),
        Some(&["db".to_string(), "shop".to_string()][..])
    );
    for (list, fragment) in [
        (
            "[\"shop\", \"shop\"]",
            "upgrade.databases[1]: \"shop\" is listed twice",
        ),
        (
            "[\"\"]",
            "upgrade.databases[0]: \"\" is not a database name",
        ),
        ("[\"pgshift\"]", "admin_database"),
    ] {
        let e = fail(&format!("{MINIMAL}\n[upgrade]\ndatabases = {list}\n"));
        assert!(e.contains(fragment), "{list}: {e}");
    }
    // The mirror driver carries [source] dbname only.
    let mirror = format!("{MINIMAL}\n[replication]\ndriver = \"mirror\"\n\n[upgrade]\n");
    load(&format!("{mirror}databases = [\"db\"]\n")).unwrap();
    let e = fail(&format!("{mirror}databases = [\"db\", \"shop\"]\n"));
    assert!(
        e.contains("the mirror driver carries [source] dbname (db) only"),
        "{e}"
    );
}

#[test]
fn tls_and_server_auth() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.proxy.tls.mode, crate::ClientTlsMode::Disable);
    assert_eq!(c.source.sslmode, crate::SslMode::Prefer, "libpq's default");
    assert_eq!(c.source.auth, vec![crate::ServerAuth::ScramSha256]);
    assert!(c.source.conninfo().ends_with(" sslmode=prefer"));
    let with_source =
        |keys: &str| MINIMAL.replacen("[source]\n", &format!("[source]\n{keys}\n"), 1);
    let c = load(&with_source(
        "sslmode = \"verify-full\"\nsslrootcert = \"/ca.pem\"\nauth = [\"scram-sha-256\", \"md5\", \"none\"]",
    ))
    .unwrap();
    assert!(c
        .source
        .conninfo()
        .contains(" sslmode=verify-full sslrootcert='/ca.pem'"));
    assert_eq!(
        c.source.libpq_env(),
        vec![
            ("PGSSLMODE", "verify-full".to_string()),
            ("PGSSLROOTCERT", "/ca.pem".to_string())
        ]
    );
    for (keys, fragment) in [
        (
            "sslmode = \"verify-ca\"",
            "source.sslrootcert: is required with sslmode = \"verify-ca\"",
        ),
        (
            "sslmode = \"disable\"\nsslrootcert = \"/ca.pem\"",
            "source.sslmode: is \"disable\" while",
        ),
        (
            "sslcert = \"/c.pem\"",
            "source.sslkey: sslcert and sslkey go together",
        ),
        ("auth = []", "source.auth: must list at least one method"),
        (
            "auth = [\"md5\", \"md5\"]",
            "source.auth[1]: \"md5\" is listed twice",
        ),
    ] {
        let e = fail(&with_source(keys));
        assert!(e.contains(fragment), "{keys}: {e}");
    }
    let e = fail(&with_source("auth = [\"gss\"]"));
    assert!(e.contains("unknown variant `gss`"), "{e}");
    let with_tls = |keys: &str| format!("[proxy.tls]\n{keys}\n\n{MINIMAL}");
    let c = load(&with_tls(
        "mode = \"require\"\ncert = \"/s.pem\"\nkey = \"/s.key\"\nclient_ca = \"/ca.pem\"",
    ))
    .unwrap();
    assert_eq!(c.proxy.tls.mode, crate::ClientTlsMode::Require);
    for (keys, fragment) in [
        (
            "mode = \"allow\"",
            "proxy.tls.cert: is required with mode = \"allow\"",
        ),
        (
            "mode = \"require\"\ncert = \"/s.pem\"",
            "proxy.tls.key: is required with mode = \"require\"",
        ),
        (
            "cert = \"/s.pem\"\nkey = \"/s.key\"",
            "proxy.tls.mode: is \"disable\" (the default) while",
        ),
        (
            "mode = \"allow\"\ncert = \"/s.pem\"\nkey = \"/s.key\"\nclient_ca = \"/ca.pem\"",
            "proxy.tls.client_ca: needs mode = \"require\"",
        ),
    ] {
        let e = fail(&with_tls(keys));
        assert!(e.contains(fragment), "{keys}: {e}");
    }
}
