//! Sequence sets (RFC 9051 §9 `sequence-set`) resolved against a mailbox without expanding
//! them: `1:4294967295` costs no memory.

use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

/// Sorted, merged, inclusive intervals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intervals(Vec<(u32, u32)>);

impl Intervals {
    /// `star` is the value of `*`: the largest sequence number or UID in the mailbox
    /// (RFC 9051 §6.4.8: with an empty mailbox, `*` is treated as 0... so nothing matches).
    pub fn new(set: &SequenceSet, star: u32) -> Self {
        let val = |v: &SeqOrUid| match v {
            SeqOrUid::Value(n) => n.get(),
            SeqOrUid::Asterisk => star,
        };
        let mut v: Vec<(u32, u32)> = set
            .0
            .as_ref()
            .iter()
            .map(|s| match s {
                Sequence::Single(x) => (val(x), val(x)),
                Sequence::Range(a, b) => {
                    let (a, b) = (val(a), val(b));
                    (a.min(b), a.max(b))
                }
            })
            .collect();
        v.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(v.len());
        for (a, b) in v {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        Intervals(merged)
    }

    pub fn contains(&self, x: u32) -> bool {
        self.0
            .binary_search_by(|&(a, b)| {
                if x < a {
                    std::cmp::Ordering::Greater
                } else if x > b {
                    std::cmp::Ordering::Less
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
    }

    /// The intervals, ascending and disjoint.
    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.0
    }

    /// The largest value named, for "is any sequence number out of range" checks.
    pub fn max(&self) -> u32 {
        self.0.last().map_or(0, |r| r.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_star() {
        let set = SequenceSet::try_from("1:3,7,9:*,5").unwrap();
        let i = Intervals::new(&set, 12);
        let hits: Vec<u32> = (0..15).filter(|&x| i.contains(x)).collect();
        assert_eq!(hits, [1, 2, 3, 5, 7, 9, 10, 11, 12]);
        let huge = SequenceSet::try_from("1:4294967295").unwrap();
        assert!(Intervals::new(&huge, 3).contains(4_000_000_000));
        let rev = SequenceSet::try_from("*:4").unwrap();
        assert_eq!(Intervals::new(&rev, 6).0, [(4, 6)]);
    }
}
