//! The typed message views: every parser of `wire::msg` (Authentication, SASL, Password,
//! Query, Parse, Bind, Execute, Close, CommandComplete, NotificationResponse,
//! ParameterStatus, BackendKeyData, ErrorResponse/NoticeResponse) run on one body, and the
//! validator's reader of a whole answer (`validator::Answer::parse`: RowDescription,
//! DataRow, CommandComplete, ErrorResponse, ReadyForQuery, ...) run on the input as a stream.
//!
//! Invariants: no panic; the `&str` and byte-string views of the same message agree; each
//! parsed message rebuilt with the `wire::msg` builder parses back to the same value;
//! builders given the parsed strings make frames whose length field matches; an answer that
//! parses compares equal to itself and its summary respects its length bound.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use validator::{compare, Answer, CompareOptions};
use wire::frame::FrameCodec;
use wire::msg::{self, AuthRequest};

/// The body of the one frame a builder wrote into `buf`, checking its length field.
fn body_of(buf: &mut BytesMut, tag: u8) -> Vec<u8> {
    let total = buf.len();
    let f = FrameCodec::new(usize::MAX).decode(buf).unwrap().unwrap();
    assert_eq!(f.tag, tag);
    assert_eq!(f.body.len() + 5, total);
    assert!(buf.is_empty());
    f.body.to_vec()
}

fn views(b: &[u8]) {
    // Authentication (R).
    if let Ok(a) = msg::parse_auth(b) {
        let mut out = BytesMut::new();
        match &a {
            AuthRequest::Ok => msg::auth_ok(&mut out),
            AuthRequest::Cleartext => msg::auth_cleartext(&mut out),
            AuthRequest::Md5 { salt } => msg::auth_md5(&mut out, *salt),
            AuthRequest::Sasl { mechanisms } => msg::auth_sasl(&mut out, mechanisms),
            AuthRequest::SaslContinue { data } => msg::auth_sasl_continue(&mut out, data),
            AuthRequest::SaslFinal { data } => msg::auth_sasl_final(&mut out, data),
            AuthRequest::Other(_) => {}
        }
        if !out.is_empty() {
            let body = body_of(&mut out, msg::AUTHENTICATION);
            assert_eq!(msg::parse_auth(&body).unwrap(), a);
        }
    }
    // SASLInitialResponse / PasswordMessage (p).
    if let Ok((mech, data)) = msg::parse_sasl_initial(b) {
        let mut out = BytesMut::new();
        msg::sasl_initial_response(&mut out, mech, data);
        let body = body_of(&mut out, msg::PASSWORD);
        assert_eq!(msg::parse_sasl_initial(&body).unwrap(), (mech, data));
    }
    if let Ok(pw) = msg::parse_password(b) {
        let mut out = BytesMut::new();
        msg::password_message(&mut out, pw);
        let body = body_of(&mut out, msg::PASSWORD);
        assert_eq!(msg::parse_password(&body).unwrap(), pw);
    }
    // Query (Q): the UTF-8 view implies the byte view.
    match (msg::parse_query(b), msg::query_text(b)) {
        (Ok(s), Ok(t)) => {
            assert_eq!(s.as_bytes(), t);
            let mut out = BytesMut::new();
            msg::query(&mut out, s);
            let body = body_of(&mut out, msg::QUERY);
            assert_eq!(msg::parse_query(&body).unwrap(), s);
        }
        (Ok(_), Err(e)) => panic!("parse_query accepts what query_text refuses: {e}"),
        (Err(_), Ok(t)) => {
            let mut out = BytesMut::new();
            msg::query_bytes(&mut out, t);
            let body = body_of(&mut out, msg::QUERY);
            assert_eq!(msg::query_text(&body).unwrap(), t);
        }
        (Err(_), Err(_)) => {}
    }
    // Parse (P).
    match (msg::parse_parse(b), msg::parse_text(b)) {
        (Ok((n, q)), Ok((nb, qb))) => assert_eq!((n.as_bytes(), q.as_bytes()), (nb, qb)),
        (Ok(_), Err(e)) => panic!("parse_parse accepts what parse_text refuses: {e}"),
        _ => {}
    }
    // Close (C).
    match (msg::parse_close(b), msg::close_target(b)) {
        (Ok((k, n)), Ok((kb, nb))) => assert_eq!((k, n.as_bytes()), (kb, nb)),
        (Ok(_), Err(e)) => panic!("parse_close accepts what close_target refuses: {e}"),
        _ => {}
    }
    if let Ok((portal, stmt)) = msg::bind_names(b) {
        assert!(portal.len() + stmt.len() + 2 <= b.len());
        assert!(!portal.contains(&0) && !stmt.contains(&0));
    }
    if let Ok(p) = msg::execute_portal(b) {
        assert!(!p.contains(&0) && p.len() < b.len());
    }
    if let Ok(t) = msg::command_tag(b) {
        if let Ok(s) = std::str::from_utf8(t) {
            let mut out = BytesMut::new();
            msg::command_complete(&mut out, s);
            let body = body_of(&mut out, msg::COMMAND_COMPLETE);
            assert_eq!(msg::command_tag(&body).unwrap(), t);
        }
    }
    if let Ok((_, rest)) = msg::notification_pid(b) {
        assert_eq!(rest.len() + 4, b.len());
    }
    // ParameterStatus (S), BackendKeyData (K).
    if let Ok((k, v)) = msg::parse_parameter_status(b) {
        let mut out = BytesMut::new();
        msg::parameter_status(&mut out, k, v);
        let body = body_of(&mut out, msg::PARAMETER_STATUS);
        assert_eq!(msg::parse_parameter_status(&body).unwrap(), (k, v));
    }
    if let Ok((pid, secret)) = msg::parse_backend_key_data(b) {
        let mut out = BytesMut::new();
        msg::backend_key_data(&mut out, pid, secret);
        let body = body_of(&mut out, msg::BACKEND_KEY_DATA);
        assert_eq!(msg::parse_backend_key_data(&body).unwrap(), (pid, secret));
    }
    // ErrorResponse (E) / NoticeResponse (N).
    if let Ok(e) = msg::parse_error(b) {
        let _ = e.to_string();
        let mut out = BytesMut::new();
        msg::error_response(
            &mut out,
            &e.severity,
            &e.sqlstate,
            &e.message,
            e.detail.as_deref(),
            e.hint.as_deref(),
        );
        let body = body_of(&mut out, msg::ERROR_RESPONSE);
        assert_eq!(msg::parse_error(&body).unwrap(), e);
        let mut out = BytesMut::new();
        msg::notice_response(&mut out, &e.severity, &e.sqlstate, &e.message);
        let body = body_of(&mut out, msg::NOTICE_RESPONSE);
        let n = msg::parse_error(&body).unwrap();
        assert_eq!(
            (n.severity, n.sqlstate, n.message),
            (e.severity, e.sqlstate, e.message)
        );
    }
    // Builders of result sets, fed the body's strings.
    let words: Vec<&str> = b
        .split(|&c| c == 0)
        .filter_map(|w| std::str::from_utf8(w).ok())
        .take(64)
        .collect();
    let mut out = BytesMut::new();
    msg::row_description_text(&mut out, &words);
    msg::data_row(
        &mut out,
        &words
            .iter()
            .map(|w| (!w.is_empty()).then_some(*w))
            .collect::<Vec<_>>(),
    );
    msg::command_complete(&mut out, "SELECT 1");
    msg::ready_for_query(&mut out, msg::TX_IDLE);
    let a = Answer::parse(&out).expect("an answer built by wire::msg parses");
    assert_eq!(a.bytes, out.len());
    assert_eq!(a.ready, Some(msg::TX_IDLE));
    assert_eq!(a.outcomes.len(), 1);
}

fuzz_target!(|data: &[u8]| {
    views(data);
    if let Ok(a) = Answer::parse(data) {
        assert!(a.bytes <= data.len());
        let s = a.summary(60);
        assert!(s.chars().count() <= 60, "summary longer than asked: {s:?}");
        assert!(
            compare(&a, &a, &CompareOptions::default()).is_match(),
            "an answer differs from itself"
        );
        if a.ready.is_some() {
            // The answer ends at its ReadyForQuery: what follows is not read.
            let again = Answer::parse(&data[..a.bytes]).unwrap();
            assert_eq!(again, a);
        }
    }
});
