//! Connection limits (in total and per remote IP address), deadlines, and the check that
//! ends the sessions of a removed or disabled account.

/// Deadline of a command (and of a login) while the listener is stressed.
pub const STRESSED_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Time a connection has to log in (IMAP, POP3), whatever it sends meanwhile.
pub const LOGIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);
/// Time an SMTP client has to send a whole message after DATA/BDAT began (RFC 5321
/// §4.5.3.2.6 asks for at least 3 minutes per block; this bounds the whole message).
pub const DATA_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// Bytes of messages in flight over SMTP, all sessions together, at most this or four
/// largest messages, whichever is more; past it a session receiving a message gets 421
/// 4.3.1 (its client retries later) instead of the server growing without bound.
pub fn inflight_budget(max_message_size: usize) -> usize {
    (512usize << 20).max(max_message_size.saturating_mul(4))
}

/// One session's share of the in-flight bytes; given back when dropped.
pub struct InFlight {
    total: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    held: usize,
}

impl InFlight {
    pub fn new(total: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Self {
        InFlight { total, held: 0 }
    }

    /// This session now holds `now` bytes; returns the total of all sessions.
    pub fn set(&mut self, now: usize) -> usize {
        use std::sync::atomic::Ordering::AcqRel;
        if now == self.held {
            // The common case (a command with no body): no write to the shared counter.
            return self.total.load(std::sync::atomic::Ordering::Acquire);
        }
        let total = if now >= self.held {
            self.total.fetch_add(now - self.held, AcqRel) + (now - self.held)
        } else {
            self.total.fetch_sub(self.held - now, AcqRel) - (self.held - now)
        };
        self.held = now;
        total
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// The account a session logged in as, checked again before each command: a removed or
/// disabled account, or one given a new password, ends its sessions (within the period of
/// the task that reads the store's epoch, `Server::account_epoch`). Costs a comparison per
/// command; the account's row is read only when some account changed.
#[derive(Default)]
pub struct SessionAccount {
    known: Option<(yubin_store::AccountId, String, u64)>,
}

impl SessionAccount {
    /// False when the session of `id` must end now. `None` (not logged in) is always valid.
    /// A store error keeps the session (a busy database must not log everyone out).
    pub fn still_valid(
        &mut self,
        store: &dyn yubin_store::Store,
        epoch: u64,
        id: Option<yubin_store::AccountId>,
    ) -> bool {
        let Some(id) = id else {
            self.known = None;
            return true;
        };
        match &mut self.known {
            Some((known, _, seen)) if *known == id && *seen == epoch => true,
            Some((known, stamp, seen)) if *known == id => match store.account_stamp(id) {
                Ok(Some(now)) if now == *stamp => {
                    *seen = epoch;
                    true
                }
                Ok(_) => false,
                Err(_) => true,
            },
            _ => match store.account_stamp(id) {
                Ok(Some(stamp)) => {
                    self.known = Some((id, stamp, epoch));
                    true
                }
                Ok(None) => false,
                Err(_) => true,
            },
        }
    }
}

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub struct ConnLimiter {
    max_total: usize,
    max_per_ip: usize,
    /// Open connections in total and per IP (IPv6: per /64, as one host holds a /64).
    state: Mutex<(usize, HashMap<crate::guard::IpKey, usize>)>,
}

/// Held for a connection's life; releases its slot when dropped.
pub struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    ip: crate::guard::IpKey,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerIp,
}

impl ConnLimiter {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnLimiter {
            max_total,
            max_per_ip,
            state: Mutex::new((0, HashMap::new())),
        })
    }

    /// Four fifths of the slots are taken: deadlines shrink (as Postfix's stress mode), so
    /// slow or silent peers cannot hold the rest.
    pub fn stressed(&self) -> bool {
        self.active().saturating_mul(5) >= self.max_total.saturating_mul(4)
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, Refused> {
        let ip = crate::guard::IpKey::from(ip);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.0 >= self.max_total {
            return Err(Refused::Total);
        }
        let n = st.1.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refused::PerIp);
        }
        *n += 1;
        st.0 += 1;
        Ok(ConnSlot {
            limiter: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut st = self.limiter.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 = st.0.saturating_sub(1);
        if let Some(n) = st.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                st.1.remove(&self.ip);
            }
        }
    }
}

/// Sessions logged into each account (IMAP: a client with many folders opens several
/// connections; a runaway one must not take every slot of its IP).
pub struct AccountSessions {
    max: usize,
    counts: Mutex<HashMap<yubin_store::AccountId, usize>>,
}

/// Held while a session is logged in; gives its place back when dropped.
pub struct AccountSlot {
    of: Arc<AccountSessions>,
    account: yubin_store::AccountId,
}

impl AccountSessions {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(AccountSessions {
            max,
            counts: Mutex::default(),
        })
    }

    pub fn acquire(self: &Arc<Self>, account: yubin_store::AccountId) -> Option<AccountSlot> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = c.entry(account).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AccountSlot {
            of: self.clone(),
            account,
        })
    }
}

impl Drop for AccountSlot {
    fn drop(&mut self) {
        let mut c = self.of.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = c.get_mut(&self.account) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&self.account);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_per_account() {
        let l = AccountSessions::new(2);
        let a = l.acquire(1).unwrap();
        let _b = l.acquire(1).unwrap();
        assert!(l.acquire(1).is_none());
        let _c = l.acquire(2).unwrap();
        drop(a);
        assert!(l.acquire(1).is_some());
    }

    #[test]
    fn limits_and_release() {
        let l = ConnLimiter::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).err(), Some(Refused::PerIp));
        let _s3 = l.acquire(b).unwrap();
        assert_eq!(l.acquire(b).err(), Some(Refused::Total));
        drop(s1);
        assert!(l.acquire(a).is_ok());
    }

    #[test]
    fn ipv6_per_64_and_stress() {
        let l = ConnLimiter::new(5, 2);
        let _a = l.acquire("2001:db8::1".parse().unwrap()).unwrap();
        let _b = l.acquire("2001:db8::2:3".parse().unwrap()).unwrap();
        assert_eq!(
            l.acquire("2001:db8::ffff:1".parse().unwrap()).err(),
            Some(Refused::PerIp),
            "one /64 is one host"
        );
        assert!(!l.stressed());
        let _c = l.acquire("2001:db8:0:1::1".parse().unwrap()).unwrap();
        let _d = l.acquire("10.0.0.1".parse().unwrap()).unwrap();
        assert!(l.stressed(), "4 of 5 slots taken");
    }
}

#[cfg(test)]
mod inflight_tests {
    use super::*;

    #[test]
    fn shares_add_up_and_are_given_back() {
        let total = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut a = InFlight::new(total.clone());
        let mut b = InFlight::new(total.clone());
        assert_eq!(a.set(100), 100);
        assert_eq!(b.set(50), 150);
        assert_eq!(a.set(10), 60);
        drop(a);
        assert_eq!(total.load(std::sync::atomic::Ordering::Acquire), 50);
        b.set(0);
        assert_eq!(total.load(std::sync::atomic::Ordering::Acquire), 0);
        assert!(inflight_budget(50 << 20) >= 200 << 20);
    }
}
