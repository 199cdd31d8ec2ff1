//! Aggregated validation results: totals, per table, per statement fingerprint, and the
//! problems found (for `SHOW UPGRADE ERRORS`, the Prometheus counters and the cutover
//! gate: DESIGN.md "Mirroring and validation", issue 4 "Reports").
//!
//! A [`Report`] is shared by the mirror workers (`&Report` from several threads: one
//! mutex inside, taken for microseconds per record, off the client's path). Memory is
//! bounded: at most [`MAX_FINGERPRINTS`] fingerprints and [`MAX_TABLES`] table names are
//! kept; statements beyond that are counted in buckets named [`OTHER`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::answer::truncate;
use crate::compare::Verdict;

/// Most distinct statement fingerprints kept; later ones are counted per set of tables
/// under the fingerprint [`OTHER`] (up to as many sets again, then in one last bucket).
pub const MAX_FINGERPRINTS: usize = 10_000;
/// Most distinct table names kept; later ones are counted as the table [`OTHER`].
pub const MAX_TABLES: usize = 10_000;
/// Name of the overflow buckets, as a fingerprint and as a table.
pub const OTHER: &str = "(other)";
/// Longest sample statement and excerpt kept, in characters.
pub const SAMPLE_CHARS: usize = 200;
/// Most distinct problems (kind and part or SQLSTATE) kept per fingerprint; later ones
/// are still counted in the fingerprint's and the table's counters.
const MAX_PROBLEMS_PER_BUCKET: usize = 8;

/// The kind of a problem, worst first (the order of [`Report::errors`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProblemKind {
    /// The target failed where the source succeeded ([`Verdict::TargetError`]).
    TargetError,
    /// Both answered, differently ([`Verdict::Mismatch`]).
    Mismatch,
    /// The source failed where the target succeeded ([`Verdict::SourceError`]).
    SourceError,
}

impl ProblemKind {
    /// `target_error`, `mismatch`, `source_error`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::TargetError => "target_error",
            ProblemKind::Mismatch => "mismatch",
            ProblemKind::SourceError => "source_error",
        }
    }

    /// The kind of a verdict's problem; `None` for [`Verdict::Match`].
    pub fn of(v: &Verdict) -> Option<ProblemKind> {
        match v {
            Verdict::Match => None,
            Verdict::Mismatch { .. } => Some(ProblemKind::Mismatch),
            Verdict::TargetError { .. } => Some(ProblemKind::TargetError),
            Verdict::SourceError { .. } => Some(ProblemKind::SourceError),
        }
    }
}

/// Counters of one bucket (all, a table, a fingerprint).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    compared: u64,
    matched: u64,
    mismatched: u64,
    target_errors: u64,
    source_errors: u64,
    inconclusive: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.compared += o.compared;
        self.matched += o.matched;
        self.mismatched += o.mismatched;
        self.target_errors += o.target_errors;
        self.source_errors += o.source_errors;
        self.inconclusive += o.inconclusive;
    }

    fn problems(&self) -> u64 {
        self.mismatched + self.target_errors
    }
}

/// Totals over everything recorded (and not reset).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Statements compared to a verdict: `matched + mismatched + target_errors +
    /// source_errors` (inconclusive ones are not in it).
    pub compared: u64,
    /// Verdict [`Verdict::Match`].
    pub matched: u64,
    /// Verdict [`Verdict::Mismatch`].
    pub mismatched: u64,
    /// Verdict [`Verdict::TargetError`].
    pub target_errors: u64,
    /// Verdict [`Verdict::SourceError`].
    pub source_errors: u64,
    /// Differences that could be neither confirmed nor ruled out (for example the
    /// source's own answer changed between re-checks). Not problems.
    pub inconclusive: u64,
    /// Statements not compared, by reason (not comparable, answer too big, in a
    /// transaction block, queue full...). Not problems; never reset.
    pub skipped: BTreeMap<&'static str, u64>,
    /// When the first statement still counted was compared.
    pub first_compared_at: Option<SystemTime>,
    /// When the last problem still counted (mismatch or target error) was seen.
    pub last_problem_at: Option<SystemTime>,
}

impl Totals {
    /// The validation error rate, a fraction (not a percentage): `(mismatched +
    /// target_errors) / compared`, 0 when nothing was compared.
    pub fn error_rate(&self) -> f64 {
        error_rate(self.compared, self.mismatched, self.target_errors)
    }

    /// All skipped statements, whatever the reason.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// `(mismatched + target_errors) / compared`, 0 when nothing was compared.
fn error_rate(compared: u64, mismatched: u64, target_errors: u64) -> f64 {
    if compared == 0 {
        0.0
    } else {
        (mismatched + target_errors) as f64 / compared as f64
    }
}

/// Counters of the statements that named one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStats {
    /// The table as `classify` names it (schema-qualified when written so), or
    /// [`OTHER`].
    pub table: String,
    /// Statements compared to a verdict.
    pub compared: u64,
    /// Of which matched.
    pub matched: u64,
    /// Of which mismatched.
    pub mismatched: u64,
    /// Of which failed only on the target.
    pub target_errors: u64,
    /// Of which failed only on the source.
    pub source_errors: u64,
    /// Inconclusive, not in `compared`.
    pub inconclusive: u64,
}

impl TableStats {
    /// The table's validation error rate, as [`Totals::error_rate`].
    pub fn error_rate(&self) -> f64 {
        error_rate(self.compared, self.mismatched, self.target_errors)
    }
}

/// Counters of one statement fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FingerprintStats {
    /// The fingerprint ([`crate::fingerprint`]), or [`OTHER`] for statements beyond
    /// [`MAX_FINGERPRINTS`] (one such bucket per set of tables).
    pub fingerprint: String,
    /// Tables its statements name.
    pub tables: Vec<String>,
    /// The first statement recorded with it, truncated to [`SAMPLE_CHARS`] characters.
    pub sample: String,
    /// Statements compared to a verdict.
    pub compared: u64,
    /// Of which matched.
    pub matched: u64,
    /// Of which mismatched.
    pub mismatched: u64,
    /// Of which failed only on the target.
    pub target_errors: u64,
    /// Of which failed only on the source.
    pub source_errors: u64,
    /// Inconclusive, not in `compared`.
    pub inconclusive: u64,
    /// First record (compared or inconclusive).
    pub first_seen: Option<SystemTime>,
    /// Last record.
    pub last_seen: Option<SystemTime>,
}

/// One problem: a fingerprint and a kind of difference, with its first sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorEntry {
    /// The statement fingerprint, or [`OTHER`].
    pub fingerprint: String,
    /// Which kind of problem.
    pub kind: ProblemKind,
    /// For a mismatch, which part differs ("rows", "row count", "columns", ...); for an
    /// error, its SQLSTATE. Problems of one fingerprint are kept apart by kind and this.
    pub what: String,
    /// Tables the statement names.
    pub tables: Vec<String>,
    /// The first statement that showed it, truncated to [`SAMPLE_CHARS`] characters.
    pub sample: String,
    /// The source's side at that first time (an excerpt of its answer, or its error).
    pub source: String,
    /// The target's side at that first time.
    pub target: String,
    /// How many times it was seen.
    pub count: u64,
    /// First seen.
    pub first_seen: SystemTime,
    /// Last seen.
    pub last_seen: SystemTime,
}

#[derive(Debug)]
struct Problem {
    kind: ProblemKind,
    what: String,
    sample: String,
    source: String,
    target: String,
    count: u64,
    first_seen: SystemTime,
    last_seen: SystemTime,
}

#[derive(Debug, Default)]
struct Bucket {
    tables: Vec<String>,
    sample: String,
    counts: Counts,
    /// First statement compared to a verdict.
    first_compared_at: Option<SystemTime>,
    last_problem_at: Option<SystemTime>,
    first_seen: Option<SystemTime>,
    last_seen: Option<SystemTime>,
    problems: Vec<Problem>,
}

fn earliest(a: Option<SystemTime>, b: SystemTime) -> Option<SystemTime> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn latest(a: Option<SystemTime>, b: SystemTime) -> Option<SystemTime> {
    Some(a.map_or(b, |a| a.max(b)))
}

impl Bucket {
    fn new(tables: Vec<String>, sql: &str) -> Bucket {
        Bucket {
            tables,
            sample: truncate(sql, SAMPLE_CHARS),
            ..Bucket::default()
        }
    }

    fn seen(&mut self, at: SystemTime) {
        self.first_seen = earliest(self.first_seen, at);
        self.last_seen = latest(self.last_seen, at);
    }
}

#[derive(Debug, Default)]
struct Inner {
    fps: HashMap<String, Bucket>,
    /// Statements beyond MAX_FINGERPRINTS, by set of tables.
    other: HashMap<Vec<String>, Bucket>,
    /// Beyond that too.
    rest: Bucket,
    tables: HashSet<String>,
    skipped: BTreeMap<&'static str, u64>,
    totals: Counts,
    first_compared_at: Option<SystemTime>,
    last_problem_at: Option<SystemTime>,
}

impl Inner {
    fn map_tables(&mut self, tables: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(tables.len());
        for t in tables {
            let name = if self.tables.contains(t) {
                t.clone()
            } else if self.tables.len() < MAX_TABLES {
                self.tables.insert(t.clone());
                t.clone()
            } else {
                OTHER.to_owned()
            };
            if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }

    fn bucket(&mut self, fp: String, sql: &str, tables: &[String]) -> &mut Bucket {
        if self.fps.contains_key(&fp) {
            return self.fps.get_mut(&fp).expect("present");
        }
        let tables = self.map_tables(tables);
        if self.fps.len() < MAX_FINGERPRINTS {
            return self
                .fps
                .entry(fp)
                .or_insert_with(|| Bucket::new(tables, sql));
        }
        if self.other.contains_key(&tables) || self.other.len() < MAX_FINGERPRINTS {
            return self
                .other
                .entry(tables.clone())
                .or_insert_with(|| Bucket::new(tables, sql));
        }
        if self.rest.sample.is_empty() {
            self.rest.sample = truncate(sql, SAMPLE_CHARS);
        }
        &mut self.rest
    }

    fn buckets(&self) -> impl Iterator<Item = (&str, &Bucket)> {
        self.fps
            .iter()
            .map(|(fp, b)| (fp.as_str(), b))
            .chain(self.other.values().map(|b| (OTHER, b)))
            .chain(std::iter::once((OTHER, &self.rest)).filter(|(_, b)| b.first_seen.is_some()))
    }

    fn recompute(&mut self) {
        let mut totals = Counts::default();
        let mut first = None;
        let mut last = None;
        for (_, b) in self.buckets() {
            totals.add(&b.counts);
            if let Some(f) = b.first_compared_at {
                first = earliest(first, f);
            }
            if let Some(l) = b.last_problem_at {
                last = latest(last, l);
            }
        }
        self.totals = totals;
        self.first_compared_at = first;
        self.last_problem_at = last;
    }
}

/// Aggregated validation results. `Send + Sync`; every method takes `&self`.
#[derive(Debug, Default)]
pub struct Report {
    inner: Mutex<Inner>,
}

/// Canonical spelling of a table name given by an operator (`FORCE RESYNC TABLE
/// 'name'`), as `classify` spells names: unquoted parts lower-cased, quoted ones kept in
/// double quotes unless they read the same without.
fn canonical_table(name: &str) -> Vec<String> {
    split_name(name.trim())
        .into_iter()
        .map(
            |p| match p.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
                Some(q) => {
                    let q = q.replace("\"\"", "\"");
                    let plain = q
                        .bytes()
                        .next()
                        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                        && q.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'$'
                        });
                    if plain {
                        q
                    } else {
                        format!("\"{}\"", q.replace('"', "\"\""))
                    }
                }
                None => p.to_lowercase(),
            },
        )
        .collect()
}

/// Splits `a.b` at dots outside double quotes.
fn split_name(name: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in name.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => {
                parts.push(&name[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&name[start..]);
    parts
}

/// Whether a recorded table name means the table asked for: the same name, or the same
/// table name when either is written without its schema.
fn same_table(recorded: &str, asked: &[String]) -> bool {
    let rec = split_name(recorded);
    if rec.len() == asked.len() {
        return rec.iter().zip(asked).all(|(a, b)| *a == b.as_str());
    }
    if rec.len() == 1 || asked.len() == 1 {
        return rec.last().copied() == asked.last().map(String::as_str);
    }
    false
}

impl Report {
    /// An empty report.
    pub fn new() -> Report {
        Report::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one compared statement and its verdict. `tables`: from
    /// `classify(sql).tables`; `at`: when the statement ran. The statement is grouped by
    /// [`crate::fingerprint`]; a problem (any verdict but `Match`) is kept with the first
    /// statement that showed it and the two sides' excerpts.
    pub fn record(&self, sql: &str, tables: &[String], verdict: &Verdict, at: SystemTime) {
        let fp = crate::fingerprint(sql);
        let mut g = self.lock();
        let inner = &mut *g;
        let mut c = Counts {
            compared: 1,
            ..Counts::default()
        };
        match verdict {
            Verdict::Match => c.matched = 1,
            Verdict::Mismatch { .. } => c.mismatched = 1,
            Verdict::TargetError { .. } => c.target_errors = 1,
            Verdict::SourceError { .. } => c.source_errors = 1,
        }
        inner.totals.add(&c);
        inner.first_compared_at = earliest(inner.first_compared_at, at);
        if verdict.is_problem() {
            inner.last_problem_at = latest(inner.last_problem_at, at);
        }
        let b = inner.bucket(fp, sql, tables);
        b.counts.add(&c);
        b.seen(at);
        b.first_compared_at = earliest(b.first_compared_at, at);
        if verdict.is_problem() {
            b.last_problem_at = latest(b.last_problem_at, at);
        }
        let Some(kind) = ProblemKind::of(verdict) else {
            return;
        };
        let err = |s: &str, m: &str| truncate(&format!("ERROR {s}: {m}"), SAMPLE_CHARS);
        let (what, source, target) = match verdict {
            Verdict::Mismatch {
                what,
                source,
                target,
            } => (
                what.clone(),
                truncate(source, SAMPLE_CHARS),
                truncate(target, SAMPLE_CHARS),
            ),
            Verdict::TargetError {
                sqlstate,
                message,
                source,
            } => (
                sqlstate.clone(),
                truncate(source, SAMPLE_CHARS),
                err(sqlstate, message),
            ),
            Verdict::SourceError {
                sqlstate,
                message,
                target,
            } => (
                sqlstate.clone(),
                err(sqlstate, message),
                truncate(target, SAMPLE_CHARS),
            ),
            Verdict::Match => return,
        };
        if let Some(p) = b
            .problems
            .iter_mut()
            .find(|p| p.kind == kind && p.what == what)
        {
            p.count += 1;
            p.first_seen = p.first_seen.min(at);
            p.last_seen = p.last_seen.max(at);
        } else if b.problems.len() < MAX_PROBLEMS_PER_BUCKET {
            b.problems.push(Problem {
                kind,
                what,
                sample: truncate(sql, SAMPLE_CHARS),
                source,
                target,
                count: 1,
                first_seen: at,
                last_seen: at,
            });
        }
    }

    /// Records a statement whose difference could be neither confirmed nor ruled out
    /// (for example the source's own answer changed between re-checks). Counted, not a
    /// problem, not in `compared`.
    pub fn record_inconclusive(&self, sql: &str, tables: &[String], at: SystemTime) {
        let fp = crate::fingerprint(sql);
        let mut g = self.lock();
        g.totals.inconclusive += 1;
        let b = g.bucket(fp, sql, tables);
        b.counts.inconclusive += 1;
        b.seen(at);
    }

    /// Records a statement that was not compared, by reason (a short fixed text such as
    /// `"not comparable"`, `"answer too big"`, `"transaction block"`, `"queue full"`).
    pub fn record_skipped(&self, reason: &'static str) {
        *self.lock().skipped.entry(reason).or_insert(0) += 1;
    }

    /// The totals.
    pub fn totals(&self) -> Totals {
        let g = self.lock();
        Totals {
            compared: g.totals.compared,
            matched: g.totals.matched,
            mismatched: g.totals.mismatched,
            target_errors: g.totals.target_errors,
            source_errors: g.totals.source_errors,
            inconclusive: g.totals.inconclusive,
            skipped: g.skipped.clone(),
            first_compared_at: g.first_compared_at,
            last_problem_at: g.last_problem_at,
        }
    }

    /// Counters per table (a statement naming several tables counts for each), worst
    /// first: most problems (mismatches + target errors), then most compared, then name.
    pub fn per_table(&self) -> Vec<TableStats> {
        let g = self.lock();
        let mut by: HashMap<&str, Counts> = HashMap::new();
        for (_, b) in g.buckets() {
            for t in &b.tables {
                by.entry(t.as_str()).or_default().add(&b.counts);
            }
        }
        let mut v: Vec<(&str, Counts)> = by.into_iter().collect();
        v.sort_by(|(an, a), (bn, b)| {
            b.problems()
                .cmp(&a.problems())
                .then(b.compared.cmp(&a.compared))
                .then(an.cmp(bn))
        });
        v.into_iter()
            .map(|(t, c)| TableStats {
                table: t.to_owned(),
                compared: c.compared,
                matched: c.matched,
                mismatched: c.mismatched,
                target_errors: c.target_errors,
                source_errors: c.source_errors,
                inconclusive: c.inconclusive,
            })
            .collect()
    }

    /// Counters per fingerprint, worst first (as [`Report::per_table`]).
    pub fn per_fingerprint(&self) -> Vec<FingerprintStats> {
        let g = self.lock();
        let mut v: Vec<FingerprintStats> = g
            .buckets()
            .map(|(fp, b)| FingerprintStats {
                fingerprint: fp.to_owned(),
                tables: b.tables.clone(),
                sample: b.sample.clone(),
                compared: b.counts.compared,
                matched: b.counts.matched,
                mismatched: b.counts.mismatched,
                target_errors: b.counts.target_errors,
                source_errors: b.counts.source_errors,
                inconclusive: b.counts.inconclusive,
                first_seen: b.first_seen,
                last_seen: b.last_seen,
            })
            .collect();
        v.sort_by(|a, b| {
            (b.mismatched + b.target_errors)
                .cmp(&(a.mismatched + a.target_errors))
                .then(b.compared.cmp(&a.compared))
                .then(a.fingerprint.cmp(&b.fingerprint))
                .then(a.tables.cmp(&b.tables))
        });
        v
    }

    /// The problems, worst first: target errors, then mismatches, then source errors;
    /// within a kind the most frequent first, then the most recent.
    pub fn errors(&self) -> Vec<ErrorEntry> {
        let g = self.lock();
        let mut v: Vec<ErrorEntry> = g
            .buckets()
            .flat_map(|(fp, b)| {
                b.problems.iter().map(move |p| ErrorEntry {
                    fingerprint: fp.to_owned(),
                    kind: p.kind,
                    what: p.what.clone(),
                    tables: b.tables.clone(),
                    sample: p.sample.clone(),
                    source: p.source.clone(),
                    target: p.target.clone(),
                    count: p.count,
                    first_seen: p.first_seen,
                    last_seen: p.last_seen,
                })
            })
            .collect();
        v.sort_by(|a, b| {
            a.kind
                .cmp(&b.kind)
                .then(b.count.cmp(&a.count))
                .then(b.last_seen.cmp(&a.last_seen))
                .then(a.fingerprint.cmp(&b.fingerprint))
        });
        v
    }

    /// `FORCE RESYNC TABLE`: forgets everything recorded for statements naming `table`
    /// (its counters restart; fingerprints naming it go, with their problems; statements
    /// about other tables stay), then recomputes the totals, so that the error rate,
    /// `first_compared_at` and `last_problem_at` no longer count them. Skipped counts
    /// stay. `table` may be schema-qualified or not: `public.accounts` and `accounts`
    /// match each other; unquoted names are case-folded as PostgreSQL does.
    pub fn reset_table(&self, table: &str) {
        let asked = canonical_table(table);
        let mut g = self.lock();
        let hit = |b: &Bucket| b.tables.iter().any(|t| same_table(t, &asked));
        g.fps.retain(|_, b| !hit(b));
        g.other.retain(|_, b| !hit(b));
        g.recompute();
    }

    /// Clean traffic so far: the time from the later of the first compared statement and
    /// the last problem (mismatch or target error) until `now`; zero if `now` is earlier;
    /// `None` before any comparison.
    pub fn clean_for(&self, now: SystemTime) -> Option<Duration> {
        let g = self.lock();
        let first = g.first_compared_at?;
        let since = g.last_problem_at.map_or(first, |l| l.max(first));
        Some(now.duration_since(since).unwrap_or(Duration::ZERO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn tables(sql: &str) -> Vec<String> {
        crate::classify(sql).tables
    }

    fn mismatch() -> Verdict {
        Verdict::Mismatch {
            what: "rows".into(),
            source: "1 row not in the target: (1, 'a')".into(),
            target: "1 row not in the source: (1, 'b')".into(),
        }
    }

    fn target_error() -> Verdict {
        Verdict::TargetError {
            sqlstate: "42601".into(),
            message: "syntax error at end of input".into(),
            source: "SELECT 1: (120)".into(),
        }
    }

    fn rec(r: &Report, sql: &str, v: &Verdict, at: u64) {
        r.record(sql, &tables(sql), v, t(at));
    }

    #[test]
    fn aggregation_totals_tables_fingerprints_errors() {
        let r = Report::new();
        assert_eq!(r.totals(), Totals::default());
        assert_eq!(r.totals().error_rate(), 0.0);
        assert_eq!(r.clean_for(t(100)), None);

        for aid in 1..=6 {
            let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid}");
            rec(&r, &sql, &Verdict::Match, 10 + aid);
        }
        rec(
            &r,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7",
            &mismatch(),
            20,
        );
        rec(
            &r,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 8",
            &mismatch(),
            25,
        );
        rec(&r, "SELECT 5 !", &target_error(), 30);
        rec(
            &r,
            "SELECT a.aid FROM pgbench_accounts a JOIN pgbench_branches b USING (bid)",
            &Verdict::SourceError {
                sqlstate: "42P01".into(),
                message: "relation does not exist".into(),
                target: "SELECT 0".into(),
            },
            31,
        );
        r.record_inconclusive(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 9",
            &tables("SELECT abalance FROM pgbench_accounts"),
            t(32),
        );
        r.record_skipped("not comparable");
        r.record_skipped("not comparable");
        r.record_skipped("answer too big");

        let tot = r.totals();
        assert_eq!(
            (
                tot.compared,
                tot.matched,
                tot.mismatched,
                tot.target_errors,
                tot.source_errors,
                tot.inconclusive
            ),
            (10, 6, 2, 1, 1, 1)
        );
        assert_eq!(tot.skipped.get("not comparable"), Some(&2));
        assert_eq!(tot.skipped_total(), 3);
        assert!((tot.error_rate() - 0.3).abs() < 1e-9);
        assert_eq!(tot.first_compared_at, Some(t(11)));
        assert_eq!(tot.last_problem_at, Some(t(30)));
        assert_eq!(r.clean_for(t(90)), Some(Duration::from_secs(60)));
        assert_eq!(r.clean_for(t(0)), Some(Duration::ZERO));

        let pt = r.per_table();
        assert_eq!(pt[0].table, "pgbench_accounts");
        assert_eq!(
            (
                pt[0].compared,
                pt[0].matched,
                pt[0].mismatched,
                pt[0].target_errors,
                pt[0].source_errors,
                pt[0].inconclusive
            ),
            (9, 6, 2, 0, 1, 1)
        );
        assert_eq!(pt[1].table, "pgbench_branches");
        assert_eq!((pt[1].compared, pt[1].source_errors), (1, 1));

        let pf = r.per_fingerprint();
        assert_eq!(
            pf[0].fingerprint,
            "SELECT abalance FROM pgbench_accounts WHERE aid = ?"
        );
        assert_eq!(
            pf[0].sample,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1"
        );
        assert_eq!(
            (pf[0].compared, pf[0].mismatched, pf[0].inconclusive),
            (8, 2, 1)
        );
        assert_eq!(
            (pf[0].first_seen, pf[0].last_seen),
            (Some(t(11)), Some(t(32)))
        );
        assert_eq!(pf[1].target_errors, 1);
        assert_eq!(pf.len(), 3);

        let e = r.errors();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].kind, ProblemKind::TargetError);
        assert_eq!(e[0].what, "42601");
        assert_eq!(e[0].sample, "SELECT 5 !");
        assert_eq!(e[0].source, "SELECT 1: (120)");
        assert_eq!(e[0].target, "ERROR 42601: syntax error at end of input");
        assert_eq!(e[1].kind, ProblemKind::Mismatch);
        assert_eq!(e[1].kind.as_str(), "mismatch");
        assert_eq!(
            e[1].sample,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7"
        );
        assert_eq!(
            (e[1].count, e[1].first_seen, e[1].last_seen),
            (2, t(20), t(25))
        );
        assert_eq!(e[1].tables, vec!["pgbench_accounts".to_string()]);
        assert_eq!(e[2].kind, ProblemKind::SourceError);
        assert_eq!(e[2].source, "ERROR 42P01: relation does not exist");
    }

    #[test]
    fn reset_table_forgets_that_table_only() {
        let r = Report::new();
        rec(
            &r,
            "SELECT * FROM accounts WHERE id = 1",
            &Verdict::Match,
            1,
        );
        rec(&r, "SELECT * FROM accounts WHERE id = 2", &mismatch(), 5);
        rec(&r, "SELECT * FROM orders WHERE id = 1", &Verdict::Match, 2);
        rec(&r, "SELECT * FROM orders WHERE id = 2", &target_error(), 3);
        rec(
            &r,
            "SELECT * FROM accounts JOIN orders USING (id)",
            &Verdict::Match,
            4,
        );
        assert_eq!(r.totals().compared, 5);
        assert_eq!(r.totals().last_problem_at, Some(t(5)));

        // Schema-qualified and upper-case: the same table.
        r.reset_table("PUBLIC.Accounts");
        let tot = r.totals();
        assert_eq!(
            (tot.compared, tot.matched, tot.mismatched, tot.target_errors),
            (2, 1, 0, 1)
        );
        assert!((tot.error_rate() - 0.5).abs() < 1e-9);
        assert_eq!(tot.first_compared_at, Some(t(2)));
        assert_eq!(tot.last_problem_at, Some(t(3)));
        assert!(r.per_table().iter().all(|s| s.table != "accounts"));
        let e = r.errors();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].tables, vec!["orders".to_string()]);
        assert_eq!(r.clean_for(t(10)), Some(Duration::from_secs(7)));

        // Its counters restart.
        rec(
            &r,
            "SELECT * FROM accounts WHERE id = 3",
            &Verdict::Match,
            20,
        );
        let acc = r
            .per_table()
            .into_iter()
            .find(|s| s.table == "accounts")
            .unwrap();
        assert_eq!((acc.compared, acc.matched), (1, 1));

        r.reset_table("orders");
        let tot = r.totals();
        assert_eq!(
            (tot.compared, tot.target_errors, tot.last_problem_at),
            (1, 0, None)
        );
        assert_eq!(r.clean_for(t(30)), Some(Duration::from_secs(10)));
        assert!(r.errors().is_empty());
        // Unknown tables and quoted names.
        r.reset_table("nothing");
        assert_eq!(r.totals().compared, 1);
        rec(&r, "SELECT * FROM \"Mixed\"", &mismatch(), 21);
        r.reset_table("mixed");
        assert_eq!(r.totals().mismatched, 1);
        r.reset_table("\"Mixed\"");
        assert_eq!(r.totals().mismatched, 0);
        assert_eq!(r.totals().skipped_total(), 0);
    }

    #[test]
    fn memory_is_bounded() {
        let r = Report::new();
        // Distinct fingerprints (different column names) on distinct tables.
        let n = MAX_FINGERPRINTS + 50;
        for i in 0..n {
            let sql = format!("SELECT c{i} FROM t{i}");
            r.record(&sql, &[format!("t{i}")], &Verdict::Match, t(1));
        }
        let g = r.lock();
        assert_eq!(g.fps.len(), MAX_FINGERPRINTS);
        assert_eq!(g.tables.len(), MAX_TABLES);
        assert_eq!(g.other.len(), 1, "overflow tables all named (other)");
        drop(g);
        let pf = r.per_fingerprint();
        let other = pf.iter().find(|f| f.fingerprint == OTHER).unwrap();
        assert_eq!(other.compared, 50);
        assert_eq!(other.tables, vec![OTHER.to_string()]);
        assert_eq!(r.totals().compared, n as u64);
        let pt = r.per_table();
        assert_eq!(pt.len(), MAX_TABLES + 1);
        // Problems per fingerprint are bounded too; their counts are not lost.
        let r = Report::new();
        for i in 0..20 {
            let v = Verdict::TargetError {
                sqlstate: format!("4260{i}"),
                message: "x".into(),
                source: "y".into(),
            };
            r.record("SELECT 1", &[], &v, t(i));
        }
        assert_eq!(r.errors().len(), MAX_PROBLEMS_PER_BUCKET);
        assert_eq!(r.totals().target_errors, 20);
        // Long statements and excerpts are truncated.
        let long = format!("SELECT '{}'", "x".repeat(1000));
        let v = Verdict::Mismatch {
            what: "rows".into(),
            source: "s".repeat(1000),
            target: "t".repeat(1000),
        };
        let r = Report::new();
        r.record(&long, &[], &v, t(0));
        let e = &r.errors()[0];
        assert!(e.sample.chars().count() <= SAMPLE_CHARS && e.sample.ends_with('…'));
        assert!(e.source.chars().count() <= SAMPLE_CHARS);
        assert!(e.target.chars().count() <= SAMPLE_CHARS);
    }

    #[test]
    fn concurrent_records() {
        let r = Arc::new(Report::new());
        let threads: Vec<_> = (0..4)
            .map(|k| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let v = if i % 100 == 0 {
                            mismatch()
                        } else {
                            Verdict::Match
                        };
                        r.record(
                            &format!("SELECT * FROM t{k} WHERE id = {i}"),
                            &[format!("t{k}")],
                            &v,
                            t(i),
                        );
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let tot = r.totals();
        assert_eq!((tot.compared, tot.mismatched), (2000, 20));
        assert_eq!(r.per_table().len(), 4);
        assert_eq!(r.errors().iter().map(|e| e.count).sum::<u64>(), 20);
    }

    #[test]
    fn table_names() {
        assert_eq!(
            canonical_table("Public.\"My\"\"T\""),
            vec!["public", "\"My\"\"T\""]
        );
        assert_eq!(canonical_table("\"plain\""), vec!["plain"]);
        assert!(same_table("accounts", &canonical_table("public.accounts")));
        assert!(same_table("public.accounts", &canonical_table("accounts")));
        assert!(!same_table(
            "other.accounts",
            &canonical_table("public.accounts")
        ));
        assert!(same_table("\"a.b\"", &canonical_table("\"a.b\"")));
        assert!(!same_table("b", &canonical_table("\"a.b\"")));
    }
}
