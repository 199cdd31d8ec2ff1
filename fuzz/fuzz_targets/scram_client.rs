//! SCRAM-SHA-256 client side (`wire::auth::ScramClient`: pgshift logging in to a server)
//! fed arbitrary server-first and server-final messages.
//!
//! Input: a flags byte, then the server-first-message, a 0xFF byte, the
//! server-final-message. In the server-first, `%N` is replaced by the client's nonce (so
//! the fuzzer gets past the nonce check). Flags bit 0: an honest server instead (a real
//! `ScramServer` for password "pencil", the client's password being the first part), its
//! server-final XOR-ed with the final part of the input.
//!
//! Invariants: no panic; an accepted server-first gives a client-final of the form
//! `c=biws,r=<server nonce>,p=<32-byte proof>`; the client is verified only after a
//! server-final whose signature is the real one (a forged or altered signature is
//! refused); nothing is accepted after the end or an error.
#![no_main]

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use wire::auth::{AuthError, ScramClient, ScramServer, ScramVerifier, SCRAM_SHA_256};

const PASSWORD: &str = "pencil";

/// Whether `msg` asks for an iteration count that is valid but costly to compute (over 256):
/// those are skipped so that the fuzzer spends its time in the parser, not in PBKDF2.
fn costly(msg: &str) -> bool {
    msg.split(',').any(|p| {
        p.strip_prefix("i=")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| (257..=10_000_000).contains(&n))
    })
}

fn refuses_more(c: &mut ScramClient) {
    assert!(matches!(
        c.server_first(b"r=x,s=AAAA,i=1"),
        Err(AuthError::OutOfOrder(_))
    ));
    assert!(matches!(
        c.server_final(b"v=AAAA"),
        Err(AuthError::OutOfOrder(_))
    ));
}

fn honest(password: &str, tamper: &[u8]) {
    let mut s = ScramServer::new(ScramVerifier::from_password(PASSWORD, b"fuzz-salt", 16));
    let mut c = ScramClient::new(password);
    let first = c.client_first();
    let sf = s.client_first(SCRAM_SHA_256, &first).unwrap();
    let cf = c.server_first(&sf).expect("a real server-first refused");
    let v = match s.client_final(&cf) {
        Ok(v) => v,
        Err(AuthError::WrongPassword) => {
            assert_ne!(password, PASSWORD);
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let mut fin = v.clone();
    for (b, t) in fin.iter_mut().zip(tamper) {
        *b ^= t;
    }
    fin.extend_from_slice(tamper.get(v.len()..).unwrap_or_default());
    match c.server_final(&fin) {
        Ok(()) => {
            assert!(c.is_verified());
            // Only the real signature verifies; anything after it must be an extension.
            let real = std::str::from_utf8(&v).unwrap();
            let got = std::str::from_utf8(&fin).unwrap();
            assert_eq!(
                got.split(',').next(),
                Some(real),
                "an altered signature verified"
            );
        }
        Err(_) => assert!(!c.is_verified()),
    }
    refuses_more(&mut c);
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (first, fin) = match rest.iter().position(|&b| b == 0xff) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    if flags & 1 != 0 {
        // Up to the first NUL: HMAC pads its key with NULs, so "pencil\0" is "pencil".
        let pw = first.split(|&b| b == 0).next().unwrap_or_default();
        honest(&String::from_utf8_lossy(pw), fin);
        return;
    }

    let mut c = ScramClient::new("secret");
    assert!(matches!(
        c.server_final(b"v=AAAA"),
        Err(AuthError::OutOfOrder(_))
    ));
    let cf = c.client_first();
    let cf = String::from_utf8(cf).unwrap();
    let nonce = cf.strip_prefix("n,,n=,r=").expect("client-first form");
    let sf = String::from_utf8_lossy(first).replace("%N", nonce);
    if costly(&sf) {
        return;
    }
    match c.server_first(sf.as_bytes()) {
        Ok(out) => {
            let out = String::from_utf8(out).unwrap();
            let server_nonce = sf.split(',').next().unwrap().strip_prefix("r=").unwrap();
            assert!(server_nonce.starts_with(nonce) && server_nonce.len() > nonce.len());
            let (head, proof) = out.rsplit_once(",p=").unwrap();
            assert_eq!(head, format!("c=biws,r={server_nonce}"));
            assert_eq!(BASE64.decode(proof).unwrap().len(), 32);
        }
        Err(AuthError::OutOfOrder(_)) => panic!("server-first refused as out of order"),
        Err(_) => {
            refuses_more(&mut c);
            return;
        }
    }
    // The fuzzer cannot know the signature: a verified client means a forgery got in.
    if c.server_final(fin).is_ok() {
        panic!(
            "a server-final the fuzzer made up verified: {:?}",
            String::from_utf8_lossy(fin)
        );
    }
    assert!(!c.is_verified());
    refuses_more(&mut c);
});
