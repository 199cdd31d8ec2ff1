//! Micro-benchmark of the classifier's per-call costs. Prints, never asserts timings
//! (CI machines vary). Meaningful numbers need an optimised build:
//!
//! ```text
//! cargo test -p validator --release --test costs -- --nocapture
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

/// Mean time per call of `f`, measured over at least ~50 ms after a short warm-up.
fn per_call(mut f: impl FnMut()) -> Duration {
    for _ in 0..100 {
        f();
    }
    let mut n: u32 = 64;
    loop {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        let el = t.elapsed();
        if el >= Duration::from_millis(50) || n >= 1 << 26 {
            return el / n;
        }
        n *= 4;
    }
}

fn show(what: &str, d: Duration) {
    let ns = d.as_nanos();
    if ns < 10_000 {
        println!("  {what:<72} {ns:>7} ns");
    } else {
        println!("  {what:<72} {:>7.1} µs", ns as f64 / 1000.0);
    }
}

const PGBENCH_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
const PGBENCH_UPDATE: &str = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2";

const OLTP: &[&str] = &[
    PGBENCH_SELECT,
    PGBENCH_UPDATE,
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
    "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id \
     WHERE o.customer_id = $1 AND o.created_at > now() - interval '30 days' ORDER BY o.created_at DESC LIMIT 20",
    "SELECT * FROM items WHERE id = ANY($1) FOR UPDATE",
    "WITH moved AS (DELETE FROM queue WHERE id = $1 RETURNING *) INSERT INTO done SELECT * FROM moved",
];

#[test]
fn print_per_call_costs() {
    let profile = if cfg!(debug_assertions) {
        "debug build: numbers are pessimistic, use --release"
    } else {
        "release build"
    };
    println!("\nvalidator per-call costs ({profile})");

    println!("is_read_only (proxy fast path):");
    show(
        "pgbench SELECT, repeated text (per-thread cache hit)",
        per_call(|| {
            black_box(validator::is_read_only(black_box(PGBENCH_SELECT)));
        }),
    );
    show(
        "pgbench UPDATE (rejected on the leading key word)",
        per_call(|| {
            black_box(validator::is_read_only(black_box(PGBENCH_UPDATE)));
        }),
    );
    show(
        "BEGIN (rejected on the leading key word)",
        per_call(|| {
            black_box(validator::is_read_only(black_box("BEGIN")));
        }),
    );
    show(
        "pgbench SELECT, uncached (key word check + parse + walk)",
        per_call(|| {
            black_box(validator::is_read_only_uncached(black_box(PGBENCH_SELECT)));
        }),
    );
    let mut i = 0u64;
    show(
        "SELECT with a new literal each call (cache miss + insert)",
        per_call(|| {
            i += 1;
            let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {i}");
            black_box(validator::is_read_only(black_box(&sql)));
        }),
    );

    println!("classify (parse + full walk, tables, reason):");
    for sql in OLTP {
        let short: String = sql.chars().take(60).collect();
        show(
            &short,
            per_call(|| {
                black_box(validator::classify(black_box(sql)));
            }),
        );
    }

    println!("fingerprint:");
    for sql in &OLTP[..4] {
        let short: String = sql.chars().take(60).collect();
        show(
            &short,
            per_call(|| {
                black_box(validator::fingerprint(black_box(sql)));
            }),
        );
    }

    println!("transaction_start:");
    for sql in [
        "BEGIN",
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        PGBENCH_SELECT,
    ] {
        show(
            sql,
            per_call(|| {
                black_box(validator::transaction_start(black_box(sql)));
            }),
        );
    }
}
