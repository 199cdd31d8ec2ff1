//! The admin console: database `pgshift` (configurable), simple query protocol, one
//! command per statement. Its sessions never touch a backend.

use crate::server::{Proxy, SessionInfo, STATE_ACTIVE, STATE_HELD};
use crate::session::{ClientConn, End};
use bytes::BytesMut;
use control::{Side, TrafficControl};
use std::time::{SystemTime, UNIX_EPOCH};
use wire::msg;

/// Commands the console accepts, as listed in errors and `SHOW HELP`.
pub const COMMANDS: &[&str] = &[
    "SHOW UPGRADE STATUS",
    "START UPGRADE",
    "INITIATE CUTOVER",
    "ROLLBACK UPGRADE",
    "PAUSE UPGRADE",
    "RESUME UPGRADE",
    "SHOW UPGRADE HISTORY",
    "SHOW UPGRADE DATABASES",
    "SHOW CLIENTS",
    "SHOW SERVERS",
    "PAUSE",
    "RESUME",
    "SHIFT TRAFFIC <percent>",
    "SHOW UPGRADE VALIDATION",
    "SHOW UPGRADE ERRORS",
    "FORCE RESYNC TABLE '<name>'",
    "MIRROR ON",
    "MIRROR OFF",
    "SHOW HELP",
];

/// Serve one admin session until the client leaves.
pub async fn run(proxy: &Proxy, c: &mut ClientConn, info: &SessionInfo) {
    msg::auth_ok(&mut c.out);
    for (k, v) in [
        ("server_version", "16.0 (pgshift admin console)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", "pgshift"),
    ] {
        msg::parameter_status(&mut c.out, k, v);
    }
    msg::backend_key_data(&mut c.out, info.pid, info.secret);
    msg::ready_for_query(&mut c.out, msg::TX_IDLE);
    if c.flush().await.is_err() {
        return;
    }
    let mut skip_to_sync = false;
    loop {
        let (tag, body) = match c.read_msg(1 << 20).await {
            Ok(m) => m,
            Err(End::Closed) => return,
            Err(End::Fatal { sqlstate, message }) => {
                c.fatal(&sqlstate, &message).await;
                return;
            }
        };
        match tag {
            msg::QUERY => {
                match msg::parse_query(&body) {
                    Ok(sql) => {
                        let sql = sql.to_string();
                        execute(proxy, &mut c.out, &sql).await;
                    }
                    Err(e) => msg::error_response(
                        &mut c.out,
                        "ERROR",
                        "08P01",
                        &e.to_string(),
                        None,
                        None,
                    ),
                }
                msg::ready_for_query(&mut c.out, msg::TX_IDLE);
            }
            msg::TERMINATE => return,
            msg::SYNC => {
                skip_to_sync = false;
                msg::ready_for_query(&mut c.out, msg::TX_IDLE);
            }
            msg::FLUSH => {}
            _ => {
                if !skip_to_sync {
                    msg::error_response(
                        &mut c.out,
                        "ERROR",
                        "0A000",
                        "the pgshift admin console supports only the simple query protocol",
                        None,
                        Some("use psql, or simple_query in a driver"),
                    );
                    skip_to_sync = true;
                }
            }
        }
        if c.flush().await.is_err() {
            return;
        }
    }
}

/// One admin console statement, as [`parse_command`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SHOW UPGRADE STATUS`
    ShowUpgradeStatus,
    /// `SHOW UPGRADE DATABASES`
    ShowUpgradeDatabases,
    /// `SHOW CLIENTS`
    ShowClients,
    /// `SHOW SERVERS`
    ShowServers,
    /// `SHOW HELP`
    ShowHelp,
    /// One of the control plane's commands `START UPGRADE`, `INITIATE CUTOVER`,
    /// `ROLLBACK UPGRADE`, `PAUSE UPGRADE`, `RESUME UPGRADE`: its text, as listed.
    Control(&'static str),
    /// `SHOW UPGRADE HISTORY`
    ShowUpgradeHistory,
    /// `PAUSE`
    Pause,
    /// `RESUME`
    Resume,
    /// `SHIFT TRAFFIC <percent>`, the percentage 0..=100.
    ShiftTraffic(u8),
    /// `SHOW UPGRADE VALIDATION`
    ShowUpgradeValidation,
    /// `SHOW UPGRADE ERRORS`
    ShowUpgradeErrors,
    /// `MIRROR ON` (`off` false) or `MIRROR OFF`.
    Mirror {
        /// `MIRROR OFF`.
        off: bool,
    },
    /// `FORCE RESYNC TABLE '<name>'`: the name, quotes removed and `''` undoubled, not empty.
    ForceResync(String),
}

/// A statement that is not a valid command: what the `ErrorResponse` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// SQLSTATE: 42601 (syntax error) or 22023 (invalid parameter value).
    pub sqlstate: &'static str,
    /// The primary message, quoting the statement or argument.
    pub message: String,
    /// The hint: the valid commands, or an example.
    pub hint: String,
}

/// The statements of one Query text: split at `;`, trimmed, empty ones dropped.
pub fn statements(sql: &str) -> Vec<&str> {
    sql.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Reads one statement (see [`statements`]): key words in any case, separated by any
/// whitespace. Errors: an unknown command (42601), a bad `SHIFT TRAFFIC` percentage
/// (22023), a `FORCE RESYNC TABLE` without a quoted name (42601).
pub fn parse_command(s: &str) -> Result<Command, CommandError> {
    let words: Vec<String> = s
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let cmd = words.join(" ");
    Ok(match cmd.as_str() {
        "SHOW UPGRADE STATUS" => Command::ShowUpgradeStatus,
        "SHOW UPGRADE DATABASES" => Command::ShowUpgradeDatabases,
        "SHOW CLIENTS" => Command::ShowClients,
        "SHOW SERVERS" => Command::ShowServers,
        "SHOW HELP" => Command::ShowHelp,
        "START UPGRADE" => Command::Control("START UPGRADE"),
        "INITIATE CUTOVER" => Command::Control("INITIATE CUTOVER"),
        "ROLLBACK UPGRADE" => Command::Control("ROLLBACK UPGRADE"),
        "PAUSE UPGRADE" => Command::Control("PAUSE UPGRADE"),
        "RESUME UPGRADE" => Command::Control("RESUME UPGRADE"),
        "SHOW UPGRADE HISTORY" => Command::ShowUpgradeHistory,
        "PAUSE" => Command::Pause,
        "RESUME" => Command::Resume,
        c if c.starts_with("SHIFT TRAFFIC") => Command::ShiftTraffic(shift_percent(c)?),
        "SHOW UPGRADE VALIDATION" => Command::ShowUpgradeValidation,
        "SHOW UPGRADE ERRORS" => Command::ShowUpgradeErrors,
        "MIRROR ON" => Command::Mirror { off: false },
        "MIRROR OFF" => Command::Mirror { off: true },
        c if c.starts_with("FORCE RESYNC TABLE") => Command::ForceResync(resync_table(s)?),
        _ => {
            return Err(CommandError {
                sqlstate: "42601",
                message: format!("unknown admin command \"{s}\""),
                hint: format!("valid commands: {}", COMMANDS.join(", ")),
            })
        }
    })
}

/// The percentage of `SHIFT TRAFFIC <percent>` (`cmd`: the words upper-cased, one space
/// apart), a `%` after it allowed.
fn shift_percent(cmd: &str) -> Result<u8, CommandError> {
    let arg = cmd
        .trim_start_matches("SHIFT TRAFFIC")
        .trim()
        .trim_end_matches('%');
    arg.parse::<u8>()
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| CommandError {
            sqlstate: "22023",
            message: format!("SHIFT TRAFFIC takes a percentage from 0 to 100, not \"{arg}\""),
            hint: "e.g. SHIFT TRAFFIC 25".to_string(),
        })
}

/// The table name of `FORCE RESYNC TABLE 'name'` (`stmt` as written, its words known to
/// start with `FORCE`, `RESYNC`, `TABLE`: [`parse_command`] matched them upper-cased).
fn resync_table(stmt: &str) -> Result<String, CommandError> {
    // Skip the key words however they are spaced (any Unicode whitespace): they are ASCII,
    // the spaces between them need not be, so no byte offset into `stmt` is known.
    let mut rest = stmt.trim_start();
    for word in ["FORCE", "RESYNC"] {
        rest = rest.get(word.len()..).unwrap_or_default().trim_start();
    }
    let rest = rest.get("TABLE".len()..).unwrap_or_default().trim();
    let name = rest
        .strip_prefix('\'')
        .and_then(|r| r.strip_suffix('\''))
        .map(|n| n.replace("''", "'"));
    name.filter(|n| !n.is_empty()).ok_or_else(|| CommandError {
        sqlstate: "42601",
        message: format!("FORCE RESYNC TABLE takes a table name in single quotes, not \"{rest}\""),
        hint: "e.g. FORCE RESYNC TABLE 'public.accounts'".to_string(),
    })
}

/// Run every statement of one Query message.
async fn execute(proxy: &Proxy, out: &mut BytesMut, sql: &str) {
    let stmts = statements(sql);
    if stmts.is_empty() {
        msg::empty_query_response(out);
        return;
    }
    for s in stmts {
        let cmd = match parse_command(s) {
            Ok(c) => c,
            Err(e) => {
                msg::error_response(out, "ERROR", e.sqlstate, &e.message, None, Some(&e.hint));
                return; // like PostgreSQL: the rest of a multi-statement query is skipped
            }
        };
        let ok = match cmd {
            Command::ShowUpgradeStatus => {
                upgrade_status(proxy, out);
                true
            }
            Command::ShowUpgradeDatabases => {
                databases(proxy, out);
                true
            }
            Command::ShowClients => {
                clients(proxy, out);
                true
            }
            Command::ShowServers => {
                servers(proxy, out);
                true
            }
            Command::ShowHelp => {
                msg::row_description_text(out, &["command"]);
                for c in COMMANDS {
                    msg::data_row(out, &[Some(c)]);
                }
                msg::command_complete(out, &format!("SHOW {}", COMMANDS.len()));
                true
            }
            Command::Control(which) => {
                let c = proxy.controller.clone();
                // On the control plane's runtime: what it spawns must not live on an I/O thread.
                let r = proxy
                    .control_rt
                    .spawn(async move {
                        match which {
                            "START UPGRADE" => c.start_upgrade().await,
                            "INITIATE CUTOVER" => c.initiate_cutover().await,
                            "PAUSE UPGRADE" => c.pause_upgrade().await,
                            "RESUME UPGRADE" => c.resume_upgrade().await,
                            _ => c.rollback().await,
                        }
                    })
                    .await
                    .unwrap_or_else(|e| {
                        Err(control::ControlError::new(
                            control::ErrorKind::Internal,
                            format!("the command failed: {e}"),
                        ))
                    });
                reply(out, which, r)
            }
            Command::ShowUpgradeHistory => {
                let c = proxy.controller.clone();
                let r = proxy
                    .control_rt
                    .spawn(async move { c.history(1000).await })
                    .await;
                let cmd = "SHOW UPGRADE HISTORY";
                match r {
                    Ok(Ok(entries)) => {
                        msg::row_description_text(
                            out,
                            &["id", "ts", "upgrade_id", "actor", "kind", "step", "message"],
                        );
                        for e in &entries {
                            let (id, up) = (e.id.to_string(), e.upgrade_id.map(|u| u.to_string()));
                            msg::data_row(
                                out,
                                &[
                                    Some(&id),
                                    Some(&e.ts),
                                    up.as_deref(),
                                    Some(&e.actor),
                                    Some(&e.kind),
                                    e.step.as_deref(),
                                    Some(&e.message),
                                ],
                            );
                        }
                        msg::command_complete(out, &format!("SHOW {}", entries.len()));
                        true
                    }
                    Ok(Err(e)) => reply(out, cmd, Err(e)),
                    Err(e) => reply(
                        out,
                        cmd,
                        Err(control::ControlError::new(
                            control::ErrorKind::Internal,
                            format!("the command failed: {e}"),
                        )),
                    ),
                }
            }
            Command::Pause => {
                proxy.router.pause();
                msg::notice_response(
                    out,
                    "NOTICE",
                    "00000",
                    &format!(
                        "traffic paused; {} sessions still inside a transaction",
                        proxy.router.busy_sessions()
                    ),
                );
                msg::command_complete(out, "PAUSE");
                true
            }
            Command::Resume => {
                proxy.router.resume();
                msg::command_complete(out, "RESUME");
                true
            }
            Command::ShiftTraffic(percent) => shift_traffic(proxy, out, percent).await,
            Command::ShowUpgradeValidation => validation(proxy, out),
            Command::ShowUpgradeErrors => validation_errors(proxy, out),
            Command::Mirror { off } => match mirror_or_error(proxy, out) {
                Some(m) => {
                    m.off.store(off, std::sync::atomic::Ordering::Relaxed);
                    msg::notice_response(
                        out,
                        "NOTICE",
                        "00000",
                        if off {
                            "mirroring paused: sessions stop copying units to the target (queued ones are still compared)"
                        } else {
                            "mirroring on (while replication keeps the target current)"
                        },
                    );
                    msg::command_complete(out, if off { "MIRROR OFF" } else { "MIRROR ON" });
                    true
                }
                None => false,
            },
            Command::ForceResync(name) => force_resync(proxy, out, name).await,
        };
        if !ok {
            return; // like PostgreSQL: the rest of a multi-statement query is skipped
        }
    }
}

/// `SHIFT TRAFFIC <percent>`: send that share of the read-only transactions to the side that
/// is not serving (a manual shift step). Only while replication keeps that side current.
async fn shift_traffic(proxy: &Proxy, out: &mut BytesMut, percent: u8) -> bool {
    let c = proxy.controller.clone();
    let r = proxy
        .control_rt
        .spawn(async move { c.shift_traffic(percent).await })
        .await
        .unwrap_or_else(|e| {
            Err(control::ControlError::new(
                control::ErrorKind::Internal,
                format!("the command failed: {e}"),
            ))
        });
    reply(out, "SHIFT TRAFFIC", r)
}

/// Refuses a validation command when mirroring is off.
fn mirror_or_error<'a>(proxy: &'a Proxy, out: &mut BytesMut) -> Option<&'a crate::mirror::Mirror> {
    if proxy.mirror.is_none() {
        msg::error_response(
            out,
            "ERROR",
            "55000",
            "mirroring with result validation is off",
            None,
            Some("set [mirror] enabled = true and restart pgshift"),
        );
    }
    proxy.mirror.as_deref()
}

/// `SHOW UPGRADE VALIDATION`: one row of totals (table `*`), then one per table.
fn validation(proxy: &Proxy, out: &mut BytesMut) -> bool {
    let Some(m) = mirror_or_error(proxy, out) else {
        return false;
    };
    let t = m.report.totals();
    msg::row_description_text(
        out,
        &[
            "table",
            "compared",
            "matched",
            "mismatched",
            "target_errors",
            "source_errors",
            "inconclusive",
            "skipped",
            "error_rate",
            "queued",
            "shed",
            "lag_rechecked",
            "skipped_reasons",
        ],
    );
    let skipped: u64 = t.skipped_total();
    let total_row = [
        "*".to_string(),
        t.compared.to_string(),
        t.matched.to_string(),
        t.mismatched.to_string(),
        t.target_errors.to_string(),
        t.source_errors.to_string(),
        t.inconclusive.to_string(),
        skipped.to_string(),
        format!("{:.6}", t.error_rate()),
        m.queued
            .load(std::sync::atomic::Ordering::Relaxed)
            .to_string(),
        m.shed
            .load(std::sync::atomic::Ordering::Relaxed)
            .to_string(),
        m.lag_explained
            .load(std::sync::atomic::Ordering::Relaxed)
            .to_string(),
        t.skipped
            .iter()
            .map(|(why, n)| format!("{why}: {n}"))
            .collect::<Vec<_>>()
            .join("; "),
    ];
    msg::data_row(
        out,
        &total_row
            .iter()
            .map(|v| Some(v.as_str()))
            .collect::<Vec<_>>(),
    );
    let tables = m.report.per_table();
    for ts in &tables {
        let row = [
            ts.table.clone(),
            ts.compared.to_string(),
            ts.matched.to_string(),
            ts.mismatched.to_string(),
            ts.target_errors.to_string(),
        ];
        let rate = format!("{:.6}", ts.error_rate());
        let mut vals: Vec<Option<&str>> = row.iter().map(|v| Some(v.as_str())).collect();
        vals.extend([
            None,
            None,
            None,
            Some(rate.as_str()),
            None,
            None,
            None,
            None,
        ]);
        msg::data_row(out, &vals);
    }
    msg::command_complete(out, &format!("SHOW {}", tables.len() + 1));
    true
}

/// `SHOW UPGRADE ERRORS`: statements that behave differently on the target, worst first.
fn validation_errors(proxy: &Proxy, out: &mut BytesMut) -> bool {
    let Some(m) = mirror_or_error(proxy, out) else {
        return false;
    };
    let errors = m.report.errors();
    msg::row_description_text(
        out,
        &[
            "fingerprint",
            "kind",
            "statement",
            "source",
            "target",
            "count",
            "first_seen",
            "last_seen",
        ],
    );
    for e in &errors {
        let (count, first, last) = (
            e.count.to_string(),
            rfc3339(e.first_seen),
            rfc3339(e.last_seen),
        );
        msg::data_row(
            out,
            &[
                Some(&e.fingerprint),
                Some(e.kind.as_str()),
                Some(&e.sample),
                Some(&e.source),
                Some(&e.target),
                Some(&count),
                Some(&first),
                Some(&last),
            ],
        );
    }
    msg::command_complete(out, &format!("SHOW {}", errors.len()));
    true
}

/// `FORCE RESYNC TABLE 'name'`: copy the table to the target again (consistently, while
/// traffic goes on), then restart its validation counters.
async fn force_resync(proxy: &Proxy, out: &mut BytesMut, name: String) -> bool {
    let c = proxy.controller.clone();
    let n2 = name.clone();
    let r = proxy
        .control_rt
        .spawn(async move { c.force_resync(&n2).await })
        .await
        .unwrap_or_else(|e| {
            Err(control::ControlError::new(
                control::ErrorKind::Internal,
                format!("the command failed: {e}"),
            ))
        });
    if r.is_ok() {
        if let Some(m) = proxy.mirror.as_deref() {
            m.report.reset_table(&name);
        }
    }
    reply(out, "FORCE RESYNC TABLE", r)
}

fn reply(out: &mut BytesMut, tag: &str, r: Result<String, control::ControlError>) -> bool {
    match r {
        Ok(m) => {
            msg::notice_response(out, "NOTICE", "00000", &m);
            msg::command_complete(out, tag);
            true
        }
        Err(e) => {
            msg::error_response(out, "ERROR", e.sqlstate(), &e.to_string(), None, None);
            false
        }
    }
}

fn upgrade_status(proxy: &Proxy, out: &mut BytesMut) {
    let s = proxy.controller.status();
    let cols = [
        "phase",
        "state",
        "replication_lag_bytes",
        "lag_seconds",
        "source_weight",
        "target_weight",
        "epoch",
        "last_error",
        "updated_at",
        "percent",
        "step",
        "health",
    ];
    msg::row_description_text(out, &cols);
    let percent = s.percent.to_string();
    let lag_b = s.replication_lag_bytes.map(|v| v.to_string());
    let lag_s = s.lag_seconds.map(|v| format!("{v:.3}"));
    let (sw, tw, ep) = (
        s.source_weight.to_string(),
        s.target_weight.to_string(),
        s.epoch.to_string(),
    );
    msg::data_row(
        out,
        &[
            Some(s.phase.as_str()),
            Some(s.state.as_str()),
            lag_b.as_deref(),
            lag_s.as_deref(),
            Some(&sw),
            Some(&tw),
            Some(&ep),
            s.last_error.as_deref(),
            Some(&s.updated_at),
            Some(&percent),
            s.step.as_deref(),
            s.health.as_deref(),
        ],
    );
    msg::command_complete(out, "SHOW 1");
}

fn databases(proxy: &Proxy, out: &mut BytesMut) {
    let rows = database_rows(proxy);
    msg::row_description_text(out, &DatabaseRow::COLUMNS);
    for r in &rows {
        let vals = r.values();
        let refs: Vec<Option<&str>> = vals.iter().map(|v| v.as_deref()).collect();
        msg::data_row(out, &refs);
    }
    msg::command_complete(out, &format!("SHOW {}", rows.len()));
}

fn clients(proxy: &Proxy, out: &mut BytesMut) {
    let rows = client_rows(proxy);
    msg::row_description_text(out, &ClientRow::COLUMNS);
    for r in &rows {
        let vals = r.values();
        let refs: Vec<Option<&str>> = vals.iter().map(|v| Some(v.as_str())).collect();
        msg::data_row(out, &refs);
    }
    msg::command_complete(out, &format!("SHOW {}", rows.len()));
}

fn servers(proxy: &Proxy, out: &mut BytesMut) {
    let rows = server_rows(proxy);
    msg::row_description_text(out, &ServerRow::COLUMNS);
    for r in &rows {
        let vals = r.values();
        let refs: Vec<Option<&str>> = vals.iter().map(|v| Some(v.as_str())).collect();
        msg::data_row(out, &refs);
    }
    msg::command_complete(out, &format!("SHOW {}", rows.len()));
}

/// One row of `SHOW CLIENTS` (and of `GET /clients`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientRow {
    pub pid: i32,
    pub user: String,
    pub database: String,
    pub client_addr: String,
    /// `source`, `target`, `none` (no backend yet) or `admin` (an admin console session).
    pub side: &'static str,
    /// `idle`, `active` or `held` (kept in the proxy while traffic is paused).
    pub state: &'static str,
    pub backend_pid: i32,
    pub switches: u64,
    pub connected_at: String,
    /// What pins the session to its server process (a switch cannot carry it), e.g.
    /// `temporary tables, session advisory locks`; empty when nothing does.
    pub pinned: String,
}

impl ClientRow {
    /// Column names, in the order of [`values`](Self::values).
    pub const COLUMNS: [&'static str; 10] = [
        "pid",
        "user",
        "database",
        "client_addr",
        "side",
        "state",
        "backend_pid",
        "switches",
        "connected_at",
        "pinned",
    ];

    /// The row as text, in the order of [`COLUMNS`](Self::COLUMNS).
    pub fn values(&self) -> [String; 10] {
        [
            self.pid.to_string(),
            self.user.clone(),
            self.database.clone(),
            self.client_addr.clone(),
            self.side.to_string(),
            self.state.to_string(),
            self.backend_pid.to_string(),
            self.switches.to_string(),
            self.connected_at.clone(),
            self.pinned.clone(),
        ]
    }
}

/// The client sessions, by pid: what `SHOW CLIENTS` and `GET /clients` show.
pub fn client_rows(proxy: &Proxy) -> Vec<ClientRow> {
    use std::sync::atomic::Ordering::Relaxed;
    proxy
        .session_list()
        .iter()
        .map(|s| ClientRow {
            pid: s.pid,
            user: s.user.clone(),
            database: s.database.clone(),
            client_addr: s.client_addr.to_string(),
            side: if s.admin {
                "admin"
            } else {
                s.side().map_or("none", Side::as_str)
            },
            state: match s.state.load(Relaxed) {
                STATE_ACTIVE => "active",
                STATE_HELD => "held",
                _ => "idle",
            },
            backend_pid: s.backend_pid.load(Relaxed),
            switches: s.switches.load(Relaxed),
            connected_at: rfc3339(s.connected_at),
            pinned: crate::session::pins::describe(s.pinned.load(Relaxed)),
        })
        .collect()
}

/// One row of `SHOW UPGRADE DATABASES` (and of `GET /databases`): a database the upgrade
/// carries.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DatabaseRow {
    /// Name on the source (what clients connect with).
    pub database: String,
    /// Name on the target.
    pub target_database: String,
    /// `[source] dbname`.
    pub primary: bool,
    /// Publication on the source.
    pub publication: String,
    /// Forward subscription on the target (and its slot on the source).
    pub subscription: String,
    /// Initial copy: tables synchronised, and tables of the subscription.
    pub tables_ready: Option<u64>,
    pub tables_total: Option<u64>,
    /// Lag of the running direction, in bytes of WAL and seconds.
    pub lag_bytes: Option<i64>,
    pub lag_seconds: Option<f64>,
    /// Client sessions connected to this database.
    pub clients: usize,
}

impl DatabaseRow {
    /// Column names, in the order of [`values`](Self::values).
    pub const COLUMNS: [&'static str; 10] = [
        "database",
        "target_database",
        "primary",
        "publication",
        "subscription",
        "tables_ready",
        "tables_total",
        "lag_bytes",
        "lag_seconds",
        "clients",
    ];

    /// The row as text (NULL when unknown), in the order of [`COLUMNS`](Self::COLUMNS).
    pub fn values(&self) -> [Option<String>; 10] {
        [
            Some(self.database.clone()),
            Some(self.target_database.clone()),
            Some(self.primary.to_string()),
            Some(self.publication.clone()),
            Some(self.subscription.clone()),
            self.tables_ready.map(|v| v.to_string()),
            self.tables_total.map(|v| v.to_string()),
            self.lag_bytes.map(|v| v.to_string()),
            self.lag_seconds.map(|v| format!("{v:.3}")),
            Some(self.clients.to_string()),
        ]
    }
}

/// The databases the upgrade carries, the primary first: what `SHOW UPGRADE DATABASES` and
/// `GET /databases` show.
pub fn database_rows(proxy: &Proxy) -> Vec<DatabaseRow> {
    let list = proxy.session_list();
    proxy
        .controller
        .databases()
        .into_iter()
        .map(|d| DatabaseRow {
            clients: list.iter().filter(|s| s.database == d.database).count(),
            tables_ready: d.tables.map(|t| t.0),
            tables_total: d.tables.map(|t| t.1),
            lag_bytes: d.lag.and_then(|l| l.bytes),
            lag_seconds: d.lag.and_then(|l| l.seconds),
            database: d.database,
            target_database: d.target_database,
            primary: d.primary,
            publication: d.publication,
            subscription: d.subscription,
        })
        .collect()
}

/// One row of `SHOW SERVERS` (and of `GET /servers`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerRow {
    /// `source` or `target`.
    pub side: &'static str,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    /// `serving` (new transactions go there) or `standby`.
    pub role: &'static str,
    pub epoch: u64,
    pub paused: bool,
    /// Client sessions whose backend connection is on this side.
    pub clients: usize,
}

impl ServerRow {
    /// Column names, in the order of [`values`](Self::values).
    pub const COLUMNS: [&'static str; 8] = [
        "side", "host", "port", "dbname", "role", "epoch", "paused", "clients",
    ];

    /// The row as text, in the order of [`COLUMNS`](Self::COLUMNS).
    pub fn values(&self) -> [String; 8] {
        [
            self.side.to_string(),
            self.host.clone(),
            self.port.to_string(),
            self.dbname.clone(),
            self.role.to_string(),
            self.epoch.to_string(),
            self.paused.to_string(),
            self.clients.to_string(),
        ]
    }
}

/// Source and target as the routing table sees them: what `SHOW SERVERS` and `GET /servers`
/// show.
pub fn server_rows(proxy: &Proxy) -> Vec<ServerRow> {
    let t = proxy.router.load();
    let list = proxy.session_list();
    [Side::Source, Side::Target]
        .into_iter()
        .map(|side| {
            let a = t.addr(side);
            ServerRow {
                side: side.as_str(),
                host: a.host.clone(),
                port: a.port,
                dbname: a.dbname.clone(),
                role: if t.side == side { "serving" } else { "standby" },
                epoch: t.epoch,
                paused: t.paused,
                clients: list.iter().filter(|s| s.side() == Some(side)).count(),
            }
        })
        .collect()
}

/// Format a time as RFC 3339 UTC with milliseconds (the journal's format).
pub fn rfc3339(t: SystemTime) -> String {
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
    control::journal::rfc3339_from_unix_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::{parse_command, statements, Command};

    #[test]
    fn parses_commands() {
        assert_eq!(
            statements(" ; show help ;; RESUME;"),
            ["show help", "RESUME"]
        );
        assert_eq!(
            parse_command("show   upgrade\tstatus"),
            Ok(Command::ShowUpgradeStatus)
        );
        assert_eq!(
            parse_command("rollback upgrade"),
            Ok(Command::Control("ROLLBACK UPGRADE"))
        );
        assert_eq!(
            parse_command("Mirror Off"),
            Ok(Command::Mirror { off: true })
        );
        assert_eq!(
            parse_command("shift traffic 25%"),
            Ok(Command::ShiftTraffic(25))
        );
        let e = parse_command("SHIFT TRAFFIC 101").unwrap_err();
        assert_eq!(e.sqlstate, "22023");
        assert!(e.message.contains("\"101\""), "{}", e.message);
        assert_eq!(
            parse_command("FORCE RESYNC TABLE 'it''s'"),
            Ok(Command::ForceResync("it's".into()))
        );
        assert_eq!(
            parse_command("force resync table x").unwrap_err().sqlstate,
            "42601"
        );
        // Found by feeding the admin fuzz target: non-ASCII spaces (U+3000, U+0085) between
        // the key words put byte 18 inside a character, and slicing there panicked.
        assert_eq!(
            parse_command("FORCE RESYNC\u{3000}\u{85}\u{85}TABLE 'x'"),
            Ok(Command::ForceResync("x".into()))
        );
        assert_eq!(
            parse_command("force  resync\tTABLE  'a b' "),
            Ok(Command::ForceResync("a b".into()))
        );
        let e = parse_command("FORCE RESYNC TABLEx 'a'").unwrap_err();
        assert!(e.message.contains("not \"x 'a'\""), "{}", e.message);
        let e = parse_command("DROP TABLE t").unwrap_err();
        assert_eq!(e.sqlstate, "42601");
        assert!(e.message.contains("\"DROP TABLE t\""), "{}", e.message);
        assert!(e.hint.contains("SHOW UPGRADE STATUS"), "{}", e.hint);
    }

    /// Non-ASCII input never panics the parser: every command's words with odd pieces
    /// (non-breaking and ideographic spaces, accents, emoji, a combining mark, quotes) glued
    /// to a word, between words and after the command parse or give a clear error.
    #[test]
    fn non_ascii_input_is_an_error_or_parses_never_a_panic() {
        assert_eq!(
            parse_command("FORCE RESYNC TABLE '\u{1f600}'"),
            Ok(Command::ForceResync("\u{1f600}".into()))
        );
        assert!(parse_command("FORCE RESYNC TABLE\u{a0}x").is_err());
        assert!(parse_command("SHIFT TRAFFIC ünicode").is_err());
        assert!(parse_command("SHIFT\u{2003}TRAFFIC\u{a0}101").is_err());
        let pieces = [
            "",
            " ",
            "\u{a0}",
            "\u{3000}",
            "\u{2003}",
            "é",
            "ü",
            "\u{1f600}",
            "\u{301}",
            "'",
            "''",
            "%",
            "x",
            "ß",
            "\u{fffd}",
            "\t",
            "\u{200b}",
            "ǅ",
            "İ",
            "\u{85}",
        ];
        let commands = [
            "FORCE RESYNC TABLE",
            "SHIFT TRAFFIC",
            "SHOW UPGRADE STATUS",
            "MIRROR ON",
            "PAUSE",
        ];
        let mut n = 0;
        for cmd in commands {
            let words: Vec<&str> = cmd.split(' ').collect();
            for a in pieces {
                for b in pieces {
                    let mut variants = vec![format!("{cmd}{a}{b}"), format!("{a}{cmd} {b}")];
                    for i in 0..words.len() {
                        let mut w: Vec<String> = words.iter().map(|s| s.to_string()).collect();
                        w[i] = format!("{}{a}{b}", w[i]);
                        variants.push(w.join(" "));
                        variants.push(words.join(&format!("{a}{b}")));
                    }
                    for v in variants {
                        let _ = parse_command(&v);
                        let _ = statements(&v);
                        n += 1;
                    }
                }
            }
        }
        assert!(n > 10_000, "{n} variants");
    }

    #[test]
    fn rfc3339_known_values() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(super::rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_000_000_123)),
            "2026-11-18T11:06:40.123Z"
        );
    }
}
