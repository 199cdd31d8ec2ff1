//! The applier of the `mirror` replication driver: reads the capture queue in order and
//! runs each committed unit on the other side, exactly once (see the [module
//! docs](super)).

use super::{le_u64, queue, Engine, Unit, CLOSE, LOST, OPEN, RESTART, UNIT};
use crate::backend;
use crate::mirror::{close_statement, cut_answers, ident, push_session_state};
use bytes::BytesMut;
use control::Side;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use validator::answer::{Answer, Outcome};
use wire::frame::header;
use wire::msg;

/// Why applying stopped.
enum Halt {
    /// The data would diverge, or the queue cannot be trusted: stays stopped.
    Fatal(String),
    /// The other side cannot be reached or the connection broke: tried again in 1 s.
    Retry(String),
}

/// Runs the applier for the generation in `e.apply_gen` until it changes to another or 0.
pub(super) async fn run(e: Arc<Engine>) {
    loop {
        let gen = e.apply_gen.load(Ordering::SeqCst);
        if gen == 0 {
            // Leaving: clear the running flag, then look again. A generation asked for
            // between the load above and the flag cleared found the applier running and left
            // the work to it (`Engine::run_applier`): take it up, unless a new applier did.
            e.applier_running.store(false, Ordering::SeqCst);
            if e.apply_gen.load(Ordering::SeqCst) != 0
                && !e.applier_running.swap(true, Ordering::SeqCst)
            {
                continue;
            }
            return;
        }
        match apply_gen(&e, gen).await {
            Ok(()) => {}
            Err(Halt::Retry(m)) => {
                tracing::warn!(gen, "applying captured transactions: {m}; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(Halt::Fatal(m)) => {
                tracing::error!(gen, "applying captured transactions stopped: {m}");
                super::lock(&e.failed).get_or_insert(m);
                crate::metrics::capture_state(&e);
                // Stays stopped until another generation is asked for (Capture::start
                // clears the failure).
                while e.apply_gen.load(Ordering::SeqCst) == gen {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

struct Conn {
    stream: tls::Stream,
    buf: BytesMut,
    /// Named statements prepared on this connection: name → Parse frame.
    prepared: HashMap<String, Vec<u8>>,
}

impl Conn {
    /// Logs in to `addr` as `user`. Units commit without waiting for their WAL flush;
    /// each batch ends with one commit that waits (`flush`), before the batch counts as
    /// applied. A crash of the other side loses at most a tail of units together with
    /// their seqs in the state table, as if they had aborted (PostgreSQL docs,
    /// "synchronous_commit": no risk of inconsistency), and they are applied again from
    /// the queue.
    async fn open(
        e: &Engine,
        addr: &crate::routing::BackendAddr,
        user: &str,
        password: Option<&str>,
    ) -> Result<Conn, String> {
        let bc = backend::connect(
            addr,
            user,
            password,
            &[
                ("application_name".into(), "pgshift-apply".into()),
                ("synchronous_commit".into(), "off".into()),
            ],
            e.cfg().proxy.connect_timeout_ms,
        )
        .await
        .map_err(|err| format!("cannot connect as {user}: {err}"))?;
        Ok(Conn {
            stream: bc.stream,
            buf: BytesMut::new(),
            prepared: HashMap::new(),
        })
    }

    async fn send(&mut self, b: &[u8]) -> Result<(), Halt> {
        self.stream
            .write_all(b)
            .await
            .map_err(|e| Halt::Retry(format!("connection lost: {e}")))
    }

    async fn read(&mut self) -> Result<(u8, BytesMut), Halt> {
        backend::read_frame(&mut self.stream, &mut self.buf, "apply")
            .await
            .map_err(|e| Halt::Retry(format!("connection lost: {e}")))
    }

    /// Runs `sql` (simple query); returns the first column of each row, or the error.
    async fn query(&mut self, sql: &str) -> Result<Result<Vec<Option<String>>, String>, Halt> {
        let mut b = BytesMut::new();
        msg::query(&mut b, sql);
        self.send(&b).await?;
        let mut rows = Vec::new();
        let mut err = None;
        loop {
            let (tag, body) = self.read().await?;
            match tag {
                b'D' => {
                    let mut v = &body[..];
                    if v.len() >= 6 {
                        v = &v[2..];
                        let n = i32::from_be_bytes([v[0], v[1], v[2], v[3]]);
                        v = &v[4..];
                        rows.push(if n < 0 {
                            None
                        } else {
                            Some(
                                String::from_utf8_lossy(&v[..(n as usize).min(v.len())])
                                    .into_owned(),
                            )
                        });
                    }
                }
                msg::ERROR_RESPONSE => {
                    err.get_or_insert(msg::parse_error(&body).unwrap_or_default().to_string());
                }
                msg::READY_FOR_QUERY => break,
                _ => {}
            }
        }
        Ok(match err {
            Some(e) => Err(e),
            None => Ok(rows),
        })
    }
}

/// The table on the applying side that holds, per generation, the seq of the last applied
/// unit and the seq from which the queue must be read again after a restart (`low`: the
/// oldest `OPEN` record of a unit not finished yet).
pub fn state_table(prefix: &str) -> String {
    format!("{}.applied", ident(&format!("{prefix}_mirror")))
}

/// The applier's objects on the applying side, all in the schema `<prefix>_mirror`.
struct Objects {
    schema: String,
    /// [`state_table`].
    table: String,
    /// The applier's backends of each generation: (gen, pid, backend start time).
    appliers: String,
    /// `mark(gen, seq, low)`: stores a unit's position; refused (SQLSTATE 42501) to any
    /// backend not in `appliers`.
    mark: String,
}

impl Objects {
    fn new(prefix: &str) -> Objects {
        let schema = ident(&format!("{prefix}_mirror"));
        Objects {
            table: state_table(prefix),
            appliers: format!("{schema}.appliers"),
            mark: format!("{schema}.mark"),
            schema,
        }
    }

    /// The SQL (run by pgshift's configured user) that creates them and the row of `gen`.
    /// The tables are readable by no one else; `mark` is `SECURITY DEFINER` with a fixed
    /// `search_path` and checks the caller's backend by pid and start time
    /// (`pg_stat_get_activity` of its own pid, visible to any role; PostgreSQL docs 28.2.3
    /// "pg_stat_activity"), which another session cannot take over: a session of the
    /// application's role may not move the applied position.
    fn setup(&self, gen: u64) -> String {
        let Objects {
            schema,
            table,
            appliers,
            mark,
        } = self;
        format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; \
             CREATE TABLE IF NOT EXISTS {table} (gen bigint PRIMARY KEY, seq bigint NOT NULL, low bigint NOT NULL); \
             CREATE TABLE IF NOT EXISTS {appliers} (gen bigint NOT NULL, pid integer NOT NULL, started timestamptz NOT NULL, PRIMARY KEY (gen, pid)); \
             REVOKE ALL ON {table}, {appliers} FROM PUBLIC; \
             CREATE OR REPLACE FUNCTION {mark}(g bigint, s bigint, l bigint) RETURNS void \
               LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgshift$ \
             BEGIN \
               UPDATE {table} SET seq = s, low = l WHERE gen = g AND EXISTS ( \
                 SELECT 1 FROM {appliers} a WHERE a.gen = g AND a.pid = pg_backend_pid() \
                   AND a.started = (SELECT backend_start FROM pg_stat_get_activity(pg_backend_pid()))); \
               IF NOT FOUND THEN \
                 RAISE EXCEPTION 'backend % is not pgshift''s applier of capture generation %', pg_backend_pid(), g \
                   USING ERRCODE = '42501'; \
               END IF; \
             END $pgshift$; \
             GRANT USAGE ON SCHEMA {schema} TO PUBLIC; \
             DELETE FROM {appliers} WHERE gen = {gen}; \
             INSERT INTO {table} SELECT {gen}, 0, 1 WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE gen = {gen})"
        )
    }

    /// Stores `seq`/`low` as the position of `gen` (one statement of a simple query).
    fn mark_sql(&self, gen: u64, seq: u64, low: u64) -> String {
        format!("SELECT {}({gen}, {seq}, {low})", self.mark)
    }
}

/// The applier's connections to the applying side: one as pgshift's configured user (the
/// applier's objects, registering the others) and one per `server_user` the units run as.
struct Pool {
    admin: Conn,
    users: HashMap<String, Conn>,
}

impl Pool {
    /// The connection for units of `user`, logged in with that user's credentials (its
    /// `[[users]]` entry by `server_user`) and registered as an applier backend of `gen`.
    /// Errors: no entry logs in as `user` (fatal: applying it with other rights is what
    /// this refuses), the server cannot be reached or refuses the login (retried).
    async fn user(
        &mut self,
        e: &Engine,
        to: Side,
        gen: u64,
        objects: &Objects,
        user: &str,
    ) -> Result<&mut Conn, Halt> {
        if !self.users.contains_key(user) {
            let (addr, admin_user, admin_password) = e.server(to);
            let password = match e.cfg().users.iter().find(|u| u.server_user() == user) {
                Some(u) => crate::backend::server_password(u),
                None if user == admin_user => admin_password,
                None => {
                    return Err(Halt::Fatal(format!(
                        "no [[users]] entry logs in to the servers as \"{user}\": its transactions cannot be applied with that user's own rights (add the user with its credentials and restart pgshift)"
                    )))
                }
            };
            let mut conn = Conn::open(e, &addr, user, password.as_deref())
                .await
                .map_err(|m| Halt::Retry(format!("{}: {m}", to.as_str())))?;
            // The backend's pid and start time, as the backend itself sees them (UTC, so
            // that no per-role DateStyle or TimeZone changes the text).
            let me = conn
                .query(
                    "SELECT pg_catalog.pg_backend_pid()::text || ' ' || pg_catalog.to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') \
                     FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid())",
                )
                .await?
                .map_err(|m| Halt::Retry(format!("{}: {m}", to.as_str())))?
                .into_iter()
                .flatten()
                .next()
                .unwrap_or_default();
            let (pid, started) = me.split_once(' ').unwrap_or_default();
            let pid: i32 = pid.parse().map_err(|_| {
                Halt::Retry(format!(
                    "{}: the applier's backend of user {user} did not report its pid",
                    to.as_str()
                ))
            })?;
            let register = format!(
                "INSERT INTO {a} VALUES ({gen}, {pid}, {s}::timestamp AT TIME ZONE 'UTC') \
                 ON CONFLICT (gen, pid) DO UPDATE SET started = EXCLUDED.started",
                a = objects.appliers,
                s = crate::mirror::literal(started),
            );
            self.admin.query(&register).await?.map_err(|m| {
                Halt::Retry(format!(
                    "{}: registering the applier's backend: {m}",
                    to.as_str()
                ))
            })?;
            tracing::info!(gen, to = to.as_str(), user, pid, "applier connected");
            self.users.insert(user.to_string(), conn);
        }
        self.users
            .get_mut(user)
            .ok_or_else(|| Halt::Retry(format!("no connection for user {user}")))
    }
}

async fn apply_gen(e: &Arc<Engine>, gen: u64) -> Result<(), Halt> {
    let from = e
        .source_side_of(gen)
        .ok_or_else(|| Halt::Fatal(format!("capture generation {gen} is unknown")))?;
    let to = from.other();
    let (addr, user, password) = e.server(to);
    let admin = Conn::open(e, &addr, &user, password.as_deref())
        .await
        .map_err(|m| Halt::Retry(format!("{}: {m}", to.as_str())))?;
    let mut pool = Pool {
        admin,
        users: HashMap::new(),
    };
    let prefix = &e.cfg().replication.object_prefix;
    let objects = Objects::new(prefix);
    let table = &objects.table;
    if let Err(m) = pool.admin.query(&objects.setup(gen)).await? {
        return Err(Halt::Retry(format!(
            "{}: creating {table}: {m}",
            to.as_str()
        )));
    }
    let row = match pool
        .admin
        .query(&format!(
            "SELECT seq::text || ' ' || low::text FROM {table} WHERE gen = {gen}"
        ))
        .await?
    {
        Ok(r) => r.into_iter().flatten().next().unwrap_or_default(),
        Err(m) => {
            return Err(Halt::Retry(format!(
                "{}: reading {table}: {m}",
                to.as_str()
            )))
        }
    };
    let mut it = row.split(' ').map(|x| x.parse::<u64>().unwrap_or(0));
    let (mut applied, low) = (it.next().unwrap_or(0), it.next().unwrap_or(1).max(1));
    e.applied.store(applied, Ordering::SeqCst);
    let mut reader = queue::Reader::open(e.dir(), gen, low - 1)
        .map_err(|err| Halt::Fatal(format!("capture queue: {err}")))?;
    tracing::info!(
        gen,
        to = to.as_str(),
        applied,
        "applying captured transactions"
    );
    // Unfinished units: uid → seq of their OPEN record.
    let mut open: HashMap<u64, u64> = HashMap::new();
    let mut last_purge = Instant::now();
    loop {
        if e.apply_gen.load(Ordering::SeqCst) != gen {
            return Ok(());
        }
        // A batch: the units read so far, up to apply_batch / BATCH_BYTES; a record that
        // stops applying ends it (the units before it are still applied).
        let mut batch: Vec<Pending> = Vec::new();
        let mut bytes = 0;
        let mut last_seq = None;
        let mut stop = None;
        let most = e.cfg().replication.apply_batch.max(1) as usize;
        while batch.len() < most && bytes < BATCH_BYTES {
            let rec = reader
                .next()
                .map_err(|err| Halt::Fatal(format!("capture queue: {err}")))?;
            let Some(rec) = rec else { break };
            match rec.kind {
                OPEN => {
                    open.insert(le_u64(&rec.payload).unwrap_or_default(), rec.seq);
                }
                CLOSE => {
                    open.remove(&le_u64(&rec.payload).unwrap_or_default());
                }
                RESTART if !open.is_empty() => {
                    stop = Some(Halt::Fatal(format!(
                        "{} transaction(s) were in flight when pgshift stopped (queue seq {}); the {} may have committed them without pgshift recording them, so the {} cannot be trusted to hold every write: roll back the upgrade and start it again (a new initial copy)",
                        open.len(),
                        rec.seq,
                        from.as_str(),
                        to.as_str()
                    )));
                }
                RESTART => {}
                LOST => {
                    let bytes = rec.payload.get(8..).and_then(le_u64).unwrap_or_default();
                    stop = Some(Halt::Fatal(if bytes == 0 {
                        format!(
                            "transaction at queue seq {} is in doubt: its client left while it may have been committing on the {}, and the server did not finish it, so the {} may lack it: roll back the upgrade and start it again",
                            rec.seq,
                            from.as_str(),
                            to.as_str()
                        )
                    } else {
                        format!(
                            "transaction at queue seq {} was over {} MiB and could not be recorded: roll back the upgrade and start it again",
                            rec.seq,
                            super::MAX_UNIT_BYTES >> 20
                        )
                    }));
                }
                UNIT => {
                    let unit = Unit::decode(&rec.payload)
                        .map_err(|m| Halt::Fatal(format!("capture queue seq {}: {m}", rec.seq)))?;
                    open.remove(&unit.uid);
                    if rec.seq > applied {
                        let low = open.values().min().copied().unwrap_or(rec.seq + 1);
                        let conn = pool.user(e, to, gen, &objects, &unit.user).await?;
                        if let Some(p) =
                            encode(&mut conn.prepared, &objects, gen, rec.seq, low, unit)?
                        {
                            bytes += p.out.len();
                            batch.push(p);
                        }
                        applied = rec.seq;
                    }
                }
                k => {
                    stop = Some(Halt::Fatal(format!(
                        "capture queue seq {}: unknown record kind {k}",
                        rec.seq
                    )));
                }
            }
            if stop.is_some() {
                break;
            }
            last_seq = Some(rec.seq);
        }
        if !batch.is_empty() {
            run_batch(&mut pool, &objects, gen, batch, to).await?;
        }
        if let Some(seq) = last_seq {
            // In memory, "applied" is every record dealt with (OPEN and CLOSE records too),
            // once durable on the other side; the seq kept there is that of the last unit.
            e.applied.fetch_max(seq, Ordering::SeqCst);
            e.applied_pos.store(reader.position(), Ordering::SeqCst);
            crate::metrics::capture_state(e);
        }
        if let Some(h) = stop {
            return Err(h);
        }
        if last_seq.is_none() {
            crate::metrics::capture_state(e);
            if last_purge.elapsed() > Duration::from_secs(5) {
                last_purge = Instant::now();
                let keep = open.values().min().copied().unwrap_or(applied + 1);
                let _ = queue::purge(e.dir(), gen, keep.saturating_sub(1).min(applied));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Most bytes sent in one batch (a batch has at least one unit; its most units are
/// `[replication] apply_batch`: one round trip and one WAL flush per batch).
const BATCH_BYTES: usize = 4 << 20;

/// Sends the batch's units and one commit that waits for the WAL flush (so every unit of
/// the batch is durable when it answers), reading the answers while sending; then checks
/// each unit's answers against the source's, in order. Consecutive units of one user go
/// out together on that user's connection; the next user's units are sent once those
/// answered (their commits come first).
async fn run_batch(
    pool: &mut Pool,
    objects: &Objects,
    gen: u64,
    batch: Vec<Pending>,
    to: Side,
) -> Result<(), Halt> {
    let mut at = 0;
    while at < batch.len() {
        let user = batch[at].unit.user.clone();
        let run = batch[at..]
            .iter()
            .take_while(|p| p.unit.user == user)
            .count();
        let units = &batch[at..at + run];
        at += run;
        let last = at == batch.len();
        let conn = pool
            .users
            .get_mut(&user)
            .ok_or_else(|| Halt::Retry(format!("no connection for user {user}")))?;
        let mut out =
            BytesMut::with_capacity(units.iter().map(|p| p.out.len()).sum::<usize>() + 128);
        for p in units {
            out.extend_from_slice(&p.out);
        }
        if last {
            // A write (the last unit's position once more) whose commit waits for the WAL
            // flush: the server's WAL is flushed in order, so this covers every unit
            // before it, of every connection.
            let p = &units[run - 1];
            msg::query(
                &mut out,
                &format!(
                    "BEGIN; SET LOCAL synchronous_commit = on; {}; COMMIT",
                    objects.mark_sql(gen, p.seq, p.low)
                ),
            );
        }
        let expected: usize = units.iter().map(Pending::answers).sum::<usize>() + usize::from(last);
        let (mut rd, mut wr) = tokio::io::split(&mut conn.stream);
        let buf = &mut conn.buf;
        let send = async {
            wr.write_all(&out)
                .await
                .map_err(|e| Halt::Retry(format!("connection lost: {e}")))
        };
        let receive = async {
            let mut segs: Vec<BytesMut> = Vec::with_capacity(expected);
            let mut cur = BytesMut::new();
            while segs.len() < expected {
                let (tag, body) = backend::read_frame(&mut rd, buf, "apply")
                    .await
                    .map_err(|e| Halt::Retry(format!("connection lost: {e}")))?;
                msg::put_msg(&mut cur, tag, |b| b.extend_from_slice(&body));
                if tag == msg::READY_FOR_QUERY {
                    segs.push(std::mem::take(&mut cur));
                }
            }
            Ok(segs)
        };
        let ((), segs) = tokio::try_join!(send, receive)?;
        let mut i = 0;
        for p in units {
            let n = p.answers();
            check(p, &segs[i..i + n], to)?;
            i += n;
        }
        if last {
            if let Some(e) = Answer::parse(&segs[i]).ok().as_ref().and_then(first_error) {
                return Err(Halt::Retry(format!(
                    "{}: flushing the applied transactions: {e}",
                    to.as_str()
                )));
            }
        }
    }
    Ok(())
}

/// The first ErrorResponse of an answer, as `SQLSTATE message`.
fn first_error(a: &Answer) -> Option<String> {
    a.outcomes.iter().find_map(|o| match o {
        Outcome::Error { sqlstate, message } => Some(format!("{sqlstate} {message}")),
        _ => None,
    })
}

/// The client's messages split into requests: per request whether it is counted by a
/// ReadyForQuery (Query, Sync, FunctionCall), and the named statements parsed.
struct Scan {
    requests: usize,
    parses: Vec<(String, Vec<u8>)>,
    /// Closes or DEALLOCATE/DISCARD: the connection's statement cache is dropped after.
    forgets: bool,
    /// Client bytes without a trailing Terminate.
    len: usize,
    /// Client bytes through the end of the first request.
    first_end: usize,
    /// A statement that cannot run inside a transaction block (see [`outside_block_only`]).
    no_block: bool,
}

fn scan(c: &[u8]) -> Result<Scan, String> {
    let mut s = Scan {
        requests: 0,
        parses: Vec::new(),
        forgets: false,
        len: 0,
        first_end: 0,
        no_block: false,
    };
    let mut at = 0;
    while at < c.len() {
        let (tag, total) = match header(&c[at..], usize::MAX) {
            Ok(Some((t, n))) if at + n <= c.len() => (t, n),
            _ => return Err("incomplete client messages".into()),
        };
        let body = &c[at + 5..at + total];
        match tag {
            msg::QUERY | msg::SYNC | msg::FUNCTION_CALL => {
                s.requests += 1;
                if s.requests == 1 {
                    s.first_end = at + total;
                }
                if tag == msg::QUERY {
                    let q = msg::parse_query(body).unwrap_or("").to_ascii_lowercase();
                    if q.contains("deallocate") || q.contains("discard") {
                        s.forgets = true;
                    }
                    s.no_block |= outside_block_only(&q);
                }
            }
            msg::PARSE => {
                if let Ok((name, sql)) = msg::parse_parse(body) {
                    if !name.is_empty() {
                        s.parses
                            .push((name.to_string(), c[at..at + total].to_vec()));
                    }
                    let q = sql.to_ascii_lowercase();
                    if q.contains("deallocate") || q.contains("discard") {
                        s.forgets = true;
                    }
                    s.no_block |= outside_block_only(&q);
                }
            }
            msg::CLOSE => s.forgets = true,
            msg::TERMINATE => break,
            _ => {}
        }
        at += total;
        s.len = at;
    }
    Ok(s)
}

/// Whether a statement (lower-case text) is one PostgreSQL refuses inside a transaction
/// block (SQLSTATE 25001; the reference pages of VACUUM, CREATE/DROP DATABASE, CREATE/DROP
/// TABLESPACE, ALTER SYSTEM, and the CONCURRENTLY forms of CREATE/DROP INDEX and REINDEX):
/// such a unit is applied without pgshift's transaction.
fn outside_block_only(q: &str) -> bool {
    let w: Vec<&str> = q.split_whitespace().take(3).collect();
    match w.as_slice() {
        ["vacuum", ..] | ["alter", "system", ..] => true,
        ["create" | "drop", "database" | "tablespace", ..] => true,
        ["create" | "drop" | "reindex", ..] => q.contains("concurrently"),
        _ => false,
    }
}

/// Whether an answer shows a statement that ran (CommandComplete, EmptyQueryResponse,
/// ErrorResponse, PortalSuspended, FunctionCallResponse, CopyData; PostgreSQL docs 53.7
/// "Message Formats"), rather than only preparing, describing or closing statements.
fn ran_statement(a: &[u8]) -> bool {
    let mut at = 0;
    while let Ok(Some((tag, total))) = header(&a[at..], usize::MAX) {
        if matches!(tag, b'C' | b'I' | b'E' | b's' | b'V' | b'd') {
            return true;
        }
        at += total;
        if at >= a.len() {
            break;
        }
    }
    // Unreadable: as if it ran (not wrapped).
    at < a.len()
}

/// `INSERT 0 n` (oid 0 since PostgreSQL 12; older servers may print a row's oid): the
/// oid is not compared.
fn norm_tag(t: &str) -> String {
    let p: Vec<&str> = t.split(' ').collect();
    if p.len() == 3 && p[0] == "INSERT" {
        format!("INSERT {}", p[2])
    } else {
        t.to_string()
    }
}

fn excerpt(o: &Outcome) -> String {
    match o {
        Outcome::Error { sqlstate, message } => format!("error {sqlstate} {message}"),
        Outcome::Command { tag } => tag.clone(),
        Outcome::Rows { tag, rows, .. } => format!("{tag} ({} rows)", rows.len()),
        Outcome::Empty => "empty query".into(),
    }
}

/// Whether the unit's transaction (a unit of one transaction) ended in a rollback on the
/// source: its last statement's tag is `ROLLBACK`, or it was one request that failed
/// outside a transaction block.
fn rolled_back(src: &[(&[u8], u8)]) -> bool {
    let Some((last, _)) = src.last() else {
        return true;
    };
    let Ok(a) = Answer::parse(last) else {
        return false;
    };
    match a.outcomes.last() {
        Some(Outcome::Command { tag }) if tag == "ROLLBACK" => true,
        Some(Outcome::Error { .. }) if src.len() == 1 => true,
        _ => false,
    }
}

/// One unit encoded for the other side, waiting for its answers.
struct Pending {
    seq: u64,
    /// The `low` stored with `seq` ([`state_table`]).
    low: u64,
    unit: Unit,
    /// Requests that prepare the unit's named statements first.
    prep_requests: usize,
    /// The unit's own requests.
    requests: usize,
    /// The unit opens its transaction block itself with a first request that is only
    /// `BEGIN`: pgshift's set-up runs inside that block, after it, and the unit's own
    /// COMMIT ends it (no BEGIN or COMMIT of pgshift's, which the server would warn about).
    inner: bool,
    /// The unit rolled back on the source: its answers are not compared (a deadlock or a
    /// lock timeout there need not happen here), and it is rolled back here too.
    discard: bool,
    out: BytesMut,
}

impl Pending {
    /// ReadyForQuery messages that answer it: preparation, the session set-up, the unit's
    /// requests, COMMIT (or the state update; none when `inner`), the reset.
    fn answers(&self) -> usize {
        self.prep_requests + 1 + self.requests + if self.inner { 1 } else { 2 }
    }

    /// Index among the answers of the session set-up.
    fn head_at(&self) -> usize {
        self.prep_requests + usize::from(self.inner)
    }

    /// Index among the answers of the unit's request `i`.
    fn request_at(&self, i: usize) -> usize {
        if self.inner && i == 0 {
            self.prep_requests
        } else {
            self.prep_requests + 1 + i
        }
    }

    fn fatal(&self, m: impl std::fmt::Display) -> Halt {
        Halt::Fatal(format!("transaction at queue seq {}: {m}", self.seq))
    }
}

/// Encodes one unit (see the [module docs](super)) for the connection whose named
/// statements are `prepared` (updated as if it ran). `None`: the unit rolled back on the
/// source, nothing to apply. Errors (fatal): the recorded answers do not match the
/// recorded requests.
fn encode(
    prepared: &mut HashMap<String, Vec<u8>>,
    objects: &Objects,
    gen: u64,
    seq: u64,
    low: u64,
    unit: Unit,
) -> Result<Option<Pending>, Halt> {
    let fatal = |m: String| Halt::Fatal(format!("transaction at queue seq {seq}: {m}"));
    let src = cut_answers(&unit.server).map_err(|m| fatal(m.to_string()))?;
    if src.is_empty() {
        return Ok(None);
    }
    let sc = scan(&unit.client).map_err(fatal)?;
    if sc.requests != src.len() {
        return Err(fatal(format!(
            "{} requests but {} answers recorded",
            sc.requests,
            src.len()
        )));
    }
    // Several transactions in one unit (pipelined requests each committing on its own):
    // not wrapped in pgshift's transaction; the seq is stored after them. A request that
    // ran no statement (Close, Parse, Describe and their Sync) ends no transaction.
    let wrap = !sc.no_block
        && src[..src.len() - 1]
            .iter()
            .all(|(a, st)| *st != msg::TX_IDLE || !ran_statement(a));
    // One transaction that rolled back (or one statement that failed) on the source: run
    // too, for what it does outside transactions (sequence draws), then rolled back.
    let discard = wrap && rolled_back(&src);
    let mut out = BytesMut::new();
    let mut prep_requests = 0;
    for (n, _) in &sc.parses {
        close_statement(&mut out, n);
        prepared.remove(n);
    }
    for (n, f) in &unit.statements {
        if sc.parses.iter().any(|(p, _)| p == n) || prepared.get(n) == Some(f) {
            continue;
        }
        close_statement(&mut out, n);
        out.extend_from_slice(f);
        msg::sync(&mut out);
        prep_requests += 1;
        prepared.insert(n.clone(), f.clone());
    }
    if !out.is_empty() {
        msg::sync(&mut out);
        prep_requests += 1;
    }
    let inner = wrap
        && src.len() > 1
        && src[0].1 == msg::TX_BLOCK
        && Answer::parse(src[0].0).is_ok_and(
            |a| matches!(a.outcomes.as_slice(), [Outcome::Command { tag }] if tag == "BEGIN"),
        );
    // The connection is the unit's own user: no SET ROLE of pgshift's, and none of the
    // unit's can take more than that user could on the source.
    let state = objects.mark_sql(gen, seq, low);
    let mut head = String::new();
    if wrap {
        if !inner {
            head.push_str("BEGIN");
        }
        if !discard {
            head.push_str("; ");
            head.push_str(&state);
        }
    }
    push_session_state(&mut head, &unit.params, &unit.sets, wrap);
    let head = head.trim_start_matches("; ");
    // A discarded unit's position is stored after it, on its own (a crash in between
    // draws its sequence values once more).
    let reset = if discard {
        format!("RESET ROLE; RESET ALL; {state}")
    } else {
        "RESET ROLE; RESET ALL".to_string()
    };
    if inner {
        out.extend_from_slice(&unit.client[..sc.first_end]);
        msg::query(&mut out, head);
        out.extend_from_slice(&unit.client[sc.first_end..sc.len]);
        msg::query(&mut out, &reset);
    } else if wrap {
        msg::query(&mut out, head);
        out.extend_from_slice(&unit.client[..sc.len]);
        msg::query(&mut out, if discard { "ROLLBACK" } else { "COMMIT" });
        msg::query(&mut out, &reset);
    } else {
        msg::query(&mut out, head);
        out.extend_from_slice(&unit.client[..sc.len]);
        // The session's own role again (a SET ROLE of the unit's may not reach `mark`).
        msg::query(&mut out, &format!("RESET ROLE; {state}"));
        msg::query(&mut out, "RESET ALL");
    }
    // What the connection holds once these run (a failure stops applying, and a new
    // connection starts with none).
    if sc.forgets {
        prepared.clear();
    }
    for (n, f) in &sc.parses {
        prepared.insert(n.clone(), f.clone());
    }
    let requests = sc.requests;
    Ok(Some(Pending {
        seq,
        low,
        unit,
        prep_requests,
        requests,
        inner,
        discard,
        out,
    }))
}

/// Compares a unit's answers on the other side (`segs`: one per ReadyForQuery, as counted
/// by [`Pending::answers`]) with the source's. Errors (fatal): a statement that does not
/// prepare, a session set-up that fails, an answer that differs (error, command tag, rows
/// affected), a transaction that did not commit.
fn check(p: &Pending, segs: &[BytesMut], to: Side) -> Result<(), Halt> {
    let unit = &p.unit;
    if p.discard {
        let last = segs.last().map(|b| &b[..]).unwrap_or_default();
        if let Some(e) = Answer::parse(last).ok().as_ref().and_then(first_error) {
            return Err(p.fatal(format!(
                "recording the applied position failed on the {}: {e}",
                to.as_str()
            )));
        }
        return Ok(());
    }
    let src = cut_answers(&unit.server).map_err(|m| p.fatal(m))?;
    let prep_requests = p.prep_requests;
    let parse =
        |b: &[u8]| Answer::parse(b).map_err(|err| p.fatal(format!("unreadable answer: {err}")));
    // Statement preparation: a named statement that does not prepare on this side.
    for s in &segs[..prep_requests] {
        if let Some(e) = first_error(&parse(s)?) {
            return Err(p.fatal(format!(
                "a prepared statement of the session does not prepare on the {}: {e}",
                to.as_str()
            )));
        }
    }
    if let Some(e) = first_error(&parse(&segs[p.head_at()])?) {
        return Err(p.fatal(format!(
            "setting up the session (applied position, as user {}, its start-up parameters and SETs) failed on the {}: {e}",
            unit.user,
            to.as_str()
        )));
    }
    for (i, (s, _)) in src.iter().enumerate() {
        let a = parse(s)?;
        let b = parse(&segs[p.request_at(i)])?;
        if a.outcomes.len() != b.outcomes.len() {
            return Err(p.fatal(format!(
                "request {} gave {} results on the source and {} on the {}",
                i + 1,
                a.outcomes.len(),
                b.outcomes.len(),
                to.as_str()
            )));
        }
        for (x, y) in a.outcomes.iter().zip(&b.outcomes) {
            let same = match (x, y) {
                (Outcome::Error { sqlstate: p, .. }, Outcome::Error { sqlstate: q, .. }) => p == q,
                (Outcome::Command { tag: p }, Outcome::Command { tag: q }) => {
                    norm_tag(p) == norm_tag(q)
                }
                (Outcome::Rows { tag: p, .. }, Outcome::Rows { tag: q, .. }) => {
                    norm_tag(p) == norm_tag(q)
                }
                (Outcome::Empty, Outcome::Empty) => true,
                _ => false,
            };
            if !same {
                return Err(p.fatal(format!(
                    "the {} answered differently from the source, so the data would diverge: source {} / {} {} (request {} of {})",
                    to.as_str(),
                    excerpt(x),
                    to.as_str(),
                    excerpt(y),
                    i + 1,
                    src.len()
                )));
            }
        }
    }
    if p.inner {
        // The unit's own COMMIT was compared with the source's above.
        return Ok(());
    }
    let fin = parse(&segs[prep_requests + 1 + p.requests])?;
    if let Some(e) = first_error(&fin) {
        return Err(p.fatal(format!(
            "recording the applied position failed on the {}: {e}",
            to.as_str()
        )));
    }
    match fin.outcomes.first() {
        Some(Outcome::Command { tag }) if tag == "ROLLBACK" => Err(p.fatal(format!(
            "the transaction did not commit on the {} (it did on the source)",
            to.as_str()
        ))),
        _ => Ok(()),
    }
}
