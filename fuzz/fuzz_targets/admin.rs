//! The admin console's command parser (`proxy::admin::statements` and `parse_command`),
//! fed arbitrary Query texts (the console reads them as UTF-8, `wire::msg::parse_query`).
//!
//! Invariants: no panic; statements are trimmed, non-empty and hold no `;`; key words are
//! case-insensitive (a command parses the same lower-cased, except the table name of
//! `FORCE RESYNC TABLE`, which keeps its case); `SHIFT TRAFFIC` gives 0..=100;
//! `FORCE RESYNC TABLE` gives a non-empty name; every error is 42601 or 22023 with a
//! message and a hint.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::admin::{parse_command, statements, Command};

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    for s in statements(sql) {
        assert!(
            !s.is_empty() && !s.contains(';') && s.trim() == s,
            "statement {s:?}"
        );
        match parse_command(s) {
            Ok(Command::ShiftTraffic(p)) => {
                assert!(p <= 100);
                assert_eq!(
                    parse_command(&s.to_ascii_lowercase()),
                    Ok(Command::ShiftTraffic(p))
                );
            }
            Ok(Command::ForceResync(name)) => assert!(!name.is_empty()),
            Ok(c) => assert_eq!(parse_command(&s.to_ascii_lowercase()), Ok(c)),
            Err(e) => {
                assert!(matches!(e.sqlstate, "42601" | "22023"), "{e:?}");
                assert!(!e.message.is_empty() && !e.hint.is_empty());
            }
        }
    }
});
