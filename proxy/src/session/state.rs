//! [`SessionState`]: what a client session carries from one backend connection to the next,
//! and how it is replayed there.
//!
//! PostgreSQL keeps a session's settings, role, prepared statements and LISTEN channels in
//! the server process. pgshift may move a session to another server process (a switch at
//! cutover or rollback, a shifted read-only unit, a backend lost while idle); the new process
//! must look the same to the client. The state is learnt from what the client sends (start-up
//! parameters, the SQL of `Query` and `Parse`, `Bind`, `Execute`, `Close`) and what the
//! server answers, and it follows PostgreSQL's rules of when a change lasts:
//!
//! * `SET`, `RESET`, `SET ROLE`, `SET SESSION AUTHORIZATION`, `LISTEN`, `UNLISTEN` and
//!   `DISCARD` are transactional: a change counts once its statement succeeded (its
//!   CommandComplete) *and* its transaction committed — an explicit `COMMIT`, the end of an
//!   implicit transaction without error (a simple Query, or the messages up to a Sync), or
//!   `PREPARE TRANSACTION`; `ROLLBACK` and `ROLLBACK TO SAVEPOINT` undo what they undo (SQL
//!   command reference: SET, "The effects of SET only last till the end of the current
//!   transaction if it is aborted"; LISTEN; SAVEPOINT).
//! * `PREPARE` / `DEALLOCATE` and protocol-level named statements are not transactional.
//! * `SET LOCAL` never lasts.
//!
//! Each statement is matched with its answer by the command tag, in order; the answers of
//! messages sent before any tracked statement are counted off ([`Tracker`]).

use super::track::{self, Op, Pins};
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use wire::msg;

/// A named prepared statement. Protocol-level and SQL-level statements share one namespace
/// in the server (SQL command reference: PREPARE, DEALLOCATE).
#[derive(Debug, Clone)]
enum Prepared {
    /// Made by a Parse message: the whole message.
    Parse(Bytes),
    /// Made by a SQL `PREPARE`: its text.
    Sql(Bytes),
}

/// The tracked statements of a named statement (or the unnamed one, key ``) or portal.
#[derive(Debug, Clone, Default)]
struct StmtInfo {
    ops: Arc<[Op]>,
    pins: Pins,
}

/// The replayable state of one client session.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Client start-up parameters other than `user` and `database`, in the client's order;
    /// sent in every backend's StartupMessage (53.2.1).
    pub params: Vec<(String, String)>,
    /// Session SETs in effect: (key, statement text), in the order they took effect.
    sets: Vec<(String, Bytes)>,
    /// Named prepared statements.
    prepared: HashMap<Vec<u8>, Prepared>,
    /// Read-only verdicts of named prepared statements (computed on first need).
    read_only: HashMap<Vec<u8>, bool>,
    /// LISTEN channels, in the order they were listened to.
    listen: Vec<Vec<u8>>,
    /// ParameterStatus values the client has seen (53.2.6).
    client_params: HashMap<String, String>,
    /// Statements and portals whose execution changes state (extended protocol).
    stmts: HashMap<Vec<u8>, StmtInfo>,
    portals: HashMap<Vec<u8>, StmtInfo>,
    tracker: Tracker,
    /// Hints that the session may have come to hold state that cannot move, since the last
    /// check with the server.
    pub suspect: Pins,
    /// The replayable state changed since [`take_changed`](SessionState::take_changed).
    changed: bool,
}

/// Matches tracked statements with their answers and keeps the changes of the open
/// transaction until it ends.
#[derive(Debug, Default)]
struct Tracker {
    /// ReadyForQuery answers still due to messages sent before the first group: counted off.
    lead: u32,
    /// The tracked statements of each message awaiting its ReadyForQuery (a Query, or the
    /// extended-protocol messages up to a Sync), in order.
    groups: VecDeque<Group>,
    /// Tracked statements executed since the last Sync, not yet a group.
    open: Vec<Op>,
    /// Changes of the open transaction, by savepoint level (empty: none pending).
    levels: Vec<Level>,
}

#[derive(Debug, Default)]
struct Group {
    ops: VecDeque<Op>,
    error: bool,
}

#[derive(Debug, Default)]
struct Level {
    savepoint: Option<Vec<u8>>,
    changes: Vec<Op>,
}

impl SessionState {
    /// The state of a session that logged in with start-up parameters `params` (without
    /// `user` and `database`).
    pub fn new(params: Vec<(String, String)>) -> SessionState {
        SessionState {
            params,
            ..Default::default()
        }
    }

    // ----- what the client sends ----------------------------------------------------

    /// A Query message with SQL text `sql`.
    pub fn on_query(&mut self, sql: &[u8]) {
        let mut ops = std::mem::take(&mut self.tracker.open);
        track::ops(sql, &mut ops);
        self.note_pins(sql);
        self.tracker.close(ops);
    }

    /// A Parse message of statement `name` (empty: the unnamed one) with text `sql`;
    /// `frame` is the whole message.
    pub fn on_parse(&mut self, name: &[u8], sql: &[u8], frame: &[u8]) {
        let mut ops = Vec::new();
        track::ops(sql, &mut ops);
        let pins = track::pin_hints(sql);
        if ops.is_empty() && !pins.any() {
            if !self.stmts.is_empty() {
                self.stmts.remove(name);
            }
        } else {
            self.stmts.insert(
                name.to_vec(),
                StmtInfo {
                    ops: ops.into(),
                    pins,
                },
            );
        }
        if !name.is_empty() {
            self.read_only.remove(name);
            self.prepared.insert(
                name.to_vec(),
                Prepared::Parse(Bytes::copy_from_slice(frame)),
            );
        }
    }

    /// A Bind of statement `stmt` into portal `portal`.
    pub fn on_bind(&mut self, portal: &[u8], stmt: &[u8]) {
        match self.stmts.get(stmt) {
            Some(i) => {
                let i = i.clone();
                self.portals.insert(portal.to_vec(), i);
            }
            None if !self.portals.is_empty() => {
                self.portals.remove(portal);
            }
            None => {}
        }
    }

    /// Whether an Execute must be looked at (some portal changes state when executed).
    pub fn watches_execute(&self) -> bool {
        !self.portals.is_empty()
    }

    /// An Execute of portal `portal`.
    pub fn on_execute(&mut self, portal: &[u8]) {
        if let Some(i) = self.portals.get(portal) {
            self.tracker.open.extend(i.ops.iter().cloned());
            let p = i.pins;
            self.add_pins(p);
        }
    }

    /// A Sync or FunctionCall: the end of a group of messages answered by one ReadyForQuery.
    pub fn on_sync(&mut self) {
        let ops = std::mem::take(&mut self.tracker.open);
        self.tracker.close(ops);
    }

    /// A Close of statement (`kind` `S`) or portal (`P`) `name`.
    pub fn on_close(&mut self, kind: u8, name: &[u8]) {
        if kind == b'S' {
            self.forget(name);
        } else {
            self.portals.remove(name);
        }
    }

    fn forget(&mut self, name: &[u8]) {
        self.prepared.remove(name);
        self.read_only.remove(name);
        self.stmts.remove(name);
    }

    fn note_pins(&mut self, sql: &[u8]) {
        let p = track::pin_hints(sql);
        self.add_pins(p);
    }

    fn add_pins(&mut self, p: Pins) {
        self.suspect.temp |= p.temp;
        self.suspect.advisory |= p.advisory;
        self.suspect.hold |= p.hold;
    }

    // ----- what the server answers --------------------------------------------------

    /// Whether the server's CommandComplete messages must be read now.
    #[inline]
    pub fn watches_answers(&self) -> bool {
        !self.tracker.groups.is_empty()
    }

    /// A CommandComplete with tag `tag`. Returns whether the replayable state changed.
    pub fn on_command_complete(&mut self, tag: &[u8]) -> bool {
        if self.tracker.lead > 0 {
            return false;
        }
        let Some(g) = self.tracker.groups.front_mut() else {
            return false;
        };
        if !g.ops.front().is_some_and(|op| op.answered_by(tag)) {
            return false;
        }
        let Some(op) = g.ops.pop_front() else {
            return false;
        };
        match op {
            Op::Local | Op::Begin => false,
            Op::Prepare { name, stmt } => {
                self.read_only.remove(&name);
                self.prepared.insert(name, Prepared::Sql(stmt));
                self.changed = true;
                true
            }
            Op::Deallocate(Some(name)) => {
                self.forget(&name);
                self.changed = true;
                true
            }
            Op::Deallocate(None) => {
                self.prepared.clear();
                self.read_only.clear();
                self.stmts.retain(|k, _| k.is_empty());
                self.changed = true;
                true
            }
            Op::Commit | Op::PrepareTransaction if tag != b"ROLLBACK" => self.commit(),
            Op::Commit | Op::PrepareTransaction | Op::Rollback => {
                self.tracker.levels.clear();
                false
            }
            Op::Savepoint(name) => {
                if self.tracker.levels.is_empty() {
                    self.tracker.levels.push(Level::default());
                }
                self.tracker.levels.push(Level {
                    savepoint: Some(name),
                    changes: Vec::new(),
                });
                false
            }
            Op::RollbackTo(name) => {
                match self
                    .tracker
                    .levels
                    .iter()
                    .rposition(|l| l.savepoint.as_ref() == Some(&name))
                {
                    Some(i) => {
                        self.tracker.levels.truncate(i + 1);
                        self.tracker.levels[i].changes.clear();
                    }
                    // Not tracked: made while no change was pending, so every pending
                    // change came after it.
                    None => self.tracker.levels.clear(),
                }
                false
            }
            Op::Release(name) => {
                if let Some(i) = self
                    .tracker
                    .levels
                    .iter()
                    .rposition(|l| l.savepoint.as_ref() == Some(&name))
                    .filter(|&i| i > 0)
                {
                    let merged: Vec<Op> = self
                        .tracker
                        .levels
                        .drain(i..)
                        .flat_map(|l| l.changes)
                        .collect();
                    self.tracker.levels[i - 1].changes.extend(merged);
                }
                false
            }
            change => {
                if self.tracker.levels.is_empty() {
                    self.tracker.levels.push(Level::default());
                }
                if let Some(l) = self.tracker.levels.last_mut() {
                    l.changes.push(change);
                }
                false
            }
        }
    }

    /// An ErrorResponse (not while idle: those end the connection).
    pub fn on_error(&mut self) {
        if self.tracker.lead == 0 {
            if let Some(g) = self.tracker.groups.front_mut() {
                g.error = true;
            }
        }
    }

    /// A ReadyForQuery with transaction status `status`. Returns whether the replayable
    /// state changed.
    pub fn on_ready(&mut self, status: u8) -> bool {
        let t = &mut self.tracker;
        if t.lead > 0 {
            t.lead -= 1;
            return false;
        }
        // What is left of the group never ran (an error stopped it).
        let Some(g) = t.groups.pop_front() else {
            return false;
        };
        if status != msg::TX_IDLE || t.levels.is_empty() {
            return false;
        }
        if g.error {
            // The implicit transaction rolled back.
            t.levels.clear();
            false
        } else {
            self.commit()
        }
    }

    /// The unit of work is started again from its first byte (a shifted unit replayed on the
    /// serving side): forget what was noted of it.
    pub fn unit_restart(&mut self) {
        self.tracker = Tracker::default();
    }

    /// Whether the replayable state changed since the last call (an idle spare connection
    /// that did not see the change must then be dropped).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// The pending changes of the transaction took effect.
    fn commit(&mut self) -> bool {
        let levels = std::mem::take(&mut self.tracker.levels);
        let mut changed = false;
        for op in levels.into_iter().flat_map(|l| l.changes) {
            changed = true;
            match op {
                Op::Set { var, stmt } => {
                    self.unset(&var);
                    self.sets.push((var, stmt));
                }
                Op::Reset(var) => self.unset(&var),
                // RESET ALL leaves the role and the session authorization (their parameters
                // are GUC_NO_RESET_ALL).
                Op::ResetAll => self
                    .sets
                    .retain(|(v, _)| v == "role" || v == "session_authorization"),
                Op::DiscardAll => {
                    self.sets.clear();
                    self.prepared.clear();
                    self.read_only.clear();
                    self.stmts.retain(|k, _| k.is_empty());
                    self.listen.clear();
                }
                Op::DiscardTemp => {}
                Op::Listen(c) if !self.listen.contains(&c) => self.listen.push(c),
                Op::Unlisten(Some(c)) => self.listen.retain(|l| l != &c),
                Op::Unlisten(None) => self.listen.clear(),
                _ => {}
            }
        }
        self.changed |= changed;
        changed
    }

    /// Drops the SET of `var`; a new session authorization also resets the role.
    fn unset(&mut self, var: &str) {
        let auth = var == "session_authorization";
        self.sets
            .retain(|(v, _)| v != var && !(auth && v == "role"));
    }

    // ----- what a new backend is given ----------------------------------------------

    /// The Parse message of named statement `name`, when a Parse made it.
    pub fn statement(&self, name: &[u8]) -> Option<&Bytes> {
        match self.prepared.get(name) {
            Some(Prepared::Parse(f)) => Some(f),
            _ => None,
        }
    }

    /// Names of the session's named prepared statements.
    pub fn statement_names(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.prepared.keys().cloned()
    }

    /// The SET statements in effect, in order (texts in the client's encoding).
    pub fn set_statements(&self) -> impl Iterator<Item = &[u8]> {
        self.sets.iter().map(|(_, s)| &s[..])
    }

    /// The LISTEN channels (folded names).
    pub fn channels(&self) -> &[Vec<u8>] {
        &self.listen
    }

    /// Records a ParameterStatus the client was sent; returns whether the value is new to it.
    pub fn client_param(&mut self, name: &str, value: &str) -> bool {
        if self.client_params.get(name).map(String::as_str) == Some(value) {
            return false;
        }
        self.client_params
            .insert(name.to_string(), value.to_string());
        true
    }

    /// The messages that put a fresh backend into this state: each SET (role and session
    /// authorization included) as a Query in the order they took effect, each LISTEN, each
    /// SQL `PREPARE`, each protocol-level statement's Parse followed by a Sync; for a
    /// read-only connection (a shifted unit's), `SET default_transaction_read_only = on`
    /// last, so that no replayed setting undoes it. Returns them with the number of
    /// ReadyForQuery answers they bring.
    pub fn replay(&self, read_only: bool) -> (BytesMut, usize) {
        let mut out = BytesMut::new();
        let mut expected = 0;
        for (_, stmt) in &self.sets {
            msg::query_bytes(&mut out, stmt);
            expected += 1;
        }
        for c in &self.listen {
            let mut q = b"LISTEN ".to_vec();
            quote_ident(c, &mut q);
            msg::query_bytes(&mut out, &q);
            expected += 1;
        }
        for p in self.prepared.values() {
            match p {
                Prepared::Sql(stmt) => msg::query_bytes(&mut out, stmt),
                Prepared::Parse(frame) => {
                    out.extend_from_slice(frame);
                    msg::sync(&mut out);
                }
            }
            expected += 1;
        }
        if read_only {
            msg::query(&mut out, "SET default_transaction_read_only = on");
            expected += 1;
        }
        (out, expected)
    }

    /// A snapshot of the state for a new backend (see [`replay`](Self::replay)).
    pub fn replay_plan(&self, read_only: bool) -> crate::backend::ReplayPlan {
        let mut params = self.params.clone();
        if read_only {
            params.push(("default_transaction_read_only".into(), "on".into()));
        }
        let (script, expected) = self.replay(read_only);
        crate::backend::ReplayPlan {
            params,
            script,
            expected,
            statements: self.statement_names().collect(),
            read_only,
        }
    }

    /// Can the unit starting with message `tag` (`body`: its body, for Query, Parse and
    /// Bind) be proven read-only? Bind is judged by its statement's text.
    pub fn unit_read_only(&mut self, tag: u8, body: Option<&[u8]>) -> bool {
        let Some(body) = body else { return false };
        match tag {
            msg::QUERY => match msg::query_text(body) {
                Ok(sql) => {
                    let sql = String::from_utf8_lossy(sql);
                    validator::is_read_only(&sql)
                        || matches!(
                            validator::transaction_start(&sql),
                            validator::TxStart::ReadOnly
                        )
                }
                Err(_) => false,
            },
            msg::PARSE => msg::parse_text(body)
                .is_ok_and(|(_, sql)| validator::is_read_only(&String::from_utf8_lossy(sql))),
            msg::BIND => {
                let Some(name) = msg::bind_names(body)
                    .ok()
                    .map(|(_, s)| s)
                    .filter(|n| !n.is_empty())
                else {
                    return false;
                };
                if let Some(v) = self.read_only.get(name) {
                    return *v;
                }
                let v = self.statement(name).is_some_and(|f| {
                    msg::parse_text(&f[5..]).is_ok_and(|(_, sql)| {
                        validator::is_read_only(&String::from_utf8_lossy(sql))
                    })
                });
                self.read_only.insert(name.to_vec(), v);
                v
            }
            _ => false,
        }
    }
}

impl Tracker {
    /// A message that gets its own ReadyForQuery, with the tracked statements it runs.
    fn close(&mut self, ops: Vec<Op>) {
        // Transaction control matters only while a change may be pending.
        let relevant = !self.groups.is_empty()
            || !self.levels.is_empty()
            || ops.iter().any(|o| !o.is_transaction_control());
        if relevant {
            self.groups.push_back(Group {
                ops: ops.into(),
                error: false,
            });
        } else {
            self.lead += 1;
        }
    }
}

/// Appends `name` as a quoted identifier (4.1.1: `"` doubled).
fn quote_ident(name: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &c in name {
        if c == b'"' {
            out.push(b'"');
        }
        out.push(c);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_frame(name: &str, sql: &str) -> Bytes {
        let mut b = BytesMut::new();
        msg::put_msg(&mut b, msg::PARSE, |b| {
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&[0]);
            b.extend_from_slice(sql.as_bytes());
            b.extend_from_slice(&[0, 0, 0]);
        });
        b.freeze()
    }

    /// Runs a simple Query `sql` answered by `tags` (an `ERROR` entry for an
    /// ErrorResponse) and a ReadyForQuery with `status`.
    fn query(s: &mut SessionState, sql: &str, tags: &[&str], status: u8) -> bool {
        s.on_query(sql.as_bytes());
        let mut changed = false;
        for t in tags {
            if *t == "ERROR" {
                s.on_error();
            } else {
                changed |= s.on_command_complete(t.as_bytes());
            }
        }
        changed | s.on_ready(status)
    }

    fn sets(s: &SessionState) -> Vec<String> {
        s.set_statements()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn changes_last_only_when_their_transaction_commits() {
        let mut s = SessionState::new(Vec::new());
        assert!(query(&mut s, "SET search_path = a", &["SET"], b'I'));
        // Rolled back: the SET does not last.
        query(&mut s, "BEGIN", &["BEGIN"], b'T');
        query(&mut s, "SET work_mem = '1MB'", &["SET"], b'T');
        query(&mut s, "ROLLBACK", &["ROLLBACK"], b'I');
        assert_eq!(sets(&s), ["SET search_path = a"]);
        // Several statements in one text: an error rolls the implicit transaction back.
        query(&mut s, "SET a.b = 1; SELECT 1/0", &["SET", "ERROR"], b'I');
        assert_eq!(sets(&s), ["SET search_path = a"]);
        // ... unless a COMMIT came first; statements after the error never ran.
        query(
            &mut s,
            "SET a.b = 1; COMMIT; SELECT 1/0; SET a.c = 1",
            &["SET", "COMMIT", "ERROR"],
            b'I',
        );
        assert_eq!(sets(&s), ["SET search_path = a", "SET a.b = 1"]);
        // A SET after BEGIN in the same text lasts with the COMMIT.
        query(&mut s, "BEGIN; SET a.d = 1", &["BEGIN", "SET"], b'T');
        assert_eq!(sets(&s).len(), 2, "pending");
        query(&mut s, "COMMIT", &["COMMIT"], b'I');
        assert_eq!(sets(&s).len(), 3);
        // COMMIT of a failed transaction is answered ROLLBACK.
        query(
            &mut s,
            "BEGIN; SET a.e = 1; SELECT 1/0",
            &["BEGIN", "SET", "ERROR"],
            b'E',
        );
        query(&mut s, "COMMIT", &["ROLLBACK"], b'I');
        assert_eq!(sets(&s).len(), 3);
        // SET LOCAL never lasts; RESET does.
        query(
            &mut s,
            "BEGIN; SET LOCAL a.f = 1; COMMIT",
            &["BEGIN", "SET", "COMMIT"],
            b'I',
        );
        query(&mut s, "RESET a.b", &["RESET"], b'I');
        assert_eq!(sets(&s), ["SET search_path = a", "SET a.d = 1"]);
    }

    #[test]
    fn savepoints() {
        let mut s = SessionState::new(Vec::new());
        query(&mut s, "BEGIN", &["BEGIN"], b'T');
        query(&mut s, "SET a.x = 1", &["SET"], b'T');
        query(&mut s, "SAVEPOINT p", &["SAVEPOINT"], b'T');
        query(&mut s, "SET a.y = 1", &["SET"], b'T');
        query(&mut s, "ROLLBACK TO SAVEPOINT p", &["ROLLBACK"], b'T');
        query(
            &mut s,
            "SAVEPOINT q; SET a.z = 1; RELEASE q",
            &["SAVEPOINT", "SET", "RELEASE"],
            b'T',
        );
        query(&mut s, "COMMIT", &["COMMIT"], b'I');
        assert_eq!(sets(&s), ["SET a.x = 1", "SET a.z = 1"]);
        // A savepoint made while nothing was pending is not tracked; rolling back to it
        // undoes every change since.
        query(&mut s, "BEGIN", &["BEGIN"], b'T');
        query(&mut s, "SAVEPOINT r", &["SAVEPOINT"], b'T');
        query(&mut s, "SET a.w = 1", &["SET"], b'T');
        query(&mut s, "ROLLBACK TO r", &["ROLLBACK"], b'T');
        query(&mut s, "COMMIT", &["COMMIT"], b'I');
        assert_eq!(sets(&s).len(), 2);
    }

    #[test]
    fn roles_listen_and_prepared_statements() {
        let mut s = SessionState::new(Vec::new());
        query(&mut s, "SET ROLE reader", &["SET"], b'I');
        query(&mut s, "SET application_name = 'x'", &["SET"], b'I');
        assert_eq!(sets(&s), ["SET ROLE reader", "SET application_name = 'x'"]);
        // A new session authorization resets the role (checked on PostgreSQL 15).
        query(&mut s, "SET SESSION AUTHORIZATION alice", &["SET"], b'I');
        assert_eq!(
            sets(&s),
            [
                "SET application_name = 'x'",
                "SET SESSION AUTHORIZATION alice"
            ]
        );
        query(&mut s, "SET ROLE reader", &["SET"], b'I');
        query(&mut s, "RESET ALL", &["RESET"], b'I');
        assert_eq!(
            sets(&s),
            ["SET SESSION AUTHORIZATION alice", "SET ROLE reader"]
        );
        query(&mut s, "RESET ROLE", &["RESET"], b'I');
        assert_eq!(sets(&s), ["SET SESSION AUTHORIZATION alice"]);

        query(
            &mut s,
            "LISTEN a; LISTEN \"B\"",
            &["LISTEN", "LISTEN"],
            b'I',
        );
        query(
            &mut s,
            "BEGIN; LISTEN c; ROLLBACK",
            &["BEGIN", "LISTEN", "ROLLBACK"],
            b'I',
        );
        assert_eq!(s.channels(), [b"a".to_vec(), b"B".to_vec()]);
        query(&mut s, "UNLISTEN a", &["UNLISTEN"], b'I');
        assert_eq!(s.channels(), [b"B".to_vec()]);

        // PREPARE lasts even when its transaction rolls back.
        query(
            &mut s,
            "BEGIN; PREPARE q AS SELECT 1; ROLLBACK",
            &["BEGIN", "PREPARE", "ROLLBACK"],
            b'I',
        );
        s.on_parse(b"s1", b"SELECT 2", &parse_frame("s1", "SELECT 2"));
        let (out, n) = s.replay(true);
        // SESSION AUTHORIZATION, LISTEN "B", PREPARE q, Parse s1 + Sync, read-only last.
        assert_eq!(n, 5);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("LISTEN \"B\""), "{text}");
        assert!(
            text.ends_with("SET default_transaction_read_only = on\0"),
            "{text}"
        );
        query(&mut s, "DEALLOCATE q", &["DEALLOCATE"], b'I');
        assert!(s.statement(b"s1").is_some());
        query(&mut s, "DISCARD ALL", &["DISCARD ALL"], b'I');
        assert_eq!(s.replay(false).1, 0);
    }

    #[test]
    fn extended_protocol_and_untracked_traffic() {
        let mut s = SessionState::new(Vec::new());
        // Untracked messages ahead of a tracked one: their answers are counted off.
        s.on_query(b"SELECT 1");
        s.on_parse(
            b"",
            b"SET search_path = b",
            &parse_frame("", "SET search_path = b"),
        );
        s.on_bind(b"", b"");
        assert!(s.watches_execute());
        s.on_execute(b"");
        s.on_sync();
        assert!(s.watches_answers());
        assert!(
            !s.on_command_complete(b"SET"),
            "the SELECT's answers come first"
        );
        s.on_ready(b'I');
        assert!(!s.on_command_complete(b"SELECT 1"));
        s.on_command_complete(b"SET");
        assert!(s.on_ready(b'I'));
        assert_eq!(sets(&s), ["SET search_path = b"]);
        assert!(!s.watches_answers());
        // An error before Sync: the executed SET is rolled back with the implicit block.
        s.on_parse(
            b"",
            b"SET search_path = c",
            &parse_frame("", "SET search_path = c"),
        );
        s.on_bind(b"", b"");
        s.on_execute(b"");
        s.on_sync();
        s.on_command_complete(b"SET");
        s.on_error();
        s.on_ready(b'I');
        assert_eq!(sets(&s), ["SET search_path = b"]);
        // Plain traffic leaves nothing behind.
        for _ in 0..3 {
            s.on_query(b"SELECT abalance FROM pgbench_accounts WHERE aid = 1");
        }
        for _ in 0..3 {
            s.on_ready(b'I');
        }
        assert!(!s.watches_answers() && s.tracker.lead == 0);
    }

    #[test]
    fn read_only_verdicts_of_statements() {
        let mut s = SessionState::new(Vec::new());
        s.on_parse(b"r", b"SELECT 1", &parse_frame("r", "SELECT 1"));
        s.on_parse(
            b"w",
            b"UPDATE t SET a = 1",
            &parse_frame("w", "UPDATE t SET a = 1"),
        );
        let bind = |stmt: &str| {
            let mut b = Vec::new();
            b.extend_from_slice(b"\0");
            b.extend_from_slice(stmt.as_bytes());
            b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
            b
        };
        assert!(s.unit_read_only(msg::BIND, Some(&bind("r"))));
        assert!(!s.unit_read_only(msg::BIND, Some(&bind("w"))));
        assert!(!s.unit_read_only(msg::BIND, Some(&bind("missing"))));
        assert!(s.unit_read_only(msg::QUERY, Some(b"BEGIN READ ONLY\0")));
        assert!(!s.unit_read_only(msg::QUERY, Some(b"BEGIN\0")));
        assert!(!s.unit_read_only(msg::SYNC, None));
        assert!(
            s.unit_read_only(msg::QUERY, Some(b"SELECT '\xe9'\0")),
            "LATIN1 text"
        );
    }
}
