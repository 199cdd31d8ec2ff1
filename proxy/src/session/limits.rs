//! Client connection limits: `[proxy] max_client_connections` for all clients and
//! `[[users]] max_connections` per user, as PostgreSQL's `max_connections` and a role's
//! `CONNECTION LIMIT` (PostgreSQL docs 19.3.1 and CREATE ROLE). Past either, the login is
//! refused with SQLSTATE 53300 (too_many_connections) and PostgreSQL's own words. Admin
//! console logins do not count against `max_client_connections` (as PostgreSQL's
//! `superuser_reserved_connections` keeps a way in for operators), only against their own
//! user's limit.

use std::collections::HashMap;
use std::sync::Mutex;

/// Counts of open client sessions.
#[derive(Debug, Default)]
pub struct Limits {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Open data sessions (admin sessions not included).
    total: usize,
    /// Open sessions (data and admin) per user name.
    per_user: HashMap<String, usize>,
}

/// One counted session; dropping it (however the session ends, a panic included) gives its
/// place back.
#[derive(Debug)]
pub struct Slot<'a> {
    limits: &'a Limits,
    user: String,
    admin: bool,
}

impl Limits {
    /// Takes a place for a session of `user`. Errors: the SQLSTATE 53300 message to send.
    pub fn acquire(
        &self,
        user: &str,
        admin: bool,
        max_total: usize,
        max_user: Option<usize>,
    ) -> Result<Slot<'_>, String> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if !admin && c.total >= max_total {
            return Err("sorry, too many clients already".into());
        }
        let n = c.per_user.get(user).copied().unwrap_or(0);
        if max_user.is_some_and(|m| n >= m) {
            return Err(format!("too many connections for role \"{user}\""));
        }
        if !admin {
            c.total += 1;
        }
        *c.per_user.entry(user.to_string()).or_default() += 1;
        Ok(Slot {
            limits: self,
            user: user.to_string(),
            admin,
        })
    }

    /// Open data sessions now.
    pub fn total(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut c = self.limits.counts.lock().unwrap_or_else(|p| p.into_inner());
        if !self.admin {
            c.total = c.total.saturating_sub(1);
        }
        if let Some(n) = c.per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                c.per_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_places_come_back() {
        let l = Limits::default();
        let a = l.acquire("app", false, 2, Some(1)).unwrap();
        assert_eq!(
            l.acquire("app", false, 2, Some(1)).unwrap_err(),
            "too many connections for role \"app\""
        );
        let b = l.acquire("other", false, 2, None).unwrap();
        assert_eq!(
            l.acquire("third", false, 2, None).unwrap_err(),
            "sorry, too many clients already"
        );
        // Admins get in past the total, not past their own limit.
        let adm = l.acquire("admin", true, 2, Some(1)).unwrap();
        assert!(l.acquire("admin", true, 2, Some(1)).is_err());
        drop((a, adm));
        assert_eq!(l.total(), 1);
        // A panicking session gives its place back too.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _s = l.acquire("app", false, 2, Some(1)).unwrap();
            panic!("session task panicked");
        }));
        assert!(r.is_err());
        assert!(l.acquire("app", false, 2, Some(1)).is_ok());
        drop(b);
        assert_eq!(l.total(), 0);
    }
}
