//! The recorders of a unit of work: the copies of its bytes that features other than the
//! relay need. One list, fed in one place by the relay:
//!
//! * the **replay** buffer of a shifted read-only unit: its client bytes, so that it can run
//!   again on the serving side if the other side fails it before answering;
//! * **mirror**: a sampled unit's client bytes and the source's answer, for mirroring with
//!   result validation (`[mirror]`, see `crate::mirror`);
//! * **write**: every unit on the serving side while the `mirror` replication driver records
//!   it (see `crate::capture`), with the id of its `OPEN` record once it may write.

use crate::mirror::Capture;
use bytes::BytesMut;

/// The mirror driver's recording of the current unit.
#[derive(Debug, Default)]
pub struct WriteCapture {
    pub cap: Capture,
    /// Its id once it may write (an `OPEN` record was written).
    pub uid: Option<u64>,
    /// Every statement of the unit so far is read-only: nothing to record yet.
    pub read_only: bool,
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

impl Recorders {
    /// No recorder is running (the hot path's only check).
    #[inline]
    pub fn idle(&self) -> bool {
        self.replay.is_none() && self.mirror.is_none() && self.write.is_none()
    }

    /// Bytes the client sent in the unit.
    pub fn client(&mut self, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        if let Some(r) = self.replay.as_mut() {
            r.extend_from_slice(b);
        }
        if let Some(c) = self.mirror.as_mut() {
            c.client_bytes(b, self.mirror_max);
        }
        if let Some(w) = self.write.as_mut() {
            w.cap.client_bytes(b, crate::capture::MAX_UNIT_BYTES);
        }
    }

    /// Bytes of the unit's answer queued for the client.
    pub fn server(&mut self, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        if let Some(c) = self.mirror.as_mut() {
            c.server_bytes(b, self.mirror_max);
        }
        if let Some(w) = self.write.as_mut() {
            w.cap.server_bytes(b, crate::capture::MAX_UNIT_BYTES);
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

    #[test]
    fn one_feed_for_every_recorder() {
        let mut r = Recorders {
            mirror_max: 8,
            ..Default::default()
        };
        assert!(r.idle());
        r.client(b"nothing is kept");
        r.replay = Some(BytesMut::new());
        r.mirror = Some(Capture::default());
        r.write = Some(WriteCapture::default());
        r.client(b"abc");
        r.server(b"de");
        r.bound(b"s1");
        r.bound(b"s1");
        assert_eq!(&r.replay.as_ref().unwrap()[..], b"abc");
        let m = r.mirror.as_ref().unwrap();
        assert_eq!(
            (&m.client[..], &m.server[..], m.used.len()),
            (&b"abc"[..], &b"de"[..], 1)
        );
        r.client(b"four");
        assert!(r.mirror.as_ref().unwrap().too_big, "over mirror_max");
        assert!(!r.write.as_ref().unwrap().cap.too_big);
        r.unit_done();
        assert!(r.replay.is_none() && r.mirror.as_ref().unwrap().done);
    }
}
