//! [`SessionState`]: what a client session carries from one backend connection to the next,
//! and how it is replayed there.
//!
//! PostgreSQL keeps a session's settings, prepared statements and the like in the server
//! process. pgshift may move a session to another server process (a switch at cutover or
//! rollback, a shifted read-only unit, a backend lost while idle); the new process must look
//! the same to the client. The state is learnt from what the client sends (start-up
//! parameters, the SQL text of `Query` and `Parse`, `Close`) and what the server answers
//! (`ParameterStatus`), and changes only when the unit of work that changed it succeeds.

use super::track::{session_changes, SessionChange};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use wire::msg;

/// The replayable state of one client session.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Client start-up parameters other than `user` and `database`, in the client's order;
    /// sent in every backend's StartupMessage (53.2.1).
    pub params: Vec<(String, String)>,
    /// Session SETs in effect: (variable, statement text), in the order they took effect.
    sets: Vec<(String, String)>,
    /// Named prepared statements (protocol level): name → the whole Parse message.
    prepared: HashMap<String, Bytes>,
    /// Read-only verdicts of named prepared statements (computed on first need).
    read_only: HashMap<String, bool>,
    /// Changes made by the unit of work in progress, applied when it succeeds.
    pending: Vec<SessionChange>,
    /// ParameterStatus values the client has seen (53.2.6).
    client_params: HashMap<String, String>,
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

    /// Notes the statements of a `Query` or `Parse` text that change session state; they
    /// take effect at the end of the unit ([`unit_end`](Self::unit_end)).
    pub fn note_sql(&mut self, sql: &str) {
        session_changes(sql, &mut self.pending);
    }

    /// A named statement was parsed: `frame` is its whole Parse message.
    pub fn parsed(&mut self, name: &str, frame: Bytes) {
        self.read_only.remove(name);
        self.prepared.insert(name.to_string(), frame);
    }

    /// A named statement was closed (Close 'S' or DEALLOCATE).
    pub fn forget(&mut self, name: &str) {
        self.prepared.remove(name);
        self.read_only.remove(name);
    }

    /// The Parse message of named statement `name`, if the session has it.
    pub fn statement(&self, name: &str) -> Option<&Bytes> {
        self.prepared.get(name)
    }

    /// Names of the session's named prepared statements.
    pub fn statement_names(&self) -> impl Iterator<Item = String> + '_ {
        self.prepared.keys().cloned()
    }

    /// The SET statements in effect, in order.
    pub fn set_statements(&self) -> impl Iterator<Item = &str> {
        self.sets.iter().map(|(_, s)| s.as_str())
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

    /// The unit of work ended; `ok` when the server reported no error in it. Applies or drops
    /// the pending changes. Returns whether the replayable state changed (an idle spare
    /// connection that did not see the change must then be dropped).
    pub fn unit_end(&mut self, ok: bool) -> bool {
        if !ok {
            self.pending.clear();
            return false;
        }
        let mut changed = false;
        for ch in std::mem::take(&mut self.pending) {
            changed = true;
            match ch {
                SessionChange::Set(var, stmt) => {
                    self.sets.retain(|(v, _)| v != &var);
                    self.sets.push((var, stmt));
                }
                SessionChange::Reset(var) => self.sets.retain(|(v, _)| v != &var),
                SessionChange::ResetAll => self.sets.clear(),
                SessionChange::DiscardAll => {
                    self.sets.clear();
                    self.prepared.clear();
                    self.read_only.clear();
                }
                SessionChange::Deallocate(Some(name)) => self.forget(&name),
                SessionChange::Deallocate(None) => {
                    self.prepared.clear();
                    self.read_only.clear();
                }
            }
        }
        changed
    }

    /// Drops the pending changes of a unit that is started again from its first byte.
    pub fn unit_restart(&mut self) {
        self.pending.clear();
    }

    /// The messages that put a fresh backend into this state: each SET as a Query, each named
    /// statement's Parse followed by a Sync. Returns them with the number of ReadyForQuery
    /// answers they bring.
    pub fn replay(&self) -> (BytesMut, usize) {
        let mut out = BytesMut::new();
        let mut expected = 0;
        for (_, stmt) in &self.sets {
            msg::query(&mut out, stmt);
            expected += 1;
        }
        for frame in self.prepared.values() {
            out.extend_from_slice(frame);
            msg::sync(&mut out);
            expected += 1;
        }
        (out, expected)
    }

    /// Can the unit starting with message `tag` (`body`: its body, for Query, Parse and
    /// Bind) be proven read-only? Bind is judged by its statement's text.
    pub fn unit_read_only(&mut self, tag: u8, body: Option<&[u8]>) -> bool {
        let Some(body) = body else { return false };
        match tag {
            msg::QUERY => match msg::parse_query(body) {
                Ok(sql) => {
                    validator::is_read_only(sql)
                        || matches!(
                            validator::transaction_start(sql),
                            validator::TxStart::ReadOnly
                        )
                }
                Err(_) => false,
            },
            msg::PARSE => msg::parse_parse(body).is_ok_and(|(_, sql)| validator::is_read_only(sql)),
            msg::BIND => {
                let Some(name) = super::scan::bind_statement(body).filter(|n| !n.is_empty()) else {
                    return false;
                };
                if let Some(v) = self.read_only.get(name) {
                    return *v;
                }
                let v = self.prepared.get(name).is_some_and(|f| {
                    msg::parse_parse(&f[5..]).is_ok_and(|(_, sql)| validator::is_read_only(sql))
                });
                self.read_only.insert(name.to_string(), v);
                v
            }
            _ => false,
        }
    }
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

    #[test]
    fn changes_take_effect_when_the_unit_succeeds() {
        let mut s = SessionState::new(vec![("application_name".into(), "t".into())]);
        s.note_sql("SET search_path = a");
        assert_eq!(s.set_statements().count(), 0, "pending until the unit ends");
        assert!(s.unit_end(true));
        s.note_sql("SET work_mem = '1MB'");
        assert!(!s.unit_end(false), "a failed unit changes nothing");
        s.note_sql("SET search_path = b");
        s.unit_end(true);
        assert_eq!(
            s.set_statements().collect::<Vec<_>>(),
            ["SET search_path = b"]
        );
        s.parsed("s1", parse_frame("s1", "SELECT 1"));
        let (out, n) = s.replay();
        assert_eq!(n, 2, "one SET and one statement");
        assert!(out.starts_with(b"Q"));
        s.note_sql("DISCARD ALL");
        s.unit_end(true);
        assert_eq!(s.replay().1, 0);
    }

    #[test]
    fn read_only_verdicts_of_statements() {
        let mut s = SessionState::new(Vec::new());
        s.parsed("r", parse_frame("r", "SELECT 1"));
        s.parsed("w", parse_frame("w", "UPDATE t SET a = 1"));
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
    }
}
