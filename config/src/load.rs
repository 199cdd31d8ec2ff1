//! Loading: substitution, parsing, validation, and errors that point into the file.

use crate::subst::{self, Lookup, Substituted};
use crate::validate::{self, KeyPath, Seg};
use crate::Config;
use std::fmt;
use std::ops::Range;
use std::path::Path;
use toml_edit::{Item, TableLike, Value};

/// Keys whose values are secrets: never echoed in an error message.
const SECRET_KEYS: &[&str] = &["password", "server_password", "replication_conninfo"];

/// One problem found in a configuration file.
///
/// Displays as `ORIGIN:LINE:COL: message` (substitution and parse problems),
/// `ORIGIN:LINE: message` (validation problems) or `ORIGIN: message` (the file could not be
/// read). Messages never contain a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file's path as given to [`load_file`], or the `origin` given to [`load_str`].
    pub origin: String,
    /// 1-based line in the original (unsubstituted) text, when the problem has a place.
    pub line: Option<usize>,
    /// 1-based column, in characters of the original text, for substitution and parse
    /// problems.
    pub column: Option<usize>,
    /// What is wrong. Validation messages start with the key path, e.g.
    /// `users[1].password: is required unless auth = "trust"` (indices count from 0).
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.origin, self.message),
            (Some(l), None) => write!(f, "{}:{l}: {}", self.origin, self.message),
            _ => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

/// Why a configuration could not be loaded: one or more [`Problem`]s, never empty.
///
/// Displays as the problems one per line (no trailing newline), in file order, ready to be
/// printed as is, e.g.
///
/// ```text
/// pgshift.toml:3: proxy.listen: `6432` is not host:port (e.g. 127.0.0.1:6432 or localhost:6432)
/// pgshift.toml:21: users[1].password: is required unless auth = "trust" (user `app`)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    problems: Vec<Problem>,
}

impl ConfigError {
    /// The problems, in file order (at least one).
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    fn one(
        origin: &str,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    ) -> ConfigError {
        ConfigError {
            problems: vec![Problem {
                origin: origin.to_string(),
                line,
                column,
                message,
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, p) in self.problems.iter().enumerate() {
            if n > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads, substitutes, parses and validates the TOML file at `path`, taking `${VAR}` values
/// from the process environment. Errors are reported against `path` as displayed. See
/// [`load_str`] for the rules.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::one(
            &origin,
            None,
            None,
            format!("cannot read the configuration file: {e}"),
        )
    })?;
    load_str(&text, &origin)
}

/// Substitutes, parses and validates configuration `text`, taking `${VAR}` values from the
/// process environment. `origin` names the text in errors (usually its file path).
///
/// # Substitution
///
/// Runs on the raw text *before* TOML parsing, everywhere except in comments:
///
/// - `${VAR}` is replaced by the value of environment variable `VAR` (name: letters,
///   digits, `_`, not starting with a digit). Unset, it is an error naming `VAR` and its
///   place; set but empty, it is the empty string.
/// - `${VAR:-default}` uses `default` (raw text, up to the first `}`) when `VAR` is unset
///   or empty, as in the shell.
/// - `$${` is a literal `${`. A `$` not followed by `{` is left alone.
/// - Each `${…}` must close on its own line. Line numbers never change, so every error
///   points at the line of the file as written.
/// - Where the value lands decides how it is inserted: inside a `"…"` or `"""…"""`
///   string it is escaped, so the string holds exactly the value (quotes, backslashes,
///   line breaks included); inside `'…'` it is inserted as is and must not contain `'`
///   or a line break; elsewhere (e.g. `port = ${PGPORT:-5432}`) it is inserted as raw
///   TOML and must not contain a line break. A default is always inserted as written.
///
/// # Errors
///
/// All substitution problems, else the first parse problem (`ORIGIN:LINE:COL: reason`),
/// else every validation problem (`ORIGIN:LINE: key.path: reason`). See [`ConfigError`].
pub fn load_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
    load_with(text, origin, &|name: &str| match std::env::var(name) {
        Ok(v) => Lookup::Set(v),
        Err(std::env::VarError::NotPresent) => Lookup::Unset,
        Err(std::env::VarError::NotUnicode(_)) => Lookup::NotUnicode,
    })
}

/// As [`load_str`], but `${VAR}` values come from `env` (`None` = unset) instead of the
/// process environment: for tests, and for callers that hold their own variables.
pub fn load_str_with_env(
    text: &str,
    origin: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    load_with(text, origin, &|name: &str| {
        env(name).map_or(Lookup::Unset, Lookup::Set)
    })
}

fn load_with(
    text: &str,
    origin: &str,
    lookup: &dyn Fn(&str) -> Lookup,
) -> Result<Config, ConfigError> {
    let place = |orig_offset: usize| line_col(text, orig_offset);
    let problem = |orig_offset: usize, message: String| {
        let (line, col) = place(orig_offset);
        Problem {
            origin: origin.to_string(),
            line: Some(line),
            column: Some(col),
            message,
        }
    };

    // 1. Substitution.
    let subst = subst::substitute(text, lookup).map_err(|errors| ConfigError {
        problems: errors
            .into_iter()
            .map(|e| problem(e.offset, e.message))
            .collect(),
    })?;

    // 2a. TOML syntax, with a document that keeps spans for locating keys later.
    let doc = toml_edit::Document::parse(subst.text.as_str()).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        ConfigError {
            problems: vec![problem(subst.original_offset(at), one_line(e.message()))],
        }
    })?;

    // 2b. Shapes: unknown keys, types, required keys.
    let cfg: Config = toml::from_str(&subst.text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = parse_message(e.message(), &span, &doc, &subst);
        ConfigError {
            problems: vec![problem(subst.original_offset(span.start), message)],
        }
    })?;

    // 3. Semantics: every finding, in file order.
    let issues = validate::validate(&cfg);
    if issues.is_empty() {
        return Ok(cfg);
    }
    let line_of = |path: &KeyPath| place(subst.original_offset(locate(&doc, path))).0;
    let mut problems: Vec<Problem> = issues
        .into_iter()
        .map(|issue| {
            let mut message = format!("{}: {}", issue.path, issue.message);
            if let Some(also) = &issue.also {
                message.push_str(&format!(" (see {also}, line {})", line_of(also)));
            }
            Problem {
                origin: origin.to_string(),
                line: Some(line_of(&issue.path)),
                column: None,
                message,
            }
        })
        .collect();
    problems.sort_by_key(|p| p.line);
    Err(ConfigError { problems })
}

/// The message for a `toml::from_str` error spanning `span` (of the substituted text):
/// secrets and environment values are not echoed, and a missing top-level section is said
/// so plainly.
fn parse_message(
    raw: &str,
    span: &Range<usize>,
    doc: &toml_edit::Document<&str>,
    subst: &Substituted,
) -> String {
    let raw = one_line(raw);
    let overlaps = |s: &Range<usize>| span.start < s.end && s.start < span.end.max(span.start + 1);
    if let Some((key, _)) = secret_value_spans(doc)
        .into_iter()
        .find(|(_, s)| overlaps(s))
    {
        return format!("`{key}` must be a string (the value is not shown)");
    }
    let vars = subst.env_vars_in(span.start, span.end);
    if let Some(var) = vars.first() {
        return format!(
            "{} (value from environment variable `{var}`, not shown)",
            hide_first_quoted(&raw)
        );
    }
    if span.is_empty() && span.start == 0 {
        for section in ["source", "target"] {
            if raw == format!("missing field `{section}`") {
                return format!("missing required section [{section}]");
            }
        }
    }
    raw
}

/// Replaces the first quoted part of a serde message (the offending value, as in
/// ``invalid value: integer `70000`, expected u16``) with `…`.
fn hide_first_quoted(msg: &str) -> String {
    let first = msg.find(['`', '"']);
    if let Some(open) = first {
        let q = &msg[open..open + 1];
        if let Some(len) = msg[open + 1..].find(q) {
            return format!("{}{q}…{q}{}", &msg[..open], &msg[open + 1 + len + 1..]);
        }
    }
    msg.to_string()
}

/// Folds a possibly multi-line parser message onto one line.
fn one_line(msg: &str) -> String {
    msg.trim()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let bytes = &text.as_bytes()[..offset.min(text.len())];
    let line_start = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let line = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
    // Count characters: every byte that is not a UTF-8 continuation byte starts one.
    let col = bytes[line_start..]
        .iter()
        .filter(|&&b| b & 0xC0 != 0x80)
        .count()
        + 1;
    (line, col)
}

/// Byte offset (in the parsed text) where `path` is written: the key itself when present,
/// else the closest enclosing table or array element that is, else 0.
fn locate(doc: &toml_edit::Document<&str>, path: &KeyPath) -> usize {
    enum Node<'a> {
        Item(&'a Item),
        Table(&'a dyn TableLike),
        Value(&'a Value),
    }
    let mut best = 0;
    let mut node = Node::Item(doc.as_item());
    for seg in &path.0 {
        let next = match seg {
            Seg::Key(k) => {
                let table: Option<&dyn TableLike> = match node {
                    Node::Item(i) => i.as_table_like(),
                    Node::Table(t) => Some(t),
                    Node::Value(v) => v.as_inline_table().map(|t| t as &dyn TableLike),
                };
                table
                    .and_then(|t| t.get_key_value(k))
                    .map(|(key, item)| (key.span(), Node::Item(item)))
            }
            Seg::Index(i) => {
                let array_of_tables = match node {
                    Node::Item(Item::ArrayOfTables(a)) => Some(a),
                    _ => None,
                };
                let array = match node {
                    Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => {
                        Some(a)
                    }
                    _ => None,
                };
                if let Some(t) = array_of_tables.and_then(|a| a.get(*i)) {
                    Some((t.span(), Node::Table(t)))
                } else {
                    array
                        .and_then(|a| a.get(*i))
                        .map(|v| (v.span(), Node::Value(v)))
                }
            }
        };
        let Some((span, n)) = next else { break };
        if let Some(s) = span {
            best = s.start;
        }
        node = n;
    }
    best
}

/// Every value written under a [`SECRET_KEYS`] key, with the key's name.
fn secret_value_spans(doc: &toml_edit::Document<&str>) -> Vec<(&'static str, Range<usize>)> {
    fn table(t: &dyn TableLike, out: &mut Vec<(&'static str, Range<usize>)>) {
        for (k, item) in t.iter() {
            if let (Some(name), Some(span)) = (SECRET_KEYS.iter().find(|s| **s == k), item.span()) {
                out.push((name, span));
            }
            match item {
                Item::Table(t) => table(t, out),
                Item::ArrayOfTables(a) => a.iter().for_each(|t| table(t, out)),
                Item::Value(v) => value(v, out),
                Item::None => {}
            }
        }
    }
    fn value(v: &Value, out: &mut Vec<(&'static str, Range<usize>)>) {
        match v {
            Value::InlineTable(t) => table(t, out),
            Value::Array(a) => a.iter().for_each(|v| value(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    table(doc.as_table(), &mut out);
    out
}
