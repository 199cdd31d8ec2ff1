//! Sequence sync against real servers. Before PostgreSQL 10 there is no `pg_sequences`, so
//! [`Logical::sequence_values_catalog`] reads the sequences from the catalog and each
//! sequence relation instead: on a 13 (which has both) it must give exactly what
//! [`Logical::sequence_values_view`] gives — several schemas, a quoted mixed-case name, a
//! sequence never called, one reset to "not called", an identity column's and a serial's
//! sequence, a descending and a cached one, and enough sequences for several batches — and
//! those values set on a 17 must make its sequences continue where the source's stand. The
//! same on a 10 source, whose sequences are also set from the 17 (the way back after a
//! cutover of the `mirror` driver).

mod common;

use common::*;
use control::logical::{Logical, SequenceValue, SEQUENCE_BATCH};
use control::Side;
use integration::{PgServer, ServerOptions};
use std::time::Instant;
use tokio_postgres::Client;

/// Sequences in several schemas, used and unused; `many` holds `MANY` more so that the
/// catalog path needs several batches.
const SCHEMA: &str = r#"
    CREATE SCHEMA app;
    CREATE SCHEMA "Billing Dept";
    CREATE TABLE app.accounts (id serial PRIMARY KEY, name text);
    CREATE TABLE app.events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text);
    CREATE SEQUENCE "Billing Dept"."Invoice ""No""" START 1000 INCREMENT 7;
    CREATE SEQUENCE public.never_used;
    CREATE SEQUENCE public.reset_uncalled;
    CREATE SEQUENCE public.cached CACHE 20;
    CREATE SEQUENCE public.down INCREMENT -3 MINVALUE -1000000 MAXVALUE -1 START -1;
    INSERT INTO app.accounts (name) SELECT 'a' || g FROM generate_series(1, 42) g;
    INSERT INTO app.events (note) SELECT 'e' || g FROM generate_series(1, 17) g;
    SELECT nextval('"Billing Dept"."Invoice ""No"""') FROM generate_series(1, 5);
    SELECT nextval('public.reset_uncalled') FROM generate_series(1, 3);
    SELECT setval('public.reset_uncalled', 50, false);
    SELECT nextval('public.cached');
    SELECT nextval('public.down') FROM generate_series(1, 4);
    CREATE SCHEMA many;
"#;

/// Sequences in schema `many`: every third one never called.
const MANY: usize = 450;

fn many_sql() -> String {
    format!(
        "DO $$ BEGIN
           FOR i IN 1..{MANY} LOOP
             EXECUTE format('CREATE SEQUENCE many.%I', 'seq_' || i);
             IF i % 3 <> 0 THEN
               EXECUTE format('SELECT setval(%L, %s)', 'many.seq_' || i, i * 11);
             END IF;
           END LOOP;
         END $$"
    )
}

fn find<'a>(v: &'a [SequenceValue], schema: &str, name: &str) -> Option<&'a SequenceValue> {
    v.iter().find(|s| s.schema == schema && s.name == name)
}

/// What the source's sequences hold after [`SCHEMA`] and [`many_sql`].
fn check_source_values(v: &[SequenceValue]) {
    let get = |s: &str, n: &str| find(v, s, n).map(|x| x.last_value);
    assert_eq!(get("app", "accounts_id_seq"), Some(42), "serial");
    assert_eq!(get("app", "events_id_seq"), Some(17), "identity");
    assert_eq!(get("Billing Dept", "Invoice \"No\""), Some(1000 + 4 * 7));
    assert_eq!(get("public", "never_used"), None, "never called");
    assert_eq!(get("public", "reset_uncalled"), None, "setval(.., false)");
    assert_eq!(get("public", "down"), Some(-10));
    // Cached: the view and the relation both show the end of the cached range.
    assert!(get("public", "cached").is_some());
    let many = v.iter().filter(|s| s.schema == "many").count();
    assert_eq!(many, MANY - MANY / 3);
    assert_eq!(get("many", "seq_1"), Some(11));
    assert_eq!(get("many", "seq_3"), None);
    assert_eq!(get("many", "seq_449"), Some(449 * 11));
}

/// `nextval` of `seq` on `c`.
async fn nextval(c: &Client, seq: &str) -> i64 {
    c.query_one("SELECT nextval($1::text::regclass)", &[&seq])
        .await
        .unwrap_or_else(|e| panic!("nextval({seq}): {e}"))
        .get(0)
}

async fn load(s: &Client) {
    s.batch_execute(SCHEMA).await.expect("source schema");
    s.batch_execute(&many_sql()).await.expect("many sequences");
}

/// The source's values read both ways, compared; returns them. Each way runs twice: the
/// first read of a session loads the sequences' catalog entries, the second shows the cost
/// in a cutover (timings printed).
async fn read_both(logical: &Logical, s: &Client, what: &str) -> Vec<SequenceValue> {
    let mut times = Vec::new();
    let (mut view, mut catalog) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let t0 = Instant::now();
        view = logical
            .sequence_values_view(s, Side::Source)
            .await
            .expect("pg_sequences");
        let t1 = Instant::now();
        catalog = logical
            .sequence_values_catalog(s, Side::Source)
            .await
            .expect("catalog");
        times.push((
            (t1 - t0).as_secs_f64() * 1000.0,
            t1.elapsed().as_secs_f64() * 1000.0,
        ));
    }
    eprintln!(
        "{what}: {} used sequences; pg_sequences {:.1} ms (then {:.1} ms), catalog with {} per query {:.1} ms (then {:.1} ms)",
        view.len(),
        times[0].0,
        times[1].0,
        SEQUENCE_BATCH,
        times[0].1,
        times[1].1
    );
    assert_eq!(catalog.len(), view.len(), "{what}: counts differ");
    for (c, v) in catalog.iter().zip(&view) {
        assert_eq!(c, v, "{what}: catalog and pg_sequences differ");
    }
    check_source_values(&catalog);
    catalog
}

/// The target after the values were set: pg_sequences equals them, and each sequence goes on
/// from there.
async fn check_target(logical: &Logical, t: &Client, want: &[SequenceValue]) {
    let got = logical
        .sequence_values_view(t, Side::Target)
        .await
        .expect("target pg_sequences");
    assert_eq!(got, want, "target sequences differ from the source's");
    assert_eq!(nextval(t, "app.accounts_id_seq").await, 43);
    assert_eq!(nextval(t, "app.events_id_seq").await, 18);
    assert_eq!(
        nextval(t, "\"Billing Dept\".\"Invoice \"\"No\"\"\"").await,
        1000 + 5 * 7
    );
    assert_eq!(nextval(t, "public.down").await, -13);
    // Not synced: starts at its START value on the target.
    assert_eq!(nextval(t, "public.never_used").await, 1);
    assert_eq!(nextval(t, "many.seq_3").await, 1);
    assert_eq!(nextval(t, "many.seq_2").await, 23);
}

async fn setup(src: &PgServer, tgt: &PgServer, name: &str) -> (Logical, Client, Client) {
    let s = connect(src).await;
    let t = connect(tgt).await;
    load(&s).await;
    let cfg = make_config(src, tgt, &journal_path(name));
    let logical = Logical::new(&cfg);
    logical.copy_schema().await.expect("copy schema");
    (logical, s, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_path_equals_pg_sequences_on_13_and_sets_the_target() {
    init_tracing();
    let (src, tgt) = pair(ServerOptions::default(), ServerOptions::default()).await;
    let (logical, s, t) = setup(&src, &tgt, "sequences-13").await;

    let values = read_both(&logical, &s, "13").await;

    // The catalog path's values set on the 17 (what sync_sequences does with them).
    let t0 = Instant::now();
    let n = logical
        .set_sequences(&t, Side::Target, Side::Source, &values)
        .await
        .expect("set on the target");
    eprintln!(
        "set {n} sequences on the 17 in {:.1} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(n, values.len());
    check_target(&logical, &t, &values).await;

    // sync_sequences end to end (pg_sequences on a 13), after the source moved on.
    s.batch_execute("SELECT nextval('app.accounts_id_seq') FROM generate_series(1, 8)")
        .await
        .unwrap();
    let n = logical
        .sync_sequences(&s, Side::Source, &t, Side::Target)
        .await
        .expect("sync_sequences");
    assert_eq!(n, values.len());
    assert_eq!(nextval(&t, "app.accounts_id_seq").await, 51);

    // A sequence missing on the target fails the whole statement, naming the server.
    let mut bad = values.clone();
    bad.push(SequenceValue {
        schema: "public".into(),
        name: "not there".into(),
        last_value: 5,
    });
    let e = logical
        .set_sequences(&t, Side::Target, Side::Source, &bad)
        .await
        .expect_err("missing sequence");
    eprintln!("{e}");
    assert!(e.message.contains("target ("), "{e}");
    assert!(e.message.contains("not there"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_of_a_10_source_both_ways() {
    init_tracing();
    let (src, tgt) = tokio::join!(
        start(10, ServerOptions::default()),
        start(17, ServerOptions::default())
    );
    let (logical, s, t) = setup(&src, &tgt, "sequences-10").await;
    let values = read_both(&logical, &s, "10").await;

    // Cutover direction: 10 → 17.
    let n = logical
        .sync_sequences(&s, Side::Source, &t, Side::Target)
        .await
        .expect("sync 10 -> 17");
    assert_eq!(n, values.len());
    check_target(&logical, &t, &values).await;

    // The way back: the 17 moved on (and check_target drew some), its values set on the 10.
    t.batch_execute("SELECT nextval('app.events_id_seq') FROM generate_series(1, 100)")
        .await
        .unwrap();
    let back = logical
        .sequence_values(&t, Side::Target)
        .await
        .expect("17 values");
    let n = logical
        .set_sequences(&s, Side::Source, Side::Target, &back)
        .await
        .expect("set on the 10");
    assert_eq!(n, back.len());
    let now = logical
        .sequence_values_catalog(&s, Side::Source)
        .await
        .expect("10 values");
    assert_eq!(now, back, "the 10 does not hold the 17's positions");
    assert_eq!(nextval(&s, "app.events_id_seq").await, 18 + 100 + 1);
}
