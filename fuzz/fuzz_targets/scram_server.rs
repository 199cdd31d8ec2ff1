//! SCRAM-SHA-256 server side (`wire::auth::ScramServer`: pgshift authenticating a client)
//! fed arbitrary client-first and client-final messages, and the pg_authid verifier parser.
//!
//! Input: a flags byte, then the client-first-message, a 0xFF byte (never in UTF-8), the
//! client-final-message. Flags: bit 0 the client picks SCRAM-SHA-256-PLUS, bit 1 the
//! server offers channel binding, bit 2 an honest exchange (a real `ScramClient` whose
//! password is the client-first part). In the client-final, `%N` is replaced by the nonce
//! the server sent and `%C` by the base64 channel-binding data the server expects, so that
//! the fuzzer gets past the checks it cannot guess.
//!
//! Invariants: no panic; a server-first-message has the form `r=<client nonce + server
//! nonce>,s=<salt>,i=<iterations>`; a successful client-final answers `v=<signature>`;
//! after an error or the end every further message is refused as out of order; the
//! honest client is accepted exactly when its password is right, and then verifies the
//! server's signature; a verifier that parses prints back to a form that parses to itself.
#![no_main]

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use wire::auth::{
    AuthError, ScramClient, ScramServer, ScramVerifier, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};

const PASSWORD: &str = "pencil";
const CBIND: &[u8] = b"fuzz-certificate-hash-32-bytes!!";

fn verifier() -> ScramVerifier {
    static V: OnceLock<ScramVerifier> = OnceLock::new();
    // Few iterations: the fuzzer spends its time in the parsers, not in PBKDF2.
    V.get_or_init(|| ScramVerifier::from_password(PASSWORD, b"fuzz-salt", 16))
        .clone()
}

fn server(cbind: bool) -> ScramServer {
    if cbind {
        ScramServer::with_channel_binding(verifier(), CBIND.to_vec())
    } else {
        ScramServer::new(verifier())
    }
}

fn refuses_more(s: &mut ScramServer) {
    assert!(matches!(
        s.client_final(b"c=biws,r=x,p=AAAA"),
        Err(AuthError::OutOfOrder(_))
    ));
    assert!(matches!(
        s.client_first(SCRAM_SHA_256, b"n,,n=,r=x"),
        Err(AuthError::OutOfOrder(_))
    ));
}

fn honest(password: &str, cbind: bool) {
    let mut s = server(cbind);
    let mut c = ScramClient::new(password);
    let first = c.client_first();
    let sf = s
        .client_first(SCRAM_SHA_256, &first)
        .expect("libpq-style client-first refused");
    let cf = c.server_first(&sf).expect("our own server-first refused");
    match s.client_final(&cf) {
        Ok(v) => {
            assert_eq!(password, PASSWORD, "a wrong password was accepted");
            c.server_final(&v)
                .expect("the server's signature does not verify");
            assert!(c.is_verified());
        }
        Err(AuthError::WrongPassword) => assert_ne!(password, PASSWORD),
        Err(e) => panic!("honest client-final refused: {e}"),
    }
    refuses_more(&mut s);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(v) = ScramVerifier::parse(text) {
            let form = v.to_string_form();
            let back = ScramVerifier::parse(&form).expect("printed verifier does not parse");
            assert_eq!(back.to_string_form(), form);
            assert_eq!((back.iterations(), back.salt()), (v.iterations(), v.salt()));
        }
    }
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (first, fin) = match rest.iter().position(|&b| b == 0xff) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let (plus, cbind) = (flags & 1 != 0, flags & 2 != 0);
    if flags & 4 != 0 {
        // A password is a C string in PostgreSQL (and HMAC pads its key with NULs, so
        // "pencil\0" derives the same keys as "pencil"): up to the first NUL.
        let pw = first.split(|&b| b == 0).next().unwrap_or_default();
        honest(&String::from_utf8_lossy(pw), cbind);
        return;
    }

    let mut s = server(cbind);
    let mech = if plus {
        SCRAM_SHA_256_PLUS
    } else {
        SCRAM_SHA_256
    };
    let sf = match s.client_first(mech, first) {
        Ok(sf) => sf,
        Err(AuthError::OutOfOrder(_)) => panic!("first message refused as out of order"),
        Err(_) => {
            refuses_more(&mut s);
            return;
        }
    };
    // r=<nonce>,s=<salt>,i=<iterations>, the nonce extending the client's.
    let sf_text = std::str::from_utf8(&sf).expect("server-first is not UTF-8");
    let parts: Vec<&str> = sf_text.split(',').collect();
    assert_eq!(parts.len(), 3, "server-first {sf_text:?}");
    let nonce = parts[0].strip_prefix("r=").expect("no nonce");
    assert_eq!(parts[1], format!("s={}", BASE64.encode(b"fuzz-salt")));
    assert_eq!(parts[2], "i=16");
    let client_first = std::str::from_utf8(first).unwrap();
    let client_nonce = client_first
        .split(',')
        .find_map(|p| p.strip_prefix("r="))
        .expect("accepted client-first without a nonce");
    assert!(nonce.starts_with(client_nonce) && nonce.len() > client_nonce.len());

    let gs2_end = client_first.match_indices(',').nth(1).unwrap().0 + 1;
    let mut binding = client_first.as_bytes()[..gs2_end].to_vec();
    if plus {
        binding.extend_from_slice(CBIND);
    }
    let fin = String::from_utf8_lossy(fin)
        .replace("%N", nonce)
        .replace("%C", &BASE64.encode(&binding));
    match s.client_final(fin.as_bytes()) {
        Ok(v) => {
            let v = String::from_utf8(v).unwrap();
            let sig = v.strip_prefix("v=").expect("server-final without v=");
            assert_eq!(BASE64.decode(sig).unwrap().len(), 32);
        }
        Err(AuthError::OutOfOrder(_)) => panic!("final message refused as out of order"),
        Err(_) => {}
    }
    refuses_more(&mut s);
});
