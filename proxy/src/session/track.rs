//! Recognising, in the SQL text a client sends, the statements that change what a session
//! carries to another backend ([`Op`]): `SET` / `RESET` in all their forms (`SET ROLE`,
//! `SET SESSION AUTHORIZATION`, `SET SESSION CHARACTERISTICS`, `SET TIME ZONE`, ...),
//! `DISCARD`, `PREPARE` / `DEALLOCATE`, `LISTEN` / `UNLISTEN`, and the transaction control
//! that decides whether they last (`BEGIN`, `COMMIT`, `ROLLBACK`, savepoints, `PREPARE
//! TRANSACTION`). Also the hints that a session may hold state that cannot move ([`Pins`]).
//!
//! Texts are bytes in the client's encoding: every key word is ASCII, and in every encoding
//! PostgreSQL accepts from a client the bytes of quotes, semicolons and comment marks mean
//! what they mean in ASCII (PostgreSQL docs 24.3.1, "Supported Character Sets"), so the
//! scanning needs no decoding. Grammar: the SQL command reference pages of those commands;
//! lexical structure: 4.1 (quotes, escape strings, dollar quotes, nested block comments).

use bytes::Bytes;

/// What one statement does to the session state, with the command tag its success answers
/// (53.7 CommandComplete) so that it can be matched with the server's answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A session-level `SET` of `var` (the key under which it replaces earlier ones:
    /// `role`, `session_authorization`, `timezone`, `client_encoding`, `search_path`, a
    /// parameter name in lower case, or `transaction characteristics`), with its text.
    Set { var: String, stmt: Bytes },
    /// `RESET var` (also `RESET ROLE`, `RESET SESSION AUTHORIZATION`, `SET var TO DEFAULT`
    /// is a Set).
    Reset(String),
    /// `RESET ALL` (which leaves the role and the session authorization alone).
    ResetAll,
    /// `SET LOCAL`, `SET TRANSACTION`, `SET CONSTRAINTS`: no effect beyond the
    /// transaction, but answered `SET` like the others.
    Local,
    /// `DISCARD ALL`.
    DiscardAll,
    /// `DISCARD TEMP` / `DISCARD TEMPORARY`.
    DiscardTemp,
    /// `DEALLOCATE [PREPARE] name` (`None`: `ALL`).
    Deallocate(Option<Vec<u8>>),
    /// `PREPARE name ... AS ...` (not transactional: it lasts even if the transaction rolls
    /// back), with its text for the replay.
    Prepare { name: Vec<u8>, stmt: Bytes },
    /// `LISTEN channel` (the channel name folded as PostgreSQL folds identifiers).
    Listen(Vec<u8>),
    /// `UNLISTEN channel` (`None`: `*`).
    Unlisten(Option<Vec<u8>>),
    /// `BEGIN` / `START TRANSACTION`.
    Begin,
    /// `COMMIT` / `END` (answered `ROLLBACK` when the transaction had failed).
    Commit,
    /// `ROLLBACK` / `ABORT`.
    Rollback,
    /// `SAVEPOINT name`.
    Savepoint(Vec<u8>),
    /// `ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] name`.
    RollbackTo(Vec<u8>),
    /// `RELEASE [SAVEPOINT] name`.
    Release(Vec<u8>),
    /// `PREPARE TRANSACTION 'gid'` (settings made in the transaction stay, as at commit).
    PrepareTransaction,
}

impl Op {
    /// Whether command tag `tag` (the CommandComplete text, e.g. `SET`) is this statement's
    /// answer.
    pub fn answered_by(&self, tag: &[u8]) -> bool {
        let t: &[u8] = match self {
            Op::Set { .. } | Op::Local => b"SET",
            Op::Reset(_) | Op::ResetAll => b"RESET",
            Op::DiscardAll => b"DISCARD ALL",
            Op::DiscardTemp => b"DISCARD TEMP",
            Op::Deallocate(Some(_)) => b"DEALLOCATE",
            Op::Deallocate(None) => b"DEALLOCATE ALL",
            Op::Prepare { .. } => b"PREPARE",
            Op::Listen(_) => b"LISTEN",
            Op::Unlisten(_) => b"UNLISTEN",
            Op::Begin => return tag == b"BEGIN" || tag == b"START TRANSACTION",
            Op::Commit | Op::PrepareTransaction => {
                return tag == b"COMMIT" || tag == b"ROLLBACK" || tag == b"PREPARE TRANSACTION"
            }
            Op::Rollback | Op::RollbackTo(_) => b"ROLLBACK",
            Op::Savepoint(_) => b"SAVEPOINT",
            Op::Release(_) => b"RELEASE",
        };
        tag == t
    }

    /// Transaction control (only tracked while some change may be pending).
    pub fn is_transaction_control(&self) -> bool {
        matches!(
            self,
            Op::Begin
                | Op::Commit
                | Op::Rollback
                | Op::Savepoint(_)
                | Op::RollbackTo(_)
                | Op::Release(_)
                | Op::PrepareTransaction
                | Op::Local
        )
    }
}

/// Hints in a text that the session may come to hold state that cannot move to another
/// backend: to be checked with the server after the unit (see `SessionState`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pins {
    /// A temporary table, sequence or view may have been made (`TEMP`, `TEMPORARY`).
    pub temp: bool,
    /// A session-level advisory lock may have been taken (`pg_advisory_lock`, ...).
    pub advisory: bool,
    /// A holdable cursor may have been declared (`WITH HOLD`).
    pub hold: bool,
}

impl Pins {
    /// Any hint.
    pub fn any(&self) -> bool {
        self.temp || self.advisory || self.hold
    }
}

/// Hints of [`Pins`] in `sql`: substring checks (upper or lower case), cheap enough for
/// every text; a false hint costs one check with the server.
pub fn pin_hints(sql: &[u8]) -> Pins {
    let has = |lower: &[u8], upper: &[u8]| {
        memchr::memmem::find(sql, lower).is_some() || memchr::memmem::find(sql, upper).is_some()
    };
    Pins {
        temp: has(b"temp", b"TEMP"),
        advisory: has(b"advisory", b"ADVISORY"),
        hold: has(b"hold", b"HOLD"),
    }
}

/// The statements of `sql` that change session state or control transactions, in order.
/// Cheap on the hot path: a text without a `;` before its end is one statement, looked at
/// only when its first word can start such a statement.
pub fn ops(sql: &[u8], out: &mut Vec<Op>) {
    let trimmed = trim_end(sql);
    if memchr::memchr(b';', trimmed).is_none() {
        if let Some(op) = op(trimmed) {
            out.push(op);
        }
        return;
    }
    for stmt in statements(sql) {
        if let Some(op) = op(stmt) {
            out.push(op);
        }
    }
}

/// Split SQL text on top-level semicolons, skipping those inside '…' (and E'…' with its
/// backslash escapes), "…", $tag$…$tag$, -- comments and (nested) /* */ comments, and
/// inside the body of `CREATE FUNCTION/PROCEDURE ... BEGIN ATOMIC ... END` (PostgreSQL
/// docs 4.1 "Lexical Structure"; CREATE FUNCTION). Empty statements are left out.
pub fn statements(sql: &[u8]) -> Vec<&[u8]> {
    let b = sql;
    let mut out = Vec::new();
    let (mut i, mut start) = (0, 0);
    // Depth of BEGIN ATOMIC bodies (their `;` belong to the body).
    let mut atomic = 0usize;
    while i < b.len() {
        match b[i] {
            b'\'' => {
                let escapes =
                    i > 0 && matches!(b[i - 1], b'E' | b'e') && (i < 2 || !is_ident(b[i - 2]));
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\'' {
                        break;
                    }
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 1;
                i += 2;
                while i < b.len() && depth > 0 {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            // $tag$ … $tag$ (tag: letters, digits, underscores, not starting with a digit);
            // a `$` inside an identifier (`a$b`) starts nothing.
            b'$' if i == 0 || !is_ident(b[i - 1]) => {
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80))
                    .map(|p| i + 1 + p);
                if let Some(e) = tag_end
                    .filter(|&e| b[e] == b'$' && !b.get(i + 1).is_some_and(u8::is_ascii_digit))
                {
                    let tag = &b[i..=e];
                    match memchr::memmem::find(&b[e + 1..], tag) {
                        Some(p) => i = e + 1 + p + tag.len() - 1,
                        None => i = b.len(),
                    }
                }
            }
            c if is_ident_start(c) && (i == 0 || !is_ident(b[i - 1])) => {
                let w_end = b[i..]
                    .iter()
                    .position(|&c| !is_ident(c))
                    .map_or(b.len(), |p| i + p);
                let w = &b[i..w_end];
                if w.eq_ignore_ascii_case(b"atomic")
                    && prev_word(b, i).is_some_and(|p| p.eq_ignore_ascii_case(b"begin"))
                {
                    atomic += 1;
                } else if atomic > 0 && w.eq_ignore_ascii_case(b"end") {
                    atomic -= 1;
                } else if atomic > 0 && (w.eq_ignore_ascii_case(b"case")) {
                    // CASE … END inside a body: count it as a level too.
                    atomic += 1;
                }
                i = w_end;
                continue;
            }
            b';' if atomic == 0 => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < b.len() {
        out.push(&sql[start..]);
    }
    out.retain(|s| !s.iter().all(u8::is_ascii_whitespace));
    out
}

/// [`statements`] of a UTF-8 text.
pub fn split_statements(sql: &str) -> Vec<&str> {
    statements(sql.as_bytes())
        .into_iter()
        // Splits fall on ASCII bytes, so every piece is UTF-8 too.
        .filter_map(|s| std::str::from_utf8(s).ok())
        .collect()
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// The word ending before position `i` (skipping white space), if any.
fn prev_word(b: &[u8], i: usize) -> Option<&[u8]> {
    let end = b[..i].iter().rposition(|c| !c.is_ascii_whitespace())? + 1;
    let start = b[..end]
        .iter()
        .rposition(|&c| !is_ident(c))
        .map_or(0, |p| p + 1);
    (start < end).then(|| &b[start..end])
}

/// `b` without trailing white space and semicolons.
pub(super) fn trim_end(b: &[u8]) -> &[u8] {
    let mut e = b.len();
    while e > 0 && (b[e - 1].is_ascii_whitespace() || b[e - 1] == b';') {
        e -= 1;
    }
    &b[..e]
}

/// A tokenizer of the few words recognition needs: white space and comments skipped,
/// identifiers folded to lower case unless quoted (`"..."` undoubled).
pub(super) struct Words<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Words<'a> {
    pub(super) fn new(b: &'a [u8]) -> Self {
        Words { b, i: 0 }
    }

    fn skip_trivia(&mut self) {
        loop {
            while self.i < self.b.len() && self.b[self.i].is_ascii_whitespace() {
                self.i += 1;
            }
            let rest = &self.b[self.i..];
            if rest.starts_with(b"--") {
                self.i += rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            } else if rest.starts_with(b"/*") {
                let mut depth = 0;
                while self.i < self.b.len() {
                    if self.b[self.i..].starts_with(b"/*") {
                        depth += 1;
                        self.i += 2;
                    } else if self.b[self.i..].starts_with(b"*/") {
                        depth -= 1;
                        self.i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        self.i += 1;
                    }
                }
            } else {
                return;
            }
        }
    }

    /// The next identifier or key word, folded (or `None` at anything else).
    pub(super) fn word(&mut self) -> Option<Vec<u8>> {
        self.skip_trivia();
        let rest = &self.b[self.i..];
        match rest.first() {
            Some(b'"') => {
                let mut out = Vec::new();
                let mut j = 1;
                while j < rest.len() {
                    if rest[j] == b'"' {
                        if rest.get(j + 1) == Some(&b'"') {
                            out.push(b'"');
                            j += 2;
                            continue;
                        }
                        self.i += j + 1;
                        return Some(out);
                    }
                    out.push(rest[j]);
                    j += 1;
                }
                None
            }
            Some(&c) if is_ident_start(c) => {
                let n = rest
                    .iter()
                    .position(|&c| !is_ident(c))
                    .unwrap_or(rest.len());
                self.i += n;
                Some(rest[..n].to_ascii_lowercase())
            }
            _ => None,
        }
    }

    /// Whether the next word is `w` (lower case); consumes it if so.
    fn eat(&mut self, w: &[u8]) -> bool {
        let save = self.i;
        if self.word().is_some_and(|x| x == w) {
            return true;
        }
        self.i = save;
        false
    }
}

/// Recognise one statement.
fn op(stmt: &[u8]) -> Option<Op> {
    let mut w = Words::new(stmt);
    let first = w.word()?;
    let text = || Bytes::copy_from_slice(trim(stmt));
    match first.as_slice() {
        b"set" => {
            let mut scope_session = false;
            let mut v = w.word()?;
            if v == b"local" {
                return Some(Op::Local);
            }
            if v == b"session" {
                scope_session = true;
                v = w.word()?;
                if v == b"characteristics" {
                    return Some(Op::Set {
                        var: "transaction characteristics".into(),
                        stmt: text(),
                    });
                }
            }
            let var = match v.as_slice() {
                b"transaction" | b"constraints" if !scope_session => return Some(Op::Local),
                b"role" => "role".to_string(),
                b"session" if w.eat(b"authorization") => "session_authorization".into(),
                b"authorization" if scope_session => "session_authorization".into(),
                b"time" if w.eat(b"zone") => "timezone".into(),
                b"names" => "client_encoding".into(),
                b"schema" => "search_path".into(),
                b"xml" if w.eat(b"option") => "xmloption".into(),
                _ => {
                    let mut name = String::from_utf8_lossy(&v).into_owned();
                    // A qualified parameter (`myapp.setting`).
                    while w.b.get(w.i) == Some(&b'.') {
                        w.i += 1;
                        name.push('.');
                        name.push_str(&String::from_utf8_lossy(&w.word()?));
                    }
                    name
                }
            };
            Some(Op::Set { var, stmt: text() })
        }
        b"reset" => {
            let v = w.word()?;
            Some(match v.as_slice() {
                b"all" => Op::ResetAll,
                b"session" if w.eat(b"authorization") => Op::Reset("session_authorization".into()),
                b"time" if w.eat(b"zone") => Op::Reset("timezone".into()),
                b"xml" if w.eat(b"option") => Op::Reset("xmloption".into()),
                _ => {
                    let mut name = String::from_utf8_lossy(&v).into_owned();
                    while w.b.get(w.i) == Some(&b'.') {
                        w.i += 1;
                        name.push('.');
                        name.push_str(&String::from_utf8_lossy(&w.word()?));
                    }
                    Op::Reset(name)
                }
            })
        }
        b"discard" => match w.word()?.as_slice() {
            b"all" => Some(Op::DiscardAll),
            b"temp" | b"temporary" => Some(Op::DiscardTemp),
            _ => None,
        },
        b"deallocate" => {
            let mut n = w.word()?;
            if n == b"prepare" {
                n = w.word()?;
            }
            Some(Op::Deallocate((n != b"all").then_some(n)))
        }
        b"prepare" => {
            let n = w.word()?;
            if n == b"transaction" {
                return Some(Op::PrepareTransaction);
            }
            Some(Op::Prepare {
                name: n,
                stmt: text(),
            })
        }
        b"listen" => Some(Op::Listen(w.word()?)),
        b"unlisten" => {
            w.skip_trivia();
            if w.b.get(w.i) == Some(&b'*') {
                return Some(Op::Unlisten(None));
            }
            Some(Op::Unlisten(Some(w.word()?)))
        }
        b"begin" => Some(Op::Begin),
        b"start" => w.eat(b"transaction").then_some(Op::Begin),
        b"commit" | b"end" => {
            // COMMIT PREPARED 'gid' ends another transaction, not the session's.
            (!w.eat(b"prepared")).then_some(Op::Commit)
        }
        b"abort" => Some(Op::Rollback),
        b"rollback" => {
            if w.eat(b"prepared") {
                return None;
            }
            let _ = w.eat(b"work") || w.eat(b"transaction");
            if w.eat(b"to") {
                let _ = w.eat(b"savepoint");
                return Some(Op::RollbackTo(w.word()?));
            }
            Some(Op::Rollback)
        }
        b"savepoint" => Some(Op::Savepoint(w.word()?)),
        b"release" => {
            let _ = w.eat(b"savepoint");
            Some(Op::Release(w.word()?))
        }
        _ => None,
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |p| p + 1);
    &b[s..e]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(sql: &str) -> Vec<Op> {
        let mut v = Vec::new();
        ops(sql.as_bytes(), &mut v);
        v
    }

    fn set(var: &str, stmt: &str) -> Op {
        Op::Set {
            var: var.into(),
            stmt: Bytes::copy_from_slice(stmt.as_bytes()),
        }
    }

    #[test]
    fn recognises_every_form_of_set_and_reset() {
        assert_eq!(
            all("SET search_path = a, b"),
            [set("search_path", "SET search_path = a, b")]
        );
        assert_eq!(
            all("set application_name='x';"),
            [set("application_name", "set application_name='x'")]
        );
        assert_eq!(
            all("SET SESSION work_mem TO '64MB'"),
            [set("work_mem", "SET SESSION work_mem TO '64MB'")]
        );
        assert_eq!(
            all("SET myapp.user_id = 7"),
            [set("myapp.user_id", "SET myapp.user_id = 7")]
        );
        assert_eq!(
            all("SET \"TimeZone\" = 'UTC'")[0],
            set("TimeZone", "SET \"TimeZone\" = 'UTC'")
        );
        assert_eq!(all("SET ROLE reader"), [set("role", "SET ROLE reader")]);
        assert_eq!(
            all("SET SESSION AUTHORIZATION alice"),
            [set(
                "session_authorization",
                "SET SESSION AUTHORIZATION alice"
            )]
        );
        assert_eq!(
            all("SET TIME ZONE 'UTC'")[0],
            set("timezone", "SET TIME ZONE 'UTC'")
        );
        assert_eq!(
            all("SET NAMES 'LATIN1'")[0],
            set("client_encoding", "SET NAMES 'LATIN1'")
        );
        assert!(
            matches!(&all("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")[0], Op::Set { var, .. } if var == "transaction characteristics")
        );
        for local in [
            "SET LOCAL work_mem = 1",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET CONSTRAINTS ALL DEFERRED",
            "SET LOCAL ROLE x",
        ] {
            assert_eq!(all(local), [Op::Local], "{local}");
        }
        assert_eq!(all("reset all"), [Op::ResetAll]);
        assert_eq!(all("RESET work_mem"), [Op::Reset("work_mem".into())]);
        assert_eq!(all("RESET ROLE"), [Op::Reset("role".into())]);
        assert_eq!(
            all("RESET SESSION AUTHORIZATION"),
            [Op::Reset("session_authorization".into())]
        );
        assert_eq!(all("DISCARD ALL"), [Op::DiscardAll]);
        assert_eq!(all("DISCARD TEMP"), [Op::DiscardTemp]);
        assert!(all("DISCARD PLANS").is_empty());
        assert_eq!(
            all("DEALLOCATE PREPARE s1"),
            [Op::Deallocate(Some(b"s1".to_vec()))]
        );
        assert_eq!(all("DEALLOCATE ALL"), [Op::Deallocate(None)]);
        assert!(
            matches!(&all("PREPARE q(int) AS SELECT $1")[0], Op::Prepare { name, .. } if name == b"q")
        );
        assert_eq!(all("LISTEN \"Chan\""), [Op::Listen(b"Chan".to_vec())]);
        assert_eq!(all("listen Chan"), [Op::Listen(b"chan".to_vec())]);
        assert_eq!(all("UNLISTEN *"), [Op::Unlisten(None)]);
        assert!(all("SELECT 1").is_empty());
        assert!(all("UPDATE t SET a = 1").is_empty());
    }

    #[test]
    fn transaction_control() {
        assert_eq!(
            all("BEGIN; SET a = 1; COMMIT"),
            [Op::Begin, set("a", "SET a = 1"), Op::Commit]
        );
        assert_eq!(all("START TRANSACTION READ ONLY"), [Op::Begin]);
        assert_eq!(all("END"), [Op::Commit]);
        assert_eq!(all("abort"), [Op::Rollback]);
        assert_eq!(
            all("ROLLBACK TO SAVEPOINT s"),
            [Op::RollbackTo(b"s".to_vec())]
        );
        assert_eq!(all("ROLLBACK WORK TO s"), [Op::RollbackTo(b"s".to_vec())]);
        assert_eq!(all("SAVEPOINT S1"), [Op::Savepoint(b"s1".to_vec())]);
        assert_eq!(all("RELEASE SAVEPOINT s1"), [Op::Release(b"s1".to_vec())]);
        assert_eq!(all("PREPARE TRANSACTION 'x'"), [Op::PrepareTransaction]);
        assert!(all("COMMIT PREPARED 'x'").is_empty());
        assert!(all("ROLLBACK PREPARED 'x'").is_empty());
        assert!(Op::Commit.answered_by(b"ROLLBACK"));
        assert!(Op::Begin.answered_by(b"START TRANSACTION"));
        assert!(!set("a", "").answered_by(b"SELECT 1"));
    }

    #[test]
    fn splits_like_the_server() {
        let s = split_statements;
        assert_eq!(
            s("SET a = 1; SELECT ';'; set b to 'x;y' ; -- c;\n RESET c").len(),
            4
        );
        assert_eq!(
            s("DO $x$ a; b $x$; SET c = 1"),
            vec!["DO $x$ a; b $x$", " SET c = 1"]
        );
        assert_eq!(
            s("/* ; /* nested ; */ ; */ SET a = '1'"),
            vec!["/* ; /* nested ; */ ; */ SET a = '1'"]
        );
        assert_eq!(s("SELECT E'it\\'s; here'; SET a = 1").len(), 2);
        assert_eq!(s("SELECT 'it''s; here'; SET a = 1").len(), 2);
        assert_eq!(s("SELECT a$b$c FROM t; SET a = 1").len(), 2);
        assert_eq!(
            s("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END; SET a = 1").len(),
            2
        );
        assert_eq!(s("SELECT 1;;  ; SELECT 2"), vec!["SELECT 1", " SELECT 2"]);
        // Non-UTF-8 bytes (LATIN1 'é') pass untouched.
        let latin1 = b"SET application_name = '\xe9t\xe9'; SELECT 1";
        let mut v = Vec::new();
        ops(latin1, &mut v);
        assert_eq!(
            v,
            [Op::Set {
                var: "application_name".into(),
                stmt: Bytes::from_static(b"SET application_name = '\xe9t\xe9'")
            }]
        );
    }

    #[test]
    fn pin_hints_are_cheap_substring_checks() {
        assert!(pin_hints(b"CREATE TEMP TABLE t (a int)").temp);
        assert!(pin_hints(b"select pg_advisory_lock(1)").advisory);
        assert!(pin_hints(b"DECLARE c CURSOR WITH HOLD FOR SELECT 1").hold);
        assert!(!pin_hints(b"SELECT abalance FROM pgbench_accounts WHERE aid = 1").any());
    }
}
