//! Statement fingerprints: the text with its constants taken out, in one canonical
//! spelling, so that statements differing only in values, spacing, comments or key-word
//! case share one fingerprint (the idea of `pg_stat_statements`' normalised query text,
//! documentation F.32).

use crate::lex::{Lexer, Tok};

#[derive(Debug, Clone, PartialEq, Eq)]
enum F {
    /// A key word from [`KEYWORDS`] (lower case; printed in upper case).
    Kw(&'static str),
    /// Any other identifier, canonical (lower-cased unless quoted).
    Ident(String),
    /// A constant or a parameter.
    Q,
    Op(String),
    Open(u8),
    Close(u8),
    Comma,
    Semi,
    Dot,
    Colon,
    Cast,
    /// A collapsed list.
    Ellipsis,
}

/// Key words printed in upper case. Any fixed list gives stable fingerprints (a word is
/// upper-cased or not by its lower-case spelling alone); this one keeps them readable.
const KEYWORDS: &[&str] = &[
    "all",
    "alter",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "begin",
    "between",
    "by",
    "call",
    "case",
    "cast",
    "close",
    "commit",
    "committed",
    "conflict",
    "constraint",
    "copy",
    "create",
    "cross",
    "current",
    "cursor",
    "deallocate",
    "declare",
    "default",
    "deferrable",
    "delete",
    "desc",
    "discard",
    "distinct",
    "do",
    "drop",
    "else",
    "end",
    "except",
    "execute",
    "exists",
    "explain",
    "false",
    "fetch",
    "filter",
    "first",
    "for",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "index",
    "inner",
    "insert",
    "intersect",
    "interval",
    "into",
    "is",
    "isolation",
    "join",
    "last",
    "lateral",
    "left",
    "level",
    "like",
    "limit",
    "listen",
    "lock",
    "locked",
    "matched",
    "merge",
    "natural",
    "next",
    "no",
    "not",
    "nothing",
    "notify",
    "nowait",
    "null",
    "nulls",
    "of",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "over",
    "partition",
    "prepare",
    "read",
    "recursive",
    "release",
    "repeatable",
    "reset",
    "returning",
    "revoke",
    "right",
    "rollback",
    "row",
    "rows",
    "savepoint",
    "select",
    "serializable",
    "set",
    "share",
    "show",
    "similar",
    "skip",
    "some",
    "start",
    "table",
    "then",
    "to",
    "transaction",
    "true",
    "truncate",
    "uncommitted",
    "union",
    "unlisten",
    "update",
    "using",
    "vacuum",
    "values",
    "view",
    "when",
    "where",
    "window",
    "with",
    "within",
    "work",
    "write",
];

fn keyword(lower: &str) -> Option<&'static str> {
    KEYWORDS.binary_search(&lower).ok().map(|i| KEYWORDS[i])
}

/// Canonical spelling of a double-quoted identifier's content: without quotes when the
/// unquoted spelling means the same name.
fn quoted_ident(raw: &str) -> String {
    let plain = raw
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'$');
    if plain && keyword(raw).is_none() {
        raw.to_owned()
    } else {
        format!("\"{raw}\"")
    }
}

/// See [`crate::fingerprint`].
pub(crate) fn fingerprint(sql: &str) -> String {
    let mut toks: Vec<F> = Vec::new();
    let mut lx = Lexer::new(sql);
    while let Some(t) = lx.next_token() {
        let f = match t {
            Tok::Word(w) => {
                let lower = w.to_lowercase();
                match keyword(&lower) {
                    Some(k) => F::Kw(k),
                    None => F::Ident(lower),
                }
            }
            Tok::QuotedIdent(raw) => F::Ident(quoted_ident(raw)),
            Tok::Literal | Tok::Param => {
                // A sign in front of a constant belongs to it when the sign cannot be a
                // binary operator (nothing that ends an operand comes before it).
                if let Some(F::Op(op)) = toks.last() {
                    if (op == "-" || op == "+")
                        && !matches!(
                            toks.get(toks.len().wrapping_sub(2)),
                            Some(F::Ident(_) | F::Q | F::Close(_))
                        )
                    {
                        toks.pop();
                    }
                }
                F::Q
            }
            Tok::Op(o) => F::Op(o.to_owned()),
            Tok::Cast => F::Cast,
            Tok::Punct(b'(' | b'[') => F::Open(sql_byte(t)),
            Tok::Punct(b')' | b']') => F::Close(sql_byte(t)),
            Tok::Punct(b',') => F::Comma,
            Tok::Punct(b';') => {
                if matches!(toks.last(), None | Some(F::Semi)) {
                    continue;
                }
                F::Semi
            }
            Tok::Punct(b'.') => F::Dot,
            Tok::Punct(_) => F::Colon,
        };
        toks.push(f);
    }
    while toks.last() == Some(&F::Semi) {
        toks.pop();
    }
    collapse_lists(&mut toks);
    collapse_values(&mut toks);
    render(&toks)
}

fn sql_byte(t: Tok<'_>) -> u8 {
    match t {
        Tok::Punct(b) => b,
        _ => 0,
    }
}

/// `IN (?, ?, ?)` → `IN (...)` and `ARRAY[?, ?]` → `ARRAY[...]`.
fn collapse_lists(toks: &mut Vec<F>) {
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        let open = match (&toks[i], out.last()) {
            (F::Open(b'('), Some(F::Kw("in"))) => Some(b')'),
            (F::Open(b'['), Some(F::Kw("array"))) => Some(b']'),
            _ => None,
        };
        if let Some(close) = open {
            // Q (, Q)* close
            let mut j = i + 1;
            let mut ok = toks.get(j) == Some(&F::Q);
            while ok {
                j += 1;
                match toks.get(j) {
                    Some(F::Comma) if toks.get(j + 1) == Some(&F::Q) => j += 1,
                    Some(F::Close(c)) if *c == close => break,
                    _ => ok = false,
                }
            }
            if ok {
                out.push(toks[i].clone());
                out.push(F::Ellipsis);
                out.push(toks[j].clone());
                i = j + 1;
                continue;
            }
        }
        out.push(toks[i].clone());
        i += 1;
    }
    *toks = out;
}

/// Index just past the bracket group opening at `i`, if it closes.
fn group_end(toks: &[F], i: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (j, t) in toks.iter().enumerate().skip(i) {
        match t {
            F::Open(_) => depth += 1,
            F::Close(_) => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(j + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// `VALUES (?, ?), (?, ?), (?, ?)` → `VALUES (?, ?), ...` when all rows look alike.
fn collapse_values(toks: &mut Vec<F>) {
    let mut i = 0;
    while i < toks.len() {
        if toks[i] == F::Kw("values") && toks.get(i + 1) == Some(&F::Open(b'(')) {
            let first_start = i + 1;
            let Some(first_end) = group_end(toks, first_start) else {
                return;
            };
            let mut end = first_end;
            let mut rows = 1;
            while toks.get(end) == Some(&F::Comma) && toks.get(end + 1) == Some(&F::Open(b'(')) {
                let Some(e) = group_end(toks, end + 1) else {
                    break;
                };
                if toks[end + 1..e] != toks[first_start..first_end] {
                    break;
                }
                rows += 1;
                end = e;
            }
            if rows > 1 {
                toks.splice(first_end..end, [F::Comma, F::Ellipsis]);
            }
            i = first_end;
        }
        i += 1;
    }
}

fn render(toks: &[F]) -> String {
    let mut s = String::with_capacity(toks.len() * 6);
    let mut prev: Option<&F> = None;
    for t in toks {
        let space = match (prev, t) {
            (None, _) => false,
            (Some(F::Open(_) | F::Dot | F::Cast | F::Colon), _) => false,
            (_, F::Close(_) | F::Comma | F::Semi | F::Dot | F::Cast | F::Colon) => false,
            // Function call or subscript: f(...), a[1], ARRAY[...].
            (Some(F::Ident(_)), F::Open(_)) => false,
            (Some(F::Kw(_) | F::Close(_) | F::Q), F::Open(b'[')) => false,
            _ => true,
        };
        if space {
            s.push(' ');
        }
        match t {
            F::Kw(k) => s.extend(k.chars().map(|c| c.to_ascii_uppercase())),
            F::Ident(i) => s.push_str(i),
            F::Q => s.push('?'),
            F::Op(o) => s.push_str(o),
            F::Open(b) | F::Close(b) => s.push(*b as char),
            F::Comma => s.push(','),
            F::Semi => s.push(';'),
            F::Dot => s.push('.'),
            F::Colon => s.push(':'),
            F::Cast => s.push_str("::"),
            F::Ellipsis => s.push_str("..."),
        }
        prev = Some(t);
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn keywords_are_sorted_and_lower_case() {
        assert!(super::KEYWORDS.windows(2).all(|w| w[0] < w[1]));
        assert!(super::KEYWORDS
            .iter()
            .all(|k| k.bytes().all(|b| b.is_ascii_lowercase())));
    }
}
