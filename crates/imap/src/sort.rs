//! SORT and THREAD (RFC 5256) over the keys the store keeps per message.
//!
//! Implementation notes:
//! - Strings compare with i;ascii-casemap (RFC 5256 §3: ASCII upper-casing), ties are
//!   broken by sequence number.
//! - DATE is the sent date, or the internal date when the Date header is missing or bad.
//! - THREAD=REFERENCES follows RFC 5256 §2.2 steps 1–5 (parent/child links from References,
//!   pruning of dummies, subject grouping of roots, sort by date).

use std::collections::HashMap;
use std::num::NonZeroU32;

use imap_codec::imap_types::core::{Vec1, Vec2};
use imap_codec::imap_types::extensions::sort::{SortCriterion, SortKey};
use imap_codec::imap_types::extensions::thread::Thread;
use yubin_model::SortInfo;

/// RFC 5256 §2.1 base subject: no `Re:`/`Fwd:`/`[tag]` prefixes, `(fwd)` trailers or
/// extra whitespace; upper-cased for comparison. Linear in the subject (a peer's header may
/// hold a megabyte of `Re: `): every step only moves the ends of one slice inward.
pub fn base_subject(s: &str) -> String {
    // (1) Runs of whitespace become one space.
    let mut norm = String::with_capacity(s.len());
    for w in s.split_whitespace() {
        if !norm.is_empty() {
            norm.push(' ');
        }
        norm.push_str(w);
    }
    let mut t: &str = &norm;
    loop {
        // (2) Trailers: `(fwd)` and whitespace, any case.
        loop {
            t = t.trim_end();
            match strip_suffix_ci(t, "(fwd)") {
                Some(r) => t = r,
                None => break,
            }
        }
        // (3)-(5) Leaders: `*subj-blob subj-refwd`, and a blob with text after it.
        loop {
            t = t.trim_start();
            let mut rest = t;
            let mut last_blob = None;
            while let Some(r) = strip_blob(rest) {
                last_blob = Some(rest);
                rest = r;
            }
            if let Some(r) = strip_refwd(rest) {
                t = r;
                continue;
            }
            match last_blob {
                // Blobs with nothing after them: the last one stays (§2.1 step 4).
                Some(b) if rest.trim().is_empty() => {
                    t = b;
                    break;
                }
                Some(_) => t = rest,
                None => break,
            }
        }
        // (6) `[fwd: ...]` wrapped around the rest: unwrap and start over.
        if t.len() >= 6
            && starts_with_ci(t, "[fwd:")
            && t.ends_with(']')
            && let Some(inner) = t.get(5..t.len() - 1)
        {
            t = inner;
            continue;
        }
        break;
    }
    t.trim().to_ascii_uppercase()
}

fn starts_with_ci(s: &str, p: &str) -> bool {
    s.as_bytes()
        .get(..p.len())
        .is_some_and(|h| h.eq_ignore_ascii_case(p.as_bytes()))
}

fn strip_suffix_ci<'a>(s: &'a str, p: &str) -> Option<&'a str> {
    let at = s.len().checked_sub(p.len())?;
    let tail = s.as_bytes().get(at..)?;
    (tail.eq_ignore_ascii_case(p.as_bytes()))
        .then(|| s.get(..at))
        .flatten()
}

/// `subj-blob = "[" *BLOBCHAR "]" *WSP` (BLOBCHAR: anything but `[` and `]`): the rest.
fn strip_blob(s: &str) -> Option<&str> {
    let inner = s.strip_prefix('[')?;
    let end = inner.find(['[', ']'])?;
    inner.get(end..)?.strip_prefix(']').map(str::trim_start)
}

/// `subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"`: the rest.
fn strip_refwd(s: &str) -> Option<&str> {
    let r = if starts_with_ci(s, "re") {
        s.get(2..)?
    } else if starts_with_ci(s, "fwd") {
        s.get(3..)?
    } else if starts_with_ci(s, "fw") {
        s.get(2..)?
    } else {
        return None;
    };
    let r = r.trim_start();
    let r = strip_blob(r).unwrap_or(r);
    r.strip_prefix(':')
}

/// The subject was a reply or forward (its base subject lost a prefix or trailer).
fn is_reply_or_forward(subject: &str) -> bool {
    let plain: String = subject.split_whitespace().collect::<Vec<_>>().join(" ");
    base_subject(subject) != plain.to_ascii_uppercase()
}

fn date(m: &SortInfo) -> i64 {
    m.sent.unwrap_or(m.internal_date)
}

/// Sequence numbers (1-based indexes into `msgs`) of `hits`, in SORT order.
pub fn sort(msgs: &[SortInfo], hits: &[usize], criteria: &[SortCriterion]) -> Vec<usize> {
    let mut out = hits.to_vec();
    let subjects: HashMap<usize, String> = if criteria.iter().any(|c| c.key == SortKey::Subject) {
        hits.iter()
            .map(|&i| (i, base_subject(&msgs[i].subject)))
            .collect()
    } else {
        HashMap::new()
    };
    out.sort_by(|&a, &b| {
        for c in criteria {
            let (x, y) = (&msgs[a], &msgs[b]);
            let o = match c.key {
                SortKey::Arrival => x.internal_date.cmp(&y.internal_date),
                SortKey::Date => date(x).cmp(&date(y)),
                SortKey::Size => x.size.cmp(&y.size),
                SortKey::From => x
                    .from
                    .to_ascii_uppercase()
                    .cmp(&y.from.to_ascii_uppercase()),
                SortKey::To => x.to.to_ascii_uppercase().cmp(&y.to.to_ascii_uppercase()),
                SortKey::Cc => x.cc.to_ascii_uppercase().cmp(&y.cc.to_ascii_uppercase()),
                SortKey::DisplayFrom => x
                    .from_display
                    .to_ascii_uppercase()
                    .cmp(&y.from_display.to_ascii_uppercase()),
                SortKey::DisplayTo => x
                    .to_display
                    .to_ascii_uppercase()
                    .cmp(&y.to_display.to_ascii_uppercase()),
                SortKey::Subject => subjects[&a].cmp(&subjects[&b]),
            };
            let o = if c.reverse { o.reverse() } else { o };
            if o.is_ne() {
                return o;
            }
        }
        a.cmp(&b)
    });
    out
}

/// A node of the thread tree: a message (by index) or a dummy, and its children.
struct Node {
    msg: Option<usize>,
    children: Vec<Node>,
}

impl Node {
    fn date(&self, msgs: &[SortInfo]) -> (i64, usize) {
        match self.msg {
            Some(i) => (date(&msgs[i]), i),
            // A dummy sorts by its first child (RFC 5256 §2.2 step 5).
            None => self.children.first().map_or((0, 0), |c| c.date(msgs)),
        }
    }

    fn sort(&mut self, msgs: &[SortInfo]) {
        for c in &mut self.children {
            c.sort(msgs);
        }
        self.children.sort_by_key(|c| c.date(msgs));
    }
}

/// THREAD=ORDEREDSUBJECT (RFC 5256 §2.1 of threading): group by base subject, each group a
/// flat thread ordered by date.
pub fn ordered_subject(msgs: &[SortInfo], hits: &[usize]) -> Vec<Thread> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    let mut sorted = hits.to_vec();
    sorted.sort_by_key(|&i| (date(&msgs[i]), i));
    // By subject through a map: a linear search per message was quadratic in the subjects.
    let mut index: HashMap<String, usize> = HashMap::new();
    for i in sorted {
        let b = base_subject(&msgs[i].subject);
        match index.get(&b) {
            Some(&g) => groups[g].1.push(i),
            None => {
                index.insert(b.clone(), groups.len());
                groups.push((b, vec![i]));
            }
        }
    }
    groups
        .into_iter()
        .map(|(_, members)| {
            let mut it = members.into_iter();
            let first = it.next().unwrap_or(0);
            Node {
                msg: Some(first),
                children: it
                    .map(|i| Node {
                        msg: Some(i),
                        children: vec![],
                    })
                    .collect(),
            }
        })
        .filter_map(|n| to_thread(&n))
        .collect()
}

/// References of one message taken into account (the last ones: the nearest ancestors).
pub const MAX_REFERENCES: usize = 100;
/// Longest parent chain walked to avoid a loop when linking two containers.
const ANCESTOR_WALK: usize = 512;
/// Deepest thread built; the messages below start threads of their own.
pub const MAX_THREAD_DEPTH: usize = 200;

/// THREAD=REFERENCES (RFC 5256 §2.2). Bounded against a peer's headers: at most
/// MAX_REFERENCES references per message, ANCESTOR_WALK steps per link and
/// MAX_THREAD_DEPTH levels, so the cost is linear in the messages and the recursion shallow.
pub fn references(msgs: &[SortInfo], hits: &[usize]) -> Vec<Thread> {
    // Step 1: containers by message id, linked parent -> child.
    #[derive(Default)]
    struct C {
        msg: Option<usize>,
        parent: Option<usize>,
        children: Vec<usize>,
    }
    let mut cs: Vec<C> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut id_of = |id: &str, cs: &mut Vec<C>| -> usize {
        *by_id.entry(id.to_owned()).or_insert_with(|| {
            cs.push(C::default());
            cs.len() - 1
        })
    };
    let is_ancestor = |cs: &Vec<C>, a: usize, mut b: usize| -> bool {
        // Is `a` an ancestor of (or equal to) `b`? A walk longer than ANCESTOR_WALK counts
        // as yes (the link is not made), so a peer's chain costs at most that per link.
        for _ in 0..ANCESTOR_WALK {
            if a == b {
                return true;
            }
            match cs[b].parent {
                Some(p) => b = p,
                None => return false,
            }
        }
        true
    };
    for &i in hits {
        let m = &msgs[i];
        // Messages without (or with duplicate) ids get a unique container.
        let own_id = if m.message_id.is_empty() {
            format!("\0uid{}", m.uid)
        } else {
            m.message_id.clone()
        };
        let mut me = id_of(&own_id, &mut cs);
        if cs[me].msg.is_some() {
            me = id_of(&format!("\0dup{}", m.uid), &mut cs);
        }
        cs[me].msg = Some(i);
        let mut prev: Option<usize> = None;
        // The nearest MAX_REFERENCES ancestors: the list is the peer's, of any length.
        let refs = &m.references[m.references.len().saturating_sub(MAX_REFERENCES)..];
        for r in refs {
            let c = id_of(r, &mut cs);
            if let Some(p) = prev
                && cs[c].parent.is_none()
                && !is_ancestor(&cs, c, p)
            {
                cs[c].parent = Some(p);
                cs[p].children.push(c);
            }
            prev = Some(c);
        }
        // The last reference becomes this message's parent (replacing any earlier guess).
        if let Some(old) = cs[me].parent.take() {
            cs[old].children.retain(|&x| x != me);
        }
        if let Some(p) = prev
            && !is_ancestor(&cs, me, p)
        {
            cs[me].parent = Some(p);
            cs[p].children.push(me);
        }
    }
    // No thread deeper than MAX_THREAD_DEPTH: deeper containers start threads of their own,
    // so that the recursive steps below (and the response's nesting) stay bounded.
    let mut queue: std::collections::VecDeque<(usize, usize)> = (0..cs.len())
        .filter(|&i| cs[i].parent.is_none())
        .map(|i| (i, 0))
        .collect();
    let mut cut = Vec::new();
    while let Some((i, d)) = queue.pop_front() {
        for &c in &cs[i].children {
            if d + 1 > MAX_THREAD_DEPTH {
                cut.push(c);
                queue.push_back((c, 0));
            } else {
                queue.push_back((c, d + 1));
            }
        }
    }
    for c in cut {
        if let Some(p) = cs[c].parent.take() {
            cs[p].children.retain(|&x| x != c);
        }
    }
    // Step 2: the root set; step 3/4 build trees, pruning empty dummies.
    fn build(cs: &Vec<C>, i: usize) -> Vec<Node> {
        let mut children: Vec<Node> = cs[i].children.iter().flat_map(|&c| build(cs, c)).collect();
        match cs[i].msg {
            Some(m) => vec![Node {
                msg: Some(m),
                children,
            }],
            None if children.is_empty() => vec![],
            // A dummy with one child is replaced by the child; at the root level a dummy
            // with several children stays (step 4 B).
            None if children.len() == 1 => vec![children.remove(0)],
            None => vec![Node {
                msg: None,
                children,
            }],
        }
    }
    let roots_idx: Vec<usize> = (0..cs.len()).filter(|&i| cs[i].parent.is_none()).collect();
    let mut roots: Vec<Node> = Vec::new();
    for r in roots_idx {
        let built = build(&cs, r);
        // Non-root dummies' children are promoted (step 4 A).
        roots.extend(built);
    }
    // Step 5: group roots by base subject.
    let subject_of = |n: &Node| -> String {
        let i = n.msg.or_else(|| n.children.first().and_then(|c| c.msg));
        i.map(|i| base_subject(&msgs[i].subject))
            .unwrap_or_default()
    };
    let mut grouped: Vec<Node> = Vec::new();
    let mut by_subject: HashMap<String, usize> = HashMap::new();
    for n in roots {
        let s = subject_of(&n);
        if s.is_empty() {
            grouped.push(n);
            continue;
        }
        match by_subject.get(&s) {
            Some(&g) => {
                // RFC 5256 §2.2 step 5 E.
                let is_reply =
                    |n: &Node| n.msg.is_some_and(|i| is_reply_or_forward(&msgs[i].subject));
                let target = &mut grouped[g];
                match (target.msg.is_none(), n.msg.is_none()) {
                    (true, true) => target.children.extend(n.children),
                    (true, false) => target.children.push(n),
                    (false, true) => {
                        let old = std::mem::replace(target, n);
                        target.children.push(old);
                    }
                    (false, false) if is_reply(&n) && !is_reply(target) => target.children.push(n),
                    (false, false) if is_reply(target) && !is_reply(&n) => {
                        let old = std::mem::replace(target, n);
                        target.children.push(old);
                    }
                    (false, false) => {
                        let old = std::mem::replace(
                            target,
                            Node {
                                msg: None,
                                children: vec![],
                            },
                        );
                        target.children = vec![old, n];
                    }
                }
            }
            None => {
                by_subject.insert(s, grouped.len());
                grouped.push(n);
            }
        }
    }
    for n in &mut grouped {
        n.sort(msgs);
    }
    grouped.sort_by_key(|n| n.date(msgs));
    grouped.iter().filter_map(to_thread).collect()
}

/// The wire shape: a chain of single children is a prefix; two or more children nest.
fn to_thread(n: &Node) -> Option<Thread> {
    let mut prefix = Vec::new();
    let mut cur = n;
    loop {
        match cur.msg {
            Some(i) => prefix.push(NonZeroU32::new(i as u32 + 1)?),
            None if prefix.is_empty() => {
                let answers: Vec<Thread> = cur.children.iter().filter_map(to_thread).collect();
                return match Vec2::try_from(answers) {
                    Ok(answers) => Some(Thread::Nested { answers }),
                    Err(_) => cur.children.first().and_then(to_thread),
                };
            }
            None => {}
        }
        match cur.children.len() {
            0 => {
                return Some(Thread::Members {
                    prefix: Vec1::try_from(prefix).ok()?,
                    answers: None,
                });
            }
            1 => cur = &cur.children[0],
            _ => {
                let answers: Vec<Thread> = cur.children.iter().filter_map(to_thread).collect();
                return Some(Thread::Members {
                    prefix: Vec1::try_from(prefix).ok()?,
                    answers: Vec2::try_from(answers).ok(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_codec::ResponseCodec;
    use imap_codec::encode::Encoder;
    use imap_codec::imap_types::response::{Data, Response};

    #[test]
    fn base_subjects() {
        for (s, b) in [
            ("Re: hello", "HELLO"),
            ("RE: Fwd: [list] Re:  hello   world (fwd)", "HELLO WORLD"),
            ("[fwd: original]", "ORIGINAL"),
            ("Re[2]: x", "X"),
            ("[only]", "[ONLY]"),
            ("", ""),
            // The cases of an IMAP conformance suite (issue 16 item 5).
            ("[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)", "B"),
            ("re: [fwd: [fwd: re: [fwd: babylon]]]", "BABYLON"),
            ("[a] [b]", "[B]"),
            ("Fw: [x] y", "Y"),
            ("Re:", ""),
            ("refrigerator", "REFRIGERATOR"),
            ("Re: fwd", "FWD"),
        ] {
            assert_eq!(base_subject(s), b, "{s:?}");
        }
        // A megabyte of prefixes, blobs or wrappers: linear, not quadratic.
        let t = std::time::Instant::now();
        for hostile in [
            "Re: ".repeat(250_000),
            "[a]".repeat(300_000) + "x",
            "[fwd: ".repeat(100_000) + "x" + &"]".repeat(100_000),
            "x (fwd)".repeat(100_000),
        ] {
            base_subject(&hostile);
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
    }

    fn m(uid: u32, id: &str, refs: &[&str], subject: &str, sent: i64) -> SortInfo {
        SortInfo {
            uid,
            message_id: id.into(),
            references: refs.iter().map(|s| s.to_string()).collect(),
            subject: subject.into(),
            sent: Some(sent),
            ..SortInfo::default()
        }
    }

    fn wire(t: Vec<Thread>) -> String {
        let r = Response::Data(Data::Thread(t));
        String::from_utf8(ResponseCodec::default().encode(&r).dump()).unwrap()
    }

    #[test]
    fn references_threads() {
        let msgs = vec![
            m(1, "a", &[], "Topic", 10),
            m(2, "b", &["a"], "Re: Topic", 20),
            m(3, "c", &["a"], "Re: Topic", 30),
            m(4, "d", &["a", "b"], "Re: Topic", 40),
            m(5, "e", &[], "Other", 5),
            m(6, "f", &["missing"], "Orphan", 50),
            m(7, "g", &["missing"], "Orphan", 60),
        ];
        let hits: Vec<usize> = (0..msgs.len()).collect();
        assert_eq!(
            wire(references(&msgs, &hits)),
            "* THREAD (5)(1 (2 4)(3))((6)(7))\r\n"
        );
        assert_eq!(
            wire(ordered_subject(&msgs, &hits)),
            "* THREAD (5)(1 (2)(3)(4))(6 7)\r\n"
        );
    }

    #[test]
    fn hostile_references_are_bounded() {
        // One message naming 20,000 ancestors, and a chain of 5,000 messages: both thread
        // at once, on a small stack.
        std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(|| {
                let ids: Vec<String> = (0..20_000).map(|i| format!("r{i}")).collect();
                let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                let msgs = vec![m(1, "x", &refs, "s", 1)];
                let t = references(&msgs, &[0]);
                assert_eq!(wire(t), "* THREAD (1)\r\n");
                let ids: Vec<String> = (0..5_000).map(|i| format!("c{i}")).collect();
                let msgs: Vec<SortInfo> = (0..5_000usize)
                    .map(|i| {
                        let refs: Vec<&str> = ids[i.saturating_sub(3)..i]
                            .iter()
                            .map(String::as_str)
                            .collect();
                        m(i as u32 + 1, &ids[i], &refs, "chain", i as i64)
                    })
                    .collect();
                let hits: Vec<usize> = (0..msgs.len()).collect();
                let t = references(&msgs, &hits);
                assert!(!t.is_empty());
                let out = wire(t);
                assert!(
                    out.starts_with("* THREAD ((1 2 3 "),
                    "{}",
                    out.get(..40).unwrap_or(&out)
                );
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn sort_keys() {
        let mut msgs = vec![
            m(1, "", &[], "b", 3),
            m(2, "", &[], "Re: a", 2),
            m(3, "", &[], "c", 1),
        ];
        msgs[0].size = 30;
        msgs[1].size = 10;
        msgs[2].size = 20;
        let all = [0, 1, 2];
        let c = |key, reverse| SortCriterion { key, reverse };
        assert_eq!(sort(&msgs, &all, &[c(SortKey::Subject, false)]), [1, 0, 2]);
        assert_eq!(sort(&msgs, &all, &[c(SortKey::Date, false)]), [2, 1, 0]);
        assert_eq!(sort(&msgs, &all, &[c(SortKey::Size, true)]), [0, 2, 1]);
    }
}
