//! Abuse control shared by every protocol: failed logins per IP address and per account
//! (growing delays, then a temporary block), and per-user sending rates.
//!
//! Implementation notes:
//! - State lives in memory: a restart forgives, which is acceptable for throttling (the
//!   attacker gains one window) and keeps logins off the disk. Every map is bounded
//!   (`MAX_ENTRIES`): when full, expired entries go first, then the oldest.
//! - Accounts are keyed by their canonical address (`normalize_address`: trimmed,
//!   lower-cased, trailing dot removed), the same form the directory looks up, so a
//!   respelled name counts against the same account. Names that are no address at all
//!   share one key per IP's budget, and are never stored or logged whole.
//! - IPv6 peers are counted per /64 (one host usually holds a whole /64).
//! - A login attempt is counted when it starts ([`Guard::begin`]), before argon2, so
//!   parallel guesses cannot all pass the check before the first failure is recorded.
//! - A success forgets only what that IP did against that account: logging into one's own
//!   account does not wash another account's failures off the IP.
//! - A block does not lock out an account's owner: an IP that logged into the account
//!   successfully before (within `KNOWN_GOOD_FOR`) passes the IP's and the account's
//!   blocks for that account (everyone behind an office's NAT keeps working while one
//!   machine there guesses), limited only by its own failures against that account.
//! - A correct password seen within the hour is answered from [`LoginCache`] without
//!   argon2; the attempt still passes `begin`/`finish` like any other.
//! - A bare user name (`alice`) means `alice@` the configured default domain, if any
//!   (Dovecot's `auth_default_realm`).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::login_cache::LoginCache;

/// Entries kept per map before eviction.
const MAX_ENTRIES: usize = 100_000;
/// How long a successful login makes an IP trusted for that account.
const KNOWN_GOOD_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest user name written to the log.
const LOG_NAME_MAX: usize = 64;

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
    /// The domain of a login name given without one.
    pub default_domain: Option<String>,
}

#[derive(Default, Clone, Copy)]
struct Failures {
    count: u32,
    /// Attempts started and not finished yet (counted as failures by the check).
    pending: u32,
    last: Option<Instant>,
}

#[derive(Default)]
struct Rate {
    window_start: Option<Instant>,
    messages: u32,
    recipients: u32,
}

/// An IPv4 address, or the /64 of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpKey(u128);

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => IpKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey(u128::from(u32::from(v4))),
                None => IpKey((u128::from(v6) & !((1u128 << 64) - 1)) | (1 << 32)),
            },
        }
    }
}

/// The key an account name is counted under: its canonical address, or one shared key
/// for names that are not addresses (they cannot log in anyway).
pub fn account_key(user: &str) -> String {
    match yubin_store::normalize_address(user) {
        Ok(a) => a.to_string(),
        Err(_) => "\0invalid".into(),
    }
}

/// A user name fit for the log: at most `LOG_NAME_MAX` characters, controls escaped.
pub fn log_name(user: &str) -> String {
    let mut out: String = user
        .chars()
        .take(LOG_NAME_MAX)
        .flat_map(char::escape_debug)
        .collect();
    if user.chars().nth(LOG_NAME_MAX).is_some() {
        out.push_str("...");
    }
    out
}

pub struct Guard {
    limits: Limits,
    by_ip: Mutex<HashMap<IpKey, Failures>>,
    by_account: Mutex<HashMap<String, Failures>>,
    /// Failures of one IP against one account (forgotten together on success).
    by_pair: Mutex<HashMap<(IpKey, String), u32>>,
    /// IPs that logged into an account: not locked out by its block.
    known_good: Mutex<HashMap<(IpKey, String), Instant>>,
    rates: Mutex<HashMap<String, Rate>>,
    /// Signalled when an attempt finishes: logins waiting on `Blocked::Busy` look again.
    finished: (Mutex<u64>, std::sync::Condvar),
    cache: LoginCache,
    /// SCRAM's secret for unknown users' salts (yubin_sasl): random per server start.
    sasl_secret: [u8; 32],
}

/// Why a login may not even be tried now.
#[derive(Debug, PartialEq, Eq)]
pub enum Blocked {
    Ip,
    Account,
    /// Not blocked, but as many attempts as the budget has left are under way: wait for
    /// them (a parallel wave of guesses is checked one budget at a time).
    Busy,
}

/// A login attempt under way: finish it with [`Guard::finish`].
#[must_use]
pub struct Attempt {
    ip: IpKey,
    account: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keep `map` under `MAX_ENTRIES`: drop what `expired` says, then the oldest by `age`.
fn bound<K: Clone + Eq + Hash, V>(
    map: &mut HashMap<K, V>,
    expired: impl Fn(&V) -> bool,
    age: impl Fn(&V) -> Option<Instant>,
) {
    if map.len() < MAX_ENTRIES {
        return;
    }
    map.retain(|_, v| !expired(v));
    if map.len() >= MAX_ENTRIES {
        let mut ages: Vec<(Option<Instant>, K)> =
            map.iter().map(|(k, v)| (age(v), k.clone())).collect();
        ages.sort_by_key(|a| a.0);
        for (_, k) in ages.into_iter().take(MAX_ENTRIES / 2) {
            map.remove(&k);
        }
    }
}

impl Guard {
    pub fn new(limits: Limits) -> Self {
        Guard {
            limits,
            by_ip: Mutex::default(),
            by_account: Mutex::default(),
            by_pair: Mutex::default(),
            known_good: Mutex::default(),
            rates: Mutex::default(),
            finished: (Mutex::new(0), std::sync::Condvar::new()),
            cache: LoginCache::default(),
            sasl_secret: {
                let mut k = [0u8; 32];
                let _ = getrandom::fill(&mut k);
                k
            },
        }
    }

    pub fn sasl_secret(&self) -> [u8; 32] {
        self.sasl_secret
    }

    /// The name a login is looked up under: `user@default_domain` for a bare `user`.
    pub fn qualify<'a>(&self, user: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.limits.default_domain {
            Some(d) if !user.contains('@') && !user.trim().is_empty() => {
                format!("{}@{d}", user.trim()).into()
            }
            _ => user.into(),
        }
    }

    fn signal_finished(&self) {
        *lock(&self.finished.0) += 1;
        self.finished.1.notify_all();
    }

    /// How many attempts have finished so far (for [`Guard::wait_finished`]).
    fn finished_count(&self) -> u64 {
        *lock(&self.finished.0)
    }

    /// Wait (at most `max`) until an attempt finishes after `count` had.
    fn wait_finished(&self, count: u64, max: Duration) {
        let n = lock(&self.finished.0);
        let _ = self.finished.1.wait_timeout_while(n, max, |n| *n == count);
    }

    fn stale(&self, f: &Failures, now: Instant) -> bool {
        f.pending == 0
            && f.last
                .is_none_or(|l| now.saturating_duration_since(l) >= self.limits.block_for)
    }

    /// Failures older than the block period are forgotten.
    fn fresh(&self, f: &mut Failures, now: Instant) {
        if f.last
            .is_some_and(|l| now.saturating_duration_since(l) >= self.limits.block_for)
        {
            f.count = 0;
            f.last = None;
        }
    }

    /// Start a login attempt: refused when the IP (or, for an IP that never logged into
    /// it, the account) has used up its failures, counting attempts still under way.
    pub fn begin(&self, ip: IpAddr, user: &str, now: Instant) -> Result<Attempt, Blocked> {
        let ip = IpKey::from(ip);
        let account = account_key(user);
        // Lock order: by_ip, then by_account, then by_pair (everywhere).
        let mut ips = lock(&self.by_ip);
        let mut accounts = lock(&self.by_account);
        // Known, unless it used up its own failures against this account (then the IP's
        // and the account's blocks apply, which expire).
        let good = lock(&self.known_good)
            .get(&(ip, account.clone()))
            .is_some_and(|t| now.saturating_duration_since(*t) < KNOWN_GOOD_FOR);
        let known = good
            && lock(&self.by_pair)
                .get(&(ip, account.clone()))
                .is_none_or(|&n| n < self.limits.max_failures_per_ip);
        bound(&mut ips, |f| self.stale(f, now), |f| f.last);
        bound(&mut accounts, |f| self.stale(f, now), |f| f.last);
        let fi = ips.entry(ip).or_default();
        self.fresh(fi, now);
        if !known {
            if fi.count >= self.limits.max_failures_per_ip {
                return Err(Blocked::Ip);
            }
            if fi.count + fi.pending >= self.limits.max_failures_per_ip {
                return Err(Blocked::Busy);
            }
        }
        let fa = accounts.entry(account.clone()).or_default();
        self.fresh(fa, now);
        if !known && fa.count >= self.limits.max_failures_per_account {
            return Err(Blocked::Account);
        }
        if !known && fa.count + fa.pending >= self.limits.max_failures_per_account {
            return Err(Blocked::Busy);
        }
        fi.pending += 1;
        fa.pending += 1;
        Ok(Attempt { ip, account })
    }

    /// The attempt could not be decided (the store failed): it does not count.
    pub fn cancel(&self, attempt: Attempt) {
        let mut ips = lock(&self.by_ip);
        let mut accounts = lock(&self.by_account);
        if let Some(f) = ips.get_mut(&attempt.ip) {
            f.pending = f.pending.saturating_sub(1);
        }
        if let Some(f) = accounts.get_mut(&attempt.account) {
            f.pending = f.pending.saturating_sub(1);
        }
        drop((ips, accounts));
        self.signal_finished();
    }

    /// The attempt's outcome; returns how long to wait before answering a failure (growing
    /// with the failures from this IP, so guessing gets slower long before the block).
    pub fn finish(&self, attempt: Attempt, success: bool, now: Instant) -> Duration {
        let delay = self.finish_inner(attempt, success, now);
        self.signal_finished();
        delay
    }

    fn finish_inner(&self, attempt: Attempt, success: bool, now: Instant) -> Duration {
        let Attempt { ip, account } = attempt;
        let mut ips = lock(&self.by_ip);
        let mut accounts = lock(&self.by_account);
        let fi = ips.entry(ip).or_default();
        let fa = accounts.entry(account.clone()).or_default();
        fi.pending = fi.pending.saturating_sub(1);
        fa.pending = fa.pending.saturating_sub(1);
        let mut pairs = lock(&self.by_pair);
        if success {
            // Forget this IP's failures against this account only.
            let mine = pairs.remove(&(ip, account.clone())).unwrap_or(0);
            fi.count = fi.count.saturating_sub(mine);
            fa.count = 0;
            drop(pairs);
            let mut good = lock(&self.known_good);
            bound(
                &mut good,
                |t| now.saturating_duration_since(*t) >= KNOWN_GOOD_FOR,
                |t| Some(*t),
            );
            good.insert((ip, account), now);
            return Duration::ZERO;
        }
        self.fresh(fi, now);
        self.fresh(fa, now);
        fi.count += 1;
        fi.last = Some(now);
        fa.count += 1;
        fa.last = Some(now);
        let ip_count = fi.count;
        bound(&mut pairs, |_| false, |_| None);
        *pairs.entry((ip, account)).or_default() += 1;
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
            default_domain: Some("example.com".into()),
        })
    }

    fn fail(g: &Guard, ip: IpAddr, user: &str, t: Instant) -> Result<Duration, Blocked> {
        let a = g.begin(ip, user, t)?;
        Ok(g.finish(a, false, t))
    }

    #[test]
    fn blocks_an_ip_then_forgives() {
        let g = guard();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let t = Instant::now();
        let d1 = fail(&g, a, "x@y", t).unwrap();
        let d2 = fail(&g, a, "x@y", t).unwrap();
        assert!(d2 > d1, "delays grow");
        fail(&g, a, "x@y", t).unwrap();
        assert_eq!(g.begin(a, "other@y", t).err(), Some(Blocked::Ip));
        assert!(g.begin(b, "x@y", t).is_ok(), "another IP may still log in");
        assert!(g.begin(a, "x@y", t + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn blocks_an_account_from_many_ips_but_not_its_owner() {
        let g = guard();
        let t = Instant::now();
        let owner: IpAddr = "127.0.0.9".parse().unwrap();
        let ok = g.begin(owner, "boss@y", t).unwrap();
        g.finish(ok, true, t);
        for i in 0..5u8 {
            fail(&g, IpAddr::from([10, 0, 0, i]), "Boss@Y", t).unwrap();
        }
        // Respelled: the same account.
        assert_eq!(
            g.begin("10.1.0.1".parse().unwrap(), " boss@y. ", t).err(),
            Some(Blocked::Account)
        );
        assert!(
            g.begin(owner, "boss@y", t).is_ok(),
            "the owner's IP still may"
        );
    }

    #[test]
    fn parallel_attempts_count_before_they_finish() {
        let g = guard();
        let t = Instant::now();
        let ip: IpAddr = "127.0.0.5".parse().unwrap();
        let started: Vec<_> = (0..10).filter_map(|_| g.begin(ip, "v@y", t).ok()).collect();
        assert_eq!(
            started.len(),
            3,
            "only max_failures_per_ip attempts at once"
        );
        for a in started {
            g.finish(a, false, t);
        }
        assert_eq!(g.begin(ip, "v@y", t).err(), Some(Blocked::Ip));
    }

    #[test]
    fn own_success_does_not_forgive_other_accounts_failures() {
        let g = guard();
        let t = Instant::now();
        let ip: IpAddr = "127.0.0.6".parse().unwrap();
        fail(&g, ip, "victim@y", t).unwrap();
        fail(&g, ip, "victim@y", t).unwrap();
        let mine = g.begin(ip, "me@y", t).unwrap();
        g.finish(mine, true, t);
        fail(&g, ip, "victim@y", t).unwrap();
        assert_eq!(g.begin(ip, "victim@y", t).err(), Some(Blocked::Ip));
    }

    #[test]
    fn nat_neighbours_who_logged_in_before_pass_the_ip_block() {
        let g = guard();
        let t = Instant::now();
        let office: IpAddr = "192.0.2.1".parse().unwrap();
        let ok = g.begin(office, "alice@y", t).unwrap();
        g.finish(ok, true, t);
        for _ in 0..3 {
            fail(&g, office, "guess@y", t).unwrap();
        }
        assert_eq!(g.begin(office, "bob@y", t).err(), Some(Blocked::Ip));
        let again = g.begin(office, "alice@y", t).unwrap();
        g.finish(again, true, t);
        // Alice's own failures still count, against her alone; then the IP's block applies
        // to her too, and expires with it.
        for _ in 0..3 {
            fail(&g, office, "alice@y", t).unwrap();
        }
        assert_eq!(g.begin(office, "alice@y", t).err(), Some(Blocked::Ip));
        assert!(
            g.begin(office, "alice@y", t + Duration::from_secs(61))
                .is_ok()
        );
    }

    #[test]
    fn bare_names_get_the_default_domain() {
        let g = guard();
        assert_eq!(g.qualify("alice"), "alice@example.com");
        assert_eq!(g.qualify(" alice "), "alice@example.com");
        assert_eq!(g.qualify("alice@other.org"), "alice@other.org");
        assert_eq!(g.qualify(""), "");
        let mut l = g.limits.clone();
        l.default_domain = None;
        assert_eq!(Guard::new(l).qualify("alice"), "alice");
    }

    /// A repeated login is answered from the cache (no second entry, still right), and a
    /// new password is needed at once after a change.
    #[test]
    fn logins_are_cached_until_the_password_changes() {
        use yubin_store::{Directory, SqliteStore};
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::create(d.path()).unwrap();
        s.add_domain("example.com").unwrap();
        s.add_account("alice@example.com", "first-passphrase", false)
            .unwrap();
        let g = guard();
        let ip: IpAddr = "127.0.0.7".parse().unwrap();
        let go = |user: &str, pw: &str| login(&s, &g, ip, user, pw, "test").unwrap();
        assert!(go("alice", "first-passphrase").is_some());
        assert_eq!(g.cache.len(), 1);
        assert!(go("Alice@Example.com", "first-passphrase").is_some());
        assert_eq!(g.cache.len(), 1, "the same account, however spelled");
        assert!(go("alice", "wrong-passphrase").is_none());
        s.set_password("alice@example.com", "second-passphrase")
            .unwrap();
        assert!(go("alice", "first-passphrase").is_none());
        assert!(go("alice", "second-passphrase").is_some());
        s.set_disabled("alice@example.com", true).unwrap();
        assert!(go("alice", "second-passphrase").is_none());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let g = guard();
        let t = Instant::now();
        for i in 0..3u16 {
            let ip: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
            fail(&g, ip, "x@y", t).unwrap();
        }
        let other_host: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(g.begin(other_host, "x@y", t).err(), Some(Blocked::Ip));
        let other_net: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(g.begin(other_net, "x@y", t).is_ok());
    }

    #[test]
    fn maps_stay_bounded_and_names_are_cut_in_logs() {
        let g = guard();
        let t = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            let _ = fail(&g, IpAddr::from(i.to_be_bytes()), &format!("u{i}@y"), t);
        }
        assert!(lock(&g.by_ip).len() <= MAX_ENTRIES);
        assert!(lock(&g.by_account).len() <= MAX_ENTRIES);
        assert!(lock(&g.by_pair).len() <= MAX_ENTRIES);
        let long = "a".repeat(8 << 20);
        assert_eq!(log_name(&long).len(), LOG_NAME_MAX + 3);
        assert_eq!(account_key(&long), account_key("not an address"));
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

/// Longest a login waits for other attempts from its IP (or on its account) to finish.
const BUSY_WAIT: Duration = Duration::from_secs(10);

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
    let start = Instant::now();
    let user = &*guard.qualify(user);
    let attempt = loop {
        let seen = guard.finished_count();
        match guard.begin(ip, user, Instant::now()) {
            Ok(a) => break a,
            // Others' attempts are being checked: this one waits its turn (bounded).
            Err(Blocked::Busy) if start.elapsed() < BUSY_WAIT => {
                guard.wait_finished(seen, Duration::from_millis(100))
            }
            Err(why) => {
                tracing::info!(%ip, user = log_name(user), proto, ?why, "login refused: throttled");
                return Err(LoginError::Throttled);
            }
        }
    };
    let key = account_key(user);
    if let Some(a) = guard.cache.get(store, &key, password, Instant::now()) {
        guard.finish(attempt, true, Instant::now());
        tracing::info!(%ip, user = a.address, proto, cached = true, "login");
        return Ok(Some(a));
    }
    match store.authenticate_stamped(user, password) {
        Ok(Some((a, stamp))) => {
            guard.finish(attempt, true, Instant::now());
            guard
                .cache
                .put(&key, password, a.clone(), stamp, Instant::now());
            tracing::info!(%ip, user = a.address, proto, "login");
            Ok(Some(a))
        }
        Ok(None) => {
            let delay = guard.finish(attempt, false, Instant::now());
            tracing::info!(%ip, user = log_name(user), proto, "login failed");
            std::thread::sleep(delay);
            Ok(None)
        }
        Err(e) => {
            // Not the user's fault: the attempt does not count.
            guard.cancel(attempt);
            Err(LoginError::Store(e))
        }
    }
}

/// SCRAM-SHA-256, step one: the user's stored credentials (`None` for an unknown,
/// disabled or not yet converted account: the exchange goes on and fails at the proof,
/// as a wrong password does). A blocked source or account gets `None` as well; the
/// verdict of [`scram_verified`] then says so.
pub fn scram_lookup(
    store: &dyn yubin_store::Store,
    guard: &Guard,
    user: &str,
) -> Result<Option<(yubin_store::Account, yubin_sasl::ScramCredentials)>, LoginError> {
    let user = &*guard.qualify(user);
    match store.scram_credentials(user) {
        Ok(Some((a, stored))) => {
            Ok(yubin_sasl::ScramCredentials::from_stored(&stored).map(|c| (a, c)))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(LoginError::Store(e)),
    }
}

/// SCRAM, step two: the proof was checked (`ok`). Counted by the guard as a password
/// check is (blocks, growing delays); `Ok(Some(account))` lets the user in.
pub fn scram_verified(
    guard: &Guard,
    ip: IpAddr,
    user: &str,
    account: Option<yubin_store::Account>,
    ok: bool,
    proto: &str,
) -> Result<Option<yubin_store::Account>, LoginError> {
    let user = &*guard.qualify(user);
    let attempt = match guard.begin(ip, user, Instant::now()) {
        Ok(a) => a,
        Err(why) => {
            tracing::info!(%ip, user = log_name(user), proto, ?why, "login refused: throttled");
            return Err(LoginError::Throttled);
        }
    };
    match account {
        Some(a) if ok => {
            guard.finish(attempt, true, Instant::now());
            tracing::info!(%ip, user = a.address, proto, mechanism = "SCRAM-SHA-256", "login");
            Ok(Some(a))
        }
        _ => {
            let delay = guard.finish(attempt, false, Instant::now());
            tracing::info!(%ip, user = log_name(user), proto, mechanism = "SCRAM-SHA-256", "login failed");
            std::thread::sleep(delay);
            Ok(None)
        }
    }
}

/// A fresh SCRAM server nonce.
pub fn scram_nonce() -> String {
    let mut n = [0u8; 18];
    let _ = getrandom::fill(&mut n);
    yubin_sasl::nonce(n)
}
