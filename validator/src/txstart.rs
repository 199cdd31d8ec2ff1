//! [`crate::transaction_start`]: a hand-written recogniser of the transaction-start
//! grammar, cheaper than a parse and complete for PostgreSQL's modes (sqlparser 0.63
//! does not parse `DEFERRABLE`).
//!
//! Grammar (SQL command reference: BEGIN, START TRANSACTION, SET TRANSACTION, COMMIT,
//! ROLLBACK, END, ABORT):
//!
//! ```text
//! BEGIN [ WORK | TRANSACTION ] [ transaction_mode [, ...] ]
//! START TRANSACTION [ transaction_mode [, ...] ]
//! transaction_mode: ISOLATION LEVEL { SERIALIZABLE | REPEATABLE READ | READ COMMITTED
//!                                     | READ UNCOMMITTED }
//!                 | READ WRITE | READ ONLY | [ NOT ] DEFERRABLE
//! { COMMIT | END | ROLLBACK | ABORT } [ WORK | TRANSACTION ] [ AND [ NO ] CHAIN ]
//! ```

use crate::lex::{leading_word, Lexer, Tok};
use crate::TxStart;

/// What one statement of the text is.
enum Stmt {
    /// A start; `true` when it ends up READ ONLY.
    Start(bool),
    /// `COMMIT AND CHAIN` and the like: starts a transaction with unknown modes.
    Chain,
    /// A start that does not follow the grammar: PostgreSQL rejects it or it means
    /// something we do not know.
    Odd,
    Other,
    /// Nothing between two semicolons.
    Empty,
}

fn word_is(t: Option<Tok<'_>>, k: &str) -> bool {
    matches!(t, Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k))
}

/// Reads one statement up to (and including) its `;`; `None` at the end of the text.
fn statement(lx: &mut Lexer<'_>) -> Option<Stmt> {
    let first = lx.next_token()?;
    if first == Tok::Punct(b';') {
        return Some(Stmt::Empty);
    }
    let mut toks = Vec::new();
    while let Some(t) = lx.next_token() {
        if t == Tok::Punct(b';') {
            break;
        }
        toks.push(t);
    }
    let Tok::Word(lead) = first else {
        return Some(Stmt::Other);
    };
    let lead = lead.to_ascii_lowercase();
    let mut it = toks.into_iter().peekable();
    match lead.as_str() {
        "begin" => {
            if word_is(it.peek().copied(), "work") || word_is(it.peek().copied(), "transaction") {
                it.next();
            }
        }
        "start" => {
            if !word_is(it.next(), "transaction") {
                return Some(Stmt::Odd);
            }
        }
        "commit" | "end" | "rollback" | "abort" => {
            if word_is(it.peek().copied(), "work") || word_is(it.peek().copied(), "transaction") {
                it.next();
            }
            let chain = word_is(it.next(), "and") && word_is(it.next(), "chain");
            return Some(if chain { Stmt::Chain } else { Stmt::Other });
        }
        _ => return Some(Stmt::Other),
    }
    // Transaction modes, separated by commas or blanks.
    let mut read_only = false;
    while let Some(t) = it.next() {
        let Tok::Word(w) = t else {
            if t == Tok::Punct(b',') {
                continue;
            }
            return Some(Stmt::Odd);
        };
        let w = w.to_ascii_lowercase();
        let ok = match w.as_str() {
            "read" => match it.next() {
                Some(Tok::Word(m)) if m.eq_ignore_ascii_case("only") => {
                    read_only = true;
                    true
                }
                Some(Tok::Word(m)) if m.eq_ignore_ascii_case("write") => {
                    read_only = false;
                    true
                }
                _ => false,
            },
            "isolation" => {
                word_is(it.next(), "level")
                    && match it.next() {
                        Some(Tok::Word(l)) if l.eq_ignore_ascii_case("serializable") => true,
                        Some(Tok::Word(l)) if l.eq_ignore_ascii_case("repeatable") => {
                            word_is(it.next(), "read")
                        }
                        Some(Tok::Word(l)) if l.eq_ignore_ascii_case("read") => {
                            let n = it.next();
                            word_is(n, "committed") || word_is(n, "uncommitted")
                        }
                        _ => false,
                    }
            }
            "not" => word_is(it.next(), "deferrable"),
            "deferrable" => true,
            _ => false,
        };
        if !ok {
            return Some(Stmt::Odd);
        }
    }
    Some(Stmt::Start(read_only))
}

/// See [`crate::transaction_start`].
pub(crate) fn transaction_start(sql: &str) -> TxStart {
    let lead_is_tx = leading_word(sql).is_some_and(|w| {
        ["begin", "start", "commit", "end", "rollback", "abort"]
            .iter()
            .any(|k| w.eq_ignore_ascii_case(k))
    });
    // A text whose first statement is not transaction control can still start one in a
    // later statement; without a `;` there is no later statement.
    if !lead_is_tx && !sql.contains(';') {
        return TxStart::NotAStart;
    }
    let mut lx = Lexer::new(sql);
    let mut found = None;
    let mut count = 0;
    while let Some(st) = statement(&mut lx) {
        if !matches!(st, Stmt::Empty) {
            count += 1;
        }
        let this = match st {
            Stmt::Start(true) => TxStart::ReadOnly,
            Stmt::Start(false) | Stmt::Chain | Stmt::Odd => TxStart::ReadWrite,
            Stmt::Other | Stmt::Empty => continue,
        };
        found = Some(match found {
            None => this,
            Some(_) => TxStart::ReadWrite,
        });
    }
    match found {
        Some(TxStart::ReadOnly) if count > 1 => TxStart::ReadWrite,
        Some(f) => f,
        None => TxStart::NotAStart,
    }
}
