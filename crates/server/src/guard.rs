//! Abuse control shared by every protocol: failed logins per IP address and per account
//! (growing delays, then a temporary block), and per-user sending rates.
//!
//! State lives in memory: a restart forgives, which is acceptable for throttling (the
//! attacker gains one window) and keeps logins off the disk.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Limits {
    /// Failed logins from one IP address before it is blocked for `block_for`.
    pub max_failures_per_ip: u32,
    /// Failed logins for one account (from anywhere) before it is blocked for `block_for`.
    pub max_failures_per_account: u32,
    pub block_for: Duration,
    /// Messages and recipients one user may submit per hour.
    pub messages_per_hour: u32,
    pub recipients_per_hour: u32,
}

#[derive(Default)]
struct Failures {
    count: u32,
    last: Option<Instant>,
}

#[derive(Default)]
struct Rate {
    window_start: Option<Instant>,
    messages: u32,
    recipients: u32,
}

pub struct Guard {
    limits: Limits,
    by_ip: Mutex<HashMap<IpAddr, Failures>>,
    by_account: Mutex<HashMap<String, Failures>>,
    rates: Mutex<HashMap<String, Rate>>,
}

/// Why a login may not even be tried now.
#[derive(Debug, PartialEq, Eq)]
pub enum Blocked {
    Ip,
    Account,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Guard {
    pub fn new(limits: Limits) -> Self {
        Guard {
            limits,
            by_ip: Mutex::default(),
            by_account: Mutex::default(),
            rates: Mutex::default(),
        }
    }

    fn blocked(f: Option<&Failures>, max: u32, block_for: Duration, now: Instant) -> bool {
        f.is_some_and(|f| f.count >= max && f.last.is_some_and(|l| now - l < block_for))
    }

    /// May this login attempt go ahead?
    pub fn check(&self, ip: IpAddr, account: &str, now: Instant) -> Result<(), Blocked> {
        let account = account.to_lowercase();
        if Self::blocked(
            lock(&self.by_ip).get(&ip),
            self.limits.max_failures_per_ip,
            self.limits.block_for,
            now,
        ) {
            return Err(Blocked::Ip);
        }
        if Self::blocked(
            lock(&self.by_account).get(&account),
            self.limits.max_failures_per_account,
            self.limits.block_for,
            now,
        ) {
            return Err(Blocked::Account);
        }
        Ok(())
    }

    /// Record the outcome; returns how long to wait before answering a failure (growing
    /// with the failures from this IP, so guessing gets slower long before the block).
    pub fn record(&self, ip: IpAddr, account: &str, success: bool, now: Instant) -> Duration {
        let account = account.to_lowercase();
        let reset = |f: &mut Failures| {
            // Failures older than the block period are forgotten.
            if f.last.is_some_and(|l| now - l >= self.limits.block_for) {
                *f = Failures::default();
            }
        };
        if success {
            lock(&self.by_ip).remove(&ip);
            lock(&self.by_account).remove(&account);
            return Duration::ZERO;
        }
        let ip_count = {
            let mut m = lock(&self.by_ip);
            let f = m.entry(ip).or_default();
            reset(f);
            f.count += 1;
            f.last = Some(now);
            f.count
        };
        {
            let mut m = lock(&self.by_account);
            let f = m.entry(account).or_default();
            reset(f);
            f.count += 1;
            f.last = Some(now);
        }
        // 0.1 s, 0.2 s, 0.4 s ... at most 2 s.
        Duration::from_millis(100u64.saturating_mul(1 << ip_count.min(5).saturating_sub(1)))
            .min(Duration::from_secs(2))
    }

    /// Count a message with `recipients` recipients for `user`; false when over the
    /// hourly limits (the message must then be refused with a temporary error).
    pub fn allow_send(&self, user: &str, recipients: u32, now: Instant) -> bool {
        let mut rates = lock(&self.rates);
        let r = rates.entry(user.to_lowercase()).or_default();
        if r.window_start
            .is_none_or(|s| now - s >= Duration::from_secs(3600))
        {
            *r = Rate {
                window_start: Some(now),
                ..Rate::default()
            };
        }
        if r.messages + 1 > self.limits.messages_per_hour
            || r.recipients + recipients > self.limits.recipients_per_hour
        {
            return false;
        }
        r.messages += 1;
        r.recipients += recipients;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(Limits {
            max_failures_per_ip: 3,
            max_failures_per_account: 5,
            block_for: Duration::from_secs(60),
            messages_per_hour: 2,
            recipients_per_hour: 3,
        })
    }

    #[test]
    fn blocks_an_ip_then_forgives() {
        let g = guard();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let t = Instant::now();
        let d1 = g.record(a, "x@y", false, t);
        let d2 = g.record(a, "x@y", false, t);
        assert!(d2 > d1, "delays grow");
        g.record(a, "x@y", false, t);
        assert_eq!(g.check(a, "other@y", t), Err(Blocked::Ip));
        assert_eq!(g.check(b, "x@y", t), Ok(()), "another IP may still log in");
        assert_eq!(g.check(a, "x@y", t + Duration::from_secs(61)), Ok(()));
    }

    #[test]
    fn blocks_an_account_from_many_ips() {
        let g = guard();
        let t = Instant::now();
        for i in 0..5u8 {
            g.record(IpAddr::from([10, 0, 0, i]), "Boss@Y", false, t);
        }
        assert_eq!(
            g.check("127.0.0.9".parse().unwrap(), "boss@y", t),
            Err(Blocked::Account)
        );
        g.record("127.0.0.9".parse().unwrap(), "boss@y", true, t);
        assert_eq!(g.check("127.0.0.9".parse().unwrap(), "boss@y", t), Ok(()));
    }

    #[test]
    fn hourly_send_limits() {
        let g = guard();
        let t = Instant::now();
        assert!(g.allow_send("u", 2, t));
        assert!(!g.allow_send("u", 2, t), "recipients limit");
        assert!(g.allow_send("u", 1, t));
        assert!(!g.allow_send("u", 0, t), "messages limit");
        assert!(g.allow_send("u", 1, t + Duration::from_secs(3601)));
    }
}

/// Why a login did not succeed.
#[derive(Debug)]
pub enum LoginError {
    /// Blocked by the guard: answer with the protocol's temporary failure.
    Throttled,
    /// The store failed: a temporary failure too.
    Store(yubin_store::Error),
}

/// The one login path of every protocol: the guard's block check, argon2 verification
/// (blocking: call it where blocking is allowed), and a growing delay after a failure.
/// `Ok(None)` is a plain wrong user/password/disabled account.
pub fn login(
    store: &dyn yubin_store::Store,
    guard: &Guard,
    ip: IpAddr,
    user: &str,
    password: &str,
    proto: &str,
) -> Result<Option<yubin_store::Account>, LoginError> {
    let now = Instant::now();
    if let Err(why) = guard.check(ip, user, now) {
        tracing::info!(%ip, user, proto, ?why, "login refused: throttled");
        return Err(LoginError::Throttled);
    }
    match store.authenticate(user, password) {
        Ok(Some(a)) => {
            guard.record(ip, user, true, now);
            tracing::info!(%ip, user = a.address, proto, "login");
            Ok(Some(a))
        }
        Ok(None) => {
            let delay = guard.record(ip, user, false, now);
            tracing::info!(%ip, user, proto, "login failed");
            std::thread::sleep(delay);
            Ok(None)
        }
        Err(e) => Err(LoginError::Store(e)),
    }
}
