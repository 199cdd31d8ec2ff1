//! The mirror driver's initial copy against real servers, PostgreSQL 13 → 17 from the
//! `integration` harness: every user table copied from one exported snapshot of the source,
//! by parallel workers, while the source keeps changing; the target ends equal to the source
//! as of the snapshot, and a second copy gives the same result. A bad snapshot identifier is
//! refused with a message naming the problem.

mod common;

use common::*;
use control::logical::{CopyReport, Logical};
use integration::ServerOptions;
use tokio_postgres::Client;

const SCHEMA: &str = r#"
    CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy');
    CREATE SCHEMA app;
    CREATE TABLE app.big (id int PRIMARY KEY, name text NOT NULL, amount numeric(12,2),
                          created timestamptz NOT NULL DEFAULT now());
    INSERT INTO app.big
         SELECT g, 'row ' || g, g * 1.25, timestamptz '2024-01-01 00:00+00' + g * interval '1 minute'
           FROM generate_series(1, 50000) g;

    CREATE TABLE app.types (id int PRIMARY KEY, i2 smallint, i8 bigint, f4 real, f8 float8, n numeric,
                            t text, vc varchar(20), b bool, d date, ts timestamp, tstz timestamptz,
                            iv interval, u uuid, by bytea, j json, jb jsonb, ia int[], ta text[],
                            ip inet, m public.mood, pt point);
    INSERT INTO app.types VALUES
      (1, 1, 9223372036854775807, 1.5, 3.141592653589793, 12345678901234567890.123456789,
       E'tab\there, newline\nand backslash \\ and quote '' and "dq"', 'short', true, '2024-02-29',
       '2024-02-29 12:34:56.789', '2024-02-29 12:34:56.789+05:30', '1 year 2 mons 3 days 04:05:06',
       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x00ff10', '{"a":  1, "b": [1, 2]}', '{"z": {"y": null}}',
       '{1,NULL,3}', '{"x y",NULL,"",\\N,"q\"uote"}', '10.1.2.3/8', 'happy', '(1.5,-2)'),
      (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, NULL),
      (3, -32768, -1, 'Infinity', '-Infinity', 'NaN', 'ünïcödé ✓ 日本', '', false, 'infinity',
       '-infinity', '1999-12-31 23:59:59+00', '-1 days', '00000000-0000-0000-0000-000000000000', '',
       '[]', '{}', '{}', '{{a,b},{c,d}}', '::1', 'sad', '(0,0)');
    INSERT INTO app.types (id, i8, t, n, jb)
         SELECT g, g * 1000, repeat('x', g % 50), g / 7.0, jsonb_build_object('g', g)
           FROM generate_series(10, 2000) g;

    CREATE TABLE app.calc (id int PRIMARY KEY, price numeric NOT NULL, qty int NOT NULL,
                           total numeric GENERATED ALWAYS AS (price * qty) STORED);
    INSERT INTO app.calc (id, price, qty) SELECT g, g / 4.0, g % 7 FROM generate_series(1, 500) g;

    CREATE TABLE app.dropped (id int PRIMARY KEY, gone text, kept text);
    INSERT INTO app.dropped SELECT g, 'gone', 'kept ' || g FROM generate_series(1, 100) g;
    ALTER TABLE app.dropped DROP COLUMN gone;
    -- A trigger that refuses every insert: the copy must not fire it.
    CREATE FUNCTION app.refuse() RETURNS trigger LANGUAGE plpgsql AS
      $$ BEGIN RAISE EXCEPTION 'trigger fired on %', TG_TABLE_NAME; END $$;
    CREATE TRIGGER refuse BEFORE INSERT ON app.dropped FOR EACH ROW EXECUTE FUNCTION app.refuse();

    CREATE TABLE app.customers (id int PRIMARY KEY, name text NOT NULL);
    CREATE TABLE app.orders (id int PRIMARY KEY, customer int NOT NULL REFERENCES app.customers, note text);
    INSERT INTO app.customers SELECT g, 'customer ' || g FROM generate_series(1, 300) g;
    INSERT INTO app.orders SELECT g, 1 + g % 300, 'order ' || g FROM generate_series(1, 3000) g;

    CREATE TABLE app.measure (id int NOT NULL, region text NOT NULL, v int) PARTITION BY LIST (region);
    CREATE TABLE app.measure_eu PARTITION OF app.measure FOR VALUES IN ('eu');
    CREATE TABLE app.measure_us PARTITION OF app.measure FOR VALUES IN ('us');
    INSERT INTO app.measure SELECT g, CASE WHEN g % 3 = 0 THEN 'us' ELSE 'eu' END, g * 2
      FROM generate_series(1, 3000) g;

    CREATE TABLE public."Odd ""Name""" ("Key" text PRIMARY KEY, "va""l" int);
    INSERT INTO public."Odd ""Name""" SELECT 'k' || g, g FROM generate_series(1, 50) g;
    CREATE TABLE public.empty (id int);
    CREATE TABLE app.nocols ();
    INSERT INTO app.nocols DEFAULT VALUES;
    INSERT INTO app.nocols DEFAULT VALUES;

    CREATE UNLOGGED TABLE public.scratch (id int);
    INSERT INTO public.scratch SELECT generate_series(1, 10);
    CREATE SCHEMA skip;
    CREATE TABLE skip.t (id int PRIMARY KEY);
    INSERT INTO skip.t SELECT generate_series(1, 10);
"#;

/// Changes made on the source after the snapshot was exported.
const CHANGES: &str = r#"
    INSERT INTO app.big (id, name, amount) SELECT g, 'late ' || g, 1 FROM generate_series(50001, 51000) g;
    UPDATE app.big SET name = name || ' changed' WHERE id % 10 = 0;
    DELETE FROM app.big WHERE id <= 500;
    UPDATE app.types SET t = 'changed', jb = '{"changed": true}' WHERE id IN (1, 3, 50);
    DELETE FROM app.types WHERE id BETWEEN 100 AND 199;
    INSERT INTO app.types (id, t) VALUES (5000, 'late');
    UPDATE app.calc SET qty = qty + 1;
    UPDATE app.measure SET region = 'us' WHERE id <= 100 AND region = 'eu';
    INSERT INTO app.measure VALUES (9001, 'eu', 1), (9002, 'us', 2);
    INSERT INTO app.customers VALUES (301, 'late');
    INSERT INTO app.orders VALUES (3001, 301, 'late');
    DELETE FROM public."Odd ""Name""";
    INSERT INTO public.empty VALUES (1);
    INSERT INTO app.nocols DEFAULT VALUES;
    INSERT INTO skip.t VALUES (11);
"#;

/// The tables compared (partitions through their parent and one by themselves).
const COMPARED: &[&str] = &[
    "app.big",
    "app.types",
    "app.calc",
    "app.dropped",
    "app.customers",
    "app.orders",
    "app.measure",
    "app.measure_eu",
    "public.\"Odd \"\"Name\"\"\"",
    "public.empty",
    "app.nocols",
];

/// `count md5` of every table of [`COMPARED`], rows as text in a fixed order.
async fn digests(c: &Client) -> Vec<String> {
    let mut out = Vec::new();
    for t in COMPARED {
        let sql = format!(
            "SELECT count(*)::text || ' ' || COALESCE(md5(string_agg(x::text, ',' ORDER BY x::text)), '') FROM {t} x"
        );
        let d: String = c
            .query_one(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0);
        out.push(format!("{t}: {d}"));
    }
    out
}

async fn rows_in(c: &Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap_or_else(|e| panic!("count {table}: {e}"))
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_snapshot_copies_the_source_as_of_the_snapshot() {
    init_tracing();
    let (src, tgt) = pair(ServerOptions::default(), ServerOptions::default()).await;
    let s = connect(&src).await;
    let t = connect(&tgt).await;
    s.batch_execute(SCHEMA).await.expect("source schema");
    let journal = journal_path("snapshot-copy");
    let cfg = make_config(&src, &tgt, &journal);
    let logical = Logical::new(&cfg);
    let schema = logical.copy_schema().await.expect("copy schema");
    eprintln!("schema: {schema}");

    let snap = logical.export_snapshot().await.expect("export snapshot");
    assert!(!snap.id.is_empty());
    eprintln!("snapshot {snap:?}");

    // The source changes after the export; the copy must not see it.
    s.batch_execute(CHANGES)
        .await
        .expect("changes after export");

    // The source as of the snapshot, in a transaction that imported it.
    let view = connect(&src).await;
    view.batch_execute(&format!(
        "SET TimeZone = 'UTC'; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
        snap.id
    ))
    .await
    .expect("import snapshot");
    let want = digests(&view).await;
    let want_rows: i64 = {
        let mut n = 0;
        for tbl in [
            "app.big",
            "app.types",
            "app.calc",
            "app.dropped",
            "app.customers",
            "app.orders",
            "app.measure",
            "public.\"Odd \"\"Name\"\"\"",
            "public.empty",
            "app.nocols",
        ] {
            n += rows_in(&view, tbl).await;
        }
        n
    };
    s.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let now = digests(&s).await;
    assert_ne!(want, now, "the changes after the export changed nothing");
    assert_eq!(rows_in(&view, "app.big").await, 50_000);

    t.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let excluded = vec!["skip".to_string()];
    let mut reports: Vec<CopyReport> = Vec::new();
    for round in 1..=2 {
        let r = logical
            .copy_snapshot(&snap.id, 3, &excluded)
            .await
            .unwrap_or_else(|e| panic!("copy round {round}: {e}"));
        eprintln!("round {round}: {r:?}");
        // big, types, calc, dropped, customers, orders, measure_eu, measure_us, Odd "Name",
        // empty, nocols; not the excluded skip.t nor the unlogged scratch.
        assert_eq!(r.tables, 11, "round {round}");
        assert_eq!(r.rows, want_rows as u64, "round {round}");
        assert!(r.bytes > 1_000_000, "round {round}: {r:?}");
        let got = digests(&t).await;
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(w, g, "round {round}: target differs from the snapshot");
        }
        assert_eq!(rows_in(&t, "skip.t").await, 0, "excluded schema copied");
        assert_eq!(
            rows_in(&t, "public.scratch").await,
            0,
            "unlogged table copied"
        );
        reports.push(r);
    }
    assert_eq!(reports[0].rows, reports[1].rows);
    assert_eq!(reports[0].bytes, reports[1].bytes);

    // Generated columns are computed on the target; its triggers and FKs are intact.
    let r = t
        .query_one(
            "SELECT count(*) FILTER (WHERE total = price * qty), count(*) FROM app.calc",
            &[],
        )
        .await
        .unwrap();
    let (ok, all): (i64, i64) = (r.get(0), r.get(1));
    assert_eq!((ok, all), (500, 500));
    let e = t
        .batch_execute("INSERT INTO app.dropped VALUES (1000, 'x')")
        .await
        .expect_err("the target's trigger still fires for ordinary sessions");
    assert!(e.to_string().contains("trigger fired") || format!("{e:?}").contains("trigger fired"));

    drop(view);
    snap.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_snapshot_id_is_refused_with_a_clear_error() {
    init_tracing();
    let src = start(13, ServerOptions::default()).await;
    let s = connect(&src).await;
    s.batch_execute("CREATE TABLE public.t (id int); INSERT INTO public.t VALUES (1)")
        .await
        .expect("schema");
    s.batch_execute("CREATE DATABASE other")
        .await
        .expect("target database");
    let journal = journal_path("snapshot-bad");
    // The target: another database of the same server (it lacks public.t; the copy must
    // fail on the snapshot before it looks there).
    let cfg = load_config(&config_text(
        &src,
        &server_toml("target", &src, "other"),
        &journal,
        "",
        "",
    ));
    let logical = Logical::new(&cfg);

    let e = logical
        .copy_snapshot("bogus", 2, &[])
        .await
        .expect_err("bogus id");
    eprintln!("{e}");
    assert!(e.message.contains("invalid snapshot identifier"), "{e}");
    assert!(e.message.contains("bogus"), "{e}");
    assert!(e.message.contains("source ("), "{e}");
    assert!(!e.transient, "{e}");

    let e = logical
        .copy_snapshot("  ", 2, &[])
        .await
        .expect_err("empty id");
    assert!(e.message.contains("no snapshot identifier"), "{e}");

    // A well-formed identifier whose exporting transaction has ended.
    let snap = logical.export_snapshot().await.expect("export");
    let id = snap.id.clone();
    snap.release().await.expect("release");
    let e = logical
        .copy_snapshot(&id, 2, &[])
        .await
        .expect_err("expired snapshot");
    eprintln!("{e}");
    assert!(e.message.contains("invalid snapshot identifier"), "{e}");
    assert!(e.message.contains(&id), "{e}");
    assert!(e.message.contains("still open"), "{e}");
    assert_eq!(rows_in(&s, "public.t").await, 1);
}
