//! The session-state tracker: the protocol scanners of `proxy::session::scan`
//! (`client_frame`, `server_frame`, `batch_read_only`, `hold_answer`) fed a sequence of
//! client and server messages, driving `SessionState` (SET / RESET / LISTEN / PREPARE /
//! DEALLOCATE / DISCARD tracking, savepoints, prepared statements, portals) and its replay.
//!
//! Input: records of `selector, tag, length (u16 BE), body`, each made into a whole frame
//! (the relay hands the scanners whole frames). Selector bit 0: server (else client);
//! bit 1: a shifted unit is unanswered (server side); bit 2: also ask the read-only
//! questions of this message (`unit_read_only`, `batch_read_only` over the rest of the
//! input); bit 3: the unit restarts (`unit_restart`).
//!
//! Invariants: no panic; the replay script is whole frames, as many Query and Sync
//! messages as the ReadyForQuery answers it announces, each Parse of it a statement of the
//! session; a Bind that prepares first carries a Parse frame and counts a ParseComplete to
//! swallow; the state always replays the same (read-only adds one Query).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::session::scan::{self, ClientStep, ConnState, Proto};
use proxy::session::state::SessionState;
use wire::frame::header;

fn check_replay(state: &SessionState) {
    for read_only in [false, true] {
        let (script, expected) = state.replay(read_only);
        let mut at = 0;
        let mut answers = 0;
        while at < script.len() {
            let (tag, total) = header(&script[at..], usize::MAX)
                .expect("replay script frame")
                .expect("replay script cut short");
            assert!(at + total <= script.len(), "replay frame past the end");
            match tag {
                b'Q' | b'S' => answers += 1,
                b'P' => {
                    let (name, _) = wire::msg::parse_text(&script[at + 5..at + total])
                        .expect("replayed Parse does not parse");
                    assert_eq!(
                        state.statement(name).map(|f| &f[..]),
                        Some(&script[at..at + total])
                    );
                }
                other => panic!("replay script holds a '{}' message", other as char),
            }
            at += total;
        }
        assert_eq!(answers, expected, "ReadyForQuery count of the replay");
        let plan = state.replay_plan(read_only);
        assert_eq!((plan.script, plan.expected), (script, expected));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut state = SessionState::new(vec![("application_name".into(), "fuzz".into())]);
    let mut proto = Proto::default();
    let mut conn = ConnState::default();
    let mut rest = data;
    let mut n = 0;
    while rest.len() >= 4 && n < 256 {
        n += 1;
        let (sel, tag) = (rest[0], rest[1]);
        let len = (u16::from_be_bytes([rest[2], rest[3]]) as usize).min(rest.len() - 4);
        let body = &rest[4..4 + len];
        rest = &rest[4 + len..];
        let mut frame = Vec::with_capacity(5 + len);
        frame.push(tag);
        frame.extend_from_slice(&((len + 4) as i32).to_be_bytes());
        frame.extend_from_slice(body);

        if sel & 8 != 0 {
            state.unit_restart();
        }
        if sel & 1 == 0 {
            let _ = scan::client_inspects(tag, &state);
            if sel & 4 != 0 {
                let _ = state.unit_read_only(tag, Some(body));
                let mut batch = frame.clone();
                batch.extend_from_slice(rest);
                let _ = scan::batch_read_only(&mut state, &batch, 1 << 20);
            }
            let swallow = conn.swallow;
            match scan::client_frame(tag, &frame, &mut proto, &mut state, Some(&mut conn)) {
                Ok(ClientStep::Bind {
                    statement,
                    prepare: Some(p),
                }) => {
                    assert_eq!(p[0], b'P');
                    assert_eq!(Some(&p), state.statement(statement));
                    assert_eq!(conn.swallow, swallow + 1);
                    assert!(conn.known.contains(statement));
                }
                Ok(_) | Err(_) => assert_eq!(conn.swallow, swallow),
            }
        } else {
            let shifted = sel & 2 != 0;
            let _ = scan::server_inspects(tag, &conn, &state, shifted);
            let _ = scan::server_frame(tag, &frame, &mut proto, &mut conn, &mut state, shifted);
            let _ = scan::hold_answer(&frame, false, proto.in_flight, 1 << 16);
        }
        let _ = state.take_changed();
        let _ = state.watches_answers();
        let _ = state.watches_execute();
    }
    check_replay(&state);
});
