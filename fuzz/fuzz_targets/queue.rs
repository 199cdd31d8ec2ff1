//! The mirror driver's queue: the segment and record decoder (`proxy::capture::queue`:
//! `Reader`, and `Writer::open`'s recovery, which checks every record and cuts a torn
//! tail) fed arbitrary segment files, and the unit record decoder
//! (`proxy::capture::Unit::decode`) fed arbitrary payloads.
//!
//! Input: a flags byte, then the segment's bytes. Flags bit 0: the input's first 32 bytes
//! are the segment header (else a valid header for generation 7, first seq 1, base
//! position from the flags byte); bit 1: the CRC of every record whose length fits is
//! made right (the fuzzer cannot compute CRC-32); bit 2: the records after the first
//! whole one go into a second segment with a valid header. Files live in a directory
//! under /dev/shm (tmpfs: the syncs cost nothing).
//!
//! Invariants: no panic; a reader returns consecutive seqs from the oldest segment's, payloads whose length
//! the record's length field gives, and a monotonic position; a unit payload that decodes
//! encodes back to the bytes it was read from and decodes again to itself; once the
//! writer has recovered the queue, an append gets the next seq and a new reader reads the
//! whole queue without error, the appended record last.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::capture::queue::{Reader, Writer};
use proxy::capture::{Unit, UNIT};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const GEN: u64 = 7;

fn dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        base.join(format!("pgshift-fuzz-queue-{}", std::process::id()))
    })
}

fn header(first: u64, base: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(32);
    h.extend_from_slice(b"PGSQ");
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&GEN.to_le_bytes());
    h.extend_from_slice(&first.to_le_bytes());
    h.extend_from_slice(&base.to_le_bytes());
    h
}

/// Walks the records of `body` (length, CRC, kind, seq, payload); with `fix`, rewrites the
/// CRC of each whole one. Returns the byte offset after the first whole record and the
/// number of whole records before the first torn one.
fn walk(body: &mut [u8], fix: bool) -> (Option<usize>, u64) {
    let (mut at, mut first_end, mut n) = (0, None, 0);
    while body.len() - at >= 8 {
        let len = u32::from_le_bytes(body[at..at + 4].try_into().unwrap()) as usize;
        if len < 9 || body.len() - at - 8 < len {
            break;
        }
        if fix {
            let crc = crc32fast::hash(&body[at + 8..at + 8 + len]);
            body[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        }
        at += 8 + len;
        n += 1;
        first_end.get_or_insert(at);
    }
    (first_end, n)
}

fn check_unit(payload: &[u8]) {
    if let Ok(u) = Unit::decode(payload) {
        let enc = u.encode();
        assert_eq!(
            &payload[..enc.len()],
            &enc[..],
            "unit re-encodes differently"
        );
        assert_eq!(Unit::decode(&enc).unwrap(), u);
    }
}

/// Reads the queue from seq `start` on (the oldest segment's first seq, at least 1).
fn read_all(start: u64, max: usize) -> (Vec<(u64, u8, usize)>, bool) {
    let mut out = Vec::new();
    let Ok(mut r) = Reader::open(dir(), GEN, start - 1) else {
        return (out, true);
    };
    let mut pos = r.position();
    while out.len() < max {
        match r.next() {
            Ok(Some(rec)) => {
                assert_eq!(
                    u128::from(rec.seq),
                    u128::from(start) + out.len() as u128,
                    "seqs not consecutive"
                );
                assert!(
                    u128::from(r.position()) >= u128::from(pos) + 17 + rec.payload.len() as u128
                );
                pos = r.position();
                if rec.kind == UNIT {
                    check_unit(&rec.payload);
                }
                out.push((rec.seq, rec.kind, rec.payload.len()));
            }
            Ok(None) => return (out, false),
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    check_unit(data);
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let d = dir();
    let _ = std::fs::remove_dir_all(d);
    std::fs::create_dir_all(d).unwrap();

    let (head, mut body) = if flags & 1 != 0 {
        if rest.len() < 32 {
            return;
        }
        (rest[..32].to_vec(), rest[32..].to_vec())
    } else {
        (header(1, u64::from(flags >> 4) << 60), rest.to_vec())
    };
    let (first_end, _) = walk(&mut body, flags & 2 != 0);
    let first_seq = u64::from_le_bytes(head[16..24].try_into().unwrap());
    let seg = |first: u64| d.join(format!("q-{GEN:016x}-{first:016x}.seg"));
    match first_end {
        Some(end) if flags & 4 != 0 => {
            let mut one = head.clone();
            one.extend_from_slice(&body[..end]);
            std::fs::write(seg(first_seq), one).unwrap();
            let base = u64::from_le_bytes(head[24..32].try_into().unwrap());
            let next = first_seq.wrapping_add(1);
            let mut two = header(next, base.wrapping_add(end as u64));
            two.extend_from_slice(&body[end..]);
            std::fs::write(seg(next), two).unwrap();
        }
        _ => {
            let mut one = head;
            one.extend_from_slice(&body);
            std::fs::write(seg(first_seq), one).unwrap();
        }
    }

    let start = first_seq.max(1);
    let (read, _) = read_all(start, 100_000);
    let Ok(w) = Writer::open_with(d, GEN, 1 << 20) else {
        return;
    };
    let last = w.last_seq();
    assert!(
        u128::from(last) + 1 >= u128::from(start) + read.len() as u128,
        "recovery lost records the reader returned"
    );
    let seq = w
        .append(UNIT, &Unit::default().encode())
        .expect("append after recovery");
    assert_eq!(u128::from(seq), u128::from(last) + 1);
    drop(w);
    let (after, err) = read_all(start, 100_000);
    assert!(!err, "the recovered queue does not read back");
    assert_eq!(
        u128::from(start) + after.len() as u128,
        u128::from(seq) + 1,
        "records after recovery"
    );
    assert_eq!(after.last().map(|r| r.1), Some(UNIT));
});
