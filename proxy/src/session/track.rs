//! Session state that must follow a session to another backend: SETs, RESETs, DISCARD ALL,
//! DEALLOCATE, recognised in the SQL text the client sends (PostgreSQL docs: SET, RESET,
//! DISCARD, DEALLOCATE).

/// A change to replayable session state, applied when its unit of work succeeds.
#[derive(Debug)]
pub enum SessionChange {
    Set(String, String),
    Reset(String),
    ResetAll,
    DiscardAll,
    Deallocate(Option<String>),
}

/// Note the statements of `sql` that change replayable session state (SET, RESET, DISCARD
/// ALL, DEALLOCATE). Cheap on the hot path: only a text starting with S, R or D is looked at;
/// then it is split into statements (quotes, dollar quotes and comments respected).
pub fn session_changes(sql: &str, out: &mut Vec<SessionChange>) {
    let first = sql
        .trim_start()
        .as_bytes()
        .first()
        .map(u8::to_ascii_uppercase);
    if !matches!(first, Some(b'S' | b'R' | b'D')) {
        return;
    }
    for stmt in split_statements(sql) {
        if let Some(ch) = session_change(stmt) {
            out.push(ch);
        }
    }
}

/// Split SQL text on top-level semicolons, skipping those inside '…', "…", $tag$…$tag$,
/// -- comments and /* */ comments (PostgreSQL docs 4.1 "Lexical Structure").
pub fn split_statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut start) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                // $tag$ … $tag$ (tag: letters, digits, underscores; not starting with a digit).
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
                    .map(|p| i + 1 + p);
                if let Some(e) = tag_end
                    .filter(|&e| b[e] == b'$' && !b.get(i + 1).is_some_and(u8::is_ascii_digit))
                {
                    let tag = &sql[i..=e];
                    match sql[e + 1..].find(tag) {
                        Some(p) => i = e + 1 + p + tag.len() - 1,
                        None => i = b.len(),
                    }
                }
            }
            b';' => {
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
    out.retain(|s| !s.trim().is_empty());
    out
}

/// Recognise one statement that changes replayable session state.
fn session_change(stmt: &str) -> Option<SessionChange> {
    let mut s = stmt.trim();
    // Leading comments.
    loop {
        if let Some(r) = s.strip_prefix("--") {
            s = r.split_once('\n').map_or("", |(_, rest)| rest).trim_start();
        } else if let Some(r) = s.strip_prefix("/*") {
            s = r.split_once("*/").map_or("", |(_, rest)| rest).trim_start();
        } else {
            break;
        }
    }
    let mut words = s.split_whitespace();
    let w0 = words.next()?.to_ascii_uppercase();
    match w0.as_str() {
        "SET" => {
            let mut w1 = words.next()?.to_ascii_lowercase();
            if w1 == "session" {
                w1 = words.next()?.to_ascii_lowercase();
                if w1 == "characteristics" || w1 == "authorization" {
                    return None;
                }
            }
            if matches!(
                w1.as_str(),
                "local" | "transaction" | "constraints" | "role" | "authorization"
            ) {
                return None;
            }
            let var = w1.split(['=', ' ']).next()?.to_string();
            Some(SessionChange::Set(var, s.to_string()))
        }
        "RESET" => {
            let w1 = words.next()?.to_ascii_lowercase();
            if w1 == "all" {
                Some(SessionChange::ResetAll)
            } else {
                Some(SessionChange::Reset(w1))
            }
        }
        "DISCARD" => {
            let w1 = words.next()?.to_ascii_lowercase();
            (w1 == "all").then_some(SessionChange::DiscardAll)
        }
        "DEALLOCATE" => {
            let mut w1 = words.next()?.to_string();
            if w1.eq_ignore_ascii_case("prepare") {
                w1 = words.next()?.to_string();
            }
            if w1.eq_ignore_ascii_case("all") {
                Some(SessionChange::Deallocate(None))
            } else {
                Some(SessionChange::Deallocate(Some(
                    w1.trim_matches('"').to_string(),
                )))
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_session_changes() {
        assert!(
            matches!(session_change("SET search_path = a, b"), Some(SessionChange::Set(v, _)) if v == "search_path")
        );
        assert!(
            matches!(session_change("set application_name='x';"), Some(SessionChange::Set(v, _)) if v == "application_name='x'" || v == "application_name")
        );
        assert!(
            matches!(session_change("SET SESSION work_mem TO '64MB'"), Some(SessionChange::Set(v, _)) if v == "work_mem")
        );
        assert!(session_change("SET LOCAL work_mem = 1").is_none());
        assert!(session_change("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").is_none());
        assert!(matches!(
            session_change("reset all"),
            Some(SessionChange::ResetAll)
        ));
        assert!(
            matches!(session_change("RESET work_mem"), Some(SessionChange::Reset(v)) if v == "work_mem")
        );
        assert!(matches!(
            session_change("DISCARD ALL"),
            Some(SessionChange::DiscardAll)
        ));
        assert!(
            matches!(session_change("DEALLOCATE PREPARE s1"), Some(SessionChange::Deallocate(Some(n))) if n == "s1")
        );
        assert!(session_change("SELECT 1").is_none());
        let mut v = Vec::new();
        session_changes(
            "SET a = 1; SELECT ';'; set b to 'x;y' ; -- c;\n RESET c",
            &mut v,
        );
        assert_eq!(v.len(), 3, "two SETs and a RESET");
        assert!(matches!(&v[1], SessionChange::Set(n, t) if n == "b" && t == "set b to 'x;y'"));
        let mut v = Vec::new();
        session_changes("SELECT 1; SET a = 1", &mut v);
        assert_eq!(v.len(), 1, "SELECT is no change, the SET is");
        let mut v = Vec::new();
        session_changes("COMMIT; SET a = 1", &mut v);
        assert!(
            v.is_empty(),
            "only texts starting with S, R or D are looked at (documented limit)"
        );
        assert_eq!(
            split_statements("DO $x$ a; b $x$; SET c = 1"),
            vec!["DO $x$ a; b $x$", " SET c = 1"]
        );
        assert_eq!(
            split_statements("/* ; */ SET a = '1'"),
            vec!["/* ; */ SET a = '1'"]
        );
    }
}
