//! The lexical scan behind [`crate::compare::mode_for`] (its documentation gives the
//! lists and their sources) and the parse-free fallback of [`crate::compare::ordered`].

use crate::compare::Mode;
use crate::lex::{Lexer, Tok};

/// Functions whose replay acts on the target beyond the statement: not compared.
fn none_function(f: &str) -> bool {
    matches!(
        f,
        "pg_advisory_lock"
            | "pg_advisory_lock_shared"
            | "pg_try_advisory_lock"
            | "pg_try_advisory_lock_shared"
            | "pg_advisory_unlock"
            | "pg_advisory_unlock_shared"
            | "pg_advisory_unlock_all"
            | "pg_terminate_backend"
            | "pg_cancel_backend"
            | "pg_reload_conf"
            | "pg_rotate_logfile"
            | "pg_promote"
            | "pg_log_backend_memory_contexts"
            | "pg_switch_wal"
            | "pg_switch_xlog"
            | "pg_create_restore_point"
            | "pg_start_backup"
            | "pg_stop_backup"
            | "pg_replication_slot_advance"
            | "pg_drop_replication_slot"
            | "pg_logical_emit_message"
            | "pg_notify"
            | "lo_import"
            | "lo_export"
    ) || [
        "pg_backup_",
        "pg_wal_replay_",
        "pg_xlog_replay_",
        "pg_create_",
        "pg_copy_",
        "pg_replication_origin_",
        "pg_logical_slot_",
        "pg_stat_reset",
        "pg_file_",
        "dblink",
    ]
    .iter()
    .any(|p| f.starts_with(p))
}

/// Set-returning functions over server state: rows differ by server.
fn columns_function(f: &str) -> bool {
    matches!(
        f,
        "pg_show_all_settings"
            | "pg_show_all_file_settings"
            | "pg_hba_file_rules"
            | "pg_ident_file_mappings"
            | "pg_available_extensions"
            | "pg_available_extension_versions"
            | "pg_lock_status"
            | "pg_prepared_xact"
            | "pg_prepared_statement"
            | "pg_cursor"
            | "pg_timezone_names"
            | "pg_timezone_abbrevs"
            | "pg_config"
            | "pg_get_keywords"
            | "pg_get_catalog_foreign_keys"
            | "pg_get_replication_slots"
            | "pg_get_publication_tables"
            | "pg_get_wal_resource_managers"
            | "pg_get_backend_memory_contexts"
            | "pg_get_shmem_allocations"
            | "pg_get_wait_events"
    ) || f.starts_with("pg_ls_")
        || f.starts_with("pg_stat_get_")
}

/// Functions whose value differs between any two servers.
fn shape_function(f: &str) -> bool {
    matches!(
        f,
        "now"
            | "clock_timestamp"
            | "statement_timestamp"
            | "transaction_timestamp"
            | "timeofday"
            | "random"
            | "random_normal"
            | "setseed"
            | "gen_random_uuid"
            | "uuidv4"
            | "uuidv7"
            | "uuid_generate_v1"
            | "uuid_generate_v1mc"
            | "uuid_generate_v4"
            | "gen_random_bytes"
            | "gen_salt"
            | "version"
            | "pg_backend_pid"
            | "inet_server_addr"
            | "inet_server_port"
            | "inet_client_addr"
            | "inet_client_port"
            | "pg_postmaster_start_time"
            | "pg_conf_load_time"
            | "pg_jit_available"
            | "pg_my_temp_schema"
            | "pg_blocking_pids"
            | "pg_safe_snapshot_blocking_pids"
            | "pg_notification_queue_usage"
            | "pg_visible_in_snapshot"
            | "pg_xact_status"
            | "pg_xact_commit_timestamp"
            | "mxid_age"
            | "pg_split_walfile_name"
            | "pg_wal_lsn_diff"
            | "pg_database_size"
            | "pg_relation_size"
            | "pg_total_relation_size"
            | "pg_table_size"
            | "pg_indexes_size"
            | "pg_tablespace_size"
            | "pg_column_size"
            | "pg_column_compression"
            | "pg_relation_filenode"
            | "pg_relation_filepath"
            | "pg_filenode_relation"
            | "pg_stat_file"
            | "pg_read_file"
            | "pg_read_binary_file"
            | "nextval"
            | "currval"
            | "lastval"
            | "setval"
            | "pg_sequence_last_value"
            | "pg_sequence_parameters"
    ) || [
        "txid_",
        "pg_current_",
        "pg_last_",
        "pg_snapshot_",
        "pg_walfile_name",
        "pg_control_",
        "pg_get_",
    ]
    .iter()
    .any(|p| f.starts_with(p))
}

/// Key words (SQL value functions) whose value depends on the time or the role.
fn shape_keyword(w: &str) -> bool {
    matches!(
        w,
        "current_timestamp"
            | "current_time"
            | "current_date"
            | "localtime"
            | "localtimestamp"
            | "current_user"
            | "session_user"
            | "current_role"
            | "user"
    )
}

/// Settings that identify the server (SHOW / current_setting).
fn server_setting(name: &str) -> bool {
    matches!(
        name,
        "server_version"
            | "server_version_num"
            | "port"
            | "data_directory"
            | "config_file"
            | "hba_file"
            | "ident_file"
            | "external_pid_file"
            | "cluster_name"
            | "listen_addresses"
            | "unix_socket_directories"
            | "unix_socket_group"
            | "unix_socket_permissions"
            | "data_checksums"
            | "data_directory_mode"
            | "shared_memory_size"
            | "shared_memory_size_in_huge_pages"
            | "in_hot_standby"
            | "log_directory"
            | "log_filename"
            | "krb_server_keyfile"
            | "ssl_cert_file"
            | "ssl_key_file"
            | "ssl_ca_file"
            | "ssl_crl_file"
            | "ssl_crl_dir"
            | "ssl_dh_params_file"
    )
}

/// The special date/time input strings whose meaning depends on the current time
/// (Date/Time Types, "Special Values").
fn time_literal(text: &str) -> bool {
    let Some(inner) = text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) else {
        return false;
    };
    let inner = inner.trim();
    ["now", "today", "tomorrow", "yesterday"]
        .iter()
        .any(|k| inner.eq_ignore_ascii_case(k))
}

/// The content of a simple quoted literal (`'x'`), for setting names.
fn literal_text(text: &str) -> Option<String> {
    let inner = text.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner.replace("''", "'").trim().to_ascii_lowercase())
}

type Toks<'a> = Vec<(Tok<'a>, &'a str)>;

fn tokens(sql: &str) -> Toks<'_> {
    let mut lx = Lexer::new(sql);
    let mut v = Vec::new();
    while let Some(t) = lx.next_spanned() {
        v.push(t);
    }
    v
}

fn word(t: Option<&(Tok, &str)>) -> Option<String> {
    match t {
        Some((Tok::Word(w), _)) => Some(w.to_ascii_lowercase()),
        _ => None,
    }
}

/// Number of top-level arguments of the call whose `(` is at `open`.
fn arg_count(toks: &Toks, open: usize) -> usize {
    let mut depth = 0usize;
    let mut args = 0usize;
    let mut any = false;
    for (t, _) in &toks[open..] {
        match t {
            Tok::Punct(b'(' | b'[') => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            Tok::Punct(b')' | b']') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            Tok::Punct(b',') if depth == 1 => {
                args += 1;
                continue;
            }
            _ => {}
        }
        any = true;
    }
    if any {
        args + 1
    } else {
        args
    }
}

/// Per parenthesis level: has it an ORDER BY, and a LIMIT / OFFSET / FETCH FIRST /
/// DISTINCT ON?
#[derive(Default, Clone, Copy)]
struct Level {
    order: bool,
    limit: bool,
}

struct Scan {
    mode: Mode,
}

impl Scan {
    fn weaken(&mut self, m: Mode) {
        self.mode = self.mode.min(m);
    }
    fn level_done(&mut self, l: Level) {
        if l.limit && !l.order {
            self.weaken(Mode::Shape);
        }
    }
}

pub(crate) fn mode_for(sql: &str) -> Option<Mode> {
    let toks = tokens(sql);
    let mut scan = Scan { mode: Mode::Exact };
    let mut levels: Vec<Level> = vec![Level::default()];
    let mut stmt_start = 0usize;
    for i in 0..toks.len() {
        let (tok, text) = toks[i];
        let next = toks.get(i + 1);
        if i == stmt_start {
            match word(Some(&toks[i])).as_deref() {
                Some("explain") => scan.weaken(Mode::Columns),
                Some("notify") => return None,
                Some("show") => {
                    if let Some((Tok::Word(n) | Tok::QuotedIdent(n), _)) = toks.get(i + 1) {
                        let n = n.to_ascii_lowercase();
                        if n == "all" {
                            scan.weaken(Mode::Columns);
                        } else if server_setting(&n) {
                            scan.weaken(Mode::Shape);
                        }
                    }
                }
                Some("copy") => {
                    let end = toks[i..]
                        .iter()
                        .position(|(t, _)| *t == Tok::Punct(b';'))
                        .map_or(toks.len(), |n| i + n);
                    let stmt = &toks[i..end];
                    let to_file = stmt.windows(2).any(|w| {
                        matches!(word(Some(&w[0])).as_deref(), Some("to" | "from"))
                            && (w[1].0 == Tok::Literal
                                || word(Some(&w[1])).as_deref() == Some("program"))
                    });
                    if to_file {
                        return None;
                    }
                }
                _ => {}
            }
        }
        match tok {
            Tok::Punct(b';') if levels.len() == 1 => {
                let l = std::mem::take(&mut levels[0]);
                scan.level_done(l);
                stmt_start = i + 1;
            }
            Tok::Punct(b'(') => levels.push(Level::default()),
            Tok::Punct(b')') if levels.len() > 1 => {
                let l = levels.pop().unwrap_or_default();
                scan.level_done(l);
            }
            Tok::Literal if time_literal(text) => scan.weaken(Mode::Shape),
            Tok::Word(w) => {
                let w = w.to_ascii_lowercase();
                let prev = i.checked_sub(1).map(|p| toks[p].0);
                let qualified_by = if prev == Some(Tok::Punct(b'.')) {
                    i.checked_sub(2).and_then(|p| word(toks.get(p)))
                } else {
                    None
                };
                let foreign_schema =
                    prev == Some(Tok::Punct(b'.')) && qualified_by.as_deref() != Some("pg_catalog");
                let next_is = |c: u8| next.is_some_and(|(t, _)| *t == Tok::Punct(c));
                // `levels` starts with the top level and `)` never pops it.
                let Some(level) = levels.last_mut() else {
                    continue;
                };
                match w.as_str() {
                    "order" if word(next).as_deref() == Some("by") => level.order = true,
                    "limit" | "offset" => level.limit = true,
                    "fetch" if i != stmt_start => {
                        if matches!(word(next).as_deref(), Some("first" | "next")) {
                            level.limit = true;
                        }
                    }
                    "distinct" if word(next).as_deref() == Some("on") => level.limit = true,
                    _ => {}
                }
                if next_is(b'(') {
                    if foreign_schema {
                        continue;
                    }
                    if none_function(&w) {
                        return None;
                    }
                    if columns_function(&w) {
                        scan.weaken(Mode::Columns);
                    } else if shape_function(&w)
                        || shape_keyword(&w)
                        || (w == "age" && arg_count(&toks, i + 1) == 1)
                    {
                        scan.weaken(Mode::Shape);
                    } else if w == "current_setting" {
                        let name = match (toks.get(i + 2), toks.get(i + 3)) {
                            (Some((Tok::Literal, lit)), Some((Tok::Punct(b')' | b','), _))) => {
                                literal_text(lit)
                            }
                            _ => None,
                        };
                        if name.as_deref().is_none_or(server_setting) {
                            scan.weaken(Mode::Shape);
                        }
                    }
                } else if next_is(b'.') {
                    if w == "information_schema" {
                        scan.weaken(Mode::Columns);
                    }
                } else if foreign_schema {
                    // `schema.name`: the user's own relation or column.
                } else if shape_keyword(&w) {
                    scan.weaken(Mode::Shape);
                } else if w == "tablesample" || (w.starts_with("pg_") && prev != Some(Tok::Cast)) {
                    scan.weaken(Mode::Columns);
                }
            }
            _ => {}
        }
    }
    for l in levels {
        scan.level_done(l);
    }
    Some(scan.mode)
}

/// Whether every statement of `sql` that is a query has `ORDER BY` outside parentheses
/// (the fallback of [`crate::compare::ordered`] for text sqlparser does not parse).
pub(crate) fn lexer_ordered(sql: &str) -> bool {
    let toks = tokens(sql);
    let mut depth = 0usize;
    let mut any_query = false;
    let mut all_ordered = true;
    let mut stmt_query = false;
    let mut stmt_ordered = false;
    let mut at_start = true;
    let mut finish = |q: bool, o: bool| {
        if q {
            any_query = true;
            all_ordered &= o;
        }
    };
    for i in 0..toks.len() {
        let t = toks[i].0;
        if at_start {
            stmt_query = matches!(
                word(Some(&toks[i])).as_deref(),
                Some("select" | "with" | "values" | "table")
            ) || t == Tok::Punct(b'(');
            stmt_ordered = false;
            at_start = false;
        }
        match t {
            Tok::Punct(b'(') => depth += 1,
            Tok::Punct(b')') => depth = depth.saturating_sub(1),
            Tok::Punct(b';') if depth == 0 => {
                finish(stmt_query, stmt_ordered);
                stmt_query = false;
                at_start = true;
            }
            Tok::Word(w)
                if depth == 0
                    && w.eq_ignore_ascii_case("order")
                    && word(toks.get(i + 1)).as_deref() == Some("by") =>
            {
                stmt_ordered = true;
            }
            _ => {}
        }
    }
    if !at_start {
        finish(stmt_query, stmt_ordered);
    }
    any_query && all_ordered
}
