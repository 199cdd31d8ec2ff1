//! Comparing the source's and the target's answers to the same request.
//!
//! [`compare`] takes two [`Answer`]s and says whether they match, and if not, what
//! differs. How much of an answer is compared is the [`Mode`]: [`mode_for`] picks it
//! from the statement text, [`CompareOptions::for_sql`] adds the caller's knowledge of
//! the statement kind (DML dry-runs are compared at most in [`Mode::Shape`]) and the
//! query's `ORDER BY` ([`ordered`], [`order_by`]).
//!
//! # Normalisations
//!
//! Differences that are legitimate between the two servers are not reported. Each has
//! its source; nothing else is normalised, so real incompatibilities between majors
//! are reported (for example `EXTRACT` returning `numeric` instead of `float8` since
//! PostgreSQL 14, whose column then also changes name from `date_part` to `extract`;
//! the postfix factorial operator `!` removed in 14, which makes `SELECT 5 !` fail with
//! SQLSTATE 42601; the checkpoint columns of `pg_stat_bgwriter` moved to
//! `pg_stat_checkpointer` in 17, which makes `SELECT checkpoints_timed FROM
//! pg_stat_bgwriter` fail with 42703: release notes of PostgreSQL 14, "Migration to
//! Version 14", and of PostgreSQL 17, "Migration to Version 17").
//!
//! 1. **Errors are compared by SQLSTATE, not by message text.** Message wording changes
//!    between releases; the documentation tells applications to test the code:
//!    "The error codes are less likely to change across PostgreSQL releases, and also are
//!    not subject to change due to localization of error messages" (Appendix A
//!    "PostgreSQL Error Codes").
//! 2. **Type OIDs of types that are not built in are not compared.** Built-in types have
//!    fixed OIDs below `FirstNormalObjectId` = 16384 (`src/include/access/transam.h`);
//!    any other type (enum, domain, composite, extension types such as `citext` or
//!    `geometry`) gets its OID from the cluster when it is created (documentation 8.19
//!    "Object Identifier Types"), and the target's schema is re-created from a dump, so
//!    the OIDs differ. Two such OIDs count as equal; a built-in type on one side and
//!    another type on the other side still differ.
//! 3. **The OID field of an `INSERT` tag is ignored** (`INSERT oid rows`: the oid is that
//!    of the inserted row when one row was inserted into a table `WITH OIDS`, else 0;
//!    53.7 "CommandComplete"). PostgreSQL 12 removed `WITH OIDS` (release notes of
//!    PostgreSQL 12, "Migration to Version 12": "Remove the special behavior of oid
//!    columns"), so a source older than 12 may give a non-zero oid where the target
//!    gives 0.
//! 4. **`real` and `double precision` values are compared to 6 and 15 significant
//!    digits** (`FLT_DIG`, `DBL_DIG`), in text format when the columns are described.
//!    PostgreSQL 12 changed the default text output of these types from rounding to 6
//!    and 15 digits to the shortest exact representation (release notes of PostgreSQL
//!    12, "Migration to Version 12": new output algorithm for `real` and `double
//!    precision`, governed by `extra_float_digits`), so a source older than 12 prints
//!    `0.3` where the target prints `0.30000000000000004`. Differences beyond those
//!    digits (which the old default output did not show either, and which a different
//!    C library's math functions may cause) are not reported.
//!
//! Modes (see [`mode_for`]) cover the other legitimate differences: values that depend
//! on the time or the server (`now()`, `pg_backend_pid()`, ...), statistics and catalog
//! relations, query plans.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use sqlparser::ast::{Expr, LimitClause, OrderByKind, Query, SetExpr, Statement, Value};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::answer::{columns_text, outcome_summary, row_text, Answer, Column, Excerpt, Outcome};
use crate::Kind;

/// Longest excerpt put in a [`Verdict`], in characters.
pub const EXCERPT_CHARS: usize = 200;

/// How much of two answers must agree. Ordered from the weakest to the strongest
/// (`Columns < Shape < Exact`), so `a.min(b)` is the weaker of two modes.
///
/// In every mode: the same number of outcomes, the same kind of outcome (rows or
/// command, error, empty), the same column names and types where both answers describe
/// them, the same command (first word of the tag), and the same SQLSTATE for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Only what every mode compares: for answers whose rows and row counts differ from
    /// server to server (statistics views, the catalogs, `EXPLAIN` output, `SHOW ALL`),
    /// where a missing relation or column, a changed column type, or an error still
    /// tells of an incompatibility.
    Columns,
    /// Also the command tags (so the rows affected by DML) and the number of rows,
    /// not the values: for DML dry-runs while replication carries the data (the target's
    /// data is not at the same point in time) and for values that differ between any two
    /// servers (`now()`, `random()`, `pg_backend_pid()`, `version()`, sequences).
    Shape,
    /// Also the values: the rows as multisets (in order when the query orders them).
    Exact,
}

impl Mode {
    /// Lower-case name, for logs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Columns => "columns",
            Mode::Shape => "shape",
            Mode::Exact => "exact",
        }
    }
}

/// A key of a query's top-level `ORDER BY`, as [`order_by`] read it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OrderKey {
    /// A column name (`ORDER BY name`, `ORDER BY t.name`: the last part), as PostgreSQL
    /// names output columns: unquoted identifiers lower-cased, quoted ones as written.
    Column(String),
    /// An output column position (`ORDER BY 2`), 1-based.
    Position(usize),
    /// Any other expression: the order cannot be checked against the output.
    Other,
}

/// A query's top-level `ORDER BY` (SQL command reference: SELECT, "ORDER BY Clause",
/// "LIMIT Clause").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrderBy {
    /// The sort keys, in order.
    pub keys: Vec<OrderKey>,
    /// `LIMIT` or `FETCH FIRST` applies: rows that tie with the last row may be
    /// legitimately different ones on each server.
    pub limited: bool,
    /// `OFFSET` applies: rows that tie with the first row may be different ones.
    pub offset: bool,
}

/// How [`compare`] compares two answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CompareOptions {
    /// The rows must come in the same order (the query has `ORDER BY`). Without
    /// [`CompareOptions::order_by`], row sequences must be identical.
    pub ordered: bool,
    /// How much must agree.
    pub mode: Mode,
    /// The sort keys, when known. Rows that tie on every key may legitimately come in
    /// any order (PostgreSQL's sort is not stable, and the target's rows lie in another
    /// physical order), so with keys that name output columns the order is checked on
    /// the keys' values and the rows of each run of ties as a multiset. With a key that
    /// names no output column (an expression, a column not selected) the order cannot
    /// be checked and the rows are compared as a multiset.
    pub order_by: Option<OrderBy>,
}

impl Default for CompareOptions {
    /// Unordered, [`Mode::Exact`], no keys.
    fn default() -> Self {
        CompareOptions {
            ordered: false,
            mode: Mode::Exact,
            order_by: None,
        }
    }
}

impl CompareOptions {
    /// The options for comparing the answers to `sql`, or `None` when they must not be
    /// compared (see [`mode_for`]). `kind` is `classify(sql).kind`: for [`Kind::Dml`]
    /// (a dry-run on a target that replication keeps up to date) the mode is at most
    /// [`Mode::Shape`]; a caller applying DML on the target (the `mirror` driver) may
    /// raise it again.
    pub fn for_sql(sql: &str, kind: Kind) -> Option<CompareOptions> {
        let mut mode = mode_for(sql)?;
        if kind == Kind::Dml {
            mode = mode.min(Mode::Shape);
        }
        let (ordered, order_by) = order_info(sql);
        Some(CompareOptions {
            ordered,
            mode,
            order_by,
        })
    }
}

/// The result of [`compare`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The answers agree in everything the mode compares.
    Match,
    /// Both answered but differently. `what`: which part ("result count", "result
    /// kind", "columns", "command tag", "row count", "rows", "row order", "error code");
    /// `source` and `target`: excerpts of each side's differing part (at most
    /// [`EXCERPT_CHARS`] characters).
    Mismatch {
        /// Which part differs.
        what: String,
        /// The source's side.
        source: String,
        /// The target's side.
        target: String,
    },
    /// The target failed where the source succeeded (syntax, missing object, removed
    /// feature...): the target's error and an excerpt of the source's answer.
    TargetError {
        /// The target's SQLSTATE.
        sqlstate: String,
        /// The target's message.
        message: String,
        /// An excerpt of the source's answer.
        source: String,
    },
    /// The source failed where the target succeeded: the source's error and an excerpt
    /// of the target's answer.
    SourceError {
        /// The source's SQLSTATE.
        sqlstate: String,
        /// The source's message.
        message: String,
        /// An excerpt of the target's answer.
        target: String,
    },
}

impl Verdict {
    /// True for [`Verdict::Match`].
    pub fn is_match(&self) -> bool {
        matches!(self, Verdict::Match)
    }

    /// True for what counts against the validation error rate: a mismatch or an error
    /// only on the target.
    pub fn is_problem(&self) -> bool {
        matches!(self, Verdict::Mismatch { .. } | Verdict::TargetError { .. })
    }

    /// `match`, `mismatch`, `target_error`, `source_error`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Match => "match",
            Verdict::Mismatch { .. } => "mismatch",
            Verdict::TargetError { .. } => "target_error",
            Verdict::SourceError { .. } => "source_error",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Match => f.write_str("match"),
            Verdict::Mismatch {
                what,
                source,
                target,
            } => write!(f, "{what} differ: source {source} / target {target}"),
            Verdict::TargetError {
                sqlstate,
                message,
                source,
            } => write!(f, "target error {sqlstate}: {message} (source: {source})"),
            Verdict::SourceError {
                sqlstate,
                message,
                target,
            } => write!(f, "source error {sqlstate}: {message} (target: {target})"),
        }
    }
}

/// Compares the source's and the target's answers to the same request.
///
/// Outcomes are compared pairwise in order and the first difference is the verdict:
/// an error on one side only gives [`Verdict::TargetError`] / [`Verdict::SourceError`];
/// errors on both sides match when their SQLSTATEs are equal; `Empty` matches `Empty`;
/// results are compared as [`Mode`] and [`CompareOptions`] say, after the
/// normalisations listed in the module documentation. A `Command` and a `Rows` compare
/// as results (a `Command` is a result without description or rows). A different number
/// of outcomes, with no earlier difference, is a mismatch of "result count".
pub fn compare(source: &Answer, target: &Answer, opts: &CompareOptions) -> Verdict {
    let n = source.outcomes.len().min(target.outcomes.len());
    for (s, t) in source.outcomes[..n].iter().zip(&target.outcomes[..n]) {
        let v = compare_outcome(s, t, opts);
        if !v.is_match() {
            return v;
        }
    }
    if source.outcomes.len() != target.outcomes.len() {
        let side = |a: &Answer| {
            let mut e = Excerpt::new(EXCERPT_CHARS);
            e.push(&format!("{} results: ", a.outcomes.len()));
            e.push(&a.summary(EXCERPT_CHARS));
            e.finish()
        };
        return Verdict::Mismatch {
            what: "result count".to_owned(),
            source: side(source),
            target: side(target),
        };
    }
    Verdict::Match
}

fn excerpt(o: &Outcome) -> String {
    let mut e = Excerpt::new(EXCERPT_CHARS);
    outcome_summary(o, &mut e);
    e.finish()
}

fn mismatch(what: &str, source: String, target: String) -> Verdict {
    Verdict::Mismatch {
        what: what.to_owned(),
        source: crate::answer::truncate(&source, EXCERPT_CHARS),
        target: crate::answer::truncate(&target, EXCERPT_CHARS),
    }
}

type Row = Vec<Option<Vec<u8>>>;

/// A result seen the same way whether it came as `Rows` or `Command`.
struct Result_<'a> {
    columns: Option<&'a [Column]>,
    rows: &'a [Row],
    tag: &'a str,
}

fn as_result(o: &Outcome) -> Option<Result_<'_>> {
    match o {
        Outcome::Rows { columns, rows, tag } => Some(Result_ {
            columns: columns.as_deref(),
            rows,
            tag,
        }),
        Outcome::Command { tag } => Some(Result_ {
            columns: None,
            rows: &[],
            tag,
        }),
        _ => None,
    }
}

fn compare_outcome(s: &Outcome, t: &Outcome, opts: &CompareOptions) -> Verdict {
    use Outcome as O;
    match (s, t) {
        (O::Error { sqlstate: a, .. }, O::Error { sqlstate: b, .. }) => {
            if a == b {
                Verdict::Match
            } else {
                mismatch("error code", excerpt(s), excerpt(t))
            }
        }
        (O::Error { sqlstate, message }, _) => Verdict::SourceError {
            sqlstate: sqlstate.clone(),
            message: message.clone(),
            target: excerpt(t),
        },
        (_, O::Error { sqlstate, message }) => Verdict::TargetError {
            sqlstate: sqlstate.clone(),
            message: message.clone(),
            source: excerpt(s),
        },
        (O::Empty, O::Empty) => Verdict::Match,
        (O::Empty, _) | (_, O::Empty) => mismatch("result kind", excerpt(s), excerpt(t)),
        _ => match (as_result(s), as_result(t)) {
            (Some(a), Some(b)) => compare_results(&a, &b, opts),
            _ => mismatch("result kind", excerpt(s), excerpt(t)),
        },
    }
}

/// Normalisation 2: built-in type OIDs must be equal; two OIDs of types that are not
/// built in count as equal.
fn same_type(a: u32, b: u32) -> bool {
    const FIRST_NORMAL_OBJECT_ID: u32 = 16384;
    a == b || (a >= FIRST_NORMAL_OBJECT_ID && b >= FIRST_NORMAL_OBJECT_ID)
}

/// Normalisation 3: `INSERT oid rows` compares as `INSERT 0 rows`.
fn normalized_tag(tag: &str) -> Cow<'_, str> {
    let mut parts = tag.split(' ');
    if parts.next() == Some("INSERT") {
        if let (Some(oid), Some(rows), None) = (parts.next(), parts.next(), parts.next()) {
            if oid != "0" && oid.bytes().all(|b| b.is_ascii_digit()) {
                return Cow::Owned(format!("INSERT 0 {rows}"));
            }
        }
    }
    Cow::Borrowed(tag)
}

fn command_word(tag: &str) -> &str {
    tag.split(' ').next().unwrap_or("")
}

fn compare_results(s: &Result_, t: &Result_, opts: &CompareOptions) -> Verdict {
    if let (Some(sc), Some(tc)) = (s.columns, t.columns) {
        let same = sc.len() == tc.len()
            && sc
                .iter()
                .zip(tc)
                .all(|(a, b)| a.name == b.name && same_type(a.type_oid, b.type_oid));
        if !same {
            return mismatch("columns", columns_text(sc), columns_text(tc));
        }
    }
    if command_word(s.tag) != command_word(t.tag) {
        return mismatch("command tag", s.tag.to_owned(), t.tag.to_owned());
    }
    if opts.mode == Mode::Columns {
        return Verdict::Match;
    }
    if s.rows.len() != t.rows.len() {
        let side = |r: &Result_| {
            let n = r.rows.len();
            format!("{n} row{} ({})", if n == 1 { "" } else { "s" }, r.tag)
        };
        return mismatch("row count", side(s), side(t));
    }
    if normalized_tag(s.tag) != normalized_tag(t.tag) {
        return mismatch("command tag", s.tag.to_owned(), t.tag.to_owned());
    }
    if opts.mode == Mode::Shape || s.rows.is_empty() {
        return Verdict::Match;
    }
    compare_rows(s, t, opts)
}

/// Normalisation 4 for one column: `Some(6)` for text `real`, `Some(15)` for text
/// `double precision`.
fn float_digits(c: &Column) -> Option<usize> {
    match (c.type_oid, c.format) {
        (700, 0) => Some(6),
        (701, 0) => Some(15),
        _ => None,
    }
}

/// The canonical text of a float value at `digits` significant digits; `None` when the
/// text is not a finite number (kept as it is).
fn canonical_float(v: &[u8], digits: usize) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let out = if digits <= 6 {
        let x: f32 = s.parse().ok()?;
        if !x.is_finite() {
            return None;
        }
        format!("{:.*e}", digits - 1, x)
    } else {
        let x: f64 = s.parse().ok()?;
        if !x.is_finite() {
            return None;
        }
        format!("{:.*e}", digits - 1, x)
    };
    Some(out.into_bytes())
}

type CanonRow<'a> = Vec<Option<Cow<'a, [u8]>>>;

fn canonical_rows<'a>(rows: &'a [Row], floats: &[(usize, usize)]) -> Vec<CanonRow<'a>> {
    rows.iter()
        .map(|r| {
            let mut c: CanonRow = r.iter().map(|v| v.as_deref().map(Cow::Borrowed)).collect();
            for &(i, digits) in floats {
                if let Some(Some(v)) = r.get(i) {
                    if let Some(n) = canonical_float(v, digits) {
                        c[i] = Some(Cow::Owned(n));
                    }
                }
            }
            c
        })
        .collect()
}

/// Indices of rows only in `a` and only in `b`, comparing canonical rows as multisets.
fn multiset_diff(a: &[CanonRow], b: &[CanonRow]) -> (Vec<usize>, Vec<usize>) {
    let mut left: HashMap<&CanonRow, Vec<usize>> = HashMap::new();
    for (i, r) in a.iter().enumerate().rev() {
        left.entry(r).or_default().push(i);
    }
    let mut only_b = Vec::new();
    for (j, r) in b.iter().enumerate() {
        match left.get_mut(r).and_then(|v| v.pop()) {
            Some(_) => {}
            None => only_b.push(j),
        }
    }
    let mut only_a: Vec<usize> = left.into_values().flatten().collect();
    only_a.sort_unstable();
    (only_a, only_b)
}

fn rows_excerpt(rows: &[Row], idx: &[usize], columns: Option<&[Column]>, other: &str) -> String {
    let mut e = Excerpt::new(EXCERPT_CHARS);
    let n = idx.len();
    e.push(&format!(
        "{n} row{} not in the {other}:",
        if n == 1 { "" } else { "s" }
    ));
    for (k, &i) in idx.iter().enumerate() {
        if !e.push(if k == 0 { " " } else { ", " }) || !e.push(&row_text(&rows[i], columns)) {
            break;
        }
    }
    e.finish()
}

fn rows_mismatch(
    s: &Result_,
    t: &Result_,
    only_s: &[usize],
    only_t: &[usize],
    offset: usize,
) -> Verdict {
    let cols = s.columns.or(t.columns);
    let abs = |v: &[usize]| v.iter().map(|i| i + offset).collect::<Vec<_>>();
    mismatch(
        "rows",
        rows_excerpt(s.rows, &abs(only_s), cols, "target"),
        rows_excerpt(t.rows, &abs(only_t), t.columns.or(cols), "source"),
    )
}

fn compare_rows(s: &Result_, t: &Result_, opts: &CompareOptions) -> Verdict {
    let cols = s.columns.or(t.columns);
    let floats: Vec<(usize, usize)> = cols
        .map(|c| {
            c.iter()
                .enumerate()
                .filter_map(|(i, c)| float_digits(c).map(|d| (i, d)))
                .collect()
        })
        .unwrap_or_default();
    let sr = canonical_rows(s.rows, &floats);
    let tr = canonical_rows(t.rows, &floats);

    let multiset = |sr: &[CanonRow], tr: &[CanonRow], offset: usize| {
        let (only_s, only_t) = multiset_diff(sr, tr);
        if only_s.is_empty() && only_t.is_empty() {
            Verdict::Match
        } else {
            rows_mismatch(s, t, &only_s, &only_t, offset)
        }
    };
    let order_mismatch = |i: usize| {
        mismatch(
            "row order",
            format!("row {}: {}", i + 1, row_text(&s.rows[i], cols)),
            format!(
                "row {}: {}",
                i + 1,
                row_text(&t.rows[i], t.columns.or(cols))
            ),
        )
    };

    if !opts.ordered {
        return multiset(&sr, &tr, 0);
    }
    let Some(ob) = &opts.order_by else {
        // Ordered without known keys: the sequences must be identical.
        return match sr.iter().zip(&tr).position(|(a, b)| a != b) {
            None => Verdict::Match,
            Some(i) => match multiset(&sr, &tr, 0) {
                Verdict::Match => order_mismatch(i),
                v => v,
            },
        };
    };
    let Some(keys) = resolve_keys(&ob.keys, cols) else {
        return multiset(&sr, &tr, 0);
    };
    let key = |r: &CanonRow| -> Vec<Option<Vec<u8>>> {
        keys.iter()
            .map(|&k| r.get(k).cloned().flatten().map(|c| c.into_owned()))
            .collect()
    };
    let sk: Vec<_> = sr.iter().map(key).collect();
    let tk: Vec<_> = tr.iter().map(key).collect();
    if let Some(i) = sk.iter().zip(&tk).position(|(a, b)| a != b) {
        return match multiset(&sr, &tr, 0) {
            Verdict::Match => order_mismatch(i),
            v => v,
        };
    }
    // Same key sequence: compare each run of ties as a multiset, except a run cut by
    // LIMIT (the last) or OFFSET (the first).
    let n = sr.len();
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && sk[end] == sk[start] {
            end += 1;
        }
        let cut = (ob.offset && start == 0) || (ob.limited && end == n);
        if !cut {
            let v = multiset(&sr[start..end], &tr[start..end], start);
            if !v.is_match() {
                return v;
            }
        }
        start = end;
    }
    Verdict::Match
}

/// Output column indices of the keys, or `None` if any key names no single output
/// column.
fn resolve_keys(keys: &[OrderKey], cols: Option<&[Column]>) -> Option<Vec<usize>> {
    let cols = cols?;
    if keys.is_empty() {
        return None;
    }
    keys.iter()
        .map(|k| match k {
            OrderKey::Position(p) => (*p >= 1 && *p <= cols.len()).then(|| p - 1),
            OrderKey::Column(name) => {
                let mut found = cols.iter().enumerate().filter(|(_, c)| &c.name == name);
                match (found.next(), found.next()) {
                    (Some((i, _)), None) => Some(i),
                    _ => None,
                }
            }
            OrderKey::Other => None,
        })
        .collect()
}

// ---------------------------------------------------------------- ORDER BY

/// Whether the rows of `sql`'s answer come in a defined order: every query statement of
/// the text (at least one) has a top-level `ORDER BY` (one in a subquery, a CTE, a
/// window or an aggregate does not order the result). `EXPLAIN` output is not ordered
/// rows. Parsed with sqlparser; a text it cannot parse is scanned with the lexer for
/// `ORDER BY` outside parentheses.
pub fn ordered(sql: &str) -> bool {
    order_info(sql).0
}

/// The top-level `ORDER BY` of `sql` when the text holds exactly one query (see
/// [`OrderBy`]); `None` otherwise or when it does not parse.
pub fn order_by(sql: &str) -> Option<OrderBy> {
    order_info(sql).1
}

fn order_info(sql: &str) -> (bool, Option<OrderBy>) {
    let statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(s) => s,
        Err(_) => return (crate::modes::lexer_ordered(sql), None),
    };
    let queries: Vec<&Query> = statements
        .iter()
        .filter_map(|s| match s {
            Statement::Query(q) => Some(&**q),
            _ => None,
        })
        .collect();
    if queries.is_empty() {
        return (false, None);
    }
    let orders: Vec<Option<OrderBy>> = queries.iter().map(|q| query_order(q)).collect();
    let all = orders.iter().all(Option::is_some);
    let single = if orders.len() == 1 && all {
        orders.into_iter().next().flatten()
    } else {
        None
    };
    (all, single)
}

/// The order of a query's result: its own `ORDER BY`, or that of a parenthesised query
/// it is made of (`(SELECT ... ORDER BY a) LIMIT 5`).
fn query_order(q: &Query) -> Option<OrderBy> {
    let (limit, offset) = match &q.limit_clause {
        Some(LimitClause::LimitOffset { limit, offset, .. }) => (limit.is_some(), offset.is_some()),
        Some(LimitClause::OffsetCommaLimit { .. }) => (true, true),
        None => (false, false),
    };
    let limited = limit || q.fetch.is_some();
    if let Some(ob) = &q.order_by {
        let keys = match &ob.kind {
            OrderByKind::Expressions(exprs) => exprs.iter().map(|e| order_key(&e.expr)).collect(),
            OrderByKind::All(_) => vec![OrderKey::Other],
        };
        return Some(OrderBy {
            keys,
            limited,
            offset,
        });
    }
    if let SetExpr::Query(inner) = &*q.body {
        let mut o = query_order(inner)?;
        o.limited |= limited;
        o.offset |= offset;
        return Some(o);
    }
    None
}

fn order_key(e: &Expr) -> OrderKey {
    let name = |i: &sqlparser::ast::Ident| {
        if i.quote_style.is_some() {
            i.value.clone()
        } else {
            i.value.to_lowercase()
        }
    };
    match e {
        Expr::Identifier(i) => OrderKey::Column(name(i)),
        Expr::CompoundIdentifier(parts) => match parts.last() {
            Some(i) => OrderKey::Column(name(i)),
            None => OrderKey::Other,
        },
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().map(OrderKey::Position).unwrap_or(OrderKey::Other),
            _ => OrderKey::Other,
        },
        Expr::Nested(inner) => order_key(inner),
        _ => OrderKey::Other,
    }
}

// ---------------------------------------------------------------- modes

/// How the answers to `sql` can be compared, or `None` when the statement must not be
/// compared (nor replayed on the target) at all. Works on any text (a lexical scan, no
/// parse needed, so `SELECT 5 !`, which sqlparser does not parse, is `Exact`); the
/// weakest mode found in any statement of the text wins, `None` over all.
///
/// **`None`**: replaying the statement would act on the target beyond the statement
/// itself: session-level advisory locks (`pg_advisory_lock`, `pg_try_advisory_lock`,
/// `pg_advisory_unlock*`: held by the mirror's connection until it ends; System
/// Administration Functions, "Advisory Lock Functions"), server signalling and control
/// (`pg_terminate_backend`, `pg_cancel_backend`, `pg_reload_conf`, `pg_rotate_logfile`,
/// `pg_promote`, `pg_log_backend_memory_contexts`), WAL, backup and replication control
/// (`pg_switch_wal`, `pg_create_restore_point`, `pg_backup_*`, `pg_start_backup`,
/// `pg_stop_backup`, `pg_wal_replay_*`, `pg_create_*` / `pg_drop_*` / `pg_copy_*`
/// replication slots, `pg_replication_slot_advance`, `pg_replication_origin_*`,
/// `pg_logical_slot_*`, `pg_logical_emit_message`), `pg_stat_reset*`, notifications
/// (`pg_notify()`, `NOTIFY`: listeners on the target would receive them twice), server
/// files (`lo_import`, `lo_export`, adminpack's `pg_file_*`, `COPY ... TO/FROM 'file'`
/// or `PROGRAM`), and `dblink*` (arbitrary SQL elsewhere).
///
/// **`Some(Mode::Columns)`** (rows and row counts differ by server; columns and errors
/// must still match):
/// - any relation or set-returning function named `pg_*` that is not followed by `(`
///   (the system catalogs and views: `pg_stat_*` and `pg_statio_*` including
///   `pg_stat_bgwriter`, `pg_stat_checkpointer`, `pg_stat_replication`,
///   `pg_stat_activity`; `pg_settings`, `pg_locks`, `pg_replication_slots`,
///   `pg_subscription*`, `pg_publication*`, `pg_database`, `pg_class`, `pg_attribute`,
///   `pg_proc`, ...: OIDs, statistics, attribute numbers after dropped columns and the
///   set of built-in objects differ between two clusters), and relations of
///   `information_schema` (derived from the catalogs);
/// - set-returning functions over server state: `pg_ls_*`, `pg_stat_get_*`,
///   `pg_show_all_settings`, `pg_show_all_file_settings`, `pg_hba_file_rules`,
///   `pg_ident_file_mappings`, `pg_available_extensions`,
///   `pg_available_extension_versions`, `pg_lock_status`, `pg_prepared_xact`,
///   `pg_prepared_statement`, `pg_cursor`, `pg_timezone_names`, `pg_timezone_abbrevs`,
///   `pg_config`, `pg_get_keywords`, `pg_get_catalog_foreign_keys`,
///   `pg_get_replication_slots`, `pg_get_publication_tables`,
///   `pg_get_wal_resource_managers`, `pg_get_backend_memory_contexts`,
///   `pg_get_shmem_allocations`, `pg_get_wait_events`;
/// - `TABLESAMPLE` (random rows);
/// - `EXPLAIN` (plans change with every major: the "Optimizer" sections of the release
///   notes), `SHOW ALL` (the set of settings changes with every major).
///
/// **`Some(Mode::Shape)`** (values differ between any two servers; row counts do not):
/// - time: `now()`, `clock_timestamp()`, `statement_timestamp()`,
///   `transaction_timestamp()`, `timeofday()`, `age()` with one argument, the key words
///   `CURRENT_TIMESTAMP`, `CURRENT_TIME`, `CURRENT_DATE`, `LOCALTIME`,
///   `LOCALTIMESTAMP`, and the special date/time inputs `'now'`, `'today'`,
///   `'tomorrow'`, `'yesterday'` (Date/Time Functions and Operators, "Current Date/Time";
///   Date/Time Types, "Special Values");
/// - randomness: `random()`, `random_normal()`, `setseed()`, `gen_random_uuid()`,
///   `uuidv4()`, `uuidv7()`, uuid-ossp's `uuid_generate_v1*()` / `uuid_generate_v4()`,
///   pgcrypto's `gen_random_bytes()` and `gen_salt()`;
/// - the server and the session: `version()`, `pg_backend_pid()`,
///   `inet_server_addr()`, `inet_server_port()`, `inet_client_addr()`,
///   `inet_client_port()`, `pg_postmaster_start_time()`, `pg_conf_load_time()`,
///   `pg_jit_available()`, `pg_my_temp_schema()`, `pg_blocking_pids()`,
///   `pg_safe_snapshot_blocking_pids()`, `pg_notification_queue_usage()`,
///   `current_user`, `session_user`, `current_role`, `user` (the proxy logs in to each
///   server with that server's configured role), `pg_control_*()`;
/// - transaction ids, snapshots and WAL positions: `txid_*()`, `pg_current_*()`
///   (`pg_current_xact_id`, `pg_current_wal_lsn`, `pg_current_snapshot`, ...),
///   `pg_last_*()`, `pg_snapshot_*()`, `pg_visible_in_snapshot()`, `pg_xact_status()`,
///   `pg_xact_commit_timestamp()`, `mxid_age()`, `pg_walfile_name*()`,
///   `pg_split_walfile_name()`, `pg_wal_lsn_diff()`;
/// - storage: `pg_database_size()`, `pg_relation_size()`, `pg_total_relation_size()`,
///   `pg_table_size()`, `pg_indexes_size()`, `pg_tablespace_size()`,
///   `pg_column_size()`, `pg_column_compression()`, `pg_relation_filenode()`,
///   `pg_relation_filepath()`, `pg_filenode_relation()`, `pg_stat_file()`,
///   `pg_read_file()`, `pg_read_binary_file()`;
/// - definitions as deparsed text, whose spelling changes between majors:
///   `pg_get_*()` (`pg_get_viewdef`, `pg_get_indexdef`, `pg_get_constraintdef`, ...);
/// - sequences (not replicated by logical replication: Logical Replication,
///   "Restrictions"): `nextval()`, `currval()`, `lastval()`, `setval()`,
///   `pg_sequence_last_value()`, `pg_sequence_parameters()`;
/// - settings that identify the server, by `SHOW name` or `current_setting('name')`
///   (any `current_setting()` whose argument is not a literal too): `server_version`,
///   `server_version_num`, `port`, `data_directory`, `config_file`, `hba_file`,
///   `ident_file`, `external_pid_file`, `cluster_name`, `listen_addresses`,
///   `unix_socket_directories`, `unix_socket_group`, `unix_socket_permissions`,
///   `data_checksums`, `data_directory_mode`, `shared_memory_size`,
///   `shared_memory_size_in_huge_pages`, `in_hot_standby`, `log_directory`,
///   `log_filename`, `krb_server_keyfile`, `ssl_cert_file`, `ssl_key_file`,
///   `ssl_ca_file`, `ssl_crl_file`, `ssl_crl_dir`, `ssl_dh_params_file`;
/// - `LIMIT`, `OFFSET`, `FETCH FIRST` or `DISTINCT ON` in a query level that has no
///   `ORDER BY` (which rows come is unspecified: SQL command reference: SELECT, "LIMIT
///   Clause").
///
/// A function is recognised by its name followed by `(`, unqualified or qualified with
/// `pg_catalog`; a function in another schema is the user's own. **`Some(Mode::Exact)`**
/// for everything else. Views or functions of the user's that call the functions above
/// are not seen (as for [`crate::classify`]).
pub fn mode_for(sql: &str) -> Option<Mode> {
    crate::modes::mode_for(sql)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::tests::{
        PG13_BGWRITER, PG13_EXTRACT, PG13_FACTORIAL, PG17_BGWRITER, PG17_EXTRACT, PG17_FACTORIAL,
    };

    fn col(name: &str, type_oid: u32) -> Column {
        Column {
            name: name.into(),
            type_oid,
            format: 0,
        }
    }

    /// A one-outcome answer of text rows (`None` for NULL).
    fn rows(cols: &[(&str, u32)], data: &[&[Option<&str>]], tag: &str) -> Answer {
        Answer {
            outcomes: vec![Outcome::Rows {
                columns: Some(cols.iter().map(|(n, t)| col(n, *t)).collect()),
                rows: data
                    .iter()
                    .map(|r| r.iter().map(|v| v.map(|s| s.as_bytes().to_vec())).collect())
                    .collect(),
                tag: tag.into(),
            }],
            bytes: 0,
            ready: Some(b'I'),
        }
    }

    fn command(tag: &str) -> Answer {
        Answer {
            outcomes: vec![Outcome::Command { tag: tag.into() }],
            ..Answer::default()
        }
    }

    fn error(sqlstate: &str, message: &str) -> Answer {
        Answer {
            outcomes: vec![Outcome::Error {
                sqlstate: sqlstate.into(),
                message: message.into(),
            }],
            ..Answer::default()
        }
    }

    fn exact() -> CompareOptions {
        CompareOptions::default()
    }

    fn what(v: &Verdict) -> &str {
        match v {
            Verdict::Mismatch { what, .. } => what,
            other => panic!("not a mismatch: {other:?}"),
        }
    }

    const AB: &[(&str, u32)] = &[("id", 23), ("name", 25)];

    #[test]
    fn rows_are_multisets_unless_ordered() {
        let s = rows(
            AB,
            &[
                &[Some("1"), Some("a")],
                &[Some("2"), Some("b")],
                &[Some("2"), Some("b")],
            ],
            "SELECT 3",
        );
        let t = rows(
            AB,
            &[
                &[Some("2"), Some("b")],
                &[Some("1"), Some("a")],
                &[Some("2"), Some("b")],
            ],
            "SELECT 3",
        );
        assert_eq!(compare(&s, &t, &exact()), Verdict::Match);
        let ordered = CompareOptions {
            ordered: true,
            ..exact()
        };
        let v = compare(&s, &t, &ordered);
        assert_eq!(what(&v), "row order");
        assert_eq!(
            v,
            Verdict::Mismatch {
                what: "row order".into(),
                source: "row 1: (1, 'a')".into(),
                target: "row 1: (2, 'b')".into()
            }
        );
        // Multiplicity counts: {1a, 2b, 2b} is not {1a, 1a, 2b}.
        let t2 = rows(
            AB,
            &[
                &[Some("1"), Some("a")],
                &[Some("1"), Some("a")],
                &[Some("2"), Some("b")],
            ],
            "SELECT 3",
        );
        let v = compare(&s, &t2, &exact());
        assert_eq!(
            v,
            Verdict::Mismatch {
                what: "rows".into(),
                source: "1 row not in the target: (2, 'b')".into(),
                target: "1 row not in the source: (1, 'a')".into()
            }
        );
        // NULL is a value like any other for the comparison.
        let n1 = rows(AB, &[&[Some("1"), None]], "SELECT 1");
        let n2 = rows(AB, &[&[Some("1"), Some("")]], "SELECT 1");
        assert_eq!(what(&compare(&n1, &n2, &exact())), "rows");
        assert_eq!(compare(&n1, &n1.clone(), &exact()), Verdict::Match);
    }

    #[test]
    fn row_count_columns_and_tags() {
        let s = rows(AB, &[&[Some("1"), Some("a")]], "SELECT 1");
        let t = rows(AB, &[], "SELECT 0");
        let v = compare(&s, &t, &exact());
        assert_eq!(
            v,
            Verdict::Mismatch {
                what: "row count".into(),
                source: "1 row (SELECT 1)".into(),
                target: "0 rows (SELECT 0)".into()
            }
        );
        let t = rows(
            &[("id", 20), ("name", 25)],
            &[&[Some("1"), Some("a")]],
            "SELECT 1",
        );
        let v = compare(&s, &t, &exact());
        assert_eq!(
            v,
            Verdict::Mismatch {
                what: "columns".into(),
                source: "(id int4, name text)".into(),
                target: "(id int8, name text)".into()
            }
        );
        let t = rows(
            &[("id", 23), ("nom", 25)],
            &[&[Some("1"), Some("a")]],
            "SELECT 1",
        );
        assert_eq!(what(&compare(&s, &t, &exact())), "columns");
        assert_eq!(
            what(&compare(
                &command("UPDATE 1"),
                &command("UPDATE 0"),
                &exact()
            )),
            "command tag"
        );
        assert_eq!(
            compare(&command("UPDATE 1"), &command("UPDATE 1"), &exact()),
            Verdict::Match
        );
        // A Command and an empty Rows are the same result (Execute with and without Describe).
        assert_eq!(
            compare(&rows(AB, &[], "SELECT 0"), &command("SELECT 0"), &exact()),
            Verdict::Match
        );
        // Described on one side only: columns are not compared, values are.
        let undescribed = Answer {
            outcomes: vec![Outcome::Rows {
                columns: None,
                rows: vec![vec![Some(b"1".to_vec()), Some(b"a".to_vec())]],
                tag: "SELECT 1".into(),
            }],
            ..Answer::default()
        };
        assert_eq!(compare(&s, &undescribed, &exact()), Verdict::Match);
        // Outcome count.
        let mut two = s.clone();
        two.outcomes.push(Outcome::Command { tag: "SET".into() });
        assert_eq!(what(&compare(&s, &two, &exact())), "result count");
        // Kinds.
        let empty = Answer {
            outcomes: vec![Outcome::Empty],
            ..Answer::default()
        };
        assert_eq!(compare(&empty, &empty.clone(), &exact()), Verdict::Match);
        assert_eq!(what(&compare(&empty, &s, &exact())), "result kind");
        assert_eq!(
            what(&compare(&command("BEGIN"), &command("COMMIT"), &exact())),
            "command tag"
        );
    }

    #[test]
    fn shape_compares_tags_columns_and_counts_not_values() {
        let shape = CompareOptions {
            mode: Mode::Shape,
            ..exact()
        };
        let s = rows(&[("abalance", 23)], &[&[Some("10")]], "UPDATE 1");
        let t = rows(&[("abalance", 23)], &[&[Some("15")]], "UPDATE 1");
        assert_eq!(compare(&s, &t, &shape), Verdict::Match);
        assert_eq!(what(&compare(&s, &t, &exact())), "rows");
        let t0 = rows(&[("abalance", 23)], &[], "UPDATE 0");
        assert_eq!(what(&compare(&s, &t0, &shape)), "row count");
        assert_eq!(
            what(&compare(&command("UPDATE 1"), &command("UPDATE 2"), &shape)),
            "command tag"
        );
        assert_eq!(
            compare(&command("INSERT 0 1"), &command("INSERT 0 1"), &shape),
            Verdict::Match
        );
        let tc = rows(&[("abalance", 20)], &[&[Some("10")]], "UPDATE 1");
        assert_eq!(what(&compare(&s, &tc, &shape)), "columns");
    }

    #[test]
    fn columns_mode_ignores_rows_and_counts_but_not_columns_or_errors() {
        let opts = CompareOptions {
            mode: Mode::Columns,
            ..exact()
        };
        let s = rows(&[("pid", 23)], &[&[Some("1")], &[Some("2")]], "SELECT 2");
        let t = rows(&[("pid", 23)], &[&[Some("9")]], "SELECT 1");
        assert_eq!(compare(&s, &t, &opts), Verdict::Match);
        let t = rows(
            &[("pid", 23), ("query_id", 20)],
            &[&[Some("9"), None]],
            "SELECT 1",
        );
        assert_eq!(what(&compare(&s, &t, &opts)), "columns");
        // pg_stat_bgwriter's checkpoint columns, gone in 17: reported even here.
        let s = Answer::parse(PG13_BGWRITER).unwrap();
        let t = Answer::parse(PG17_BGWRITER).unwrap();
        assert_eq!(
            compare(&s, &t, &opts),
            Verdict::TargetError {
                sqlstate: "42703".into(),
                message: "column \"checkpoints_timed\" does not exist".into(),
                source: "SELECT 1: (0)".into()
            }
        );
        assert_eq!(
            mode_for("SELECT checkpoints_timed FROM pg_stat_bgwriter"),
            Some(Mode::Columns)
        );
    }

    #[test]
    fn errors_compare_by_sqlstate() {
        let a = error("42P01", "relation \"x\" does not exist");
        let b = error("42P01", "relation \"public.x\" does not exist");
        assert_eq!(compare(&a, &b, &exact()), Verdict::Match);
        let c = error("42601", "syntax error at or near \"x\"");
        assert_eq!(
            compare(&a, &c, &exact()),
            Verdict::Mismatch {
                what: "error code".into(),
                source: "ERROR 42P01: relation \"x\" does not exist".into(),
                target: "ERROR 42601: syntax error at or near \"x\"".into(),
            }
        );
        let ok = command("DELETE 1");
        assert_eq!(
            compare(&a, &ok, &exact()),
            Verdict::SourceError {
                sqlstate: "42P01".into(),
                message: "relation \"x\" does not exist".into(),
                target: "DELETE 1".into()
            }
        );
        // Shape and Columns modes compare errors the same way.
        for mode in [Mode::Shape, Mode::Columns] {
            let o = CompareOptions { mode, ..exact() };
            assert_eq!(what(&compare(&a, &c, &o)), "error code");
            assert!(matches!(compare(&ok, &a, &o), Verdict::TargetError { .. }));
        }
    }

    #[test]
    fn target_only_error_postfix_factorial_removed_in_14() {
        let s = Answer::parse(PG13_FACTORIAL).unwrap();
        let t = Answer::parse(PG17_FACTORIAL).unwrap();
        let sql = "SELECT 5 !";
        let opts = CompareOptions::for_sql(sql, crate::classify(sql).kind).unwrap();
        assert_eq!(opts.mode, Mode::Exact);
        assert_eq!(
            compare(&s, &t, &opts),
            Verdict::TargetError {
                sqlstate: "42601".into(),
                message: "syntax error at end of input".into(),
                source: "SELECT 1: (120)".into()
            }
        );
        assert!(compare(&s, &t, &opts).is_problem());
    }

    #[test]
    fn extract_returning_numeric_since_14_is_reported() {
        let sql = "SELECT extract(year from date '2024-05-01')";
        assert_eq!(mode_for(sql), Some(Mode::Exact));
        let s = Answer::parse(PG13_EXTRACT).unwrap();
        let t = Answer::parse(PG17_EXTRACT).unwrap();
        assert_eq!(
            compare(&s, &t, &exact()),
            Verdict::Mismatch {
                what: "columns".into(),
                source: "(date_part float8)".into(),
                target: "(extract numeric)".into()
            }
        );
        // Same name, only the type changed: still reported.
        let s = rows(&[("y", 701)], &[&[Some("2024")]], "SELECT 1");
        let t = rows(&[("y", 1700)], &[&[Some("2024")]], "SELECT 1");
        assert_eq!(what(&compare(&s, &t, &exact())), "columns");
    }

    #[test]
    fn normalisations() {
        // 2: OIDs of types that are not built in.
        let s = rows(&[("mood", 16390)], &[&[Some("happy")]], "SELECT 1");
        let t = rows(&[("mood", 24601)], &[&[Some("happy")]], "SELECT 1");
        assert_eq!(compare(&s, &t, &exact()), Verdict::Match);
        let t = rows(&[("mood", 25)], &[&[Some("happy")]], "SELECT 1");
        assert_eq!(what(&compare(&s, &t, &exact())), "columns");
        // 3: INSERT's oid.
        assert_eq!(
            compare(&command("INSERT 16404 1"), &command("INSERT 0 1"), &exact()),
            Verdict::Match
        );
        assert_eq!(
            what(&compare(
                &command("INSERT 0 1"),
                &command("INSERT 0 2"),
                &exact()
            )),
            "command tag"
        );
        // 4: float output digits (PostgreSQL < 12 vs >= 12).
        let f = &[("x", 701), ("y", 700)];
        let old = rows(
            f,
            &[
                &[Some("0.3"), Some("0.1")],
                &[Some("9.00719925474099e+15"), Some("3.14159")],
            ],
            "SELECT 2",
        );
        let new = rows(
            f,
            &[
                &[Some("0.30000000000000004"), Some("0.1")],
                &[Some("9007199254740991"), Some("3.1415927")],
            ],
            "SELECT 2",
        );
        assert_eq!(compare(&old, &new, &exact()), Verdict::Match);
        let other = rows(
            f,
            &[
                &[Some("0.31"), Some("0.1")],
                &[Some("9007199254740991"), Some("3.1415927")],
            ],
            "SELECT 2",
        );
        assert_eq!(what(&compare(&new, &other, &exact())), "rows");
        let inf = rows(f, &[&[Some("Infinity"), Some("NaN")]], "SELECT 1");
        assert_eq!(compare(&inf, &inf.clone(), &exact()), Verdict::Match);
        // Not for numeric: 0.3 and 0.30000000000000004 differ there.
        let n1 = rows(&[("x", 1700)], &[&[Some("0.3")]], "SELECT 1");
        let n2 = rows(
            &[("x", 1700)],
            &[&[Some("0.30000000000000004")]],
            "SELECT 1",
        );
        assert_eq!(what(&compare(&n1, &n2, &exact())), "rows");
    }

    #[test]
    fn ties_under_order_by_may_come_in_any_order() {
        let sql = "SELECT name, category FROM products ORDER BY category";
        let opts = CompareOptions::for_sql(sql, Kind::Read).unwrap();
        assert!(opts.ordered);
        assert_eq!(
            opts.order_by,
            Some(OrderBy {
                keys: vec![OrderKey::Column("category".into())],
                limited: false,
                offset: false
            })
        );
        let c = &[("name", 25), ("category", 25)];
        let s = rows(
            c,
            &[
                &[Some("a"), Some("x")],
                &[Some("b"), Some("x")],
                &[Some("c"), Some("y")],
            ],
            "SELECT 3",
        );
        let t = rows(
            c,
            &[
                &[Some("b"), Some("x")],
                &[Some("a"), Some("x")],
                &[Some("c"), Some("y")],
            ],
            "SELECT 3",
        );
        assert_eq!(compare(&s, &t, &opts), Verdict::Match);
        // Key order differs (say, another collation): reported.
        let t = rows(
            c,
            &[
                &[Some("c"), Some("y")],
                &[Some("a"), Some("x")],
                &[Some("b"), Some("x")],
            ],
            "SELECT 3",
        );
        assert_eq!(what(&compare(&s, &t, &opts)), "row order");
        // Different rows within a run of ties: reported.
        let t = rows(
            c,
            &[
                &[Some("a"), Some("x")],
                &[Some("z"), Some("x")],
                &[Some("c"), Some("y")],
            ],
            "SELECT 3",
        );
        assert_eq!(what(&compare(&s, &t, &opts)), "rows");
        // With LIMIT the last run of ties may hold other rows.
        let sql = "SELECT name, category FROM products ORDER BY 2 LIMIT 3";
        let opts = CompareOptions::for_sql(sql, Kind::Read).unwrap();
        let s = rows(
            c,
            &[
                &[Some("a"), Some("w")],
                &[Some("b"), Some("x")],
                &[Some("c"), Some("x")],
            ],
            "SELECT 3",
        );
        let t = rows(
            c,
            &[
                &[Some("a"), Some("w")],
                &[Some("d"), Some("x")],
                &[Some("b"), Some("x")],
            ],
            "SELECT 3",
        );
        assert_eq!(compare(&s, &t, &opts), Verdict::Match);
        let t = rows(
            c,
            &[
                &[Some("e"), Some("w")],
                &[Some("d"), Some("x")],
                &[Some("b"), Some("x")],
            ],
            "SELECT 3",
        );
        assert_eq!(what(&compare(&s, &t, &opts)), "rows");
        // A key that is not an output column: the order cannot be checked.
        let sql = "SELECT name FROM products ORDER BY price";
        let opts = CompareOptions::for_sql(sql, Kind::Read).unwrap();
        let s = rows(&[("name", 25)], &[&[Some("a")], &[Some("b")]], "SELECT 2");
        let t = rows(&[("name", 25)], &[&[Some("b")], &[Some("a")]], "SELECT 2");
        assert_eq!(compare(&s, &t, &opts), Verdict::Match);
    }

    #[test]
    fn ordered_detects_top_level_order_by_only() {
        assert!(ordered("SELECT * FROM t ORDER BY a"));
        assert!(ordered(
            "select a from t union select b from u order by 1 limit 3"
        ));
        assert!(ordered("(SELECT a FROM t ORDER BY a) LIMIT 5"));
        assert!(ordered(
            "WITH x AS (SELECT 1 AS a) SELECT a FROM x ORDER BY a DESC NULLS LAST"
        ));
        assert!(!ordered("SELECT * FROM (SELECT * FROM t ORDER BY a) s"));
        assert!(!ordered(
            "WITH x AS (SELECT a FROM t ORDER BY a) SELECT a FROM x"
        ));
        assert!(!ordered(
            "SELECT row_number() OVER (ORDER BY a), array_agg(b ORDER BY b) FROM t GROUP BY a"
        ));
        assert!(!ordered(
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        ));
        assert!(!ordered("UPDATE t SET a = 1"));
        assert!(!ordered("EXPLAIN SELECT * FROM t ORDER BY a"));
        assert!(ordered("SELECT 1 ORDER BY 1; SELECT 2 ORDER BY 1"));
        assert!(!ordered("SELECT 1 ORDER BY 1; SELECT 2"));
        // Not parsed by sqlparser: the lexer decides.
        assert!(ordered("SELECT 5 ! AS f FROM t ORDER BY f"));
        assert!(!ordered("SELECT 5 ! AS f FROM (SELECT 1 ORDER BY 1) s"));
        assert_eq!(
            order_by("SELECT a, \"B\" FROM t ORDER BY t.a, \"B\", 3, lower(c) OFFSET 2"),
            Some(OrderBy {
                keys: vec![
                    OrderKey::Column("a".into()),
                    OrderKey::Column("B".into()),
                    OrderKey::Position(3),
                    OrderKey::Other
                ],
                limited: false,
                offset: true
            })
        );
        assert_eq!(order_by("SELECT 1 ORDER BY 1; SELECT 2 ORDER BY 1"), None);
    }

    #[test]
    fn mode_for_statements() {
        use Mode::*;
        let cases: &[(&str, Option<Mode>)] = &[
            // pgbench's statements: Exact (the caller lowers DML to Shape).
            ("SELECT abalance FROM pgbench_accounts WHERE aid = $1", Some(Exact)),
            ("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", Some(Exact)),
            ("UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2", Some(Exact)),
            ("UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2", Some(Exact)),
            ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)", Some(Shape)),
            ("BEGIN", Some(Exact)),
            ("END", Some(Exact)),
            // Removed features must be compared.
            ("SELECT 5 !", Some(Exact)),
            ("SELECT extract(epoch from ts) FROM t", Some(Exact)),
            ("", Some(Exact)),
            // Values of the time, the server, randomness, sequences.
            ("SELECT now()", Some(Shape)),
            ("select NOW() - interval '1 day'", Some(Shape)),
            ("SELECT pg_catalog.now()", Some(Shape)),
            ("SELECT current_timestamp", Some(Shape)),
            ("SELECT * FROM events WHERE day = CURRENT_DATE", Some(Shape)),
            ("SELECT 'now'::timestamptz", Some(Shape)),
            ("SELECT clock_timestamp(), statement_timestamp(), transaction_timestamp(), timeofday()", Some(Shape)),
            ("SELECT random()", Some(Shape)),
            ("INSERT INTO t (id) VALUES (gen_random_uuid())", Some(Shape)),
            ("SELECT pg_backend_pid()", Some(Shape)),
            ("SELECT inet_server_addr(), inet_server_port(), inet_client_addr()", Some(Shape)),
            ("SELECT version()", Some(Shape)),
            ("SELECT txid_current()", Some(Shape)),
            ("SELECT pg_current_xact_id()", Some(Shape)),
            ("SELECT pg_current_wal_lsn()", Some(Shape)),
            ("SELECT pg_postmaster_start_time()", Some(Shape)),
            ("SELECT current_setting('server_version_num')::int", Some(Shape)),
            ("SELECT current_setting('search_path')", Some(Exact)),
            ("SELECT current_setting($1)", Some(Shape)),
            ("SHOW server_version", Some(Shape)),
            ("SHOW port", Some(Shape)),
            ("SHOW search_path", Some(Exact)),
            ("SELECT nextval('s')", Some(Shape)),
            ("SELECT age(created) FROM t", Some(Shape)),
            ("SELECT age(a, b) FROM t", Some(Exact)),
            ("SELECT pg_size_pretty(pg_database_size(current_database()))", Some(Shape)),
            ("SELECT current_user", Some(Shape)),
            ("SELECT pg_get_viewdef('v'::regclass)", Some(Shape)),
            // A function of the user's with the same name is not the built-in.
            ("SELECT app.now()", Some(Exact)),
            ("SELECT * FROM app.pg_stat_x", Some(Exact)),
            // Unordered LIMIT: which rows is unspecified, how many is not.
            ("SELECT * FROM t LIMIT 10", Some(Shape)),
            ("SELECT * FROM t ORDER BY id LIMIT 10", Some(Exact)),
            ("SELECT * FROM (SELECT * FROM t LIMIT 5) s ORDER BY id", Some(Shape)),
            ("SELECT row_number() OVER (ORDER BY a) FROM t LIMIT 5", Some(Shape)),
            ("SELECT DISTINCT ON (a) a, b FROM t", Some(Shape)),
            ("SELECT DISTINCT ON (a) a, b FROM t ORDER BY a, b", Some(Exact)),
            ("SELECT * FROM t FETCH FIRST 3 ROWS ONLY", Some(Shape)),
            ("FETCH 10 FROM c", Some(Exact)),
            // Server-specific relations: columns and errors only.
            ("SELECT * FROM pg_stat_bgwriter", Some(Columns)),
            ("SELECT checkpoints_timed FROM pg_catalog.pg_stat_bgwriter", Some(Columns)),
            ("SELECT num_timed FROM pg_stat_checkpointer", Some(Columns)),
            ("SELECT * FROM pg_stat_activity WHERE state = 'active'", Some(Columns)),
            ("SELECT relname, n_live_tup FROM pg_stat_user_tables", Some(Columns)),
            ("SELECT * FROM pg_statio_user_tables", Some(Columns)),
            ("SELECT name, setting FROM pg_settings", Some(Columns)),
            ("SELECT * FROM pg_locks", Some(Columns)),
            ("SELECT * FROM pg_replication_slots", Some(Columns)),
            ("SELECT * FROM pg_subscription", Some(Columns)),
            ("SELECT relname, reltuples FROM pg_class WHERE relkind = 'r'", Some(Columns)),
            ("SELECT table_name FROM information_schema.tables", Some(Columns)),
            ("SELECT * FROM pg_ls_dir('.')", Some(Columns)),
            ("SELECT * FROM t TABLESAMPLE SYSTEM (10)", Some(Columns)),
            ("EXPLAIN SELECT * FROM t", Some(Columns)),
            ("SHOW ALL", Some(Columns)),
            ("SELECT '0/0'::pg_lsn", Some(Exact)),
            // Not compared at all.
            ("SELECT pg_advisory_lock(1)", None),
            ("SELECT pg_try_advisory_lock(1)", None),
            ("SELECT pg_terminate_backend(123)", None),
            ("SELECT pg_notify('c', 'x')", None),
            ("NOTIFY c", None),
            ("SELECT pg_create_logical_replication_slot('s', 'pgoutput')", None),
            ("SELECT * FROM pg_logical_slot_get_changes('s', NULL, NULL)", None),
            ("SELECT pg_stat_reset()", None),
            ("COPY t TO '/tmp/x'", None),
            ("COPY t FROM PROGRAM 'cat /etc/passwd'", None),
            ("COPY t TO STDOUT", Some(Exact)),
            ("SELECT 1; SELECT pg_advisory_lock(1)", None),
            ("SELECT * FROM dblink('x', 'select 1') AS t(a int)", None),
            // The weakest statement of a text wins.
            ("SELECT 1; SELECT * FROM pg_locks; SELECT now()", Some(Columns)),
        ];
        for (sql, want) in cases {
            assert_eq!(mode_for(sql), *want, "{sql}");
        }
    }

    #[test]
    fn for_sql_caps_dml_at_shape() {
        let sql = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2";
        let o = CompareOptions::for_sql(sql, crate::classify(sql).kind).unwrap();
        assert_eq!((o.mode, o.ordered), (Mode::Shape, false));
        let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
        let o = CompareOptions::for_sql(sql, crate::classify(sql).kind).unwrap();
        assert_eq!(o, CompareOptions::default());
        let sql = "DELETE FROM t WHERE id IN (SELECT id FROM pg_locks)";
        let o = CompareOptions::for_sql(sql, crate::classify(sql).kind).unwrap();
        assert_eq!(o.mode, Mode::Columns);
        assert_eq!(
            CompareOptions::for_sql("SELECT pg_advisory_lock(1)", Kind::Read),
            None
        );
        assert!(Mode::Columns < Mode::Shape && Mode::Shape < Mode::Exact);
    }
}
