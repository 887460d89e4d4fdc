//! The statistical classifier: Robinson's token probabilities combined by Fisher's
//! method (the way bogofilter and SpamBayes do it), learned online from every label.
//!
//! Implementation notes.
//! - A message is its words and tags ([`crate::content::Content::words`]), hashed to
//!   32 bits ([`hash`]); the model is counts `(spam, ham)` per hash. Collisions among a
//!   few hundred thousand features in 2^32 are rare and only blur two rare words.
//! - Personalised per account by feature augmentation: each word counts once for the
//!   server and once for the account ([`personal`]), with totals kept as features of
//!   their own ([`TOTAL`]). The account's features start neutral and take over as its
//!   owner labels mail, so one user's newsletters are not another's spam.
//! - It says nothing ([`Model::classify`] is `None`) before it has seen [`MIN_LABELS`]
//!   of each kind server-wide: with spam labels only, every common word looks spammy.
//! - Bounded: at most [`MAX_FEATURES`] features (12 bytes each, well under 16 MiB);
//!   when full, the least-seen tenth of the words is forgotten.

use std::collections::HashMap;

/// Labels of each kind needed before the classifier gives an opinion.
pub const MIN_LABELS: u32 = 5;
/// Features kept.
pub const MAX_FEATURES: usize = 1_000_000;
/// The word whose counts are the number of messages learned.
pub const TOTAL: &str = "\u{0}total";

/// Robinson's strength of the prior and its value (bogofilter's defaults), and words
/// closer than MIN_DEV to 0.5 ignored. Chosen on bench/spam.py's replay of the
/// SpamAssassin corpus: SpamBayes' s = 0.45 with 150 discriminators caught 91.8 % of
/// spam at 0.5 % false positives, these 96.2 %; min_dev 0.1..0.45 moved it by under 1 %.
const ROBS: f64 = 0.0178;
const ROBX: f64 = 0.52;
const MIN_DEV: f64 = 0.2;
/// At most this many words decide (a bound; a message has at most twice
/// `content::MAX_WORDS` features).
const MAX_DISCRIMINATORS: usize = 4096;

/// FNV-1a, folded to 32 bits: stable across builds and platforms (the counts are stored).
pub fn hash(word: &str) -> u32 {
    let mut h = Fnv::new();
    h.feed(word.as_bytes());
    h.finish()
}

/// [`hash`] of a word given in pieces, without joining them.
pub struct Fnv(u64);

impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u32 {
        (self.0 ^ (self.0 >> 32)) as u32
    }
}

impl Default for Fnv {
    fn default() -> Self {
        Fnv::new()
    }
}

/// The account's own copy of a feature.
pub fn personal(feature: u32, account: i64) -> u32 {
    let mut h = (u64::from(feature) << 32 | (account as u64 & 0xffff_ffff))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 29;
    (h ^ (h >> 32)) as u32
}

/// The hashes of a message's words, distinct and sorted.
pub fn features(words: &[String]) -> Vec<u32> {
    let mut f: Vec<u32> = words.iter().map(|w| hash(w)).collect();
    f.sort_unstable();
    f.dedup();
    f
}

#[derive(Debug, Default, Clone)]
pub struct Model {
    counts: HashMap<u32, (u32, u32)>,
    /// Features changed since [`Model::take_dirty`].
    dirty: Vec<u32>,
    /// [`MAX_FEATURES`] unless a test sets a smaller bound.
    cap: Option<usize>,
}

impl Model {
    pub fn from_counts(rows: impl IntoIterator<Item = (u32, u32, u32)>) -> Self {
        Model {
            counts: rows.into_iter().map(|(f, s, h)| (f, (s, h))).collect(),
            dirty: Vec::new(),
            cap: None,
        }
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Messages learned `(spam, ham)`, server-wide or for one account.
    pub fn totals(&self, account: Option<i64>) -> (u32, u32) {
        let t = hash(TOTAL);
        let t = account.map_or(t, |a| personal(t, a));
        self.counts.get(&t).copied().unwrap_or_default()
    }

    fn bump(&mut self, f: u32, spam: bool, delta: i32) {
        let cap = self.cap.unwrap_or(MAX_FEATURES);
        if delta > 0 && !self.counts.contains_key(&f) && self.counts.len() >= cap {
            self.prune();
            if self.counts.len() >= cap {
                return;
            }
        }
        let e = self.counts.entry(f).or_default();
        let slot = if spam { &mut e.0 } else { &mut e.1 };
        *slot = slot.saturating_add_signed(delta);
        if *e == (0, 0) {
            self.counts.remove(&f);
        }
        self.dirty.push(f);
    }

    /// Forget the least-seen tenth of the words (bogofilter's maintenance drops rare
    /// words too). A tenth at least, so that a full model prunes once per
    /// `MAX_FEATURES / 10` new words, not on every one (each prune is a pass over all).
    fn prune(&mut self) {
        let total = hash(TOTAL);
        let mut seen: Vec<u64> = self
            .counts
            .values()
            .map(|(s, h)| u64::from(*s) + u64::from(*h))
            .collect();
        if seen.is_empty() {
            return;
        }
        let tenth = seen.len() / 10;
        let (_, &mut limit, _) = seen.select_nth_unstable(tenth);
        let gone: Vec<u32> = self
            .counts
            .iter()
            .filter(|(f, (s, h))| u64::from(*s) + u64::from(*h) <= limit && **f != total)
            .map(|(f, _)| *f)
            .collect();
        for f in gone {
            self.counts.remove(&f);
            self.dirty.push(f);
        }
    }

    /// Learn (`delta` 1) or unlearn (-1) one message's features, server-wide and, given
    /// an account, for it.
    pub fn learn(&mut self, features: &[u32], account: Option<i64>, spam: bool, delta: i32) {
        let total = hash(TOTAL);
        for &f in features.iter().chain(std::iter::once(&total)) {
            self.bump(f, spam, delta);
            if let Some(a) = account {
                self.bump(personal(f, a), spam, delta);
            }
        }
    }

    /// The changed features with their counts now (0/0 when removed), for the store.
    pub fn take_dirty(&mut self) -> Vec<(u32, u32, u32)> {
        let mut d = std::mem::take(&mut self.dirty);
        d.sort_unstable();
        d.dedup();
        d.into_iter()
            .map(|f| {
                let (s, h) = self.counts.get(&f).copied().unwrap_or_default();
                (f, s, h)
            })
            .collect()
    }

    /// Whether the model has seen [`MIN_LABELS`] of each kind: before that its opinion
    /// is not used for filing (with spam labels only, every common word looks spammy).
    pub fn ready(&self) -> bool {
        let (ns, nh) = self.totals(None);
        ns >= MIN_LABELS && nh >= MIN_LABELS
    }

    /// The spam probability of a message (0 ham .. 1 spam) once the model has learned
    /// anything, whether or not it is [`Model::ready`].
    pub fn spamicity(&self, features: &[u32], account: Option<i64>) -> Option<f64> {
        let (ns, nh) = self.totals(None);
        if ns == 0 && nh == 0 {
            return None;
        }
        let mut probs = Vec::with_capacity(features.len() * 2);
        let mut add = |f: u32, (ns, nh): (u32, u32)| {
            if let Some(p) = self.probability(f, ns, nh)
                && (p - 0.5).abs() >= MIN_DEV
            {
                probs.push(p);
            }
        };
        for &f in features {
            add(f, (ns, nh));
        }
        if let Some(a) = account {
            // An account's own words count once it has labelled both kinds: with one
            // kind only, every word it has seen would look like that kind.
            let mine = self.totals(Some(a));
            if mine.0 > 0 && mine.1 > 0 {
                for &f in features {
                    add(personal(f, a), mine);
                }
            }
        }
        if probs.len() > MAX_DISCRIMINATORS {
            probs.sort_unstable_by(|a, b| (b - 0.5).abs().total_cmp(&(a - 0.5).abs()));
            probs.truncate(MAX_DISCRIMINATORS);
        }
        Some(fisher(&probs))
    }

    /// [`Model::spamicity`] when the model is [`Model::ready`], else `None`.
    pub fn classify(&self, features: &[u32], account: Option<i64>) -> Option<f32> {
        if !self.ready() {
            return None;
        }
        self.spamicity(features, account).map(|p| p as f32)
    }

    /// Robinson's f(w): the word's spam ratio pulled towards [`ROBX`] when it was seen
    /// rarely.
    fn probability(&self, f: u32, ns: u32, nh: u32) -> Option<f64> {
        let &(s, h) = self.counts.get(&f)?;
        let sr = if ns == 0 {
            0.0
        } else {
            f64::from(s) / f64::from(ns)
        };
        let hr = if nh == 0 {
            0.0
        } else {
            f64::from(h) / f64::from(nh)
        };
        if sr + hr == 0.0 {
            return None;
        }
        let p = sr / (sr + hr);
        let n = f64::from(s + h);
        Some((ROBS * ROBX + n * p) / (ROBS + n))
    }
}

/// Fisher's combination of the words' probabilities into one (Robinson's I: 1 spam,
/// 0 ham, 0.5 when the words disagree or there are none).
fn fisher(probs: &[f64]) -> f64 {
    if probs.is_empty() {
        return 0.5;
    }
    let n = probs.len();
    let (mut ln_p, mut ln_q) = (0.0f64, 0.0f64);
    for &p in probs {
        let p = p.clamp(1e-6, 1.0 - 1e-6);
        ln_p += p.ln();
        ln_q += (1.0 - p).ln();
    }
    let h = chi2q(-2.0 * ln_p, 2 * n);
    let s = chi2q(-2.0 * ln_q, 2 * n);
    (1.0 + h - s) / 2.0
}

/// The chi-square survival function for an even number of degrees of freedom.
fn chi2q(x2: f64, v: usize) -> f64 {
    let m = x2 / 2.0;
    let mut term = (-m).exp();
    let mut sum = term;
    for i in 1..v / 2 {
        term *= m / i as f64;
        sum += term;
    }
    sum.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<u32> {
        features(&s.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    }

    fn trained() -> Model {
        let mut m = Model::default();
        for i in 0..6 {
            m.learn(
                &words(&format!("cheap pills viagra offer now {i}")),
                None,
                true,
                1,
            );
            m.learn(
                &words(&format!("meeting agenda project notes tuesday {i}")),
                None,
                false,
                1,
            );
        }
        m
    }

    #[test]
    fn silent_until_it_has_seen_both_kinds() {
        let mut m = Model::default();
        for _ in 0..10 {
            m.learn(&words("cheap pills"), None, true, 1);
        }
        assert_eq!(m.classify(&words("cheap pills"), None), None);
    }

    #[test]
    fn separates_what_it_learned() {
        let m = trained();
        let spam = m.classify(&words("buy cheap viagra pills"), None).unwrap();
        let ham = m
            .classify(&words("project meeting on tuesday"), None)
            .unwrap();
        assert!(spam > 0.99, "{spam}");
        assert!(ham < 0.01, "{ham}");
        let unknown = m
            .classify(&words("völlig unbekannte wörter"), None)
            .unwrap();
        assert!((unknown - 0.5).abs() < 1e-6, "{unknown}");
    }

    #[test]
    fn unlearning_restores_the_counts() {
        let mut m = trained();
        let before = m.counts.clone();
        m.learn(&words("newsletter sale"), Some(7), true, 1);
        m.learn(&words("newsletter sale"), Some(7), true, -1);
        assert_eq!(m.counts, before);
    }

    #[test]
    fn personal_labels_outweigh_the_servers_for_their_account() {
        let mut m = trained();
        // The server learned "newsletter" as spam from others; account 7 wants it.
        for _ in 0..6 {
            m.learn(&words("weekly newsletter digest"), Some(1), true, 1);
            m.learn(&words("weekly newsletter digest"), Some(7), false, 1);
        }
        // Account 7 has labelled both kinds, so its own words count.
        m.learn(&words("cheap pills viagra offer"), Some(7), true, 1);
        let others = m
            .classify(&words("weekly newsletter digest"), Some(2))
            .unwrap();
        let mine = m
            .classify(&words("weekly newsletter digest"), Some(7))
            .unwrap();
        assert!(others > 0.4, "{others}");
        assert!(mine < others, "{mine} vs {others}");
    }

    #[test]
    fn one_kind_of_personal_labels_is_not_used() {
        let mut m = trained();
        for _ in 0..6 {
            m.learn(&words("cheap pills viagra offer"), None, true, 1);
            m.learn(&words("agenda notes"), Some(7), false, 1);
        }
        // Account 7 only labelled ham: its copy of "pills" (never seen by it) must not
        // make spam look legitimate, nor its common words everything.
        let p = m.classify(&words("cheap pills viagra"), Some(7)).unwrap();
        assert!(p > 0.99, "{p}");
    }

    #[test]
    fn a_full_model_forgets_a_tenth_at_once() {
        let mut m = Model {
            cap: Some(1000),
            ..Model::default()
        };
        // Every word seen twice: nothing is "seen once", yet pruning must free room
        // for many new words at a time rather than pass over all on each.
        for f in 0..999u32 {
            m.learn(&[f], None, f % 2 == 0, 1);
            m.learn(&[f], None, f % 2 == 0, 1);
        }
        assert_eq!(m.len(), 1000); // and the total
        m.learn(&[5000], None, true, 1);
        let after = m.len();
        assert!(after <= 902, "{after}");
        assert!(m.totals(None).0 > 0, "the totals are kept");
        for f in 6000..6050u32 {
            m.learn(&[f], None, true, 1);
        }
        assert!(m.len() <= 1000);
    }

    #[test]
    fn dirty_features_report_their_counts() {
        let mut m = Model::default();
        m.learn(&[42], None, true, 1);
        let d = m.take_dirty();
        assert!(d.contains(&(42, 1, 0)));
        m.learn(&[42], None, true, -1);
        assert!(m.take_dirty().contains(&(42, 0, 0)));
        assert!(m.take_dirty().is_empty());
    }
}
