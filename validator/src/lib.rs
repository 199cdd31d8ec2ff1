//! Statement classification and result validation for pgshift.
//!
//! During a weighted shift with one-way replication (native logical, mirror), writes must
//! stay on the source until cutover, so only transactions proven read-only may be sent
//! to the target (DESIGN.md, "Routing table", "Weighted shift"). Mirroring replays reads
//! and dry-runs DML on the target and keeps error rates per table and per statement
//! fingerprint (DESIGN.md, "Mirroring and validation"). This crate answers the questions
//! both need about a statement text:
//!
//! - [`is_read_only`]: the proxy's per-transaction fast path;
//! - [`classify`]: kind, read-only verdict with its reason, tables named;
//! - [`fingerprint`]: a literal-free canonical text to key statistics by;
//! - [`transaction_start`]: whether a `BEGIN` / `START TRANSACTION` declares READ ONLY.
//!
//! and the comparison half of mirroring (issue 4):
//!
//! - [`answer`]: a server's answer to one request ([`Answer`]), parsed from the raw
//!   backend messages the proxy received;
//! - [`compare`](mod@compare): whether the source's and the target's answers agree
//!   ([`compare()`], [`Verdict`]), how much of them must ([`Mode`], [`mode_for`],
//!   [`CompareOptions::for_sql`]), and the documented normalisations of differences
//!   that are legitimate between majors;
//! - [`report`]: results aggregated per table and per fingerprint, the problems found,
//!   the error rate and the clean-traffic clock that gate the cutover ([`Report`]).
//!
//! A mirror worker, per replayed statement:
//!
//! ```
//! use validator::{classify, Answer, CompareOptions, Report, Verdict};
//! # let (sql, source_bytes, target_bytes): (&str, &[u8], &[u8]) = ("SELECT 1", b"", b"");
//! let report = Report::new();
//! let c = classify(sql);
//! match CompareOptions::for_sql(sql, c.kind) {
//!     None => report.record_skipped("not comparable"),
//!     Some(opts) => {
//!         let s = Answer::parse(source_bytes).unwrap();
//!         let t = Answer::parse(target_bytes).unwrap();
//!         let v = validator::compare(&s, &t, &opts);
//!         report.record(sql, &c.tables, &v, std::time::SystemTime::now());
//!     }
//! }
//! assert_eq!(report.totals().compared, 1);
//! ```
//!
//! Parsing uses sqlparser 0.63 with its PostgreSQL dialect (pinned exactly: the AST
//! changes between minor versions). Known traps of that parser, each covered by a test:
//! data-modifying CTEs are nested statements; `nextval()`, advisory locks, `set_config()`
//! and `FOR UPDATE` parse as plain reads; `visit_relations` reports CTE names as tables
//! and misses `COPY t`'s table; `REFRESH MATERIALIZED VIEW`, `DO`, `FOR NO KEY UPDATE`,
//! `FOR KEY SHARE` and `VACUUM (options)` do not parse.
//!
//! The guiding rule: anything unsure is **not** read-only. A "read-only" verdict means
//! the statement writes nothing, takes no row or advisory lock, and depends on no state
//! of the server session that ran earlier statements (so another server holding the same
//! data answers it the same way, up to time, randomness and replication lag). Limits
//! that no statement-level classifier can see: a view or a rule may hide volatile
//! functions, and user-defined casts and type I/O functions are assumed side-effect-free.

#![warn(missing_docs)]

pub mod answer;
mod classify;
pub mod compare;
mod fingerprint;
mod functions;
mod lex;
mod modes;
pub mod report;
mod txstart;

pub use answer::{Answer, Column, Outcome};
pub use compare::{
    compare, mode_for, order_by, ordered, CompareOptions, Mode, OrderBy, OrderKey, Verdict,
};
pub use report::{ErrorEntry, FingerprintStats, ProblemKind, Report, TableStats, Totals};

use std::cell::RefCell;
use std::collections::HashMap;

/// What a statement (or the strongest statement of a Query text) does.
///
/// Strength, weakest first: `Read` < `Transaction` < `Utility` < `Dml` < `Ddl` < `Unknown`
/// (see [`Kind::strength`]). The grouping follows PostgreSQL's `log_statement` classes
/// (server configuration, "What to Log": `ddl` = CREATE, ALTER, DROP; `mod` adds
/// INSERT, UPDATE, DELETE, TRUNCATE, COPY FROM) plus a class each for reads, transaction
/// control and everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `SELECT`, `VALUES`, `TABLE`, `WITH ... SELECT`, `SHOW`, and `EXPLAIN` of one of
    /// these. A `Read` may still be not read-only (`FOR UPDATE`, `nextval()`, ...).
    Read,
    /// `INSERT`, `UPDATE`, `DELETE`, `MERGE`, `TRUNCATE`, `COPY ... FROM`, also when
    /// nested in a `WITH` (SQL command reference: SELECT, "WITH Clause":
    /// data-modifying statements in WITH).
    Dml,
    /// `CREATE`, `ALTER`, `DROP`, `COMMENT`, `GRANT`, `REVOKE`, and `SELECT INTO` (which
    /// creates a table).
    Ddl,
    /// Everything else that parses: `SET`, `RESET`, `DISCARD`, `LISTEN`, `NOTIFY`,
    /// `PREPARE`, `EXECUTE`, `DEALLOCATE`, `COPY ... TO`, `VACUUM`, `ANALYZE`, `LOCK`,
    /// `CALL`, cursors, ...
    Utility,
    /// `BEGIN`, `START TRANSACTION`, `COMMIT`, `END`, `ROLLBACK`, `SAVEPOINT`,
    /// `RELEASE`, `SET TRANSACTION`.
    Transaction,
    /// The text did not parse (for example `REFRESH MATERIALIZED VIEW`, `DO $$...$$`),
    /// or was empty.
    Unknown,
}

impl Kind {
    /// Rank used when a text holds several statements: the strongest kind wins.
    /// `Read` 0, `Transaction` 1, `Utility` 2, `Dml` 3, `Ddl` 4, `Unknown` 5.
    pub fn strength(self) -> u8 {
        match self {
            Kind::Read => 0,
            Kind::Transaction => 1,
            Kind::Utility => 2,
            Kind::Dml => 3,
            Kind::Ddl => 4,
            Kind::Unknown => 5,
        }
    }

    /// Lower-case name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Dml => "dml",
            Kind::Ddl => "ddl",
            Kind::Utility => "utility",
            Kind::Transaction => "transaction",
            Kind::Unknown => "unknown",
        }
    }
}

/// The result of [`classify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// The strongest kind among the text's statements, nested ones included.
    pub kind: Kind,
    /// True only if every statement, nested ones included, is read-only (see the crate
    /// documentation and [`classify`] for the rules).
    pub read_only: bool,
    /// Tables (and views) named, in order of first appearance, without duplicates.
    /// Schema-qualified when written so; unquoted names lower-cased (PostgreSQL folds
    /// them, documentation 4.1.1 "Identifiers and Key Words"); a quoted name stays in
    /// double quotes unless it means the same unquoted. CTE names and set-returning
    /// functions in `FROM` are excluded. Empty when the text does not parse.
    pub tables: Vec<String>,
    /// Why the text is not read-only (the first reason found), for logs; `None` exactly
    /// when `read_only`. Never contains literal values.
    pub reason: Option<String>,
}

/// Classifies one Query text (which may hold several statements separated by `;`).
///
/// The text is read-only only if all of its statements are: `SELECT`, `VALUES`, `TABLE`,
/// `WITH ... SELECT`, or `SHOW` (SQL command reference: SHOW), and
///
/// - no locking clause (`FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE`, `FOR KEY SHARE`;
///   SQL command reference: SELECT, "The Locking Clause") anywhere, subqueries included;
/// - no `SELECT INTO` (SQL command reference: SELECT INTO: it creates a table);
/// - no data-modifying statement anywhere (`WITH x AS (DELETE ... RETURNING ...)`; SQL
///   command reference: SELECT, "WITH Clause");
/// - every function called, in expressions or in `FROM`, is on the allow-list of
///   built-in functions that are side-effect-free and independent of session state
///   (documentation 38.7 "Function Volatility Categories": only IMMUTABLE and STABLE
///   functions are guaranteed not to modify the database; `random()` and
///   `gen_random_uuid()` are volatile but allowed; `nextval`, `setval`, `currval`,
///   `lastval`, `set_config`, `pg_advisory_*lock*`, `pg_sleep*`, `lo_*`, `dblink*`,
///   `txid_current`, `pg_current_xact_id`, `pg_notify` and every unknown or
///   user-defined function are not); a function qualified with a schema other than
///   `pg_catalog` counts as user-defined;
/// - no user-defined operator (`OPERATOR(schema.op)`).
///
/// `EXPLAIN` of a read-only statement is read-only; `EXPLAIN ANALYZE` (or
/// `EXPLAIN (ANALYZE ...)`) is not, since it executes the statement (SQL command reference:
/// EXPLAIN), and neither is `EXPLAIN` of a statement that is not read-only.
/// Transaction control (`BEGIN`, `COMMIT`, ...) is not read-only: use
/// [`transaction_start`] for routing decisions at `BEGIN`. Text that does not parse is
/// [`Kind::Unknown`] and not read-only.
pub fn classify(sql: &str) -> Classification {
    let w = classify::walk(sql, true);
    Classification {
        kind: w.kind,
        read_only: w.read_only,
        tables: w.tables,
        reason: w.reason,
    }
}

/// Key words a read-only text can start with (after whitespace and comments).
/// `EXPLAIN` and `(` (a parenthesised query) are accepted too, so that
/// `is_read_only(sql) == classify(sql).read_only` for every text.
const READ_LEADS: [&str; 6] = ["select", "with", "values", "table", "show", "explain"];

/// Longest text kept in the per-thread verdict cache, in bytes.
const CACHE_MAX_TEXT: usize = 2048;
/// Entries in the per-thread verdict cache before it is cleared.
const CACHE_MAX_ENTRIES: usize = 512;

thread_local! {
    static CACHE: RefCell<HashMap<Box<str>, bool>> = RefCell::new(HashMap::new());
}

/// Whether a Query text is read-only: the same verdict as `classify(sql).read_only`,
/// computed for the proxy on every eligible transaction.
///
/// 1. A cheap leading-key-word check: text that does not start (after whitespace and
///    `--` / `/* */` comments) with `SELECT`, `WITH`, `VALUES`, `TABLE`, `SHOW`,
///    `EXPLAIN` or `(` is not read-only, without parsing (tens of nanoseconds).
/// 2. A per-thread cache of verdicts by exact text (up to 512 texts of up to 2 KiB each,
///    cleared when full): applications repeat the same statement texts, prepared ones
///    especially, so a repeated text costs one hash lookup instead of a parse.
/// 3. Otherwise a full parse and walk that stops at the first reason (microseconds).
pub fn is_read_only(sql: &str) -> bool {
    if !leads_like_read(sql) {
        return false;
    }
    if sql.len() > CACHE_MAX_TEXT {
        return classify::walk(sql, false).read_only;
    }
    if let Some(v) = CACHE.with(|c| c.borrow().get(sql).copied()) {
        return v;
    }
    let v = classify::walk(sql, false).read_only;
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CACHE_MAX_ENTRIES {
            c.clear();
        }
        c.insert(sql.into(), v);
    });
    v
}

/// Step 1 of [`is_read_only`], and the uncached reference for tests and benchmarks.
fn leads_like_read(sql: &str) -> bool {
    // Empty statements before the first one change nothing, and the parse skips them.
    match lex::leading_word(lex::skip_empty_statements(sql)) {
        Some("(") => true,
        Some(w) => READ_LEADS.iter().any(|k| w.eq_ignore_ascii_case(k)),
        None => false,
    }
}

/// [`is_read_only`] without its cache: the leading-key-word check, then a parse.
pub fn is_read_only_uncached(sql: &str) -> bool {
    leads_like_read(sql) && classify::walk(sql, false).read_only
}

/// A normalised statement text to group statistics by: constants (numbers, strings of
/// every kind, dollar-quoted bodies) and parameters (`$1`) become `?`; a sign directly
/// before a constant belongs to it; `IN (?, ?, ...)` and `ARRAY[?, ...]` lists collapse
/// to `(...)` / `[...]`; `VALUES` rows that all look alike collapse to the first row
/// and `, ...`. Comments and whitespace are dropped, unquoted words lower-cased with
/// common key words upper-cased, quoted identifiers kept quoted unless that makes no
/// difference, trailing semicolons removed. Works on any text (no parse needed) and
/// never keeps a literal, so it is safe to log (a password in `ALTER ROLE ... PASSWORD`
/// becomes `?`).
///
/// ```
/// assert_eq!(
///     validator::fingerprint("select * FROM t where id in (1, 2, 3) and name = 'x'"),
///     "SELECT * FROM t WHERE id IN (...) AND name = ?"
/// );
/// ```
pub fn fingerprint(sql: &str) -> String {
    fingerprint::fingerprint(sql)
}

/// What a statement text means for the transaction it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxStart {
    /// `BEGIN` / `START TRANSACTION` with `READ ONLY` (and no later `READ WRITE`), alone
    /// in its text. PostgreSQL then rejects writes to non-temporary tables, `nextval()`
    /// and DDL for the whole transaction (SQL command reference: SET TRANSACTION, "The
    /// transaction access mode"), so the transaction can go to the target. Advisory locks
    /// and `set_config()` are still allowed in a read-only transaction; a proxy that
    /// must keep those on the source still has to classify the statements.
    ReadOnly,
    /// A transaction start that cannot be proven read-only: plain `BEGIN`, `READ WRITE`,
    /// any isolation level without `READ ONLY`, `COMMIT AND CHAIN` / `ROLLBACK AND
    /// CHAIN` (which start a new transaction like the last one), a start sharing its
    /// text with other statements, or a `BEGIN`/`START` that does not follow the grammar
    /// (PostgreSQL will reject it, or it means something unknown here).
    ReadWrite,
    /// The text starts no transaction.
    NotAStart,
}

/// Whether `sql` starts a transaction, and whether that transaction is declared
/// `READ ONLY` (SQL command reference: BEGIN, START TRANSACTION, SET TRANSACTION).
///
/// Recognised by a small hand-written grammar over the lexer, not by sqlparser (which
/// does not parse `DEFERRABLE`): about as cheap as the leading-key-word check. A text
/// whose first word is not `BEGIN`, `START`, `COMMIT`, `END`, `ROLLBACK` or `ABORT`
/// and that holds no `;` is [`TxStart::NotAStart`] at once; `SELECT 1; BEGIN` is
/// [`TxStart::ReadWrite`].
pub fn transaction_start(sql: &str) -> TxStart {
    txstart::transaction_start(sql)
}

#[cfg(test)]
mod tests;
