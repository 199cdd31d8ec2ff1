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
    "SHOW CLIENTS",
    "SHOW SERVERS",
    "PAUSE",
    "RESUME",
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

/// Run every statement of one Query message.
async fn execute(proxy: &Proxy, out: &mut BytesMut, sql: &str) {
    let stmts: Vec<&str> = sql
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if stmts.is_empty() {
        msg::empty_query_response(out);
        return;
    }
    for s in stmts {
        let words: Vec<String> = s
            .split_whitespace()
            .map(|w| w.to_ascii_uppercase())
            .collect();
        let cmd = words.join(" ");
        let ok = match cmd.as_str() {
            "SHOW UPGRADE STATUS" => {
                upgrade_status(proxy, out);
                true
            }
            "SHOW CLIENTS" => {
                clients(proxy, out);
                true
            }
            "SHOW SERVERS" => {
                servers(proxy, out);
                true
            }
            "SHOW HELP" => {
                msg::row_description_text(out, &["command"]);
                for c in COMMANDS {
                    msg::data_row(out, &[Some(c)]);
                }
                msg::command_complete(out, &format!("SHOW {}", COMMANDS.len()));
                true
            }
            "START UPGRADE" | "INITIATE CUTOVER" | "ROLLBACK UPGRADE" => {
                let c = proxy.controller.clone();
                let which = cmd.clone();
                // On the control plane's runtime: what it spawns must not live on an I/O thread.
                let r = proxy
                    .control_rt
                    .spawn(async move {
                        match which.as_str() {
                            "START UPGRADE" => c.start_upgrade().await,
                            "INITIATE CUTOVER" => c.initiate_cutover().await,
                            _ => c.rollback().await,
                        }
                    })
                    .await
                    .unwrap_or_else(|e| {
                        Err(control::ControlError(format!("the command failed: {e}")))
                    });
                reply(out, &cmd, r)
            }
            "PAUSE" => {
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
            "RESUME" => {
                proxy.router.resume();
                msg::command_complete(out, "RESUME");
                true
            }
            _ => {
                let hint = format!("valid commands: {}", COMMANDS.join(", "));
                msg::error_response(
                    out,
                    "ERROR",
                    "42601",
                    &format!("unknown admin command \"{s}\""),
                    None,
                    Some(&hint),
                );
                false
            }
        };
        if !ok {
            return; // like PostgreSQL: the rest of a multi-statement query is skipped
        }
    }
}

fn reply(out: &mut BytesMut, tag: &str, r: Result<String, control::ControlError>) -> bool {
    match r {
        Ok(m) => {
            msg::notice_response(out, "NOTICE", "00000", &m);
            msg::command_complete(out, tag);
            true
        }
        Err(e) => {
            msg::error_response(out, "ERROR", "55000", &e.to_string(), None, None);
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
    ];
    msg::row_description_text(out, &cols);
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
            Some(&s.phase),
            Some(&s.state),
            lag_b.as_deref(),
            lag_s.as_deref(),
            Some(&sw),
            Some(&tw),
            Some(&ep),
            s.last_error.as_deref(),
            Some(&s.updated_at),
        ],
    );
    msg::command_complete(out, "SHOW 1");
}

fn clients(proxy: &Proxy, out: &mut BytesMut) {
    let cols = [
        "pid",
        "user",
        "database",
        "client_addr",
        "side",
        "state",
        "backend_pid",
        "switches",
        "connected_at",
    ];
    msg::row_description_text(out, &cols);
    let list = proxy.session_list();
    for s in &list {
        let side = if s.admin {
            "admin".to_string()
        } else {
            s.side().map_or("none", Side::as_str).to_string()
        };
        let state = match s.state.load(std::sync::atomic::Ordering::Relaxed) {
            STATE_ACTIVE => "active",
            STATE_HELD => "held",
            _ => "idle",
        };
        let vals = [
            s.pid.to_string(),
            s.user.clone(),
            s.database.clone(),
            s.client_addr.to_string(),
            side,
            state.to_string(),
            s.backend_pid
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string(),
            s.switches
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string(),
            rfc3339(s.connected_at),
        ];
        let refs: Vec<Option<&str>> = vals.iter().map(|v| Some(v.as_str())).collect();
        msg::data_row(out, &refs);
    }
    msg::command_complete(out, &format!("SHOW {}", list.len()));
}

fn servers(proxy: &Proxy, out: &mut BytesMut) {
    let t = proxy.router.load();
    let list = proxy.session_list();
    let cols = [
        "side", "host", "port", "dbname", "role", "epoch", "paused", "clients",
    ];
    msg::row_description_text(out, &cols);
    for side in [Side::Source, Side::Target] {
        let a = t.addr(side);
        let role = if t.side == side { "serving" } else { "standby" };
        let n = list.iter().filter(|s| s.side() == Some(side)).count();
        let vals = [
            side.as_str().to_string(),
            a.host.clone(),
            a.port.to_string(),
            a.dbname.clone(),
            role.to_string(),
            t.epoch.to_string(),
            t.paused.to_string(),
            n.to_string(),
        ];
        let refs: Vec<Option<&str>> = vals.iter().map(|v| Some(v.as_str())).collect();
        msg::data_row(out, &refs);
    }
    msg::command_complete(out, "SHOW 2");
}

/// Format a time as RFC 3339 UTC with milliseconds (the journal's format).
pub fn rfc3339(t: SystemTime) -> String {
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
    control::journal::rfc3339_from_unix_millis(ms)
}

#[cfg(test)]
mod tests {
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
