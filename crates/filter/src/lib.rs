//! The judgement of inbound mail, without I/O.
//!
//! Implementation notes. The server gathers [`Evidence`] about one message (sender
//! authentication, blocklist answers, whether the checks finished in time) and hands it
//! to [`decide`], which returns a [`Decision`]: a score with every rule's contribution,
//! one [`Outcome`] per recipient (INBOX, Junk, quarantine, reject, try later) and the
//! header fields to prepend. This is the one per-recipient decision step of inbound
//! mail (mox calls it `analyze`); later checks (content rules, the classifier, the virus
//! scan, Sieve) add evidence or refine outcomes here rather than in the SMTP driver.
//! Everything is a plain function of its inputs, tested without DNS or sockets.
//!
//! Decisions, in order of precedence:
//! 1. the checks did not finish within their deadline and policy says try later;
//! 2. a blocklist marked "reject if listed" lists the client (`554 5.7.1`);
//! 3. DMARC fails under `p=reject` (`550 5.7.1`, RFC 7489 §6.6.3; or Junk if so
//!    configured) or `p=quarantine` (Junk);
//! 4. a local domain in From: from outside without passing authentication (forged);
//! 5. the score against each recipient's thresholds: reject / Junk / INBOX.

pub mod bayes;
pub mod clamd;
pub mod content;
pub mod dnsbl;
pub mod headers;
pub mod lists;

/// A verdict of one authentication method, in RFC 8601 §2.7 terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    None,
    TempError,
    PermError,
}

impl AuthResult {
    pub fn keyword(self) -> &'static str {
        match self {
            AuthResult::Pass => "pass",
            AuthResult::Fail => "fail",
            AuthResult::SoftFail => "softfail",
            AuthResult::Neutral => "neutral",
            AuthResult::None => "none",
            AuthResult::TempError => "temperror",
            AuthResult::PermError => "permerror",
        }
    }
}

/// The policy a DMARC record asks for (RFC 7489 §6.3 `p`/`sp`, after `pct` or `t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcPolicy {
    None,
    Quarantine,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dmarc {
    pub result: AuthResult,
    pub policy: DmarcPolicy,
    /// The RFC5322.From domain it was evaluated for.
    pub domain: String,
}

/// A blocklist that listed something about the message.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    /// The zone (or `local` for the admin's own block list).
    pub zone: String,
    /// What was listed: an IP address or a domain.
    pub what: String,
    pub weight: f32,
    /// The zone is configured "reject if listed".
    pub reject: bool,
}

/// What the server learned about one message before deciding.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Evidence {
    /// Sender authentication ran (it is skipped for authenticated and local clients).
    pub checked: bool,
    pub spf_helo: Option<AuthResult>,
    pub spf_mail_from: Option<AuthResult>,
    /// One per DKIM-Signature examined: its result and signing domain (`d=`).
    pub dkim: Vec<(AuthResult, String)>,
    pub arc: Option<AuthResult>,
    pub dmarc: Option<Dmarc>,
    /// The RFC5322.From domain is one of ours.
    pub from_is_local: bool,
    pub from_domain: Option<String>,
    pub listings: Vec<Listing>,
    /// The client or sender is on the admin's allow list: scoring and blocklists are
    /// skipped, DMARC `p=reject` still applies.
    pub allowed: bool,
    /// The checks were cut off by their deadline; the evidence is what had arrived.
    pub timed_out: bool,
    /// `Authentication-Results` as the server wrote it (ends in CRLF), if any.
    pub auth_results: Option<String>,
    /// What the content rules found ([`content::inspect`]).
    pub content: content::Content,
    /// The classifier's spam probability (0..1), when it has learned enough.
    pub bayes: Option<f32>,
    /// The virus scan, when a scanner is configured.
    pub virus: Option<clamd::Scan>,
}

/// What to do with DMARC `p=reject` failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDmarcReject {
    Reject,
    Quarantine,
}

/// What to do with a message whose local From: domain is not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnForgery {
    Reject,
    Junk,
}

/// What to do when the checks do not finish in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTimeout {
    /// Decide on what arrived; the header says the checks were incomplete.
    Accept,
    /// `451 4.7.1`: the sender retries, nothing is lost.
    TempFail,
}

/// The server-wide policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub dmarc_reject: OnDmarcReject,
    pub forgery: OnForgery,
    pub on_timeout: OnTimeout,
    pub thresholds: Thresholds,
    /// What to do with a message the attachment policy refuses.
    pub attachments: OnAttachment,
    /// What to do when the virus scanner cannot answer.
    pub on_scanner_failure: OnScannerFailure,
}

/// The virus scanner is down or slow: `451 4.7.1` (fail closed, the sender retries) or
/// deliver with a header saying it was not scanned (fail open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnScannerFailure {
    TempFail,
    Accept,
}

/// What to do with a dangerous attachment (program, disguised program, encrypted
/// archive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAttachment {
    /// `554 5.7.1` at SMTP time.
    Reject,
    /// Held for the admin.
    Quarantine,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            dmarc_reject: OnDmarcReject::Reject,
            forgery: OnForgery::Junk,
            on_timeout: OnTimeout::Accept,
            thresholds: Thresholds::default(),
            attachments: OnAttachment::Reject,
            on_scanner_failure: OnScannerFailure::TempFail,
        }
    }
}

/// Scores at which a message is filed into Junk or refused at SMTP time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub junk: f32,
    pub reject: f32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            junk: 5.0,
            reject: 15.0,
        }
    }
}

/// A recipient's overrides of the server's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RcptPolicy {
    pub junk: Option<f32>,
    pub reject: Option<f32>,
    /// The sender is someone this recipient wrote to: INBOX unless authentication fails
    /// or a message-wide verdict (blocklist, DMARC, attachment) says otherwise.
    pub known_sender: bool,
}

/// What happens to one recipient's copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Inbox,
    /// Filed into the account's Junk mailbox with `$Junk`.
    Junk,
    /// Held by the server for the admin (`yubin quarantine`), not shown to the user.
    Quarantine(String),
    /// Refused at SMTP time with this code (5xx) and text; never bounced afterwards.
    Reject {
        code: u16,
        text: String,
    },
    /// `451 4.7.1` with this text.
    TempFail(String),
}

/// One rule's contribution to the score.
#[derive(Debug, Clone, PartialEq)]
pub struct Reason {
    pub rule: &'static str,
    pub score: f32,
    /// What it saw (a domain, a zone), for the log and the explanation.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub score: f32,
    pub reasons: Vec<Reason>,
    /// One per recipient, in the order given.
    pub rcpts: Vec<Outcome>,
    /// Header fields to prepend, each ending in CRLF.
    pub headers: String,
}

impl Decision {
    /// Everyone to INBOX, nothing added: the decision for mail that is not judged.
    pub fn deliver_all(n: usize) -> Self {
        Decision {
            score: 0.0,
            reasons: Vec::new(),
            rcpts: vec![Outcome::Inbox; n],
            headers: String::new(),
        }
    }

    /// The SMTP answer for the whole message when no recipient takes it: the first
    /// refusal (by precedence temporary failure, then rejection). `None` when at least
    /// one copy is stored or quarantined.
    pub fn refusal(&self) -> Option<&Outcome> {
        if self
            .rcpts
            .iter()
            .any(|o| matches!(o, Outcome::Inbox | Outcome::Junk | Outcome::Quarantine(_)))
        {
            return None;
        }
        self.rcpts
            .iter()
            .find(|o| matches!(o, Outcome::TempFail(_)))
            .or_else(|| self.rcpts.first())
    }

    /// `RULE(score) RULE(score)`, for logs.
    pub fn summary(&self) -> String {
        self.reasons
            .iter()
            .map(|r| format!("{}({:.1})", r.rule, r.score))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Rule weights of sender authentication (SpamAssassin's and Rspamd's are the
/// reference: a failed SPF or DKIM alone does not make spam, a failed DMARC nearly does).
fn auth_rules(e: &Evidence, out: &mut Vec<Reason>) {
    let mut add = |rule, score, detail: &str| {
        out.push(Reason {
            rule,
            score,
            detail: detail.to_owned(),
        })
    };
    match e.spf_mail_from {
        Some(AuthResult::Fail) => add("SPF_FAIL", 2.0, ""),
        Some(AuthResult::SoftFail) => add("SPF_SOFTFAIL", 1.0, ""),
        Some(AuthResult::Neutral) => add("SPF_NEUTRAL", 0.2, ""),
        Some(AuthResult::PermError) => add("SPF_PERMERROR", 0.5, ""),
        Some(AuthResult::Pass) => add("SPF_PASS", -0.2, ""),
        _ => {}
    }
    if e.spf_helo == Some(AuthResult::Fail) {
        add("SPF_HELO_FAIL", 1.0, "");
    }
    let passed: Vec<&str> = e
        .dkim
        .iter()
        .filter(|(r, _)| *r == AuthResult::Pass)
        .map(|(_, d)| d.as_str())
        .collect();
    if passed.is_empty() && e.dkim.iter().any(|(r, _)| *r == AuthResult::Fail) {
        let d = e.dkim.first().map_or("", |(_, d)| d.as_str());
        add("DKIM_FAIL", 1.0, d);
    } else if let Some(d) = passed.first() {
        add("DKIM_PASS", -0.2, d);
    }
    if e.arc == Some(AuthResult::Fail) {
        add("ARC_FAIL", 0.5, "");
    }
    if let Some(d) = &e.dmarc {
        match (d.result, d.policy) {
            (AuthResult::Pass, _) => add("DMARC_PASS", -1.0, &d.domain),
            (AuthResult::Fail, DmarcPolicy::Reject) => add("DMARC_REJECT", 4.0, &d.domain),
            (AuthResult::Fail, DmarcPolicy::Quarantine) => add("DMARC_QUARANTINE", 3.0, &d.domain),
            (AuthResult::Fail, DmarcPolicy::None) => add("DMARC_NONE_FAIL", 0.5, &d.domain),
            _ => {}
        }
    }
}

/// The classifier's probability as a rule, in bands like SpamAssassin's.
fn bayes_reason(p: f32) -> Reason {
    let (rule, score) = match p {
        // Fisher's combination saturates: on bench/spam.py's replay 0.9 already meant
        // 0.1 % false positives, so it files into Junk on its own.
        p if p >= 0.99 => ("BAYES_99", 5.5),
        p if p >= 0.90 => ("BAYES_90", 5.0),
        p if p >= 0.70 => ("BAYES_70", 3.0),
        p if p >= 0.60 => ("BAYES_60", 1.5),
        p if p > 0.40 => ("BAYES_50", 0.0),
        p if p > 0.20 => ("BAYES_40", -0.5),
        p if p > 0.05 => ("BAYES_20", -1.0),
        p if p > 0.01 => ("BAYES_05", -1.5),
        _ => ("BAYES_00", -3.0),
    };
    Reason {
        rule,
        score,
        detail: format!("{p:.3}"),
    }
}

/// Sender authentication failed outright (what "unless its authentication fails"
/// means for a known correspondent): DMARC fail, or SPF fail/softfail or DKIM fail with
/// nothing passing.
fn auth_failed(e: &Evidence) -> bool {
    if !e.checked {
        return false;
    }
    if let Some(d) = &e.dmarc
        && d.result != AuthResult::None
    {
        return d.result == AuthResult::Fail;
    }
    let dkim_pass = e.dkim.iter().any(|(r, _)| *r == AuthResult::Pass);
    let spf_bad = matches!(
        e.spf_mail_from,
        Some(AuthResult::Fail | AuthResult::SoftFail)
    );
    let dkim_bad = e.dkim.iter().any(|(r, _)| *r == AuthResult::Fail);
    !dkim_pass && e.spf_mail_from != Some(AuthResult::Pass) && (spf_bad || dkim_bad)
}

fn dmarc_passes(e: &Evidence) -> bool {
    e.dmarc
        .as_ref()
        .is_some_and(|d| d.result == AuthResult::Pass)
}

/// RFC 8601 §2.7.1 and DMARC alignment in one question: did anything tie the From:
/// domain to the sender? Without a DMARC record, an aligned DKIM pass or an SPF pass of
/// the same domain counts.
fn from_authenticated(e: &Evidence) -> bool {
    if dmarc_passes(e) {
        return true;
    }
    let Some(from) = &e.from_domain else {
        return false;
    };
    e.dkim
        .iter()
        .any(|(r, d)| *r == AuthResult::Pass && aligned(d, from))
}

/// Relaxed alignment without a public-suffix list: one domain is the other or a
/// subdomain of it.
fn aligned(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_end_matches('.'), b.trim_end_matches('.'));
    a.eq_ignore_ascii_case(b)
        || a.len() > b.len()
            && a.to_ascii_lowercase()
                .ends_with(&format!(".{}", b.to_ascii_lowercase()))
        || b.len() > a.len()
            && b.to_ascii_lowercase()
                .ends_with(&format!(".{}", a.to_ascii_lowercase()))
}

/// The one decision for a message and its recipients.
pub fn decide(e: &Evidence, p: &Policy, rcpts: &[RcptPolicy]) -> Decision {
    let mut reasons = Vec::new();
    if e.checked {
        auth_rules(e, &mut reasons);
    }
    if !e.allowed {
        reasons.extend(e.content.reasons.iter().cloned());
        if let Some(p) = e.bayes {
            reasons.push(bayes_reason(p));
        }
        for l in &e.listings {
            reasons.push(Reason {
                rule: "BLOCKLISTED",
                score: l.weight,
                detail: format!("{} in {}", l.what, l.zone),
            });
        }
    } else {
        reasons.push(Reason {
            rule: "ALLOWLISTED",
            score: -100.0,
            detail: String::new(),
        });
    }
    let forged = e.checked && e.from_is_local && !from_authenticated(e);
    if forged {
        reasons.push(Reason {
            rule: "FORGED_LOCAL_FROM",
            score: 6.0,
            detail: e.from_domain.clone().unwrap_or_default(),
        });
    }
    match &e.virus {
        Some(clamd::Scan::Infected(name)) => reasons.push(Reason {
            rule: "VIRUS",
            score: 0.0,
            detail: name.clone(),
        }),
        Some(clamd::Scan::Unavailable(why) | clamd::Scan::Skipped(why)) => reasons.push(Reason {
            rule: "NOT_SCANNED",
            score: 0.0,
            detail: why.clone(),
        }),
        _ => {}
    }
    if e.timed_out {
        reasons.push(Reason {
            rule: "CHECKS_TIMED_OUT",
            score: 0.0,
            detail: String::new(),
        });
    }
    if rcpts.iter().any(|r| r.known_sender) && !auth_failed(e) {
        reasons.push(Reason {
            rule: "KNOWN_CORRESPONDENT",
            score: 0.0,
            detail: e.content.from.clone().unwrap_or_default(),
        });
    }
    // `+ 0.0`: a sum of nothing is -0.0 in Rust, which would print as "-0.0".
    let score: f32 = reasons.iter().map(|r| r.score).sum::<f32>() + 0.0;

    // Message-wide verdicts, by precedence; then each recipient's thresholds.
    let whole: Option<Outcome> = if let Some(clamd::Scan::Infected(name)) = &e.virus {
        Some(Outcome::Reject {
            code: 554,
            text: format!("Virus found: {name}"),
        })
    } else if matches!(e.virus, Some(clamd::Scan::Unavailable(_)))
        && p.on_scanner_failure == OnScannerFailure::TempFail
    {
        Some(Outcome::TempFail(
            "The virus scanner is unavailable, try again later".into(),
        ))
    } else if e.timed_out && p.on_timeout == OnTimeout::TempFail {
        Some(Outcome::TempFail(
            "Checks of this message did not finish in time, try again later".into(),
        ))
    } else if let Some(l) = e.listings.iter().find(|l| l.reject && !e.allowed) {
        Some(Outcome::Reject {
            code: 554,
            text: format!(
                "{} is listed by {}",
                headers::clean(&l.what, 100),
                headers::clean(&l.zone, 100)
            ),
        })
    } else if let Some(what) = &e.content.blocked {
        Some(match p.attachments {
            OnAttachment::Reject => Outcome::Reject {
                code: 554,
                text: format!("Attachment refused: {what}"),
            },
            OnAttachment::Quarantine => Outcome::Quarantine(format!("attachment: {what}")),
        })
    } else if let Some(d) = e.dmarc.as_ref().filter(|d| d.result == AuthResult::Fail) {
        match (d.policy, p.dmarc_reject) {
            (DmarcPolicy::Reject, OnDmarcReject::Reject) => Some(Outcome::Reject {
                code: 550,
                text: format!(
                    "DMARC policy of {} rejects this message (not authenticated)",
                    headers::clean(&d.domain, 100)
                ),
            }),
            (DmarcPolicy::Reject | DmarcPolicy::Quarantine, _) => Some(Outcome::Junk),
            (DmarcPolicy::None, _) => None,
        }
    } else {
        None
    };
    let whole = match whole {
        None | Some(Outcome::Junk) if forged && p.forgery == OnForgery::Reject => {
            Some(Outcome::Reject {
                code: 550,
                text:
                    "Forged sender: the From: domain is ours and the message is not authenticated"
                        .into(),
            })
        }
        None if forged => Some(Outcome::Junk),
        w => w,
    };
    let rcpts: Vec<Outcome> = rcpts
        .iter()
        .map(|r| {
            let junk = r.junk.unwrap_or(p.thresholds.junk);
            let reject = r.reject.unwrap_or(p.thresholds.reject);
            let vouched = r.known_sender && !auth_failed(e);
            match &whole {
                None if vouched => Outcome::Inbox,
                Some(Outcome::Junk) | None if score >= reject => Outcome::Reject {
                    code: 550,
                    text: format!("Message refused as spam (score {score:.1})"),
                },
                Some(o) => o.clone(),
                None if score >= junk => Outcome::Junk,
                None => Outcome::Inbox,
            }
        })
        .collect();
    let mut decision = Decision {
        score,
        reasons,
        rcpts,
        headers: String::new(),
    };
    decision.headers = header_fields(e, p, &decision);
    decision
}

/// `Authentication-Results` (the server's) and the spam verdict in the convention
/// clients and Sieve scripts already know (SpamAssassin's `X-Spam-Status`, `X-Spam-Flag`),
/// with each rule's contribution.
fn header_fields(e: &Evidence, p: &Policy, d: &Decision) -> String {
    let mut out = String::new();
    if let Some(ar) = &e.auth_results {
        out.push_str(ar);
    }
    let junk = d.rcpts.iter().any(|o| matches!(o, Outcome::Junk));
    let items: Vec<String> = d
        .reasons
        .iter()
        .map(|r| format!("{}({:.1})", r.rule, r.score))
        .collect();
    let head = format!(
        "{}, score={:.1} required={:.1}{}",
        if junk { "Yes" } else { "No" },
        d.score,
        p.thresholds.junk,
        if items.is_empty() { "" } else { " tests=" }
    );
    out.push_str(&headers::folded("X-Spam-Status", &head, &items, ","));
    match &e.virus {
        Some(clamd::Scan::Clean) => out.push_str("X-Virus-Scanned: clamd; clean\r\n"),
        Some(clamd::Scan::Unavailable(why) | clamd::Scan::Skipped(why)) => out.push_str(&format!(
            "X-Virus-Scanned: no ({})\r\n",
            headers::clean(why, 120).replace(['(', ')'], "")
        )),
        _ => {}
    }
    if junk {
        out.push_str("X-Spam-Flag: YES\r\n");
    }
    out
}

/// Every parser of this crate on `data` (for the fuzz target and its seeded test): none
/// may panic, loop or take more than linear time.
pub fn exercise(data: &[u8]) {
    let _ = headers::fields(data);
    let _ = headers::strip_results(data, "mx.example.org");
    let _ = dnsbl::link_domains(data);
    let _ = explain(data);
    let text = String::from_utf8_lossy(data);
    let _ = lists::Entry::parse(&text);
    let _ = dmarc_pct(&text);
    let _ = clamd::parse_reply(data);
    let _ = dnsbl::domain_name(&text, "dbl.example");
    let local = ["example.org".to_owned()];
    let c = content::inspect(
        data,
        &content::Envelope {
            mail_from: "a@example.com",
            local_domains: &local,
            now: 0,
        },
    );
    let _ = &c.features;
}

/// Hostile messages for [`exercise`]: deep comments, endless folding, many fields and
/// links, bare CR and LF, from a seed.
pub fn generate(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n.max(1)
    };
    let pieces: [&[u8]; 18] = [
        b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n",
        b"Content-Type: text/html\r\n\r\n<a href=\"http://",
        b"\">www.x.example</a>",
        b"Content-Disposition: attachment; filename=a.pdf.exe\r\n\r\nMZ",
        b"PK\x03\x04PK\x01\x02PK\x05\x06",
        b"From: \"x example.org\" <a@b.example>\r\n",
        b"Authentication-Results: ",
        b"mx.example.org",
        b"(",
        b")",
        b"\\",
        b";",
        b"\r\n",
        b"\n",
        b"\r\n\t",
        b"X-Spam-Status: Yes, score=1 tests=A(1),",
        b"http://",
        b"@evil.example/",
    ];
    let mut out = Vec::new();
    for _ in 0..next(2000) {
        let p = pieces
            .get(next(pieces.len() as u64) as usize)
            .copied()
            .unwrap_or_default();
        for _ in 0..=next(4).pow(3) {
            out.extend_from_slice(p);
        }
    }
    out
}

/// What each rule means, for `yubin filter explain`.
pub fn describe(rule: &str) -> &'static str {
    match rule {
        "SPF_FAIL" => "SPF: the sending IP is not allowed to send for the MAIL FROM domain (-all)",
        "SPF_SOFTFAIL" => "SPF: the MAIL FROM domain says the IP is probably not allowed (~all)",
        "SPF_NEUTRAL" => "SPF: the MAIL FROM domain makes no assertion about the IP (?all)",
        "SPF_PERMERROR" => {
            "SPF: the MAIL FROM domain's record is broken (syntax, loops, too many lookups)"
        }
        "SPF_PASS" => "SPF: the sending IP is allowed for the MAIL FROM domain",
        "SPF_HELO_FAIL" => "SPF: the sending IP is not allowed for the HELO name",
        "DKIM_FAIL" => {
            "DKIM: a signature does not verify (message changed or wrong key) and none passes"
        }
        "DKIM_PASS" => "DKIM: a signature verifies",
        "ARC_FAIL" => "ARC: the chain of forwarders' seals is broken",
        "DMARC_PASS" => "DMARC: the From: domain is authenticated by aligned SPF or DKIM",
        "DMARC_REJECT" => "DMARC: not authenticated, and the From: domain asks for rejection",
        "DMARC_QUARANTINE" => "DMARC: not authenticated, and the From: domain asks for quarantine",
        "DMARC_NONE_FAIL" => "DMARC: not authenticated; the From: domain only monitors (p=none)",
        "BLOCKLISTED" => "a DNS blocklist or the local block list lists the client IP or a domain",
        "ALLOWLISTED" => "the local allow list covers the client IP or the authenticated sender",
        "FORGED_LOCAL_FROM" => {
            "From: is one of our domains, but the message came from outside unauthenticated"
        }
        "CHECKS_TIMED_OUT" => "the checks did not finish within [filter] deadline_seconds",
        "VIRUS" => "the virus scanner (clamd) found this signature",
        "NOT_SCANNED" => "the virus scanner could not scan it (down, slow, or too large)",
        "KNOWN_CORRESPONDENT" => "the recipient has written to this sender: INBOX",
        "GTUBE" => "the GTUBE anti-spam test string (SpamAssassin's convention)",
        "MISSING_HEADERS" => "no header section at all",
        "MIME_MALFORMED" => "broken MIME structure (no boundary, bad encoding, too deep)",
        "MISSING_DATE" => "no Date: field (RFC 5322 §3.6 requires one)",
        "INVALID_DATE" => "a Date: field that is not a date",
        "DATE_IN_FUTURE" => "Date: more than a day ahead",
        "DATE_IN_PAST" => "Date: more than a week old",
        "MISSING_MESSAGE_ID" => "no Message-ID: field",
        "INVALID_MESSAGE_ID" => "a Message-ID: without <local@domain>",
        "MULTIPLE_FROM" => "more than one From: field",
        "MISSING_FROM" => "no usable From: address",
        "MISSING_SUBJECT" => "no Subject: field",
        "SUBJECT_ALL_CAPS" => "the subject is all capitals",
        "MISSING_TO" => "neither To: nor Cc:",
        "REPLY_TO_DIFFERS" => "Reply-To: sends answers to another domain than From:",
        "ENVELOPE_FROM_DIFFERS" => "the MAIL FROM domain is not the From: domain",
        "DISPLAY_NAME_IMPERSONATES_LOCAL" => {
            "the From: display name shows one of our domains; the address is elsewhere"
        }
        "DISPLAY_NAME_OTHER_ADDRESS" => "the From: display name shows another address",
        "HTML_ONLY" => "HTML without a plain-text alternative",
        "LINK_TEXT_MISMATCH" => "a link's text shows one host and points to another",
        "LINK_IP_LITERAL" => "a link to a bare IP address",
        "LINK_SHORTENER" => "a link through a URL shortener",
        "DANGEROUS_ATTACHMENT" => "an attachment that runs on a click (.exe, .js, .scr, .iso...)",
        "DOUBLE_EXTENSION" => "an attachment name hiding its real type (invoice.pdf.exe)",
        "EXECUTABLE_DISGUISED" => "a program under a harmless name (magic bytes say so)",
        "ENCRYPTED_ARCHIVE" => "a password-protected archive: its contents cannot be checked",
        "ARCHIVE_TOO_DEEP" => "archives nested deeper than yubin opens",
        "ARCHIVE_MALFORMED" => "an archive that cannot be read",
        "BAYES_99" | "BAYES_90" | "BAYES_70" | "BAYES_60" => {
            "the classifier, learned from users' Junk labels, finds it spammy"
        }
        "BAYES_50" => "the classifier cannot tell",
        "BAYES_40" | "BAYES_20" | "BAYES_05" | "BAYES_00" => {
            "the classifier, learned from users' labels, finds it legitimate"
        }
        _ => "(unknown rule)",
    }
}

/// The explanation of a stored message's verdict: its score, each rule with its part
/// and meaning, and the authentication results, from the header fields yubin wrote.
pub fn explain(message: &[u8]) -> String {
    let mut status = None;
    let mut results = Vec::new();
    for (start, end, name) in headers::fields(message) {
        let text = String::from_utf8_lossy(message.get(start..end).unwrap_or_default());
        let value = text
            .split_once(':')
            .map_or("", |(_, v)| v)
            .replace("\r\n", "")
            .replace('\t', " ");
        if status.is_none() && name.eq_ignore_ascii_case(b"X-Spam-Status") {
            status = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case(b"Authentication-Results") && results.is_empty() {
            results.push(value.trim().to_owned());
        }
    }
    let Some(status) = status else {
        return "No verdict: the message was not judged (submission, a trusted local client, \
                or stored before the filter)\n"
            .into();
    };
    let (head, tests) = status.split_once("tests=").unwrap_or((status.as_str(), ""));
    let mut out = format!("Verdict: {}\n", head.trim().trim_end_matches(','));
    for t in tests.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (rule, score) = t.split_once('(').unwrap_or((t, ""));
        out.push_str(&format!(
            "  {:>6}  {rule:<18} {}\n",
            score.trim_end_matches(')'),
            describe(rule)
        ));
    }
    for r in results {
        out.push_str("Authentication-Results:\n");
        for item in r.split(';') {
            out.push_str(&format!(
                "  {}\n",
                item.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
    }
    out
}

/// RFC 7489 §6.3 `pct`: the percentage of failing mail the policy applies to, from a
/// DMARC record's text; `None` when absent or not a number in 0..=100.
pub fn dmarc_pct(record: &str) -> Option<u8> {
    if !record.trim_start().starts_with("v=DMARC1") {
        return None;
    }
    record.split(';').find_map(|tag| {
        let (k, v) = tag.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("pct"))
            .then(|| v.trim().parse::<u8>().ok().filter(|p| *p <= 100))
            .flatten()
    })
}

/// RFC 7489 §6.6.4: a failing message outside the sampled `pct` gets the next lower
/// policy (reject → quarantine, quarantine → none). `draw` is uniform in 0..100.
pub fn apply_pct(policy: DmarcPolicy, pct: u8, draw: u8) -> DmarcPolicy {
    if draw < pct {
        return policy;
    }
    match policy {
        DmarcPolicy::Reject => DmarcPolicy::Quarantine,
        _ => DmarcPolicy::None,
    }
}

/// `Authentication-Results` (RFC 8601) from evidence alone, for when the checks were
/// cut off before mail-auth could write its own: what finished is reported, what did not
/// is `temperror` (§2.7: "could not be completed due to a transient error").
pub fn partial_results(authserv_id: &str, e: &Evidence, mail_from: &str) -> String {
    let pv = |v: &str| {
        let v = headers::clean(v, 200);
        if !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "@.-_+".contains(c))
        {
            v
        } else {
            format!("\"{}\"", v.replace(['\\', '"'], ""))
        }
    };
    let kw = |r: Option<AuthResult>| r.unwrap_or(AuthResult::TempError).keyword();
    let mut out = format!(
        "Authentication-Results: {}",
        headers::clean(authserv_id, 255)
    );
    if e.dkim.is_empty() {
        out.push_str(";\r\n\tdkim=temperror");
    }
    for (r, d) in &e.dkim {
        out.push_str(&format!(";\r\n\tdkim={} header.d={}", r.keyword(), pv(d)));
    }
    out.push_str(&format!(
        ";\r\n\tspf={} smtp.mailfrom={}",
        kw(e.spf_mail_from),
        if mail_from.is_empty() {
            "<>".to_owned()
        } else {
            pv(mail_from)
        }
    ));
    let dmarc = e.dmarc.as_ref().map(|d| d.result);
    out.push_str(&format!(";\r\n\tdmarc={}", kw(dmarc)));
    if let Some(d) = &e.from_domain {
        out.push_str(&format!(" header.from={}", pv(d)));
    }
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests;
