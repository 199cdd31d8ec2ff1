//! The server's answer to one request, read from the raw backend messages the proxy
//! received (PostgreSQL documentation, chapter 53 "Frontend/Backend Protocol": 53.2
//! "Message Flow" for which messages answer what, 53.7 "Message Formats" for their
//! layout, 53.8 "Error and Notice Message Fields").
//!
//! Every regular backend message is `Byte1 tag`, `Int32 length` (counting itself but not
//! the tag), body. [`Answer::parse`] reads them in order and folds them into
//! [`Outcome`]s, one per statement executed (a simple `Query` with several statements
//! gives several), until `ReadyForQuery` or the end of the bytes.

use wire::frame::{header, WireError};
use wire::msg;

// Backend message tags not named in `wire::msg` (53.7).
const ROW_DESCRIPTION: u8 = b'T';
const DATA_ROW: u8 = b'D';
const COMMAND_COMPLETE: u8 = b'C';
const EMPTY_QUERY_RESPONSE: u8 = b'I';
const PARSE_COMPLETE: u8 = b'1';
const BIND_COMPLETE: u8 = b'2';
const CLOSE_COMPLETE: u8 = b'3';
const NO_DATA: u8 = b'n';
const PARAMETER_DESCRIPTION: u8 = b't';
const PORTAL_SUSPENDED: u8 = b's';
const NOTIFICATION_RESPONSE: u8 = b'A';
const COPY_IN_RESPONSE: u8 = b'G';
const COPY_OUT_RESPONSE: u8 = b'H';
const COPY_BOTH_RESPONSE: u8 = b'W';
const COPY_DATA: u8 = b'd';
const COPY_DONE: u8 = b'c';
const FUNCTION_CALL_RESPONSE: u8 = b'V';

/// Largest message length accepted, in bytes (the length field, which counts itself).
/// PostgreSQL never sends more than 1 GiB in one message (`MaxAllocSize`).
const MAX_MESSAGE_LEN: usize = 1 << 30;

/// One column of a `RowDescription` (53.7 "RowDescription").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Column {
    /// The field name (an output column name: unquoted identifiers arrive lower-cased,
    /// expressions without alias as PostgreSQL names them, e.g. `?column?`, `count`).
    pub name: String,
    /// The OID of the field's data type (`pg_type.oid`; built-in types have fixed OIDs
    /// below 16384, others are assigned by each cluster).
    pub type_oid: u32,
    /// Format code of the values: 0 text, 1 binary.
    pub format: i16,
}

/// What one statement (or one `Execute`) produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A result set: the `RowDescription` when the request described it (`None`
    /// otherwise, e.g. `Bind`/`Execute` without `Describe`), the `DataRow`s in the order
    /// received, and the `CommandComplete` tag (e.g. `SELECT 3`, `UPDATE 2` for
    /// `UPDATE ... RETURNING`, `COPY 5` for `COPY ... TO STDOUT`, whose `CopyData`
    /// messages are kept as one-value rows). A `RowDescription` followed by
    /// `CommandComplete` (`SELECT 0`) is a `Rows` with no rows.
    ///
    /// Each row holds one value per column: `None` is SQL NULL, otherwise the value's
    /// bytes in the column's format. Special tags, made up by pgshift: `SUSPENDED` when
    /// a `PortalSuspended` ended the outcome (an `Execute` with a row limit reached it),
    /// `FUNCTION CALL` for a `FunctionCallResponse` (one row, one value), and the empty
    /// tag when the answer ended before any tag (a `Describe` without `Execute`).
    Rows {
        /// The `RowDescription`, when there was one.
        columns: Option<Vec<Column>>,
        /// The `DataRow` values.
        rows: Vec<Vec<Option<Vec<u8>>>>,
        /// The `CommandComplete` tag.
        tag: String,
    },
    /// `CommandComplete` without `RowDescription` or `DataRow` before it (tag e.g.
    /// `UPDATE 1`, `INSERT 0 1`, `CREATE TABLE`, `BEGIN`; also `SELECT 0` from an
    /// `Execute` without `Describe`).
    Command {
        /// The `CommandComplete` tag.
        tag: String,
    },
    /// `ErrorResponse` (53.8): it ends the statement; with the extended protocol the
    /// server skips everything else up to `Sync`.
    Error {
        /// Field `C`, the SQLSTATE (Appendix A "PostgreSQL Error Codes").
        sqlstate: String,
        /// Field `M`, the primary message.
        message: String,
    },
    /// `EmptyQueryResponse`: the query string held no statement.
    Empty,
}

/// The server's answer to one request, up to and including `ReadyForQuery`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answer {
    /// One outcome per statement executed, in order.
    pub outcomes: Vec<Outcome>,
    /// Bytes of the input read: through `ReadyForQuery` when one was found, otherwise
    /// through the last complete message (a message cut off at the end is not counted).
    pub bytes: usize,
    /// The transaction status byte of the `ReadyForQuery` that ended the answer (`I`
    /// idle, `T` in a transaction block, `E` in a failed one; 53.7 "ReadyForQuery"), or
    /// `None` when the input ended first.
    pub ready: Option<u8>,
}

/// Reads NUL-terminated text; bytes that are not UTF-8 (a non-UTF8 `client_encoding`)
/// are replaced rather than rejected.
fn cstr(b: &mut &[u8], what: &'static str) -> Result<String, WireError> {
    let Some(nul) = b.iter().position(|&c| c == 0) else {
        return Err(WireError::malformed(what, "string without terminating NUL"));
    };
    let s = String::from_utf8_lossy(&b[..nul]).into_owned();
    *b = &b[nul + 1..];
    Ok(s)
}

fn i16_(b: &mut &[u8], what: &'static str) -> Result<i16, WireError> {
    wire::frame::take_i16(b, what)
}

fn i32_(b: &mut &[u8], what: &'static str) -> Result<i32, WireError> {
    wire::frame::take_i32(b, what)
}

fn done(b: &[u8], what: &'static str) -> Result<(), WireError> {
    if b.is_empty() {
        Ok(())
    } else {
        Err(WireError::malformed(
            what,
            "bytes left over after the message's fields",
        ))
    }
}

/// RowDescription body (53.7): Int16 field count, then per field: String name, Int32
/// table OID, Int16 column number, Int32 type OID, Int16 type size, Int32 type
/// modifier, Int16 format code.
fn parse_row_description(mut b: &[u8]) -> Result<Vec<Column>, WireError> {
    const W: &str = "RowDescription";
    let n = i16_(&mut b, W)?;
    if n < 0 {
        return Err(WireError::malformed(W, format!("negative field count {n}")));
    }
    let mut cols = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let name = cstr(&mut b, W)?;
        let _table = i32_(&mut b, W)?;
        let _attnum = i16_(&mut b, W)?;
        let type_oid = i32_(&mut b, W)? as u32;
        let _typlen = i16_(&mut b, W)?;
        let _typmod = i32_(&mut b, W)?;
        let format = i16_(&mut b, W)?;
        cols.push(Column {
            name,
            type_oid,
            format,
        });
    }
    done(b, W)?;
    Ok(cols)
}

/// DataRow body (53.7): Int16 value count, then per value Int32 length (-1 for NULL)
/// and that many bytes.
fn parse_data_row(mut b: &[u8]) -> Result<Vec<Option<Vec<u8>>>, WireError> {
    const W: &str = "DataRow";
    let n = i16_(&mut b, W)?;
    if n < 0 {
        return Err(WireError::malformed(W, format!("negative value count {n}")));
    }
    let mut row = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = i32_(&mut b, W)?;
        if len == -1 {
            row.push(None);
            continue;
        }
        if len < 0 || len as usize > b.len() {
            return Err(WireError::malformed(
                W,
                format!("value length {len} does not fit the message"),
            ));
        }
        let (v, rest) = b.split_at(len as usize);
        row.push(Some(v.to_vec()));
        b = rest;
    }
    done(b, W)?;
    Ok(row)
}

/// A result set being read: its description and rows, until a tag ends it.
#[derive(Default)]
struct Pending {
    columns: Option<Vec<Column>>,
    rows: Vec<Vec<Option<Vec<u8>>>>,
}

impl Pending {
    fn finish(self, tag: String) -> Outcome {
        Outcome::Rows {
            columns: self.columns,
            rows: self.rows,
            tag,
        }
    }
}

impl Answer {
    /// Parses backend messages from the start of `buf`, in order, until `ReadyForQuery`
    /// (included in [`Answer::bytes`]) or the end of `buf` (a message cut off at the end
    /// is left unread).
    ///
    /// `RowDescription`, `DataRow` and `CommandComplete` make [`Outcome::Rows`];
    /// `CommandComplete` alone makes [`Outcome::Command`]; `PortalSuspended` ends an
    /// outcome like `CommandComplete` with the tag `SUSPENDED`; `ErrorResponse` ends the
    /// current outcome as [`Outcome::Error`] (rows already received are dropped);
    /// `EmptyQueryResponse` is [`Outcome::Empty`]; `CopyOutResponse` starts a result
    /// whose `CopyData` messages are rows of one value. Skipped: `ParseComplete`,
    /// `BindComplete`, `CloseComplete`, `NoData`, `ParameterDescription`,
    /// `ParameterStatus`, `NoticeResponse`, `NotificationResponse`, `CopyInResponse`,
    /// `CopyBothResponse`, `CopyDone`. Rows described or received but not ended by a tag
    /// when the input ends are kept as `Rows` with an empty tag.
    ///
    /// Errors (never a panic): a length field below 4 or above 1 GiB, a message whose
    /// fields do not fit its length, and message types that cannot be part of an answer
    /// (authentication, `BackendKeyData`, unknown tags).
    pub fn parse(buf: &[u8]) -> Result<Answer, WireError> {
        let mut ans = Answer::default();
        let mut pending: Option<Pending> = None;
        let mut at = 0usize;
        while let Some((tag, total)) = header(&buf[at..], MAX_MESSAGE_LEN)? {
            if buf.len() - at < total {
                break;
            }
            let body = &buf[at + 5..at + total];
            at += total;
            ans.bytes = at;
            match tag {
                ROW_DESCRIPTION => {
                    let cols = parse_row_description(body)?;
                    let p = pending.get_or_insert_with(Pending::default);
                    p.columns = Some(cols);
                }
                DATA_ROW => {
                    let row = parse_data_row(body)?;
                    pending.get_or_insert_with(Pending::default).rows.push(row);
                }
                COPY_OUT_RESPONSE => {
                    pending.get_or_insert_with(Pending::default);
                }
                COPY_DATA => {
                    if let Some(p) = pending.as_mut() {
                        p.rows.push(vec![Some(body.to_vec())]);
                    }
                }
                COMMAND_COMPLETE => {
                    let mut b = body;
                    let t = cstr(&mut b, "CommandComplete")?;
                    done(b, "CommandComplete")?;
                    ans.outcomes.push(match pending.take() {
                        Some(p) => p.finish(t),
                        None => Outcome::Command { tag: t },
                    });
                }
                PORTAL_SUSPENDED => {
                    let t = "SUSPENDED".to_owned();
                    ans.outcomes.push(match pending.take() {
                        Some(p) => p.finish(t),
                        None => Outcome::Command { tag: t },
                    });
                }
                msg::ERROR_RESPONSE => {
                    let e = msg::parse_error(body)?;
                    pending = None;
                    ans.outcomes.push(Outcome::Error {
                        sqlstate: e.sqlstate,
                        message: e.message,
                    });
                }
                EMPTY_QUERY_RESPONSE => {
                    if let Some(p) = pending.take() {
                        ans.outcomes.push(p.finish(String::new()));
                    }
                    ans.outcomes.push(Outcome::Empty);
                }
                FUNCTION_CALL_RESPONSE => {
                    let mut b = body;
                    let len = i32_(&mut b, "FunctionCallResponse")?;
                    let v = if len == -1 {
                        None
                    } else if len < 0 || len as usize != b.len() {
                        return Err(WireError::malformed(
                            "FunctionCallResponse",
                            format!("value length {len} does not match the message"),
                        ));
                    } else {
                        Some(b.to_vec())
                    };
                    ans.outcomes.push(Outcome::Rows {
                        columns: None,
                        rows: vec![vec![v]],
                        tag: "FUNCTION CALL".to_owned(),
                    });
                }
                msg::READY_FOR_QUERY => {
                    if body.len() != 1 {
                        return Err(WireError::malformed(
                            "ReadyForQuery",
                            "body is not one status byte",
                        ));
                    }
                    ans.ready = Some(body[0]);
                    break;
                }
                PARSE_COMPLETE
                | BIND_COMPLETE
                | CLOSE_COMPLETE
                | NO_DATA
                | PARAMETER_DESCRIPTION
                | msg::PARAMETER_STATUS
                | msg::NOTICE_RESPONSE
                | NOTIFICATION_RESPONSE
                | COPY_IN_RESPONSE
                | COPY_BOTH_RESPONSE
                | COPY_DONE => {}
                other => {
                    return Err(WireError::malformed(
                        "backend message",
                        format!(
                            "message type '{}' cannot be part of a query's answer",
                            (other as char).escape_default()
                        ),
                    ))
                }
            }
        }
        if let Some(p) = pending.take() {
            ans.outcomes.push(p.finish(String::new()));
        }
        Ok(ans)
    }

    /// A short human excerpt of the answer for reports, at most `max_chars` characters
    /// (an ellipsis `…` marks a cut): for example `SELECT 3: (1, 'a'), (2, 'b') …`,
    /// `UPDATE 1`, `ERROR 42601: syntax error at or near "!"`, `EMPTY QUERY`; several
    /// outcomes are joined with `; `. Values: `NULL`; text-format numbers and booleans as
    /// they are; other text-format values in single quotes; binary-format values (and
    /// text that is not UTF-8) in hex as `\x0102`.
    pub fn summary(&self, max_chars: usize) -> String {
        let mut out = Excerpt::new(max_chars);
        for (i, o) in self.outcomes.iter().enumerate() {
            if i > 0 && !out.push("; ") {
                break;
            }
            if !outcome_summary(o, &mut out) {
                break;
            }
        }
        if self.outcomes.is_empty() {
            out.push("(no result)");
        }
        out.finish()
    }
}

/// Appends the excerpt of one outcome; false once the excerpt is full.
pub(crate) fn outcome_summary(o: &Outcome, out: &mut Excerpt) -> bool {
    match o {
        Outcome::Rows { columns, rows, tag } => {
            let head = if tag.is_empty() { "ROWS" } else { tag };
            if !out.push(head) {
                return false;
            }
            if rows.is_empty() {
                if let (Some(cols), true) = (columns, tag.is_empty()) {
                    return out.push(" ") && out.push(&columns_text(cols));
                }
                return true;
            }
            if !out.push(":") {
                return false;
            }
            for (i, r) in rows.iter().enumerate() {
                if !out.push(if i == 0 { " " } else { ", " }) {
                    return false;
                }
                if !out.push(&row_text(r, columns.as_deref())) {
                    return false;
                }
            }
            true
        }
        Outcome::Command { tag } => out.push(tag),
        Outcome::Error { sqlstate, message } => {
            out.push("ERROR ") && out.push(sqlstate) && out.push(": ") && out.push(message)
        }
        Outcome::Empty => out.push("EMPTY QUERY"),
    }
}

/// `(1, 'a', NULL)`.
pub(crate) fn row_text(row: &[Option<Vec<u8>>], columns: Option<&[Column]>) -> String {
    let mut s = String::from("(");
    for (i, v) in row.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let col = columns.and_then(|c| c.get(i));
        match v {
            None => s.push_str("NULL"),
            Some(v) => value_text(v, col, &mut s),
        }
        if s.len() > 4096 {
            s.push_str(", …");
            break;
        }
    }
    s.push(')');
    s
}

/// Built-in types whose text form reads well unquoted: bool, int8, int2, int4, oid,
/// float4, float8, numeric (OIDs from `pg_type.dat`).
fn unquoted_type(oid: u32) -> bool {
    matches!(oid, 16 | 20 | 21 | 23 | 26 | 700 | 701 | 1700)
}

fn looks_numeric(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        && s.bytes().any(|b| b.is_ascii_digit())
}

fn value_text(v: &[u8], col: Option<&Column>, s: &mut String) {
    let binary = col.is_some_and(|c| c.format == 1);
    let text = if binary {
        None
    } else {
        // Undescribed columns may be binary: text only when it reads as text (no control
        // characters), so that excerpts never carry raw bytes into logs.
        std::str::from_utf8(&v[..v.len().min(1024)])
            .ok()
            .filter(|t| {
                !t.chars()
                    .any(|c| c.is_control() && !matches!(c, '\n' | '\t'))
            })
    };
    match text {
        Some(t) => {
            let bare = match col {
                Some(c) => unquoted_type(c.type_oid),
                None => looks_numeric(t),
            };
            if bare {
                s.push_str(t);
            } else {
                s.push('\'');
                s.push_str(&t.replace('\'', "''"));
                if v.len() > 1024 {
                    s.push('…');
                }
                s.push('\'');
            }
        }
        None => {
            s.push_str("\\x");
            for b in v.iter().take(512) {
                s.push_str(&format!("{b:02x}"));
            }
            if v.len() > 512 {
                s.push('…');
            }
        }
    }
}

/// Name of a common built-in type by OID (`pg_type.dat`), for excerpts.
pub(crate) fn type_name(oid: u32) -> Option<&'static str> {
    Some(match oid {
        16 => "bool",
        17 => "bytea",
        18 => "char",
        19 => "name",
        20 => "int8",
        21 => "int2",
        23 => "int4",
        25 => "text",
        26 => "oid",
        28 => "xid",
        114 => "json",
        142 => "xml",
        650 => "cidr",
        700 => "float4",
        701 => "float8",
        790 => "money",
        829 => "macaddr",
        869 => "inet",
        1000 => "bool[]",
        1005 => "int2[]",
        1007 => "int4[]",
        1009 => "text[]",
        1016 => "int8[]",
        1021 => "float4[]",
        1022 => "float8[]",
        1042 => "bpchar",
        1043 => "varchar",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1184 => "timestamptz",
        1186 => "interval",
        1266 => "timetz",
        1560 => "bit",
        1562 => "varbit",
        1700 => "numeric",
        2205 => "regclass",
        2249 => "record",
        2278 => "void",
        2950 => "uuid",
        3220 => "pg_lsn",
        3802 => "jsonb",
        _ => return None,
    })
}

/// `name type, name type` (type by name when known, else `oid N`).
pub(crate) fn columns_text(cols: &[Column]) -> String {
    let mut s = String::from("(");
    for (i, c) in cols.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&c.name);
        s.push(' ');
        match type_name(c.type_oid) {
            Some(n) => s.push_str(n),
            None => s.push_str(&format!("oid {}", c.type_oid)),
        }
    }
    s.push(')');
    s
}

/// A string that stops growing at a number of characters and then ends with `…`.
pub(crate) struct Excerpt {
    s: String,
    chars: usize,
    max: usize,
    cut: bool,
}

impl Excerpt {
    pub(crate) fn new(max: usize) -> Excerpt {
        Excerpt {
            s: String::new(),
            chars: 0,
            max,
            cut: false,
        }
    }

    /// Appends `t`; false (and marks the cut) when it did not fit.
    pub(crate) fn push(&mut self, t: &str) -> bool {
        if self.cut {
            return false;
        }
        let n = t.chars().count();
        if self.chars + n <= self.max {
            self.s.push_str(t);
            self.chars += n;
            return true;
        }
        // Keep room for " …".
        let room = self.max.saturating_sub(self.chars + 2);
        self.s.extend(t.chars().take(room));
        self.chars += room;
        self.cut = true;
        false
    }

    pub(crate) fn finish(mut self) -> String {
        if !self.cut {
            return self.s;
        }
        let mark = if self.max >= 2 { " …" } else { "…" };
        let mark_chars = mark.chars().count();
        while self.chars + mark_chars > self.max || self.s.ends_with(' ') {
            if self.s.pop().is_none() {
                break;
            }
            self.chars -= 1;
        }
        if self.max >= mark_chars {
            self.s.push_str(mark);
        }
        self.s
    }
}

/// Truncates `s` to at most `max` characters, ending with `…` when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    let mut e = Excerpt::new(max);
    e.push(s);
    e.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    /// Answers captured from real servers (PostgreSQL 13.22 and 17.10, simple and
    /// extended protocol), byte for byte.
    pub(crate) const PG13_FACTORIAL: &[u8] = b"T\x00\x00\x00!\x00\x01?column?\x00\x00\x00\x00\x00\x00\x00\x00\x00\x06\xa4\xff\xff\xff\xff\xff\xff\x00\x00D\x00\x00\x00\r\x00\x01\x00\x00\x00\x03120C\x00\x00\x00\rSELECT 1\x00Z\x00\x00\x00\x05I";
    pub(crate) const PG17_FACTORIAL: &[u8] = b"E\x00\x00\x00[SERROR\x00VERROR\x00C42601\x00Msyntax error at end of input\x00P11\x00Fscan.l\x00L1240\x00Rscanner_yyerror\x00\x00Z\x00\x00\x00\x05I";
    pub(crate) const PG13_BGWRITER: &[u8] = b"T\x00\x00\x00*\x00\x01checkpoints_timed\x00\x00\x000\x07\x00\x01\x00\x00\x00\x14\x00\x08\xff\xff\xff\xff\x00\x00D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x010C\x00\x00\x00\rSELECT 1\x00Z\x00\x00\x00\x05I";
    pub(crate) const PG17_BGWRITER: &[u8] = b"E\x00\x00\x00tSERROR\x00VERROR\x00C42703\x00Mcolumn \"checkpoints_timed\" does not exist\x00P8\x00Fparse_relation.c\x00L3721\x00RerrorMissingColumn\x00\x00Z\x00\x00\x00\x05I";
    pub(crate) const PG13_EXTRACT: &[u8] = b"T\x00\x00\x00\"\x00\x01date_part\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\xbd\x00\x08\xff\xff\xff\xff\x00\x00D\x00\x00\x00\x0e\x00\x01\x00\x00\x00\x042024C\x00\x00\x00\rSELECT 1\x00Z\x00\x00\x00\x05I";
    pub(crate) const PG17_EXTRACT: &[u8] = b"T\x00\x00\x00 \x00\x01extract\x00\x00\x00\x00\x00\x00\x00\x00\x00\x06\xa4\xff\xff\xff\xff\xff\xff\x00\x00D\x00\x00\x00\x0e\x00\x01\x00\x00\x00\x042024C\x00\x00\x00\rSELECT 1\x00Z\x00\x00\x00\x05I";
    /// Parse/Bind/Describe(portal)/Execute/Sync of `SELECT $1::int AS aid, $1::text AS
    /// abalance` with `$1 = '7'`.
    const PG17_EXTENDED: &[u8] = b"1\x00\x00\x00\x042\x00\x00\x00\x04T\x00\x00\x007\x00\x02aid\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00abalance\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00D\x00\x00\x00\x10\x00\x02\x00\x00\x00\x017\x00\x00\x00\x017C\x00\x00\x00\rSELECT 1\x00Z\x00\x00\x00\x05I";
    /// `CREATE TEMP TABLE t(a int); INSERT INTO t VALUES (1),(2); UPDATE t SET a = a + 1
    /// RETURNING a; DELETE FROM t` as one simple Query.
    const PG17_MULTI: &[u8] = b"C\x00\x00\x00\x11CREATE TABLE\x00C\x00\x00\x00\x0fINSERT 0 2\x00T\x00\x00\x00\x1a\x00\x01a\x00\x00\x00@\x02\x00\x01\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x012D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x013C\x00\x00\x00\rUPDATE 2\x00C\x00\x00\x00\rDELETE 2\x00Z\x00\x00\x00\x05I";
    const PG17_EMPTY: &[u8] = b"I\x00\x00\x00\x04Z\x00\x00\x00\x05I";
    const PG17_NULLS: &[u8] = b"T\x00\x00\x00B\x00\x03n\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00s\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00b\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x10\x00\x01\xff\xff\xff\xff\x00\x00D\x00\x00\x00\x17\x00\x03\xff\xff\xff\xff\x00\x00\x00\x04it's\x00\x00\x00\x01tC\x00\x00\x00\rSELECT 1\x00Z\x00\x00\x00\x05I";

    fn col(name: &str, type_oid: u32) -> Column {
        Column {
            name: name.into(),
            type_oid,
            format: 0,
        }
    }

    fn v(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn real_simple_query_answers() {
        let a = Answer::parse(PG13_FACTORIAL).unwrap();
        assert_eq!(a.bytes, PG13_FACTORIAL.len());
        assert_eq!(a.ready, Some(b'I'));
        assert_eq!(
            a.outcomes,
            vec![Outcome::Rows {
                columns: Some(vec![col("?column?", 1700)]),
                rows: vec![vec![v("120")]],
                tag: "SELECT 1".into(),
            }]
        );
        let a = Answer::parse(PG17_FACTORIAL).unwrap();
        assert_eq!(
            a.outcomes,
            vec![Outcome::Error {
                sqlstate: "42601".into(),
                message: "syntax error at end of input".into(),
            }]
        );
        let a = Answer::parse(PG13_EXTRACT).unwrap();
        assert!(
            matches!(&a.outcomes[0], Outcome::Rows { columns: Some(c), .. } if c[0] == col("date_part", 701))
        );
    }

    #[test]
    fn real_extended_query_answer_skips_parse_and_bind_complete() {
        let a = Answer::parse(PG17_EXTENDED).unwrap();
        assert_eq!(
            a.outcomes,
            vec![Outcome::Rows {
                columns: Some(vec![col("aid", 23), col("abalance", 25)]),
                rows: vec![vec![v("7"), v("7")]],
                tag: "SELECT 1".into(),
            }]
        );
    }

    #[test]
    fn real_multi_statement_answer() {
        let a = Answer::parse(PG17_MULTI).unwrap();
        assert_eq!(
            a.outcomes,
            vec![
                Outcome::Command {
                    tag: "CREATE TABLE".into()
                },
                Outcome::Command {
                    tag: "INSERT 0 2".into()
                },
                Outcome::Rows {
                    columns: Some(vec![col("a", 23)]),
                    rows: vec![vec![v("2")], vec![v("3")]],
                    tag: "UPDATE 2".into(),
                },
                Outcome::Command {
                    tag: "DELETE 2".into()
                },
            ]
        );
        assert_eq!(
            Answer::parse(PG17_EMPTY).unwrap().outcomes,
            vec![Outcome::Empty]
        );
    }

    #[test]
    fn rows_without_description_and_zero_rows() {
        let mut b = BytesMut::new();
        // Bind/Execute without Describe.
        msg::put_msg(&mut b, BIND_COMPLETE, |_| {});
        msg::data_row(&mut b, &[Some("1"), None]);
        msg::command_complete(&mut b, "SELECT 1");
        // A described query with no rows.
        msg::row_description_text(&mut b, &["x"]);
        msg::command_complete(&mut b, "SELECT 0");
        // Execute without Describe and no rows: a Command.
        msg::command_complete(&mut b, "SELECT 0");
        msg::ready_for_query(&mut b, b'T');
        let a = Answer::parse(&b).unwrap();
        assert_eq!(a.ready, Some(b'T'));
        assert_eq!(
            a.outcomes,
            vec![
                Outcome::Rows {
                    columns: None,
                    rows: vec![vec![v("1"), None]],
                    tag: "SELECT 1".into()
                },
                Outcome::Rows {
                    columns: Some(vec![col("x", 25)]),
                    rows: vec![],
                    tag: "SELECT 0".into()
                },
                Outcome::Command {
                    tag: "SELECT 0".into()
                },
            ]
        );
    }

    #[test]
    fn skipped_messages_suspended_portal_and_error_mid_rows() {
        let mut b = BytesMut::new();
        msg::parameter_status(&mut b, "TimeZone", "UTC");
        msg::notice_response(&mut b, "NOTICE", "00000", "hello");
        msg::put_msg(&mut b, PARSE_COMPLETE, |_| {});
        msg::put_msg(&mut b, PARAMETER_DESCRIPTION, |b| {
            b.put_i16(1);
            b.put_i32(23);
        });
        msg::put_msg(&mut b, NO_DATA, |_| {});
        msg::put_msg(&mut b, CLOSE_COMPLETE, |_| {});
        msg::data_row(&mut b, &[Some("a")]);
        msg::put_msg(&mut b, PORTAL_SUSPENDED, |_| {});
        msg::data_row(&mut b, &[Some("b")]);
        msg::error_response(&mut b, "ERROR", "57014", "canceling statement", None, None);
        msg::ready_for_query(&mut b, b'E');
        // Bytes after ReadyForQuery belong to the next answer.
        msg::command_complete(&mut b, "SELECT 9");
        let a = Answer::parse(&b).unwrap();
        assert_eq!(a.ready, Some(b'E'));
        assert_eq!(a.bytes, b.len() - 14);
        assert_eq!(
            a.outcomes,
            vec![
                Outcome::Rows {
                    columns: None,
                    rows: vec![vec![v("a")]],
                    tag: "SUSPENDED".into()
                },
                Outcome::Error {
                    sqlstate: "57014".into(),
                    message: "canceling statement".into()
                },
            ]
        );
    }

    #[test]
    fn copy_out_rows_and_function_call() {
        let mut b = BytesMut::new();
        msg::put_msg(&mut b, COPY_OUT_RESPONSE, |b| {
            b.put_i8(0);
            b.put_i16(1);
            b.put_i16(0);
        });
        msg::put_msg(&mut b, COPY_DATA, |b| b.put_slice(b"1\tx\n"));
        msg::put_msg(&mut b, COPY_DATA, |b| b.put_slice(b"2\ty\n"));
        msg::put_msg(&mut b, COPY_DONE, |_| {});
        msg::command_complete(&mut b, "COPY 2");
        msg::put_msg(&mut b, FUNCTION_CALL_RESPONSE, |b| b.put_i32(-1));
        let a = Answer::parse(&b).unwrap();
        assert_eq!(a.ready, None);
        assert_eq!(a.bytes, b.len());
        assert_eq!(
            a.outcomes,
            vec![
                Outcome::Rows {
                    columns: None,
                    rows: vec![vec![v("1\tx\n")], vec![v("2\ty\n")]],
                    tag: "COPY 2".into()
                },
                Outcome::Rows {
                    columns: None,
                    rows: vec![vec![None]],
                    tag: "FUNCTION CALL".into()
                },
            ]
        );
    }

    #[test]
    fn truncated_input_stops_before_the_cut_message() {
        let n = PG13_FACTORIAL.len();
        // Cut inside the CommandComplete: the rows are kept, unterminated.
        let cut = &PG13_FACTORIAL[..n - 8];
        let a = Answer::parse(cut).unwrap();
        assert_eq!(a.ready, None);
        assert_eq!(a.bytes, 34 + 14);
        assert!(
            matches!(&a.outcomes[..], [Outcome::Rows { tag, rows, .. }] if tag.is_empty() && rows.len() == 1)
        );
        for k in 0..n {
            let _ = Answer::parse(&PG13_FACTORIAL[..k]);
        }
        assert_eq!(Answer::parse(b"").unwrap(), Answer::default());
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let bad: &[&[u8]] = &[
            b"D\x00\x00\x00\x03",                         // length below 4
            b"D\xff\xff\xff\xff",                         // negative length
            b"D\x00\x00\x00\x06\x00\x01",                 // value count 1, no value
            b"D\x00\x00\x00\x0a\x00\x01\x00\x00\x00\x09", // value longer than the message
            b"D\x00\x00\x00\x0a\x00\x01\xff\xff\xff\xfe", // length -2
            b"D\x00\x00\x00\x06\xff\xff",                 // negative count
            b"T\x00\x00\x00\x06\x00\x01",                 // field without name
            b"C\x00\x00\x00\x06ab",                       // tag without NUL
            b"C\x00\x00\x00\x07a\x00b",                   // bytes after the tag
            b"E\x00\x00\x00\x05C",                        // error fields unterminated
            b"Z\x00\x00\x00\x04",                         // ReadyForQuery without status
            b"R\x00\x00\x00\x08\x00\x00\x00\x00",         // authentication
            b"?\x00\x00\x00\x04",                         // unknown
            b"V\x00\x00\x00\x08\x00\x00\x00\x05",         // function result too short
        ];
        for b in bad {
            assert!(Answer::parse(b).is_err(), "{b:?}");
        }
        // Every prefix and every single-byte corruption of real answers: no panic.
        for real in [PG17_EXTENDED, PG17_MULTI, PG17_BGWRITER, PG17_NULLS] {
            for k in 0..real.len() {
                let _ = Answer::parse(&real[..k]);
                for x in [0u8, 0x7f, 0xff] {
                    let mut m = real.to_vec();
                    m[k] = x;
                    let _ = Answer::parse(&m);
                }
            }
        }
    }

    #[test]
    fn non_utf8_text_is_not_an_error() {
        let mut b = BytesMut::new();
        msg::put_msg(&mut b, ROW_DESCRIPTION, |b| {
            b.put_i16(1);
            b.put_slice(b"caf\xe9\0");
            b.put_slice(&[0; 6]);
            b.put_i32(25);
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(0);
        });
        msg::put_msg(&mut b, DATA_ROW, |b| {
            b.put_i16(1);
            b.put_i32(2);
            b.put_slice(b"\xe9\xe9");
        });
        msg::command_complete(&mut b, "SELECT 1");
        let a = Answer::parse(&b).unwrap();
        assert_eq!(a.summary(100), "SELECT 1: (\\xe9e9)");
    }

    #[test]
    fn summaries() {
        let a = Answer::parse(PG17_NULLS).unwrap();
        assert_eq!(a.summary(100), "SELECT 1: (NULL, 'it''s', t)");
        let a = Answer::parse(PG17_FACTORIAL).unwrap();
        assert_eq!(a.summary(100), "ERROR 42601: syntax error at end of input");
        assert_eq!(a.summary(20).chars().count(), 20);
        assert!(a.summary(20).ends_with(" …"), "{}", a.summary(20));
        let a = Answer::parse(PG17_MULTI).unwrap();
        assert_eq!(
            a.summary(200),
            "CREATE TABLE; INSERT 0 2; UPDATE 2: (2), (3); DELETE 2"
        );
        assert_eq!(
            Answer::parse(PG17_EMPTY).unwrap().summary(50),
            "EMPTY QUERY"
        );
        assert_eq!(Answer::default().summary(50), "(no result)");
        // Many rows: cut, with the ellipsis, within the limit.
        let rows = (0..1000).map(|i| vec![v(&i.to_string()), v("a")]).collect();
        let a = Answer {
            outcomes: vec![Outcome::Rows {
                columns: None,
                rows,
                tag: "SELECT 1000".into(),
            }],
            ..Answer::default()
        };
        let s = a.summary(40);
        assert!(s.starts_with("SELECT 1000: (0, 'a'), (1, 'a')"), "{s}");
        assert!(s.ends_with('…') && s.chars().count() <= 40, "{s}");
        // Binary values in hex.
        let a = Answer {
            outcomes: vec![Outcome::Rows {
                columns: Some(vec![Column {
                    name: "x".into(),
                    type_oid: 23,
                    format: 1,
                }]),
                rows: vec![vec![Some(vec![0, 0, 0, 7])]],
                tag: "SELECT 1".into(),
            }],
            ..Answer::default()
        };
        assert_eq!(a.summary(50), "SELECT 1: (\\x00000007)");
        for max in 0..8 {
            assert!(a.summary(max).chars().count() <= max, "{max}");
        }
    }
}
