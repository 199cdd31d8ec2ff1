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

async fn apply_gen(e: &Arc<Engine>, gen: u64) -> Result<(), Halt> {
    let from = e
        .source_side_of(gen)
        .ok_or_else(|| Halt::Fatal(format!("capture generation {gen} is unknown")))?;
    let to = from.other();
    let (addr, user, password) = e.server(to);
    let bc = backend::connect(
        &addr,
        &user,
        password.as_deref(),
        &[
            ("application_name".into(), "pgshift-apply".into()),
            // Units commit without waiting for their WAL flush; each batch ends with one
            // commit that waits (`flush`), before the batch counts as applied. A crash of
            // the other side loses at most a tail of units together with their seqs in the
            // state table, as if they had aborted (PostgreSQL docs, "synchronous_commit":
            // no risk of inconsistency), and they are applied again from the queue.
            ("synchronous_commit".into(), "off".into()),
        ],
        e.cfg().proxy.connect_timeout_ms,
    )
    .await
    .map_err(|err| Halt::Retry(format!("cannot connect to the {}: {err}", to.as_str())))?;
    let mut conn = Conn {
        stream: bc.stream,
        buf: BytesMut::new(),
        prepared: HashMap::new(),
    };
    let prefix = &e.cfg().replication.object_prefix;
    let table = state_table(prefix);
    let setup = format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; \
         CREATE TABLE IF NOT EXISTS {table} (gen bigint PRIMARY KEY, seq bigint NOT NULL, low bigint NOT NULL); \
         INSERT INTO {table} SELECT {gen}, 0, 1 WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE gen = {gen})",
        schema = ident(&format!("{prefix}_mirror")),
    );
    if let Err(m) = conn.query(&setup).await? {
        return Err(Halt::Retry(format!(
            "{}: creating {table}: {m}",
            to.as_str()
        )));
    }
    let row = match conn
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
                    stop = Some(Halt::Fatal(format!(
                        "transaction at queue seq {} was over {} MiB and could not be recorded: roll back the upgrade and start it again",
                        rec.seq,
                        super::MAX_UNIT_BYTES >> 20
                    )));
                }
                UNIT => {
                    let unit = Unit::decode(&rec.payload)
                        .map_err(|m| Halt::Fatal(format!("capture queue seq {}: {m}", rec.seq)))?;
                    open.remove(&unit.uid);
                    if rec.seq > applied {
                        let low = open.values().min().copied().unwrap_or(rec.seq + 1);
                        if let Some(p) =
                            encode(&mut conn.prepared, &table, gen, rec.seq, low, unit)?
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
            run_batch(&mut conn, &table, gen, batch, to).await?;
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
/// each unit's answers against the source's, in order.
async fn run_batch(
    conn: &mut Conn,
    table: &str,
    gen: u64,
    batch: Vec<Pending>,
    to: Side,
) -> Result<(), Halt> {
    let mut out = BytesMut::with_capacity(batch.iter().map(|p| p.out.len()).sum::<usize>() + 128);
    for p in &batch {
        out.extend_from_slice(&p.out);
    }
    msg::query(
        &mut out,
        &format!(
            "BEGIN; SET LOCAL synchronous_commit = on; UPDATE {table} SET seq = seq WHERE gen = {gen}; COMMIT"
        ),
    );
    let expected: usize = batch.iter().map(Pending::answers).sum::<usize>() + 1;
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
    let mut at = 0;
    for p in &batch {
        let n = p.answers();
        check(p, &segs[at..at + n], to)?;
        at += n;
    }
    if let Some(e) = Answer::parse(&segs[at]).ok().as_ref().and_then(first_error) {
        return Err(Halt::Retry(format!(
            "{}: flushing the applied transactions: {e}",
            to.as_str()
        )));
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
    table: &str,
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
    let state = format!("UPDATE {table} SET seq = {seq}, low = {low} WHERE gen = {gen}");
    let mut head = String::new();
    if wrap {
        if !inner {
            head.push_str("BEGIN; ");
        }
        if !discard {
            head.push_str(&state);
            head.push_str("; ");
        }
        head.push_str("SET LOCAL ROLE ");
    } else {
        head.push_str("SET ROLE ");
    }
    head.push_str(&ident(&unit.user));
    push_session_state(&mut head, &unit.params, &unit.sets, wrap);
    // A discarded unit's position is stored after it, on its own (a crash in between
    // draws its sequence values once more).
    let reset = if discard {
        format!("RESET ROLE; RESET ALL; {state}")
    } else {
        "RESET ROLE; RESET ALL".to_string()
    };
    if inner {
        out.extend_from_slice(&unit.client[..sc.first_end]);
        msg::query(&mut out, &head);
        out.extend_from_slice(&unit.client[sc.first_end..sc.len]);
        msg::query(&mut out, &reset);
    } else if wrap {
        msg::query(&mut out, &head);
        out.extend_from_slice(&unit.client[..sc.len]);
        msg::query(&mut out, if discard { "ROLLBACK" } else { "COMMIT" });
        msg::query(&mut out, &reset);
    } else {
        msg::query(&mut out, &head);
        out.extend_from_slice(&unit.client[..sc.len]);
        // pgshift's own role again before its state table (the session's role may not
        // reach it).
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
            "setting up the session (applied position, role {}, its start-up parameters and SETs) failed on the {}: {e}",
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
