//! Successful password checks remembered for a while, as Dovecot's auth cache does: a
//! client that reconnects all day (phones, desktop clients with several connections) pays
//! the argon2 hash once an hour instead of at every connection.
//!
//! Implementation notes:
//! - Keyed by HMAC-SHA256 over (canonical account, password) with a secret made at start:
//!   the map holds no password, and its keys are useless outside this process.
//! - An entry is good only while the account's stamp ([`Directory::account_stamp`]: its
//!   password hash, `None` once disabled or removed) is the one the password was checked
//!   against. The stamp is read at every hit (one row), so a new password, a disabled or
//!   removed account takes effect at the next login, not when the entry expires.
//! - Only successes are kept; a failure always costs a full check (and is throttled by
//!   the guard, which a hit passes through like any other attempt).
//! - Bounded: `MAX_ENTRIES`, each for `TTL`; when full, expired entries go, then half.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::hmac;
use yubin_store::{Account, Directory};

/// How long a success is remembered (Dovecot's `auth_cache_ttl` default is an hour too).
pub const TTL: Duration = Duration::from_secs(3600);
const MAX_ENTRIES: usize = 100_000;

struct Entry {
    account: Account,
    stamp: String,
    at: Instant,
}

pub struct LoginCache {
    key: hmac::Key,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

impl Default for LoginCache {
    fn default() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).unwrap_or_else(|_| {
            // No system randomness: a key nobody else can know is still needed.
            let seed = format!("{:?}{}", Instant::now(), std::process::id());
            hmac::Key::new(hmac::HMAC_SHA256, seed.as_bytes())
        });
        LoginCache {
            key,
            entries: Mutex::default(),
        }
    }
}

impl LoginCache {
    fn tag(&self, account: &str, password: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        // Length first, so ("ab", "c") and ("a", "bc") differ.
        ctx.update(&(account.len() as u64).to_be_bytes());
        ctx.update(account.as_bytes());
        ctx.update(password.as_bytes());
        let mut out = [0; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The account, if this (canonical account, password) was checked within `TTL` and
    /// the account's stamp has not moved since.
    pub fn get(
        &self,
        store: &dyn Directory,
        account: &str,
        password: &str,
        now: Instant,
    ) -> Option<Account> {
        let tag = self.tag(account, password);
        let (acct, stamp) = {
            let map = self.entries();
            let e = map.get(&tag)?;
            if now.saturating_duration_since(e.at) >= TTL {
                return None;
            }
            (e.account.clone(), e.stamp.clone())
        };
        match store.account_stamp(acct.id) {
            Ok(Some(s)) if s == stamp => Some(acct),
            _ => {
                self.entries().remove(&tag);
                None
            }
        }
    }

    /// Remember a success, with the stamp the password was checked against.
    pub fn put(&self, account: &str, password: &str, acct: Account, stamp: String, now: Instant) {
        let tag = self.tag(account, password);
        let mut map = self.entries();
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, e| now.saturating_duration_since(e.at) < TTL);
        }
        if map.len() >= MAX_ENTRIES {
            let mut ages: Vec<(Instant, [u8; 32])> = map.iter().map(|(k, e)| (e.at, *k)).collect();
            ages.sort_unstable_by_key(|a| a.0);
            for (_, k) in ages.into_iter().take(MAX_ENTRIES / 2) {
                map.remove(&k);
            }
        }
        map.insert(
            tag,
            Entry {
                account: acct,
                stamp,
                at: now,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yubin_store::SqliteStore;

    #[test]
    fn hits_until_the_password_changes_or_the_account_goes() {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::create(d.path()).unwrap();
        s.add_domain("example.com").unwrap();
        s.add_account("a@example.com", "first-passphrase", false)
            .unwrap();
        let c = LoginCache::default();
        let now = Instant::now();
        let (acct, stamp) = s
            .authenticate_stamped("a@example.com", "first-passphrase")
            .unwrap()
            .unwrap();
        c.put("a@example.com", "first-passphrase", acct, stamp, now);
        assert!(
            c.get(&s, "a@example.com", "first-passphrase", now)
                .is_some()
        );
        // Another password, another account name: no hit.
        assert!(
            c.get(&s, "a@example.com", "first-passphrasE", now)
                .is_none()
        );
        assert!(
            c.get(&s, "b@example.com", "first-passphrase", now)
                .is_none()
        );
        // Expired.
        assert!(
            c.get(&s, "a@example.com", "first-passphrase", now + TTL)
                .is_none()
        );
        // A new password ends the entry at once.
        s.set_password("a@example.com", "second-passphrase")
            .unwrap();
        assert!(
            c.get(&s, "a@example.com", "first-passphrase", now)
                .is_none()
        );
        assert!(c.is_empty());
        // Disabled, then removed.
        let (acct, stamp) = s
            .authenticate_stamped("a@example.com", "second-passphrase")
            .unwrap()
            .unwrap();
        c.put(
            "a@example.com",
            "second-passphrase",
            acct.clone(),
            stamp.clone(),
            now,
        );
        s.set_disabled("a@example.com", true).unwrap();
        assert!(
            c.get(&s, "a@example.com", "second-passphrase", now)
                .is_none()
        );
        s.set_disabled("a@example.com", false).unwrap();
        c.put("a@example.com", "second-passphrase", acct, stamp, now);
        assert!(
            c.get(&s, "a@example.com", "second-passphrase", now)
                .is_some()
        );
        s.remove_account("a@example.com").unwrap();
        assert!(
            c.get(&s, "a@example.com", "second-passphrase", now)
                .is_none()
        );
    }

    #[test]
    fn bounded() {
        let c = LoginCache::default();
        let now = Instant::now();
        let acct = Account {
            id: 1,
            address: "a@b.c".into(),
            disabled: false,
            admin: false,
            created: 0,
            quota: None,
        };
        for i in 0..MAX_ENTRIES + 10 {
            c.put("a@b.c", &i.to_string(), acct.clone(), "s".into(), now);
        }
        assert!(c.len() <= MAX_ENTRIES);
    }
}
