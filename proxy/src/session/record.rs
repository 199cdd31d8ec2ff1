//! The recorders of a unit of work: the copies of its bytes that features other than the
//! relay need. One list, fed in one place by the relay:
//!
//! * the **replay** buffer of a shifted read-only unit: its client bytes, so that it can run
//!   again on the serving side if the other side fails it before answering;
//! * **mirror**: a sampled unit's client bytes and the source's answer, for mirroring with
//!   result validation (`[mirror]`, see `crate::mirror`);
//! * **write**: every unit on the serving side while the `mirror` replication driver records
//!   it (see `crate::capture`), with the id of its `OPEN` record once it may write.

use super::memory::Share;
use crate::mirror::Capture;
use bytes::BytesMut;
use std::sync::atomic::Ordering;
use wire::msg;

/// The mirror driver's recording of the current unit.
#[derive(Debug, Default)]
pub struct WriteCapture {
    pub cap: Capture,
    /// Its id once it may write (an `OPEN` record was written).
    pub uid: Option<u64>,
    /// Every statement of the unit so far is read-only: nothing to record yet.
    pub read_only: bool,
    /// What of the answer is kept (see [`Skeleton`]).
    pub skel: Skeleton,
}

impl WriteCapture {
    /// Nothing of the unit can have committed on the server: it may not write, or every
    /// request sent was answered up to its ReadyForQuery (`answered`) and none of those said
    /// idle (no transaction of the unit ended). Ending the session then loses no write.
    pub fn nothing_committed(&self, answered: bool) -> bool {
        self.uid.is_none() || (answered && !self.skel.saw_idle)
    }
}

/// What the mirror driver keeps of a unit's answer: every message but the row data
/// (DataRow, CopyData), which the applier does not compare (it compares command tags and
/// errors, see `crate::capture::apply`). A run of DataRow messages becomes one DataRow with
/// no columns, so that a result that had rows still reads as rows (53.7 "Message
/// Formats"). Fed the answer in chunks; a message may span chunks.
#[derive(Debug, Default)]
pub struct Skeleton {
    /// The header of a message cut by the end of a chunk (up to 5 bytes).
    hdr: Vec<u8>,
    /// Bytes of the current message still to come, and whether they are kept.
    rest: usize,
    keep: bool,
    /// The current message is a ReadyForQuery whose status byte is still to come.
    status_next: bool,
    /// The last message kept is the DataRow that stands for a run of them.
    in_rows: bool,
    /// A ReadyForQuery with status `I` went by.
    pub saw_idle: bool,
}

/// A DataRow with no columns.
const NO_COLUMNS_ROW: [u8; 7] = [msg::DATA_ROW, 0, 0, 0, 6, 0, 0];

impl Skeleton {
    /// Appends to `out` what is kept of `b`.
    pub fn feed(&mut self, mut b: &[u8], out: &mut BytesMut) {
        while !b.is_empty() {
            if self.rest > 0 {
                let n = self.rest.min(b.len());
                if self.status_next {
                    self.saw_idle |= b[0] == msg::TX_IDLE;
                    self.status_next = false;
                }
                if self.keep {
                    out.extend_from_slice(&b[..n]);
                }
                self.rest -= n;
                b = &b[n..];
                continue;
            }
            let n = (5 - self.hdr.len()).min(b.len());
            self.hdr.extend_from_slice(&b[..n]);
            b = &b[n..];
            if self.hdr.len() < 5 {
                break;
            }
            let tag = self.hdr[0];
            let len = u32::from_be_bytes([self.hdr[1], self.hdr[2], self.hdr[3], self.hdr[4]]);
            self.rest = (len as usize).saturating_sub(4);
            match tag {
                msg::DATA_ROW => {
                    if !self.in_rows {
                        out.extend_from_slice(&NO_COLUMNS_ROW);
                        self.in_rows = true;
                    }
                    self.keep = false;
                }
                msg::COPY_DATA => self.keep = false,
                _ => {
                    self.in_rows = false;
                    self.keep = true;
                    self.status_next = tag == msg::READY_FOR_QUERY;
                    out.extend_from_slice(&self.hdr);
                }
            }
            self.hdr.clear();
        }
    }
}

/// Every recorder of the current unit; each `None` when not recording.
#[derive(Debug, Default)]
pub struct Recorders {
    /// The shifted unit's client bytes (see the module docs).
    pub replay: Option<BytesMut>,
    /// Mirroring's copy, within `mirror_max` bytes in all.
    pub mirror: Option<Capture>,
    /// `[mirror] max_answer_bytes`.
    pub mirror_max: usize,
    /// The mirror driver's copy, within [`crate::capture::MAX_UNIT_BYTES`].
    pub write: Option<WriteCapture>,
}

/// Mirroring's copy could not be kept (no room in the budget): the unit is skipped.
fn shed_mirror(c: &mut Capture, mem: &Share) {
    c.too_big = true;
    c.client = BytesMut::new();
    c.server = BytesMut::new();
    mem.budget().shed_copies.fetch_add(1, Ordering::Relaxed);
}

/// Appends `b` to a mirroring copy within `max` bytes in all and the budget's room.
fn mirror_copy(c: &mut Capture, server: bool, b: &[u8], max: usize, mem: &mut Share) {
    if c.too_big {
        return;
    }
    if c.client.len() + c.server.len() + b.len() > max {
        c.too_big = true;
    } else if mem.copy(b.len(), false) {
        if server { &mut c.server } else { &mut c.client }.extend_from_slice(b);
    } else {
        shed_mirror(c, mem);
    }
}

impl Recorders {
    /// No recorder is running (the hot path's only check).
    #[inline]
    pub fn idle(&self) -> bool {
        self.replay.is_none() && self.mirror.is_none() && self.write.is_none()
    }

    /// Bytes the client sent in the unit. The copies are taken from `mem`: the replay and
    /// mirroring copies only if it has room (else they are dropped: the unit is then not
    /// replayed, or not mirrored), the mirror driver's always.
    pub fn client(&mut self, b: &[u8], mem: &mut Share) {
        if b.is_empty() {
            return;
        }
        if self.replay.is_some() {
            if mem.copy(b.len(), false) {
                if let Some(r) = self.replay.as_mut() {
                    r.extend_from_slice(b);
                }
            } else {
                self.replay = None;
                mem.budget().shed_copies.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(c) = self.mirror.as_mut() {
            mirror_copy(c, false, b, self.mirror_max, mem);
        }
        if let Some(w) = self.write.as_mut() {
            if !w.cap.too_big {
                let before = w.cap.client.len();
                w.cap.client_bytes(b, crate::capture::MAX_UNIT_BYTES);
                mem.copy(w.cap.client.len().saturating_sub(before), true);
                if w.cap.too_big {
                    w.cap.client = BytesMut::new();
                    w.cap.server = BytesMut::new();
                }
            }
        }
    }

    /// Bytes of the unit's answer queued for the client (copies taken as for
    /// [`Recorders::client`]; the mirror driver keeps the [`Skeleton`]).
    pub fn server(&mut self, b: &[u8], mem: &mut Share) {
        if b.is_empty() {
            return;
        }
        if let Some(c) = self.mirror.as_mut() {
            mirror_copy(c, true, b, self.mirror_max, mem);
        }
        if let Some(w) = self.write.as_mut() {
            let before = w.cap.server.len();
            w.skel.feed(b, &mut w.cap.server);
            if !w.cap.too_big {
                mem.copy(w.cap.server.len() - before, true);
                if w.cap.client.len() + w.cap.server.len() > crate::capture::MAX_UNIT_BYTES {
                    w.cap.too_big = true;
                }
            }
            if w.cap.too_big {
                // Only the status of the answer is followed from here on.
                w.cap.client = BytesMut::new();
                w.cap.server = BytesMut::new();
            }
        }
    }

    /// A Bind of named statement `name` (its Parse goes with the recording).
    pub fn bound(&mut self, name: &[u8]) {
        if self.mirror.is_none() && self.write.is_none() {
            return;
        }
        let name = String::from_utf8_lossy(name);
        for c in [
            self.mirror.as_mut(),
            self.write.as_mut().map(|w| &mut w.cap),
        ]
        .into_iter()
        .flatten()
        {
            if !c.used.iter().any(|u| *u == name) {
                c.used.push(name.to_string());
            }
        }
    }

    /// The unit ended (its final ReadyForQuery is being forwarded): the replay buffer is
    /// no longer needed; the copies are complete.
    pub fn unit_done(&mut self) {
        self.replay = None;
        if let Some(c) = self.mirror.as_mut() {
            c.done = true;
        }
        if let Some(w) = self.write.as_mut() {
            w.cap.done = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::session::memory::Budget;

    /// A message as the server sends it.
    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn one_feed_for_every_recorder() {
        let budget = Budget::new(1 << 20);
        let mut mem = Share::new(&budget);
        let mut r = Recorders {
            mirror_max: 8,
            ..Default::default()
        };
        assert!(r.idle());
        r.client(b"nothing is kept", &mut mem);
        assert_eq!(budget.used(), 0);
        r.replay = Some(BytesMut::new());
        r.mirror = Some(Capture::default());
        r.write = Some(WriteCapture::default());
        r.client(b"abc", &mut mem);
        r.server(b"de", &mut mem);
        r.bound(b"s1");
        r.bound(b"s1");
        assert_eq!(&r.replay.as_ref().unwrap()[..], b"abc");
        let m = r.mirror.as_ref().unwrap();
        assert_eq!(
            (&m.client[..], &m.server[..], m.used.len()),
            (&b"abc"[..], &b"de"[..], 1)
        );
        r.client(b"four", &mut mem);
        assert!(r.mirror.as_ref().unwrap().too_big, "over mirror_max");
        assert!(!r.write.as_ref().unwrap().cap.too_big);
        assert_eq!(budget.used(), mem.copies());
        r.unit_done();
        assert!(r.replay.is_none() && r.mirror.as_ref().unwrap().done);
    }

    #[test]
    fn without_room_replay_and_mirror_copies_are_dropped_the_write_copy_kept() {
        let budget = Budget::new(4);
        let mut mem = Share::new(&budget);
        let mut r = Recorders {
            mirror_max: 1 << 20,
            replay: Some(BytesMut::new()),
            mirror: Some(Capture::default()),
            write: Some(WriteCapture::default()),
        };
        r.client(b"abcdef", &mut mem);
        assert!(r.replay.is_none());
        assert!(r.mirror.as_ref().unwrap().too_big);
        assert_eq!(&r.write.as_ref().unwrap().cap.client[..], b"abcdef");
        assert!(budget.over());
        assert_eq!(budget.shed_copies.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn the_skeleton_keeps_all_but_row_data_across_chunks() {
        let mut answer = Vec::new();
        answer.extend(frame(b'T', b"\0\0"));
        for _ in 0..3 {
            answer.extend(frame(msg::DATA_ROW, &[0, 1, 0, 0, 0, 3, b'x', b'y', b'z']));
        }
        answer.extend(frame(b'C', b"SELECT 3\0"));
        answer.extend(frame(b'H', &[0, 0, 0]));
        answer.extend(frame(msg::COPY_DATA, b"row data"));
        answer.extend(frame(b'c', b""));
        answer.extend(frame(b'C', b"COPY 1\0"));
        answer.extend(frame(b'Z', b"T"));
        let mut expected = Vec::new();
        expected.extend(frame(b'T', b"\0\0"));
        expected.extend(NO_COLUMNS_ROW);
        expected.extend(frame(b'C', b"SELECT 3\0"));
        expected.extend(frame(b'H', &[0, 0, 0]));
        expected.extend(frame(b'c', b""));
        expected.extend(frame(b'C', b"COPY 1\0"));
        expected.extend(frame(b'Z', b"T"));
        for chunk in [1, 2, 3, 5, 7, answer.len()] {
            let mut s = Skeleton::default();
            let mut out = BytesMut::new();
            for c in answer.chunks(chunk) {
                s.feed(c, &mut out);
            }
            assert_eq!(&out[..], &expected[..], "chunks of {chunk}");
            assert!(!s.saw_idle);
            s.feed(&frame(b'Z', b"I"), &mut out);
            assert!(s.saw_idle);
        }
        let a = validator::answer::Answer::parse(&expected).unwrap();
        assert!(
            matches!(&a.outcomes[0], validator::answer::Outcome::Rows { tag, .. } if tag == "SELECT 3"),
            "{:?}",
            a.outcomes
        );
    }
}
