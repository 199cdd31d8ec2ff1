//! `${VAR}` / `${VAR:-default}` substitution on the raw configuration text.
//!
//! Runs before TOML parsing. A light lexer follows TOML's comments and four string kinds
//! so that each value is inserted in a form that keeps its meaning there (see
//! [`crate::load_str`] for the user-facing rules). Line numbers never change: a value that
//! would add a line break is either escaped (inside `"…"`) or refused. The positions of
//! every replacement are recorded so that parse errors can be reported at the column of the
//! original text.

/// What the environment holds for one variable name.
pub(crate) enum Lookup {
    Set(String),
    Unset,
    NotUnicode,
}

/// One replaced stretch: `orig_len` bytes at `orig_start` in the original text became
/// `out_len` bytes at `out_start` in the substituted text.
#[derive(Debug, Clone)]
struct Splice {
    out_start: usize,
    out_len: usize,
    orig_start: usize,
    orig_len: usize,
    /// The environment variable whose value was inserted (none for defaults and `$${`).
    from_env: Option<String>,
}

/// The substituted text and the map back to the original.
#[derive(Debug)]
pub(crate) struct Substituted {
    pub text: String,
    splices: Vec<Splice>,
}

impl Substituted {
    /// Byte offset in the original text of byte offset `out` of the substituted text. An
    /// offset inside an inserted value maps to the `$` that started its `${…}`.
    pub fn original_offset(&self, out: usize) -> usize {
        let idx = self.splices.partition_point(|s| s.out_start <= out);
        if idx == 0 {
            return out;
        }
        let s = &self.splices[idx - 1];
        if out < s.out_start + s.out_len {
            s.orig_start
        } else {
            s.orig_start + s.orig_len + (out - s.out_start - s.out_len)
        }
    }

    /// Names of the environment variables whose values overlap `out_start..out_end`.
    pub fn env_vars_in(&self, out_start: usize, out_end: usize) -> Vec<&str> {
        self.splices
            .iter()
            .filter(|s| {
                s.out_start < out_end.max(out_start + 1) && out_start < s.out_start + s.out_len
            })
            .filter_map(|s| s.from_env.as_deref())
            .collect()
    }
}

/// A substitution problem at byte `offset` of the original text.
#[derive(Debug)]
pub(crate) struct SubstError {
    pub offset: usize,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    Normal,
    Comment,
    Basic,
    Literal,
    MlBasic,
    MlLiteral,
}

/// Replaces every `${…}` and `$${` outside comments. Returns all problems found.
pub(crate) fn substitute(
    text: &str,
    lookup: &dyn Fn(&str) -> Lookup,
) -> Result<Substituted, Vec<SubstError>> {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut splices = Vec::new();
    let mut errors = Vec::new();
    let mut flushed = 0; // text[..flushed] is already in `out`
    let mut state = Lex::Normal;
    let mut i = 0;

    while i < b.len() {
        if state != Lex::Comment && b[i] == b'$' {
            if b[i..].starts_with(b"$${") {
                out.push_str(&text[flushed..i]);
                splices.push(Splice {
                    out_start: out.len(),
                    out_len: 2,
                    orig_start: i,
                    orig_len: 3,
                    from_env: None,
                });
                out.push_str("${");
                i += 3;
                flushed = i;
                continue;
            }
            if b[i..].starts_with(b"${") {
                let line_end = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p);
                let Some(close) = b[i..line_end]
                    .iter()
                    .position(|&c| c == b'}')
                    .map(|p| i + p)
                else {
                    errors.push(SubstError {
                        offset: i,
                        message: "unterminated `${`: expected `}` on the same line (write `$${` for a literal `${`)"
                            .into(),
                    });
                    i += 2;
                    continue;
                };
                match expand(&text[i + 2..close], state, lookup) {
                    Ok((value, from_env)) => {
                        out.push_str(&text[flushed..i]);
                        splices.push(Splice {
                            out_start: out.len(),
                            out_len: value.len(),
                            orig_start: i,
                            orig_len: close + 1 - i,
                            from_env,
                        });
                        out.push_str(&value);
                        flushed = close + 1;
                    }
                    Err(message) => errors.push(SubstError { offset: i, message }),
                }
                i = close + 1;
                continue;
            }
        }
        let rest = &b[i..];
        let step = match state {
            Lex::Normal => match b[i] {
                b'#' => {
                    state = Lex::Comment;
                    1
                }
                b'"' if rest.starts_with(b"\"\"\"") => {
                    state = Lex::MlBasic;
                    3
                }
                b'"' => {
                    state = Lex::Basic;
                    1
                }
                b'\'' if rest.starts_with(b"'''") => {
                    state = Lex::MlLiteral;
                    3
                }
                b'\'' => {
                    state = Lex::Literal;
                    1
                }
                _ => 1,
            },
            Lex::Comment => {
                if b[i] == b'\n' {
                    state = Lex::Normal;
                }
                1
            }
            Lex::Basic => match b[i] {
                // Skip the escaped character, unless it is a line break (invalid TOML, but
                // the lexer must not run on into the next line).
                b'\\' if rest.get(1).is_some_and(|&c| c != b'\n') => 2,
                b'"' | b'\n' => {
                    state = Lex::Normal;
                    1
                }
                _ => 1,
            },
            Lex::Literal => {
                if b[i] == b'\'' || b[i] == b'\n' {
                    state = Lex::Normal;
                }
                1
            }
            Lex::MlBasic => match b[i] {
                b'\\' if rest.len() > 1 => 2,
                b'"' => {
                    let run = rest.iter().take_while(|&&c| c == b'"').count();
                    if run >= 3 {
                        state = Lex::Normal;
                    }
                    run
                }
                _ => 1,
            },
            Lex::MlLiteral => match b[i] {
                b'\'' => {
                    let run = rest.iter().take_while(|&&c| c == b'\'').count();
                    if run >= 3 {
                        state = Lex::Normal;
                    }
                    run
                }
                _ => 1,
            },
        };
        i += step;
    }
    out.push_str(&text[flushed..]);

    if errors.is_empty() {
        Ok(Substituted { text: out, splices })
    } else {
        Err(errors)
    }
}

/// Expands the inside of one `${…}` found in lexical context `state`. Returns the text to
/// insert and, when it came from the environment, the variable's name. Messages never
/// contain the variable's value.
fn expand(
    inner: &str,
    state: Lex,
    lookup: &dyn Fn(&str) -> Lookup,
) -> Result<(String, Option<String>), String> {
    let (name, default) = match inner.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (inner, None),
    };
    if !is_var_name(name) {
        return Err(format!(
            "`${{{inner}}}`: `{name}` is not a variable name (letters, digits and `_`, not starting with a digit); write `$${{` for a literal `${{`"
        ));
    }
    let value = match (lookup(name), default) {
        (Lookup::Set(v), Some(d)) if v.is_empty() => return Ok((d.to_string(), None)),
        (Lookup::Set(v), _) => v,
        (Lookup::Unset, Some(d)) => return Ok((d.to_string(), None)),
        (Lookup::Unset, None) => {
            return Err(format!(
            "environment variable `{name}` is not set (give a default with `${{{name}:-default}}`)"
        ))
        }
        (Lookup::NotUnicode, _) => {
            return Err(format!("environment variable `{name}` is not valid UTF-8"))
        }
    };
    let has_break = value.contains(['\n', '\r']);
    let inserted = match state {
        Lex::Basic | Lex::MlBasic => escape_basic(&value),
        Lex::Literal if has_break || value.contains('\'') => {
            return Err(format!(
                "environment variable `{name}` contains a `'` or a line break, which a '…' string cannot hold; use a \"…\" string instead"
            ))
        }
        Lex::MlLiteral if has_break || value.contains("'''") => {
            return Err(format!(
                "environment variable `{name}` contains `'''` or a line break, which cannot be inserted into a '''…''' string; use a \"…\" string instead"
            ))
        }
        Lex::Normal | Lex::Comment if has_break => {
            return Err(format!(
                "environment variable `{name}` contains a line break, which is only allowed inside a \"…\" string"
            ))
        }
        _ => value,
    };
    Ok((inserted, Some(name.to_string())))
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Escapes `value` so that a TOML basic string holds exactly it.
fn escape_basic(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => s.push_str(&format!("\\u{:04X}", c as u32)),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Lookup {
        match name {
            "HOST" => Lookup::Set("db.internal".into()),
            "EMPTY" => Lookup::Set(String::new()),
            "QUOTE" => Lookup::Set("a\"b\\c\nd".into()),
            "BAD" => Lookup::NotUnicode,
            _ => Lookup::Unset,
        }
    }

    fn sub(t: &str) -> Result<String, Vec<String>> {
        substitute(t, &env)
            .map(|s| s.text)
            .map_err(|e| e.into_iter().map(|e| e.message).collect())
    }

    #[test]
    fn contexts() {
        assert_eq!(sub("h = \"${HOST}\"").unwrap(), "h = \"db.internal\"");
        assert_eq!(sub("h = '${HOST}'").unwrap(), "h = 'db.internal'");
        assert_eq!(sub("p = ${PORT:-5432}").unwrap(), "p = 5432");
        assert_eq!(sub("p = \"${EMPTY:-x}\"").unwrap(), "p = \"x\"");
        assert_eq!(sub("p = \"${EMPTY}\"").unwrap(), "p = \"\"");
        assert_eq!(sub("p = \"${QUOTE}\"").unwrap(), "p = \"a\\\"b\\\\c\\nd\"");
        assert_eq!(
            sub("p = \"\"\"\n${QUOTE}\"\"\"").unwrap(),
            "p = \"\"\"\na\\\"b\\\\c\\nd\"\"\""
        );
        assert_eq!(sub("p = \"$${HOST}\"").unwrap(), "p = \"${HOST}\"");
        assert_eq!(sub("p = \"$HOST ${\"").unwrap_err().len(), 1);
        // Comments are left alone, including what follows a string on the same line.
        assert_eq!(
            sub("# ${NOPE}\nh = \"#\" # ${NOPE}\nx = 1").unwrap(),
            "# ${NOPE}\nh = \"#\" # ${NOPE}\nx = 1"
        );
        assert_eq!(
            sub("h = \"\\\"# ${HOST}\"").unwrap(),
            "h = \"\\\"# db.internal\""
        );
        assert_eq!(
            sub("h = '''a''''' # ${NOPE}").unwrap(),
            "h = '''a''''' # ${NOPE}"
        );
    }

    #[test]
    fn refusals() {
        assert!(sub("p = ${QUOTE}").is_err());
        assert!(sub("p = '${QUOTE}'").is_err());
        assert!(sub("p = '${BAD}'").is_err());
        assert!(sub("p = '${1X}'").is_err());
        let errs = sub("a = '${NOPE}'\nb = '${NOPE2}'").unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(errs[0].contains("`NOPE`"), "{errs:?}");
        // Values never appear in messages.
        assert!(!sub("p = '${QUOTE}'").unwrap_err()[0].contains("a\"b"));
    }

    #[test]
    fn offsets_map_back() {
        let s = substitute("a = \"${HOST}\" x", &env).unwrap();
        assert_eq!(s.text, "a = \"db.internal\" x");
        assert_eq!(s.original_offset(3), 3);
        assert_eq!(s.original_offset(5), 5); // inside the value -> the `$`
        assert_eq!(s.original_offset(10), 5);
        assert_eq!(s.original_offset(16), 12); // the closing quote
        assert_eq!(s.original_offset(18), 14);
        assert_eq!(s.env_vars_in(6, 8), vec!["HOST"]);
        assert!(s.env_vars_in(17, 18).is_empty());
    }
}
