//! The validator's lexer and classifier: `classify` (sqlparser and the walk over its AST),
//! `is_read_only` (the lexer's leading-key-word check, the cache, the walk),
//! `fingerprint` (the lexer over the whole text), `transaction_start` (the lexer and a small
//! grammar) and the comparison options read from the text (`mode_for`, `order_by`,
//! `CompareOptions::for_sql`), fed arbitrary SQL (bytes read as the proxy does, lossily).
//!
//! Invariants: no panic; `is_read_only(sql) == classify(sql).read_only` (documented),
//! cached and uncached alike; a reason exactly when not read-only; read-only text is of
//! kind Read; tables without duplicates; a fingerprint never keeps a string constant
//! (checked with a marker constant appended to texts without a quoted identifier, which
//! could legitimately swallow it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use validator::{classify, CompareOptions, Kind};

const MARKER: &str = "pgshift-secret-marker";

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data);
    let c = classify(&sql);
    assert_eq!(c.read_only, c.reason.is_none(), "{c:?}");
    if c.read_only {
        assert_eq!(c.kind, Kind::Read, "{c:?}");
    }
    let mut seen = std::collections::HashSet::new();
    assert!(
        c.tables.iter().all(|t| seen.insert(t)),
        "duplicate tables {:?}",
        c.tables
    );
    assert_eq!(validator::is_read_only(&sql), c.read_only, "cached verdict");
    assert_eq!(validator::is_read_only(&sql), c.read_only, "cache hit");
    assert_eq!(validator::is_read_only_uncached(&sql), c.read_only);

    let _ = validator::transaction_start(&sql);
    let _ = validator::mode_for(&sql);
    let _ = validator::ordered(&sql);
    let _ = validator::order_by(&sql);
    let _ = CompareOptions::for_sql(&sql, c.kind);

    let _ = validator::fingerprint(&sql);
    if !sql.contains('"') && !sql.contains(MARKER) {
        let f = validator::fingerprint(&format!("{sql} = '{MARKER}'"));
        assert!(
            !f.contains(MARKER),
            "a literal leaked into the fingerprint {f:?}"
        );
    }
});
