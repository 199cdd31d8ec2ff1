//! DDL sent through pgshift while logical replication runs (`[upgrade] ddl`). Logical
//! replication carries rows, not schema changes (PostgreSQL docs 31.8 "Restrictions"; the
//! pgactive extension alike unless its DDL replication is on), so a schema change made on
//! one server during the upgrade stops the apply on the other, or leaves a new table
//! unreplicated. The controller publishes a [`control::DdlGate`]; each Query and Parse the
//! session forwards is looked at only while the gate is not `Off`:
//!
//! * [`find`] names the first DDL statement of a text by its command words (`ALTER TABLE`),
//!   never more of it (a statement may hold a password);
//! * `Block` replaces that statement and what follows it with [`refusal`], a `DO` block
//!   that raises SQLSTATE 55000 on the server, so the error, the transaction state it
//!   leaves (a failed transaction block, or the implicit transaction of a multi-statement
//!   Query rolled back) and the ReadyForQuery are the server's own;
//! * `Warn` forwards it and logs the command words.
//!
//! Not seen: DDL run inside functions, `DO` blocks or procedures, `SELECT ... INTO`, a
//! named statement prepared before the gate was published, and DDL on connections that do
//! not go through pgshift. Cost while the gate is on: the first key words of each Query and
//! Parse, and a split of texts that hold a `;`. Let through: `CREATE TEMP ...`
//! (session-local), `ALTER SYSTEM` (the instance's settings), all DDL in a database the
//! upgrade does not carry (the relay checks), and, in a session that holds
//! or may hold temporary objects, `ALTER`, `DROP`, `TRUNCATE` and `COMMENT` (their object
//! may be temporary; the text alone cannot tell).
//!
//! Grammar: the SQL command reference (PostgreSQL docs, "SQL Commands"); lexical structure:
//! 4.1 (comments skipped like white space).

use super::track;
use bytes::{BufMut, Bytes, BytesMut};
use wire::msg;

/// A DDL statement found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Byte offset of the statement in the text.
    pub at: usize,
    /// Its command words, upper case ASCII: the verb and, for `CREATE`, `ALTER` and
    /// `DROP`, the kind of object (`CREATE UNIQUE INDEX`, `ALTER TABLE`, `GRANT`).
    pub command: String,
}

/// The first DDL statement of `sql` (bytes in the client's encoding), if any. `truncate`:
/// `TRUNCATE` counts (the pgactive driver); `temp`: whether the session holds or may hold
/// temporary objects (module docs), asked only for the statements it decides.
pub fn find(sql: &[u8], truncate: bool, temp: impl Fn() -> bool) -> Option<Found> {
    // One statement (no `;` before the end): no split.
    let trimmed = track::trim_end(sql);
    if memchr::memchr(b';', trimmed).is_none() {
        return command(trimmed, truncate, &temp).map(|command| Found { at: 0, command });
    }
    for stmt in track::statements(sql) {
        if let Some(command) = command(stmt, truncate, &temp) {
            // `statements` returns slices of `sql`.
            let at = stmt.as_ptr() as usize - sql.as_ptr() as usize;
            return Some(Found { at, command });
        }
    }
    None
}

/// The command words of one statement when it is DDL under the module's rules.
fn command(stmt: &[u8], truncate: bool, temp: &impl Fn() -> bool) -> Option<String> {
    let mut w = track::Words::new(stmt);
    let mut next = || w.word().unwrap_or_default();
    let verb = next();
    match verb.as_slice() {
        b"create" => {
            let mut kind = next();
            if kind == b"or" {
                // OR REPLACE
                next();
                kind = next();
            }
            if matches!(kind.as_slice(), b"global" | b"local") {
                kind = next();
            }
            if matches!(kind.as_slice(), b"temp" | b"temporary") {
                return None;
            }
            let mut words = with_kind("CREATE", &kind);
            if kind == b"unique" {
                words.push_str(" INDEX");
            }
            Some(words)
        }
        b"alter" | b"drop" => {
            let kind = next();
            if (verb == b"alter" && kind == b"system") || temp() {
                return None;
            }
            Some(with_kind(
                if verb == b"alter" { "ALTER" } else { "DROP" },
                &kind,
            ))
        }
        b"comment" if !temp() => Some("COMMENT".into()),
        b"truncate" if truncate && !temp() => Some("TRUNCATE".into()),
        b"grant" => Some("GRANT".into()),
        b"revoke" => Some("REVOKE".into()),
        b"reassign" => Some("REASSIGN".into()),
        b"import" => Some("IMPORT".into()),
        b"security" => Some("SECURITY LABEL".into()),
        _ => None,
    }
}

/// `verb` and the kind of object after it (folded key word `kind`) when it is one, so that
/// no identifier of the statement ends up in a message or a log line.
fn with_kind(verb: &str, kind: &[u8]) -> String {
    const KINDS: &[&str] = &[
        "ACCESS",
        "AGGREGATE",
        "CAST",
        "COLLATION",
        "CONVERSION",
        "DATABASE",
        "DEFAULT",
        "DOMAIN",
        "EVENT",
        "EXTENSION",
        "FOREIGN",
        "FUNCTION",
        "GROUP",
        "INDEX",
        "LANGUAGE",
        "MATERIALIZED",
        "OPERATOR",
        "OWNED",
        "POLICY",
        "PROCEDURE",
        "PUBLICATION",
        "ROLE",
        "ROUTINE",
        "RULE",
        "SCHEMA",
        "SEQUENCE",
        "SERVER",
        "STATISTICS",
        "SUBSCRIPTION",
        "TABLE",
        "TABLESPACE",
        "TEXT",
        "TRANSFORM",
        "TRIGGER",
        "TYPE",
        "UNIQUE",
        "UNLOGGED",
        "USER",
        "VIEW",
    ];
    match KINDS
        .iter()
        .find(|k| k.as_bytes().eq_ignore_ascii_case(kind))
    {
        Some(k) => format!("{verb} {k}"),
        None => verb.to_string(),
    }
}

/// The statement that refuses `command` on the server: a `DO` block raising SQLSTATE 55000
/// (`object_not_in_prerequisite_state`, PostgreSQL docs Appendix A) with the reason and
/// what to do. `command` is [`Found::command`] (ASCII letters and spaces only, so it needs
/// no quoting).
pub fn refusal(command: &str) -> String {
    format!(
        "DO $pgshift$BEGIN RAISE EXCEPTION USING ERRCODE = '55000', \
         MESSAGE = '{command} is refused: pgshift is upgrading this database with logical replication, which does not carry schema changes ([upgrade] ddl = block)', \
         HINT = 'Run schema changes before START UPGRADE or once the upgrade is done (or after ROLLBACK UPGRADE); with the pgactive driver, [upgrade] ddl = replicate runs them on every node.'; END$pgshift$"
    )
}

/// A Query message whose text is `sql[..at]` followed by `tail`.
pub fn query_with(sql: &[u8], at: usize, tail: &str) -> Bytes {
    let mut text = Vec::with_capacity(at + tail.len());
    text.extend_from_slice(&sql[..at]);
    text.extend_from_slice(tail.as_bytes());
    let mut out = BytesMut::with_capacity(text.len() + 6);
    msg::query_bytes(&mut out, &text);
    out.freeze()
}

/// A Parse message like `body` (its statement name and parameter types kept) whose text
/// is `sql[..at]` followed by `tail`. Errors: a malformed Parse body.
pub fn parse_with(body: &[u8], at: usize, tail: &str) -> Result<Bytes, wire::frame::WireError> {
    let (name, sql) = msg::parse_text(body)?;
    // name NUL text NUL, then the parameter types as sent.
    let params = &body[name.len() + 1 + sql.len() + 1..];
    let mut out = BytesMut::with_capacity(body.len() + tail.len() + 5);
    msg::put_msg(&mut out, msg::PARSE, |b| {
        b.put_slice(name);
        b.put_u8(0);
        b.put_slice(&sql[..at]);
        b.put_slice(tail.as_bytes());
        b.put_u8(0);
        b.put_slice(params);
    });
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(sql: &str) -> Option<String> {
        find(sql.as_bytes(), false, || false).map(|f| f.command)
    }

    #[test]
    fn ddl_is_named_by_its_command_words() {
        assert_eq!(
            cmd("create table t (a int)").as_deref(),
            Some("CREATE TABLE")
        );
        assert_eq!(
            cmd("  /* x /* y */ */ -- c\n ALTER TABLE t ADD b int").as_deref(),
            Some("ALTER TABLE")
        );
        assert_eq!(
            cmd("CREATE UNIQUE INDEX ON t (a)").as_deref(),
            Some("CREATE UNIQUE INDEX")
        );
        assert_eq!(
            cmd("create or replace view v as select 1").as_deref(),
            Some("CREATE VIEW")
        );
        assert_eq!(cmd("DROP TABLE t").as_deref(), Some("DROP TABLE"));
        assert_eq!(cmd("COMMENT ON TABLE t IS 'x'").as_deref(), Some("COMMENT"));
        assert_eq!(cmd("GRANT SELECT ON t TO app").as_deref(), Some("GRANT"));
        assert_eq!(
            cmd("SECURITY LABEL ON TABLE t IS 'x'").as_deref(),
            Some("SECURITY LABEL")
        );
        assert_eq!(cmd("REASSIGN OWNED BY a TO b").as_deref(), Some("REASSIGN"));
        // No identifier in the words.
        assert_eq!(
            cmd("ALTER ROLE app PASSWORD 'secret'").as_deref(),
            Some("ALTER ROLE")
        );
        assert_eq!(cmd("CREATE secretword").as_deref(), Some("CREATE"));
    }

    #[test]
    fn what_is_not_ddl_or_is_let_through() {
        for sql in [
            "SELECT 1",
            "INSERT INTO t VALUES (1)",
            "create temp table x (a int)",
            "CREATE GLOBAL TEMPORARY TABLE x (a int)",
            "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
            "ALTER SYSTEM SET work_mem = '8MB'",
            "TRUNCATE t",
            "VACUUM t",
            "SET search_path = x",
            "select 'CREATE TABLE x'",
            "",
        ] {
            assert_eq!(cmd(sql), None, "{sql}");
        }
        assert_eq!(
            find(b"TRUNCATE t", true, || false)
                .map(|f| f.command)
                .as_deref(),
            Some("TRUNCATE")
        );
        // A session with temporary objects: its DROP may be of one of them.
        assert_eq!(find(b"DROP TABLE tmp", false, || true), None);
        assert!(find(b"CREATE TABLE t (a int)", false, || true).is_some());
    }

    #[test]
    fn the_first_ddl_statement_of_a_text_is_found_where_it_starts() {
        let sql = b"BEGIN; INSERT INTO t VALUES (';'); ALTER TABLE t ADD c int; COMMIT";
        let f = find(sql, false, || false).unwrap();
        assert_eq!(f.command, "ALTER TABLE");
        assert!(
            sql[f.at..].trim_ascii_start().starts_with(b"ALTER TABLE t"),
            "{}",
            f.at
        );
        assert_eq!(
            find(b"SELECT 1; SELECT $$;CREATE TABLE$$", false, || false),
            None
        );
    }

    #[test]
    fn rewritten_messages_keep_what_comes_before_and_the_parameters() {
        let q = query_with(b"SELECT 1; DROP TABLE t", 10, "DO x");
        assert_eq!(&q[5..], b"SELECT 1; DO x\0");
        let mut body = BytesMut::new();
        body.put_slice(b"s1\0CREATE TABLE t ()\0");
        body.put_i16(1);
        body.put_i32(23);
        let p = parse_with(&body, 0, "DO y").unwrap();
        assert_eq!(p[0], msg::PARSE);
        assert_eq!(
            msg::parse_text(&p[5..]).unwrap(),
            (&b"s1"[..], &b"DO y"[..])
        );
        assert!(p.ends_with(&[0, 1, 0, 0, 0, 23]));
        assert!(parse_with(b"broken", 0, "x").is_err());
        let r = refusal("CREATE TABLE");
        assert!(
            r.contains("'55000'") && r.starts_with("DO $pgshift$") && r.ends_with("END$pgshift$")
        );
        assert_eq!(r.matches('\'').count() % 2, 0);
    }
}
