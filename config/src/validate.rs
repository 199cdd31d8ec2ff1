//! Semantic checks on a parsed [`Config`]. Each finding names the key it is about, as a
//! path that the loader resolves to a line of the file.

use crate::{AuthMethod, Config, ServerConfig};
use std::fmt;
use std::net::SocketAddr;

/// Smallest accepted `proxy.max_message_bytes`: 1 KiB.
pub(crate) const MIN_MESSAGE_BYTES: usize = 1024;
/// Largest accepted `proxy.max_message_bytes`: PostgreSQL's own limit, 1 GiB - 1.
pub(crate) const MAX_MESSAGE_BYTES: usize = (1 << 30) - 1;
/// Longest accepted `replication.object_prefix`.
pub(crate) const MAX_PREFIX_CHARS: usize = 40;

/// One step of a key path: `users[2].auth` is `[Key("users"), Index(2), Key("auth")]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(&'static str),
    Index(usize),
}

/// A key path into the configuration document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    fn key(mut self, k: &'static str) -> KeyPath {
        self.0.push(Seg::Key(k));
        self
    }
    fn index(mut self, i: usize) -> KeyPath {
        self.0.push(Seg::Index(i));
        self
    }
}

fn at(k: &'static str) -> KeyPath {
    KeyPath(vec![Seg::Key(k)])
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if n == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// One finding: the key it concerns, and what is wrong (never containing a password).
/// `also` is a second place worth naming in the message (e.g. the first of two duplicates).
#[derive(Debug, Clone)]
pub(crate) struct Issue {
    pub path: KeyPath,
    pub message: String,
    pub also: Option<KeyPath>,
}

struct Findings(Vec<Issue>);

impl Findings {
    fn add(&mut self, path: KeyPath, message: impl Into<String>) {
        self.0.push(Issue {
            path,
            message: message.into(),
            also: None,
        });
    }
}

/// Runs every check and returns all findings, in file order of the sections.
pub(crate) fn validate(cfg: &Config) -> Vec<Issue> {
    let mut f = Findings(Vec::new());

    // [proxy]
    let p = &cfg.proxy;
    if let Err(why) = check_listen(&p.listen) {
        f.add(at("proxy").key("listen"), format!("`{}` {why}", p.listen));
    }
    if p.admin_database.is_empty() {
        f.add(at("proxy").key("admin_database"), "must not be empty");
    }
    if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&p.max_message_bytes) {
        f.add(
            at("proxy").key("max_message_bytes"),
            format!(
                "{} is out of range: must be between {MIN_MESSAGE_BYTES} (1 KiB) and {MAX_MESSAGE_BYTES} (1 GiB - 1) bytes",
                p.max_message_bytes
            ),
        );
    }
    positive(&mut f, "proxy", "connect_timeout_ms", p.connect_timeout_ms);
    if p.max_client_connections == 0 {
        f.add(
            at("proxy").key("max_client_connections"),
            "must be at least 1",
        );
    }
    positive(
        &mut f,
        "proxy",
        "client_login_timeout_ms",
        p.client_login_timeout_ms,
    );
    if p.session_memory_bytes < p.max_message_bytes {
        f.add(
            at("proxy").key("session_memory_bytes"),
            format!(
                "{} is below max_message_bytes ({}): a message of the largest accepted size could never be read",
                p.session_memory_bytes, p.max_message_bytes
            ),
        );
    }
    positive(&mut f, "proxy", "memory_wait_ms", p.memory_wait_ms);

    check_client_tls(&mut f, &p.tls);

    // [journal]
    if cfg.journal.path.as_os_str().is_empty() {
        f.add(at("journal").key("path"), "must not be empty");
    }

    // [source], [target]
    check_server(&mut f, "source", &cfg.source);
    check_server(&mut f, "target", &cfg.target);
    for (side, sv) in [("source", &cfg.source), ("target", &cfg.target)] {
        check_secret(
            &mut f,
            at(side),
            "password",
            sv.password.is_some(),
            &sv.password_secret,
        );
    }
    check_provision(&mut f, "source", &cfg.source);
    check_provision(&mut f, "target", &cfg.target);
    let (s, t) = (&cfg.source, &cfg.target);
    if !s.host.is_empty()
        && s.host.eq_ignore_ascii_case(&t.host)
        && s.port == t.port
        && s.dbname == t.dbname
    {
        f.0.push(Issue {
            path: at("target"),
            message: format!(
                "is the same database as [source] ({}:{}/{}); the target must be another server or database",
                t.host, t.port, t.dbname
            ),
            also: Some(at("source")),
        });
    }

    // [[users]]
    if cfg.users.is_empty() {
        f.add(
            at("users"),
            "no [[users]] entry: at least one user is required for clients to log in",
        );
    }
    for (i, u) in cfg.users.iter().enumerate() {
        let base = at("users").index(i);
        if u.name.is_empty() {
            f.add(base.clone().key("name"), "must not be empty");
        } else if let Some(first) = cfg.users[..i].iter().position(|o| o.name == u.name) {
            f.0.push(Issue {
                path: base.clone().key("name"),
                message: format!("duplicate user `{}`", u.name),
                also: Some(at("users").index(first).key("name")),
            });
        }
        let who = if u.name.is_empty() {
            String::new()
        } else {
            format!(" (user `{}`)", u.name)
        };
        check_secret(
            &mut f,
            base.clone(),
            "password",
            u.password.is_some(),
            &u.password_secret,
        );
        check_secret(
            &mut f,
            base.clone(),
            "server_password",
            u.server_password.is_some(),
            &u.server_password_secret,
        );
        match (&u.password, u.auth) {
            (_, AuthMethod::Trust) => {}
            (None, _) if u.password_secret.is_some() => {}
            (None, _) => f.add(
                base.clone().key("password"),
                format!("is required unless auth = \"trust\"{who}"),
            ),
            (Some(pw), _) if pw.is_empty() => f.add(
                base.clone().key("password"),
                format!("must not be empty unless auth = \"trust\"{who}"),
            ),
            _ => {}
        }
        if u.server_user.as_deref() == Some("") {
            f.add(
                base.clone().key("server_user"),
                format!("must not be empty; omit it to use `name`{who}"),
            );
        }
    }

    // [upgrade]
    let up = &cfg.upgrade;
    positive(&mut f, "upgrade", "drain_timeout_ms", up.drain_timeout_ms);
    positive(
        &mut f,
        "upgrade",
        "catchup_timeout_ms",
        up.catchup_timeout_ms,
    );
    positive(&mut f, "upgrade", "poll_interval_ms", up.poll_interval_ms);
    positive(
        &mut f,
        "upgrade",
        "long_transaction_ms",
        up.long_transaction_ms,
    );
    check_plan(&mut f, cfg);

    // [health]
    check_health(&mut f, &cfg.health);

    // [replication]
    let r = &cfg.replication;
    if !is_prefix(&r.object_prefix) {
        f.add(
            at("replication").key("object_prefix"),
            format!(
                "`{}` is not a valid prefix: it must be a lower-case SQL identifier matching [a-z_][a-z0-9_]*, at most {MAX_PREFIX_CHARS} characters",
                r.object_prefix
            ),
        );
    }
    if !(1..=64).contains(&r.copy_jobs) {
        f.add(
            at("replication").key("copy_jobs"),
            format!(
                "{} is out of range: 1 to 64 parallel COPY jobs",
                r.copy_jobs
            ),
        );
    }
    if !(1..=1024).contains(&r.apply_batch) {
        f.add(
            at("replication").key("apply_batch"),
            format!(
                "{} is out of range: 1 to 1024 transactions per batch",
                r.apply_batch
            ),
        );
    }
    if !(1000..=(1i64 << 62)).contains(&r.sequence_gap) {
        f.add(
            at("replication").key("sequence_gap"),
            format!(
                "{} is out of range: 1000 to 4611686018427387904 (2^62) sequence values",
                r.sequence_gap
            ),
        );
    }
    if up.ddl == crate::DdlPolicy::Replicate && r.driver != crate::Driver::Pgactive {
        f.0.push(Issue {
            path: at("upgrade").key("ddl"),
            message: format!(
                "\"replicate\" needs [replication] driver = \"pgactive\" (its DDL replication); with driver = \"{}\" use \"block\" or \"allow\"",
                r.driver.as_str()
            ),
            also: Some(at("replication").key("driver")),
        });
    }
    if r.queue_dir.as_os_str().is_empty() {
        f.add(at("replication").key("queue_dir"), "must not be empty");
    }
    if r.pg_dump.as_os_str().is_empty() {
        f.add(at("replication").key("pg_dump"), "must not be empty");
    }
    if r.psql.as_os_str().is_empty() {
        f.add(at("replication").key("psql"), "must not be empty");
    }

    // [http]
    check_http(&mut f, &cfg.http);

    // [mirror], [validation]
    check_mirror(&mut f, &cfg.mirror);
    check_validation(&mut f, &cfg.validation);

    f.0
}

/// `[http]`: the address, the token and the public endpoints.
fn check_http(f: &mut Findings, h: &crate::HttpConfig) {
    let path = || at("http");
    if let Some(listen) = h.listen_addr() {
        if let Err(why) = check_listen(listen) {
            f.add(
                path().key("listen"),
                format!("`{listen}` {why}; use \"\" to disable the HTTP server"),
            );
        } else if !h.has_token() && !is_loopback_listen(listen) {
            f.add(
                path().key("listen"),
                format!(
                    "`{listen}` is not a loopback address and no token is set: set [http] token or \
                     token_file (clients then send Authorization: Bearer <token>), or listen on \
                     127.0.0.1, [::1] or localhost"
                ),
            );
        }
    }
    if h.token.is_some() && h.token_file.is_some() {
        f.add(
            path().key("token_file"),
            "is set together with token: set one of them",
        );
    }
    if let Some(t) = &h.token {
        if let Err(why) = crate::check_token(t) {
            f.add(path().key("token"), format!("{why}; omit it for no token"));
        }
    }
    if h.token_file
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        f.add(path().key("token_file"), "must not be empty");
    }
    check_http_tls(f, &h.tls);
    for (i, p) in h.public.iter().enumerate() {
        if crate::SENSITIVE_ENDPOINTS.contains(&p.as_str()) {
            f.add(
                path().key("public").index(i),
                format!(
                    "`{p}` cannot be public: it changes the upgrade or reveals who is connected \
                     (only with the token: {})",
                    crate::SENSITIVE_ENDPOINTS.join(", ")
                ),
            );
        } else if !crate::HTTP_ENDPOINTS.contains(&p.as_str()) {
            f.add(
                path().key("public").index(i),
                format!(
                    "`{p}` is not an endpoint; endpoints: {}",
                    crate::HTTP_ENDPOINTS.join(", ")
                ),
            );
        }
    }
}

/// `[http.tls]`: cert and key together; client_ca only with them; no empty paths. The files
/// are read at start-up (and the key's mode checked there), not here.
fn check_http_tls(f: &mut Findings, t: &crate::HttpTlsConfig) {
    let path = || at("http").key("tls");
    match (&t.cert, &t.key) {
        (Some(_), None) => f.add(
            path().key("key"),
            "is required with [http.tls] cert: the PEM private key of cert (set both or neither)",
        ),
        (None, Some(_)) => f.add(
            path().key("cert"),
            "is required with [http.tls] key: the PEM certificate file HTTPS clients are shown \
             (set both or neither)",
        ),
        (None, None) if t.client_ca.is_some() => f.add(
            path().key("client_ca"),
            "needs [http.tls] cert and key: client certificates are asked for only over HTTPS",
        ),
        _ => {}
    }
    for (k, v) in [
        ("cert", &t.cert),
        ("key", &t.key),
        ("client_ca", &t.client_ca),
    ] {
        if v.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            f.add(path().key(k), "must not be empty");
        }
    }
}

/// Whether a valid `host:port` (see [`check_listen`]) is on loopback: 127.0.0.0/8, `[::1]` or
/// the name `localhost`. Other host names count as not loopback (they are not resolved here).
pub(crate) fn is_loopback_listen(listen: &str) -> bool {
    if let Ok(a) = listen.parse::<SocketAddr>() {
        return a.ip().is_loopback();
    }
    listen
        .rsplit_once(':')
        .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
}

fn positive(f: &mut Findings, section: &'static str, key: &'static str, value: u64) {
    if value == 0 {
        f.add(
            at(section).key(key),
            "must be greater than 0 (milliseconds)",
        );
    }
}

fn check_server(f: &mut Findings, side: &'static str, s: &ServerConfig) {
    check_server_tls(f, side, s);
    if s.host.trim().is_empty() {
        f.add(at(side).key("host"), "must not be empty");
    }
    if s.port == 0 {
        f.add(at(side).key("port"), "must be between 1 and 65535");
    }
    if s.dbname.is_empty() {
        f.add(at(side).key("dbname"), "must not be empty");
    }
    if s.user.is_empty() {
        f.add(at(side).key("user"), "must not be empty");
    }
    if s.replication_conninfo
        .as_deref()
        .is_some_and(|c| c.trim().is_empty())
    {
        f.add(
            at(side).key("replication_conninfo"),
            "must not be empty; omit it to build one from host, port, dbname, user and password",
        );
    }
}

/// `[proxy.tls]`: what each mode needs.
fn check_client_tls(f: &mut Findings, t: &crate::ClientTlsConfig) {
    use crate::ClientTlsMode;
    let path = || at("proxy").key("tls");
    let on = t.mode != ClientTlsMode::Disable;
    if on {
        for (k, v, what) in [
            (
                "cert",
                &t.cert,
                "the PEM certificate file clients are shown",
            ),
            ("key", &t.key, "the PEM private key of cert"),
        ] {
            if v.is_none() {
                f.add(
                    path().key(k),
                    format!("is required with mode = \"{}\": {what}", mode_name(t.mode)),
                );
            }
        }
    } else if t.cert.is_some() || t.key.is_some() || t.client_ca.is_some() {
        f.add(
            path().key("mode"),
            "is \"disable\" (the default) while cert, key or client_ca is set: set mode = \"allow\" or \"require\", or remove them",
        );
    }
    if t.client_ca.is_some() && t.mode == ClientTlsMode::Allow {
        f.add(
            path().key("client_ca"),
            "needs mode = \"require\": client certificates cannot be checked on plain connections",
        );
    }
    for (k, v) in [
        ("cert", &t.cert),
        ("key", &t.key),
        ("client_ca", &t.client_ca),
    ] {
        if v.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            f.add(path().key(k), "must not be empty");
        }
    }
}

fn mode_name(m: crate::ClientTlsMode) -> &'static str {
    match m {
        crate::ClientTlsMode::Disable => "disable",
        crate::ClientTlsMode::Allow => "allow",
        crate::ClientTlsMode::Require => "require",
    }
}

/// `[source]`/`[target]` sslmode, certificates and accepted authentication methods.
fn check_server_tls(f: &mut Findings, side: &'static str, s: &ServerConfig) {
    use crate::SslMode;
    if matches!(s.sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && s.sslrootcert.is_none() {
        f.add(
            at(side).key("sslrootcert"),
            format!(
                "is required with sslmode = \"{}\": the PEM file of the CA that signs the server's certificate",
                s.sslmode.as_str()
            ),
        );
    }
    if s.sslmode == SslMode::Disable && (s.sslrootcert.is_some() || s.sslcert.is_some()) {
        f.add(
            at(side).key("sslmode"),
            "is \"disable\" while sslrootcert or sslcert is set: remove them or choose another sslmode",
        );
    }
    if s.sslcert.is_some() != s.sslkey.is_some() {
        let k = if s.sslcert.is_some() {
            "sslkey"
        } else {
            "sslcert"
        };
        f.add(
            at(side).key(k),
            "sslcert and sslkey go together: set both or neither",
        );
    }
    if s.auth.is_empty() {
        f.add(
            at(side).key("auth"),
            "must list at least one method: scram-sha-256, md5, password or none",
        );
    }
    for (i, a) in s.auth.iter().enumerate() {
        if s.auth[..i].contains(a) {
            f.add(
                at(side).key("auth").index(i),
                format!("\"{}\" is listed twice", a.as_str()),
            );
        }
    }
}

/// A finding when `value` is 0, at `path` (a duration in ms).
fn positive_at(f: &mut Findings, path: KeyPath, value: u64) {
    if value == 0 {
        f.add(path, "must be greater than 0 (milliseconds)");
    }
}

/// Smallest and largest PostgreSQL major a provider handles.
pub(crate) const MIN_MAJOR: u32 = 10;
pub(crate) const MAX_MAJOR: u32 = 18;

/// `[upgrade]` keys of the plan, and `[upgrade.timeouts]`.
fn check_plan(f: &mut Findings, cfg: &Config) {
    let up = &cfg.upgrade;
    let mut sum = 0u64;
    for (i, pct) in up.shift.iter().enumerate() {
        if !(1..=100).contains(pct) {
            f.add(
                at("upgrade").key("shift").index(i),
                format!("{pct} is out of range: each shift step is 1 to 100 (percent of eligible traffic added)"),
            );
        }
        sum += u64::from(*pct);
    }
    if sum > 100 {
        let steps: Vec<String> = up.shift.iter().map(|p| p.to_string()).collect();
        f.add(
            at("upgrade").key("shift"),
            format!(
                "[{}] adds up to {sum} %; the steps add to the previous weight and may sum to at most 100",
                steps.join(", ")
            ),
        );
    }
    positive(f, "upgrade", "shift_hold_ms", up.shift_hold_ms);
    if let Some(dbs) = &up.databases {
        let mut seen = std::collections::HashSet::new();
        for (i, db) in dbs.iter().enumerate() {
            if db.is_empty() || db.len() > 63 || db.contains('\0') {
                f.add(
                    at("upgrade").key("databases").index(i),
                    format!("{db:?} is not a database name (1 to 63 bytes, no NUL)"),
                );
            } else if db == &cfg.proxy.admin_database {
                f.add(
                    at("upgrade").key("databases").index(i),
                    format!("{db:?} is [proxy] admin_database, pgshift's own console, not a database of the source"),
                );
            } else if !seen.insert(db.as_str()) {
                f.add(
                    at("upgrade").key("databases").index(i),
                    format!("{db:?} is listed twice"),
                );
            }
        }
        let others = dbs.iter().filter(|d| **d != cfg.source.dbname).count();
        if cfg.replication.driver == crate::Driver::Mirror && others > 0 {
            f.add(
                at("upgrade").key("databases"),
                format!(
                    "the mirror driver carries [source] dbname ({}) only; remove the other {others} database(s), or use [replication] driver = \"logical\"",
                    cfg.source.dbname
                ),
            );
        }
    }
    if up
        .final_dump
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        f.add(
            at("upgrade").key("final_dump"),
            "must not be empty; omit it to skip the final dump",
        );
    }
    if up.history_retention_days == 0 {
        f.add(
            at("upgrade").key("history_retention_days"),
            "must be at least 1 (days)",
        );
    }
    if up.max_attempts == 0 {
        f.add(
            at("upgrade").key("max_attempts"),
            "must be at least 1 (1 = no retry)",
        );
    }
    positive(f, "upgrade", "backoff_initial_ms", up.backoff_initial_ms);
    positive(f, "upgrade", "backoff_max_ms", up.backoff_max_ms);
    if up.backoff_initial_ms > 0
        && up.backoff_max_ms > 0
        && up.backoff_max_ms < up.backoff_initial_ms
    {
        f.add(
            at("upgrade").key("backoff_max_ms"),
            format!(
                "{} is below backoff_initial_ms ({}); the largest retry delay cannot be smaller than the first",
                up.backoff_max_ms, up.backoff_initial_ms
            ),
        );
    }
    let t = &up.timeouts;
    let tp = |k: &'static str| at("upgrade").key("timeouts").key(k);
    for (k, v) in [
        ("validate_input_ms", t.validate_input_ms),
        ("provision_target_ms", t.provision_target_ms),
        ("configure_params_ms", t.configure_params_ms),
        ("install_extension_ms", t.install_extension_ms),
        ("init_replication_ms", t.init_replication_ms),
        ("wait_for_sync_ms", t.wait_for_sync_ms),
        ("shift_traffic_ms", t.shift_traffic_ms),
        ("health_check_ms", t.health_check_ms),
        ("cutover_ms", t.cutover_ms),
        ("detach_old_ms", t.detach_old_ms),
        ("decommission_source_ms", t.decommission_source_ms),
    ] {
        positive_at(f, tp(k), v);
    }
}

/// `[health]`.
fn check_health(f: &mut Findings, h: &crate::HealthConfig) {
    positive(f, "health", "interval_ms", h.interval_ms);
    positive(f, "health", "window_ms", h.window_ms);
    if h.interval_ms > 0 && h.window_ms > 0 && h.window_ms < h.interval_ms {
        f.add(
            at("health").key("window_ms"),
            format!(
                "{} is shorter than interval_ms ({}); the window must hold at least one check",
                h.window_ms, h.interval_ms
            ),
        );
    }
    if !(0.0..=1.0).contains(&h.max_error_rate) {
        f.add(
            at("health").key("max_error_rate"),
            format!(
                "{} is out of range: a fraction between 0 and 1 (0.01 = 1 % of transactions)",
                h.max_error_rate
            ),
        );
    }
    if !(h.max_p99_ratio.is_finite() && h.max_p99_ratio > 0.0) {
        f.add(
            at("health").key("max_p99_ratio"),
            format!(
                "{} is out of range: must be greater than 0 (3.0 = the target may be 3 times slower)",
                h.max_p99_ratio
            ),
        );
    }
    if h.max_lag_bytes == 0 {
        f.add(
            at("health").key("max_lag_bytes"),
            "must be greater than 0 (bytes)",
        );
    }
    if !(h.max_lag_seconds.is_finite() && h.max_lag_seconds > 0.0) {
        f.add(
            at("health").key("max_lag_seconds"),
            format!("{} must be greater than 0 (seconds)", h.max_lag_seconds),
        );
    }
}

/// Largest accepted `mirror.connections`.
pub(crate) const MAX_MIRROR_CONNECTIONS: u32 = 64;
/// Largest accepted `mirror.max_answer_bytes`: 1 GiB.
pub(crate) const MAX_ANSWER_BYTES: u64 = 1 << 30;

/// A finding when `v` is not a finite fraction between 0 and 1, at `section.key`.
fn fraction(f: &mut Findings, section: &'static str, key: &'static str, v: f64, example: &str) {
    if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
        f.add(
            at(section).key(key),
            format!("{v} is out of range: a fraction between 0 and 1 ({example})"),
        );
    }
}

/// `[mirror]`.
fn check_mirror(f: &mut Findings, m: &crate::MirrorConfig) {
    fraction(
        f,
        "mirror",
        "sample_rate",
        m.sample_rate,
        "0.1 = one transaction in ten is mirrored",
    );
    if m.queue_length == 0 {
        f.add(
            at("mirror").key("queue_length"),
            "must be at least 1 (statements waiting for a mirror worker)",
        );
    }
    if !(1..=MAX_MIRROR_CONNECTIONS).contains(&m.connections) {
        f.add(
            at("mirror").key("connections"),
            format!(
                "{} is out of range: must be between 1 and {MAX_MIRROR_CONNECTIONS} (connections to the target)",
                m.connections
            ),
        );
    }
    positive(f, "mirror", "lock_timeout_ms", m.lock_timeout_ms);
    positive(f, "mirror", "statement_timeout_ms", m.statement_timeout_ms);
    positive(f, "mirror", "recheck_timeout_ms", m.recheck_timeout_ms);
    if !(1..=MAX_ANSWER_BYTES).contains(&m.max_answer_bytes) {
        f.add(
            at("mirror").key("max_answer_bytes"),
            format!(
                "{} is out of range: must be between 1 and {MAX_ANSWER_BYTES} (1 GiB) bytes",
                m.max_answer_bytes
            ),
        );
    }
}

/// `[validation]`.
fn check_validation(f: &mut Findings, v: &crate::ValidationConfig) {
    fraction(
        f,
        "validation",
        "error_threshold",
        v.error_threshold,
        "0.001 = 0.1 % of compared statements",
    );
}

/// `[source.provision]` / `[target.provision]`.
fn check_provision(f: &mut Findings, side: &'static str, s: &ServerConfig) {
    let Some(p) = &s.provision else { return };
    let base = || at(side).key("provision");
    if side == "target"
        && s.password.as_deref().is_none_or(str::is_empty)
        && s.password_secret.is_none()
    {
        f.add(
            at(side).key("password"),
            "is required with [target.provision]: pgshift creates the server with this password for `user` (SCRAM-SHA-256 over TCP)",
        );
    }
    if p.provider == crate::Provider::Rds {
        check_rds(f, side, p);
        return;
    }
    // Keys of the rds provider, refused with local.
    let rds_keys: [(&'static str, bool); 25] = [
        ("source_db_instance_id", p.source_db_instance_id.is_some()),
        ("engine_version", p.engine_version.is_some()),
        ("db_instance_id", p.db_instance_id.is_some()),
        ("region", p.region.is_some()),
        ("profile", p.profile.is_some()),
        ("endpoint_url", p.endpoint_url.is_some()),
        ("instance_class", p.instance_class.is_some()),
        ("storage_type", p.storage_type.is_some()),
        ("allocated_storage_gb", p.allocated_storage_gb.is_some()),
        ("iops", p.iops.is_some()),
        ("storage_throughput", p.storage_throughput.is_some()),
        ("db_subnet_group", p.db_subnet_group.is_some()),
        ("vpc_security_group_ids", p.vpc_security_group_ids.is_some()),
        ("multi_az", p.multi_az.is_some()),
        ("backup_retention_days", p.backup_retention_days.is_some()),
        ("kms_key_id", p.kms_key_id.is_some()),
        ("tags", !p.tags.is_empty()),
        ("parameter_group", p.parameter_group.is_some()),
        ("parameters", !p.parameters.is_empty()),
        ("allow_source_reboot", p.allow_source_reboot),
        ("final_snapshot_on_rollback", p.final_snapshot_on_rollback),
        // Set to other than their defaults (a default given in the file is harmless).
        ("wait_poll_ms", p.wait_poll_ms != crate::RDS_POLL_MS),
        ("wait_timeout_ms", p.wait_timeout_ms != crate::RDS_WAIT_MS),
        ("api_attempts", p.api_attempts != crate::RDS_ATTEMPTS),
        ("api_backoff_ms", p.api_backoff_ms != crate::RDS_BACKOFF_MS),
    ];
    for (k, set) in rds_keys {
        if set {
            f.add(
                base().key(k),
                "is a key of provider = \"rds\"; this provision is provider = \"local\"",
            );
        }
    }
    match p.major {
        None => f.add(
            base().key("major"),
            "is required with provider = \"local\": the PostgreSQL major of the server, e.g. major = 17",
        ),
        Some(m) if !(MIN_MAJOR..=MAX_MAJOR).contains(&m) => f.add(
            base().key("major"),
            format!(
                "{m} is not a PostgreSQL major pgshift provisions: must be between {MIN_MAJOR} and {MAX_MAJOR}"
            ),
        ),
        Some(_) => {}
    }
    if p.bindir.as_ref().is_some_and(|b| b.as_os_str().is_empty()) {
        f.add(
            base().key("bindir"),
            "must not be empty; omit it to search PATH and /usr/lib/postgresql/<major>/bin",
        );
    }
    match &p.data_dir {
        None => f.add(
            base().key("data_dir"),
            "is required with provider = \"local\": the server's data directory",
        ),
        Some(d) if d.as_os_str().is_empty() => f.add(base().key("data_dir"), "must not be empty"),
        Some(d) if d.parent().is_none() => f.add(
            base().key("data_dir"),
            format!("`{}` is not a directory pgshift can create", d.display()),
        ),
        Some(_) => {}
    }
    if p.run_as.as_deref().is_some_and(|u| u.trim().is_empty()) {
        f.add(
            base().key("run_as"),
            "must not be empty; omit it to run the server as pgshift's own user",
        );
    }
    let mut bad = Vec::new();
    let mut conflicts = Vec::new();
    for (name, value) in &p.settings {
        let ok_name = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        let ok_value = match value {
            crate::SettingValue::Text(t) => !t.contains(['\n', '\r', '\0']),
            crate::SettingValue::Float(x) => x.is_finite(),
            _ => true,
        };
        if !ok_name || !ok_value {
            bad.push(name.clone());
        }
        let lower = name.to_ascii_lowercase();
        match (lower.as_str(), value) {
            ("port", _) => conflicts.push(format!(
                "`port` is [{side}] port ({}); set it there, not in settings",
                s.port
            )),
            ("wal_level", crate::SettingValue::Text(v)) if v != "logical" => conflicts.push(
                format!("`wal_level = {v}`: logical replication (both directions) needs wal_level = logical"),
            ),
            ("data_directory" | "hba_file" | "ident_file" | "config_file", _) => conflicts.push(
                format!("`{name}` is decided by pgshift (data_dir); remove it from settings"),
            ),
            _ => {}
        }
    }
    if !bad.is_empty() {
        f.add(
            base().key("settings"),
            format!(
                "invalid setting(s) {}: names are PostgreSQL parameter names ([A-Za-z_][A-Za-z0-9_.]*), values one line",
                bad.join(", ")
            ),
        );
    }
    for c in conflicts {
        f.add(base().key("settings"), c);
    }
}

/// `<key>_secret`: an AWS Secrets Manager secret id (a name, or an ARN
/// `arn:<partition>:secretsmanager:<region>:<account>:secret:<name>`), not given with
/// `<key>` itself.
fn check_secret(
    f: &mut Findings,
    base: KeyPath,
    key: &'static str,
    plain: bool,
    id: &Option<String>,
) {
    let Some(id) = id else { return };
    let skey: &'static str = match key {
        "password" => "password_secret",
        _ => "server_password_secret",
    };
    if plain {
        f.add(
            base.clone().key(skey),
            format!("is given with `{key}`: give one of them"),
        );
    }
    let arn_ok = |a: &str| {
        let parts: Vec<&str> = a.splitn(7, ':').collect();
        parts.len() == 7
            && parts[2] == "secretsmanager"
            && !parts[3].is_empty()
            && parts[5] == "secret"
            && !parts[6].is_empty()
    };
    if id.trim().is_empty() || id.chars().any(char::is_whitespace) {
        f.add(
            base.key(skey),
            "must be a secret name or ARN, without spaces",
        );
    } else if id.starts_with("arn:") && !arn_ok(id) {
        f.add(
            base.key(skey),
            format!("`{id}` is not a Secrets Manager ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>)"),
        );
    }
}

/// An RDS DB instance or parameter group identifier: 1 to 63 letters, digits and hyphens,
/// starting with a letter, no two hyphens in a row, not ending with one (RDS API
/// reference, CreateDBInstance `DBInstanceIdentifier`; parameter groups take up to 255).
pub(crate) fn rds_identifier(id: &str, max: usize) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= max
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !id.contains("--")
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{id}` is not an RDS identifier: 1 to {max} letters, digits and hyphens, starting with a letter, no `--`, not ending with `-`"
        ))
    }
}

/// `[target.provision] provider = "rds"`.
fn check_rds(f: &mut Findings, side: &'static str, p: &crate::ProvisionConfig) {
    let base = || at(side).key("provision");
    if side == "source" {
        f.add(
            base().key("provider"),
            "\"rds\" is for [target.provision]; the source instance is [target.provision] source_db_instance_id",
        );
        return;
    }
    let local_keys: [(&'static str, bool); 4] = [
        ("bindir", p.bindir.is_some()),
        ("data_dir", p.data_dir.is_some()),
        ("run_as", p.run_as.is_some()),
        ("settings", !p.settings.is_empty()),
    ];
    for (k, set) in local_keys {
        if set {
            let hint = if k == "settings" {
                "; server parameters of an RDS instance go in `parameters`"
            } else {
                ""
            };
            f.add(
                base().key(k),
                format!(
                    "is a key of provider = \"local\"; this provision is provider = \"rds\"{hint}"
                ),
            );
        }
    }
    match p.source_db_instance_id.as_deref() {
        None => f.add(
            base().key("source_db_instance_id"),
            "is required with provider = \"rds\": the DB instance identifier of the source",
        ),
        Some(id) => {
            if let Err(e) = rds_identifier(id, 63) {
                f.add(base().key("source_db_instance_id"), e);
            }
        }
    }
    if let Some(id) = p.db_instance_id.as_deref() {
        if let Err(e) = rds_identifier(id, 63) {
            f.add(base().key("db_instance_id"), e);
        } else if Some(id) == p.source_db_instance_id.as_deref() {
            f.add(
                base().key("db_instance_id"),
                "is the source's identifier; the new instance needs its own",
            );
        }
    }
    if let Some(g) = p.parameter_group.as_deref() {
        if let Err(e) = rds_identifier(g, 255) {
            f.add(base().key("parameter_group"), e);
        }
    }
    match p.engine_version.as_deref() {
        None => f.add(
            base().key("engine_version"),
            "is required with provider = \"rds\": the RDS for PostgreSQL engine version to create, e.g. \"17.4\"",
        ),
        Some(v) => {
            let parts: Vec<&str> = v.split('.').collect();
            let major = parts.first().and_then(|m| m.parse::<u32>().ok());
            if parts.len() > 3 || !parts.iter().all(|x| !x.is_empty() && x.chars().all(|c| c.is_ascii_alphanumeric())) || major.is_none() {
                f.add(
                    base().key("engine_version"),
                    format!("`{v}` is not an engine version such as \"17.4\""),
                );
            } else if let Some(m) = major {
                if !(MIN_MAJOR..=MAX_MAJOR).contains(&m) {
                    f.add(
                        base().key("engine_version"),
                        format!("major {m} is not one pgshift provisions: must be between {MIN_MAJOR} and {MAX_MAJOR}"),
                    );
                } else if p.major.is_some_and(|x| x != m) {
                    f.add(
                        base().key("major"),
                        format!("{} disagrees with engine_version `{v}` (major {m}); omit major", p.major.unwrap_or(0)),
                    );
                }
            }
        }
    }
    if let Some(u) = p.endpoint_url.as_deref() {
        if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 10 {
            f.add(
                base().key("endpoint_url"),
                format!("`{u}` is not an http:// or https:// URL"),
            );
        }
    }
    for (k, v) in [
        ("allocated_storage_gb", p.allocated_storage_gb),
        ("iops", p.iops),
        ("storage_throughput", p.storage_throughput),
    ] {
        if v.is_some_and(|n| n <= 0) {
            f.add(base().key(k), "must be a positive number");
        }
    }
    if p.backup_retention_days
        .is_some_and(|d| !(0..=35).contains(&d))
    {
        f.add(
            base().key("backup_retention_days"),
            "must be between 0 and 35 (RDS's limit)",
        );
    }
    for (k, v) in [
        ("region", &p.region),
        ("profile", &p.profile),
        ("instance_class", &p.instance_class),
        ("storage_type", &p.storage_type),
        ("db_subnet_group", &p.db_subnet_group),
        ("kms_key_id", &p.kms_key_id),
    ] {
        if v.as_deref().is_some_and(|x| x.trim().is_empty()) {
            f.add(base().key(k), "must not be empty; omit it for the default");
        }
    }
    if p.tags.keys().any(|k| k.is_empty() || k.starts_with("aws:")) {
        f.add(
            base().key("tags"),
            "tag keys must not be empty or start with `aws:` (reserved by AWS)",
        );
    }
    if p.parameters.keys().any(|k| {
        k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    }) {
        f.add(
            base().key("parameters"),
            "parameter names are PostgreSQL or RDS parameter names ([A-Za-z0-9_.]+)",
        );
    }
    if p.wait_poll_ms == 0 || p.api_backoff_ms == 0 || p.api_attempts == 0 {
        f.add(
            base(),
            "wait_poll_ms, api_backoff_ms and api_attempts must be positive",
        );
    }
}

/// `host:port` where host is an IP address (IPv6 in brackets) or a DNS host name, and port
/// is 0-65535. Returns why not.
pub(crate) fn check_listen(listen: &str) -> Result<(), String> {
    if listen.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = listen.rsplit_once(':') else {
        return Err("is not host:port (e.g. 127.0.0.1:6432 or localhost:6432)".into());
    };
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "has no valid port: `{port}` is not a number between 0 and 65535"
        ));
    }
    if host.starts_with('[') || host.contains(':') {
        return Err(
            "is not a valid address: an IPv6 address goes in brackets, e.g. [::1]:6432".into(),
        );
    }
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "is not a valid address: `{host}` is not an IPv4 address"
        ));
    }
    if !is_host_name(host) {
        return Err(format!(
            "is not a valid address: `{host}` is neither an IP address nor a host name"
        ));
    }
    Ok(())
}

/// A DNS host name (RFC 1123): dot-separated labels of 1-63 letters, digits and `-`, not
/// starting or ending with `-`; at most 253 characters.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// `[a-z_][a-z0-9_]*`, 1 to [`MAX_PREFIX_CHARS`] characters.
fn is_prefix(p: &str) -> bool {
    let mut chars = p.chars();
    p.len() <= MAX_PREFIX_CHARS
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        for ok in [
            "127.0.0.1:6432",
            "0.0.0.0:0",
            "[::1]:6432",
            "localhost:6432",
            "pgshift-1.svc.cluster.local:5432",
        ] {
            assert!(check_listen(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "6432",
            "localhost",
            "localhost:",
            "localhost:99999",
            "::1:6432",
            "[::1:6432",
            "300.1.1.1:5",
            "-x:1",
            "a b:1",
            ":6432",
        ] {
            assert!(check_listen(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes() {
        for ok in ["pgshift", "_x", "a1_b2", &"a".repeat(40)] {
            assert!(is_prefix(ok), "{ok}");
        }
        for bad in ["", "1x", "Pg", "pg-shift", "pg shift", &"a".repeat(41), "é"] {
            assert!(!is_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn key_path_display() {
        assert_eq!(
            at("users").index(2).key("auth").to_string(),
            "users[2].auth"
        );
    }
}
