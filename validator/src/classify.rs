//! The AST walk behind [`crate::classify`] and [`crate::is_read_only`].
//!
//! One [`Walker`] visits every statement of a Query text, including statements and
//! queries nested anywhere (CTEs, subqueries, `EXPLAIN`, `PREPARE`), and folds what it
//! sees into a kind (strongest wins), a read-only verdict with its first reason, and the
//! tables named.

use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, CopySource, Expr, Ident, ObjectName, ObjectNamePart, ObjectType, Query, Select,
    Set, Statement, TableFactor, UtilityOption, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::functions::not_read_only_reason;
use crate::Kind;

/// What a walk found.
pub(crate) struct Walk {
    pub kind: Kind,
    pub read_only: bool,
    pub reason: Option<String>,
    pub tables: Vec<String>,
}

/// Parses `sql` with the PostgreSQL dialect and walks it. `want_tables: false` skips the
/// table list and stops at the first reason for "not read-only" (the fast path).
pub(crate) fn walk(sql: &str, want_tables: bool) -> Walk {
    let statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(s) => s,
        Err(e) => {
            return Walk {
                kind: Kind::Unknown,
                read_only: false,
                reason: Some(format!("does not parse ({e})")),
                tables: Vec::new(),
            }
        }
    };
    if statements.is_empty() {
        return Walk {
            kind: Kind::Unknown,
            read_only: false,
            reason: Some("empty query".to_owned()),
            tables: Vec::new(),
        };
    }
    let mut w = Walker {
        kind: Kind::Read,
        reason: None,
        tables: Vec::new(),
        want_tables,
        ctes: Vec::new(),
        cte_frames: Vec::new(),
        skip_next_relation: false,
    };
    for st in &statements {
        if st.visit(&mut w).is_break() {
            break;
        }
    }
    Walk {
        kind: w.kind,
        read_only: w.reason.is_none(),
        reason: w.reason,
        tables: w.tables,
    }
}

struct Walker {
    kind: Kind,
    /// First reason the text is not read-only; `None` means read-only so far.
    reason: Option<String>,
    tables: Vec<String>,
    want_tables: bool,
    /// CTE names in scope (canonical form), innermost last.
    ctes: Vec<String>,
    /// How many names each open query pushed onto `ctes`.
    cte_frames: Vec<usize>,
    /// Set by a table factor that is a function call: its name is not a table.
    skip_next_relation: bool,
}

impl Walker {
    fn kind(&mut self, k: Kind) {
        if k.strength() > self.kind.strength() {
            self.kind = k;
        }
    }

    /// Records a reason (the first one wins); in fast-path mode stops the walk without
    /// building the reason text.
    fn deny(&mut self, why: impl FnOnce() -> String) -> ControlFlow<()> {
        if !self.want_tables {
            self.reason = Some(String::new());
            return ControlFlow::Break(());
        }
        if self.reason.is_none() {
            self.reason = Some(why());
        }
        ControlFlow::Continue(())
    }

    fn add_table(&mut self, name: &ObjectName) {
        if !self.want_tables {
            return;
        }
        let Some(canon) = canonical_name(name) else {
            return;
        };
        if name.0.len() == 1 && self.ctes.contains(&canon) {
            return;
        }
        if !self.tables.contains(&canon) {
            self.tables.push(canon);
        }
    }

    fn check_function(&mut self, name: &ObjectName) -> ControlFlow<()> {
        match function_name(name) {
            Ok(n) => match not_read_only_reason(&n) {
                None => ControlFlow::Continue(()),
                Some(r) => self.deny(|| r),
            },
            Err(shown) => {
                self.deny(|| format!("function {shown}() is not a built-in known to be read-only"))
            }
        }
    }
}

impl Visitor for Walker {
    type Break = ();

    fn pre_visit_statement(&mut self, st: &Statement) -> ControlFlow<()> {
        use Statement as S;
        let (kind, not_ro): (Kind, Option<&str>) = match st {
            // SELECT / VALUES / TABLE / WITH: read unless something below says otherwise.
            S::Query(_) => (Kind::Read, None),
            // SHOW only reads a setting (SQL command reference: SHOW).
            S::ShowVariable { .. }
            | S::ShowVariables { .. }
            | S::ShowStatus { .. }
            | S::ShowCreate { .. }
            | S::ShowColumns { .. }
            | S::ShowTables { .. }
            | S::ShowViews { .. }
            | S::ShowFunctions { .. }
            | S::ShowDatabases { .. }
            | S::ShowSchemas { .. }
            | S::ShowCatalogs { .. }
            | S::ShowCollation { .. }
            | S::ShowCharset(_)
            | S::ShowObjects(_)
            | S::ShowProcessList { .. } => (Kind::Read, None),
            // EXPLAIN takes the kind of what it explains (walked below); ANALYZE runs it.
            S::Explain {
                analyze, options, ..
            } => {
                if *analyze || options.as_deref().is_some_and(has_analyze_option) {
                    (
                        Kind::Read,
                        Some("EXPLAIN ANALYZE executes the statement it explains"),
                    )
                } else {
                    (Kind::Read, None)
                }
            }
            // Data-modifying statements; log_statement = 'mod' also counts TRUNCATE and
            // COPY FROM (server configuration, "What to Log").
            S::Insert(_) => (Kind::Dml, Some("INSERT writes")),
            S::Update(_) => (Kind::Dml, Some("UPDATE writes")),
            S::Delete(_) => (Kind::Dml, Some("DELETE writes")),
            S::Merge(_) => (Kind::Dml, Some("MERGE writes")),
            S::Truncate(_) => (Kind::Dml, Some("TRUNCATE writes")),
            S::Copy { to: false, .. } => (Kind::Dml, Some("COPY FROM writes")),
            S::Copy { to: true, .. } => (
                Kind::Utility,
                Some("COPY TO uses the COPY sub-protocol (not routed as a read)"),
            ),
            S::CopyIntoSnowflake { .. }
            | S::LoadData { .. }
            | S::Directory { .. }
            | S::Unload { .. }
            | S::ExportData(_) => (Kind::Dml, Some("bulk load or unload")),
            // Transaction control (SQL commands BEGIN, START TRANSACTION, COMMIT,
            // ROLLBACK, SAVEPOINT, RELEASE SAVEPOINT, SET TRANSACTION): routing is decided
            // by `transaction_start`, not by these statements.
            S::StartTransaction { .. }
            | S::Commit { .. }
            | S::Rollback { .. }
            | S::Savepoint { .. }
            | S::ReleaseSavepoint { .. }
            | S::Set(Set::SetTransaction { .. }) => {
                (Kind::Transaction, Some("transaction control statement"))
            }
            // Definitions: log_statement = 'ddl' ("CREATE, ALTER, and DROP statements"),
            // plus COMMENT, GRANT, REVOKE, which PostgreSQL also logs as DDL.
            S::CreateView(_)
            | S::CreateTable(_)
            | S::CreateVirtualTable { .. }
            | S::CreateIndex(_)
            | S::CreateRole(_)
            | S::CreateSecret { .. }
            | S::CreateServer(_)
            | S::CreatePolicy(_)
            | S::CreateConnector(_)
            | S::CreateOperator(_)
            | S::CreateOperatorFamily(_)
            | S::CreateOperatorClass(_)
            | S::CreateTextSearch(_)
            | S::CreateExtension(_)
            | S::CreateCollation(_)
            | S::CreateSchema { .. }
            | S::CreateDatabase { .. }
            | S::CreateFunction(_)
            | S::CreateTrigger(_)
            | S::CreateProcedure { .. }
            | S::CreateMacro { .. }
            | S::CreateStage { .. }
            | S::CreateFileFormat { .. }
            | S::CreateWarehouse(_)
            | S::CreateSequence { .. }
            | S::CreateDomain(_)
            | S::CreateType { .. }
            | S::CreateUser(_)
            | S::AlterTable(_)
            | S::AlterSchema(_)
            | S::AlterIndex { .. }
            | S::AlterView { .. }
            | S::AlterFunction(_)
            | S::AlterType(_)
            | S::AlterCollation(_)
            | S::AlterOperator(_)
            | S::AlterOperatorFamily(_)
            | S::AlterOperatorClass(_)
            | S::AlterTextSearch(_)
            | S::AlterRole { .. }
            | S::AlterPolicy(_)
            | S::AlterConnector { .. }
            | S::AlterUser(_)
            | S::Drop { .. }
            | S::DropFunction(_)
            | S::DropDomain(_)
            | S::DropProcedure { .. }
            | S::DropSecret { .. }
            | S::DropPolicy(_)
            | S::DropConnector { .. }
            | S::DropExtension(_)
            | S::DropOperator(_)
            | S::DropOperatorFamily(_)
            | S::DropOperatorClass(_)
            | S::DropTrigger(_)
            | S::Comment { .. }
            | S::Grant(_)
            | S::Deny(_)
            | S::Revoke(_)
            | S::RenameTable(_) => (Kind::Ddl, Some("schema or privilege change")),
            // Everything else: SET, RESET, DISCARD, LISTEN, UNLISTEN, NOTIFY, PREPARE,
            // EXECUTE, DEALLOCATE, VACUUM, ANALYZE, LOCK, CALL, DECLARE, FETCH, CLOSE, ...
            // PREPARE's own statement is walked as well (log_statement counts PREPARE by
            // its contained command).
            _ => (Kind::Utility, Some("utility statement")),
        };
        self.kind(kind);
        if self.want_tables {
            match st {
                S::Copy {
                    source: CopySource::Table { table_name, .. },
                    ..
                } => self.add_table(table_name),
                S::Drop {
                    object_type: ObjectType::Table | ObjectType::View | ObjectType::MaterializedView,
                    names,
                    ..
                } => {
                    for n in names {
                        self.add_table(n);
                    }
                }
                _ => {}
            }
        }
        match not_ro {
            None => ControlFlow::Continue(()),
            Some(why) => self.deny(|| format!("{why}: {}", statement_head(st))),
        }
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        let mut pushed = 0;
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.ctes.push(ident_canonical(&cte.alias.name));
                pushed += 1;
            }
        }
        self.cte_frames.push(pushed);
        if let Some(lock) = q.locks.first() {
            // SQL command reference: SELECT, "The Locking Clause".
            return self.deny(|| format!("locking clause FOR {} takes row locks", lock.lock_type));
        }
        if q.for_clause.is_some() || q.settings.is_some() || q.format_clause.is_some() {
            return self.deny(|| "query clause foreign to PostgreSQL".to_owned());
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        let n = self.cte_frames.pop().unwrap_or(0);
        self.ctes.truncate(self.ctes.len().saturating_sub(n));
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        if s.into.is_some() {
            // SQL command reference: SELECT INTO "creates a new table".
            self.kind(Kind::Ddl);
            return self.deny(|| "SELECT INTO creates a table".to_owned());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
        match tf {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => {
                // `FROM f(...)`: a set-returning function, not a table.
                self.skip_next_relation = true;
                self.check_function(name)
            }
            TableFactor::Function { name, .. } => self.check_function(name),
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
        if std::mem::take(&mut self.skip_next_relation) {
            return ControlFlow::Continue(());
        }
        self.add_table(name);
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        match e {
            Expr::Function(f) => self.check_function(&f.name),
            Expr::BinaryOp {
                op: op @ (BinaryOperator::PGCustomBinaryOperator(_) | BinaryOperator::Custom(_)),
                ..
            } => self.deny(|| format!("operator {op} may be user-defined")),
            _ => ControlFlow::Continue(()),
        }
    }
}

/// `EXPLAIN (ANALYZE [true|on|1], ...)`: present unless explicitly switched off.
fn has_analyze_option(opts: &[UtilityOption]) -> bool {
    opts.iter().any(|o| {
        o.name.value.eq_ignore_ascii_case("analyze")
            && !matches!(&o.arg, Some(arg) if is_false_value(arg))
    })
}

/// `false`, `off`, `0`, `'off'`, `'false'`, `'0'` (PostgreSQL's boolean option spellings).
fn is_false_value(e: &Expr) -> bool {
    let s = match e {
        Expr::Value(v) => match &v.value {
            Value::Boolean(b) => return !b,
            Value::Number(n, _) => n.as_str(),
            Value::SingleQuotedString(s) => s.as_str(),
            _ => return false,
        },
        Expr::Identifier(i) => i.value.as_str(),
        _ => return false,
    };
    ["false", "off", "0", "no"]
        .iter()
        .any(|f| s.eq_ignore_ascii_case(f))
}

/// The first words of a statement, for reasons in logs (never literals).
fn statement_head(st: &Statement) -> String {
    let text = st.to_string();
    let mut out = String::new();
    for w in text.split_whitespace().take(3) {
        if !w.chars().all(|c| c.is_ascii_alphabetic() || c == '_') {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    out
}

/// Canonical text of one identifier: unquoted names fold to lower case (4.1.1), and a
/// name is written in double quotes only when it would not read back the same without
/// them (as `quote_ident` does).
pub(crate) fn ident_canonical(i: &Ident) -> String {
    if i.quote_style.is_none() {
        return i.value.to_lowercase();
    }
    let v = &i.value;
    let plain = v
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'$');
    if plain {
        v.clone()
    } else {
        format!("\"{}\"", v.replace('"', "\"\""))
    }
}

/// `schema.table` (as written), each part canonical; `None` for exotic name parts.
fn canonical_name(name: &ObjectName) -> Option<String> {
    let mut out = String::new();
    for part in &name.0 {
        let ObjectNamePart::Identifier(i) = part else {
            return None;
        };
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&ident_canonical(i));
    }
    Some(out)
}

/// A function's built-in name (case-folded, `pg_catalog.` removed), or, for anything
/// that is not a built-in candidate (other schema, exotic name), its text for the reason.
fn function_name(name: &ObjectName) -> Result<String, String> {
    let ident = |p: &ObjectNamePart| match p {
        ObjectNamePart::Identifier(i) => Some(if i.quote_style.is_none() {
            i.value.to_lowercase()
        } else {
            i.value.clone()
        }),
        ObjectNamePart::Function(_) => None,
    };
    match name.0.as_slice() {
        [f] => ident(f).ok_or_else(|| name.to_string()),
        [schema, f] if ident(schema).as_deref() == Some("pg_catalog") => {
            ident(f).ok_or_else(|| name.to_string())
        }
        _ => Err(name.to_string()),
    }
}
