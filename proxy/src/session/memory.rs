//! One memory budget for what client sessions buffer (`[proxy] session_memory_bytes`).
//!
//! Every session has a fixed allowance of [`FREE_BYTES`] (its read buffers) that is not
//! counted. Beyond it, a session takes from the shared [`Budget`] before it buffers:
//!
//! * a client message that must be read whole (Query, Parse, Bind larger than the
//!   allowance): its length, taken before it is read, waited for when the budget is spent;
//! * the copies its recorders keep of the current unit (see `super::record`): the replay
//!   copy and mirroring's copy are taken only if the budget has room, else dropped; the
//!   mirror driver's copy of a unit that may write is always kept (a write is never lost),
//!   and a session over the budget reads nothing more from its client until it is back
//!   under.
//!
//! A session holds its takings in a [`Share`], which gives them back when it is dropped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// What each session may buffer without taking from the budget, in bytes.
pub const FREE_BYTES: usize = 64 * 1024;

/// The shared budget: `limit` bytes, of which `used` are taken.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    freed: Notify,
    /// Sessions ended because the budget stayed spent past `memory_wait_ms`.
    pub shed_sessions: AtomicU64,
    /// Replay and mirroring copies dropped for want of room.
    pub shed_copies: AtomicU64,
    /// Times a session waited for room.
    pub waits: AtomicU64,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit,
            used: AtomicUsize::new(0),
            freed: Notify::new(),
            shed_sessions: AtomicU64::new(0),
            shed_copies: AtomicU64::new(0),
            waits: AtomicU64::new(0),
        }
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// More is taken than the budget allows (by forced takings).
    pub fn over(&self) -> bool {
        self.used() > self.limit
    }

    /// Takes `n` bytes if they fit.
    fn try_take(&self, n: usize) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(n).filter(|v| *v <= self.limit) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(v) => cur = v,
            }
        }
    }

    /// Takes `n` bytes even past the limit.
    fn force(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    fn give(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::AcqRel);
            self.freed.notify_waiters();
        }
    }

    /// Waits until some is given back, or `most` passed.
    pub async fn wait_freed(&self, most: Duration) {
        let _ = tokio::time::timeout(most, self.freed.notified()).await;
    }
}

/// A session's takings from a [`Budget`]: for its current large message (`msg`, and `spare`
/// for the copies of it that must be kept) and for its recorders' copies (`copies`). Given
/// back on drop.
#[derive(Debug)]
pub struct Share<'b> {
    budget: &'b Budget,
    msg: usize,
    spare: usize,
    copies: usize,
}

impl<'b> Share<'b> {
    pub fn new(budget: &'b Budget) -> Share<'b> {
        Share {
            budget,
            msg: 0,
            spare: 0,
            copies: 0,
        }
    }

    pub fn budget(&self) -> &'b Budget {
        self.budget
    }

    /// Bytes held for the current large message and its copies.
    pub fn msg(&self) -> usize {
        self.msg + self.spare
    }

    /// Holds, if they fit, `n` bytes for a large message about to be read and `n` more for
    /// each of `copies` copies of it that must be kept. `true` when held (also when already
    /// held).
    pub fn hold_msg(&mut self, n: usize, copies: usize) -> bool {
        let want = n.saturating_mul(1 + copies);
        let have = self.msg + self.spare;
        if want > have && !self.budget.try_take(want - have) {
            return false;
        }
        if want > have {
            self.msg = n;
            self.spare = want - n;
        }
        true
    }

    /// The large message is gone from the session's buffers.
    pub fn release_msg(&mut self) {
        self.budget
            .give(std::mem::take(&mut self.msg) + std::mem::take(&mut self.spare));
    }

    /// Takes `n` bytes for a copy: first from what was held for copies of the current
    /// message, then from the budget: if they fit (`must` false: `false` when they do not),
    /// or even past the limit (`must`: a copy that cannot be dropped).
    pub fn copy(&mut self, n: usize, must: bool) -> bool {
        let from_spare = n.min(self.spare);
        let rest = n - from_spare;
        if rest > 0 {
            if must {
                self.budget.force(rest);
            } else if !self.budget.try_take(rest) {
                return false;
            }
        }
        self.spare -= from_spare;
        self.copies += n;
        true
    }

    /// Bytes held for copies.
    pub fn copies(&self) -> usize {
        self.copies
    }

    /// The recorders' copies are gone.
    pub fn release_copies(&mut self) {
        self.budget.give(std::mem::take(&mut self.copies));
    }
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        self.budget.give(self.msg + self.spare + self.copies);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takings_fit_the_limit_and_come_back_on_drop() {
        let b = Budget::new(100);
        let mut a = Share::new(&b);
        assert!(a.hold_msg(30, 1), "30 for the message, 30 for its copy");
        assert!(a.hold_msg(20, 1), "already held");
        assert_eq!(b.used(), 60);
        assert!(a.copy(30, true), "from what was held");
        assert_eq!((b.used(), a.copies()), (60, 30));
        let mut c = Share::new(&b);
        assert!(!c.hold_msg(41, 0));
        assert!(c.copy(40, false));
        assert!(!c.copy(1, false), "no room for a droppable copy");
        assert_eq!(b.used(), 100);
        c.copy(10, true);
        assert!(b.over());
        a.release_msg();
        assert_eq!(b.used(), 80);
        drop(c);
        assert_eq!(b.used(), 30);
        a.release_copies();
        assert_eq!(b.used(), 0);
        assert!(!b.over());
    }
}
