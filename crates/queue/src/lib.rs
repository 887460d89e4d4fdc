//! The outbound queue's decisions, as pure functions tested with a simulated clock: when to
//! try again, what a remote reply means, and the bounce (RFC 3464 DSN) to send when a
//! recipient cannot be reached. The delivery itself (DNS, SMTP client) lives in the server.

use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::{BodyPart, MimePart};

/// When to retry: delays after the 1st, 2nd... failed attempt (the last repeats), jittered
/// by up to ±`jitter_percent`, until `max_age` seconds after the message was accepted.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub delays: Vec<i64>,
    pub max_age: i64,
    pub jitter_percent: u8,
}

impl Default for Schedule {
    fn default() -> Self {
        // 5m, 10m, 30m, 1h, 2h, 4h, then every 4h, for 5 days (like Postfix's defaults).
        Schedule {
            delays: vec![300, 600, 1800, 3600, 7200, 14_400],
            max_age: 5 * 86_400,
            jitter_percent: 10,
        }
    }
}

impl Schedule {
    /// The time of the next attempt after `attempts` failures, or `None` when the message
    /// has been in the queue too long (it must bounce). `random` is any value in 0..=u32::MAX.
    pub fn next(&self, attempts: u32, created: i64, now: i64, random: u32) -> Option<i64> {
        let i = (attempts.saturating_sub(1) as usize).min(self.delays.len().saturating_sub(1));
        let base = *self.delays.get(i)?;
        let span = base * i64::from(self.jitter_percent) / 100;
        let jitter = if span > 0 {
            (i64::from(random) % (2 * span + 1)) - span
        } else {
            0
        };
        let at = now + base + jitter;
        (at < created + self.max_age).then_some(at)
    }
}

/// What a remote reply means for a recipient (RFC 5321 §4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    Temporary,
    Permanent,
}

pub fn classify(code: u16) -> Class {
    match code {
        200..=399 => Class::Success,
        500..=599 => Class::Permanent,
        // 4xx, and anything malformed, is worth another try.
        _ => Class::Temporary,
    }
}

/// What happened to a recipient (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    /// A warning while retries go on.
    Delayed,
    /// Put in a local mailbox (asked for by NOTIFY=SUCCESS).
    Delivered,
    /// Handed to a next hop that does not offer DSN: no further report will come.
    Relayed,
}

impl Action {
    fn keyword(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }
}

/// One recipient the report is about.
#[derive(Debug, Clone)]
pub struct Failure {
    pub rcpt: String,
    pub action: Action,
    /// `5.1.1` and the like (RFC 3463).
    pub status: String,
    /// The remote server's reply, if there was one (for Diagnostic-Code).
    pub diagnostic: String,
    /// The host that answered, if any.
    pub remote_mta: Option<String>,
    /// The sender's ORCPT for this recipient, `type;address` (RFC 3461 §4.2).
    pub orcpt: Option<String>,
}

/// What the report is about, beside its recipients.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    pub hostname: &'a str,
    /// The original envelope sender, who gets the report.
    pub to: &'a str,
    pub original: &'a [u8],
    pub arrival_date: &'a str,
    pub message_id: &'a str,
    /// RFC 3461 §4.4: the sender's ENVID, returned as Original-Envelope-Id.
    pub envid: Option<&'a str>,
    /// RFC 3461 §4.3: RET=FULL returns the whole message in a failure report; else (and
    /// in any other report) only its header section.
    pub full: bool,
}

/// A delivery status notification (RFC 3464) for `failures`, to `to` (the original
/// envelope sender), with the original message's header section attached. Sent with the
/// null reverse-path, so it can never cause a bounce itself.
pub fn bounce(
    hostname: &str,
    to: &str,
    original: &[u8],
    failures: &[Failure],
    arrival_date: &str,
    message_id: &str,
) -> Vec<u8> {
    report(
        &Report {
            hostname,
            to,
            original,
            arrival_date,
            message_id,
            envid: None,
            full: false,
        },
        failures,
    )
}

/// The report of RFC 3464 for `rcpts`, as [`bounce`] but with the sender's DSN
/// parameters (RFC 3461 §4.3, §4.4, §4.2) applied.
pub fn report(r: &Report<'_>, rcpts: &[Failure]) -> Vec<u8> {
    let (hostname, original) = (r.hostname, r.original);
    let headers_end = find(original, b"\r\n\r\n").map_or(original.len(), |p| p + 4);
    let header_section = original.get(..headers_end).unwrap_or(original);
    let all = |a: Action| rcpts.iter().all(|f| f.action == a);
    let failed = rcpts.iter().any(|f| f.action == Action::Failed);
    let mut human = format!("This is the mail system at {hostname}.\r\n\r\n");
    let subject = if failed {
        human.push_str("Your message could not be delivered to the following recipients:");
        "Undelivered Mail Returned to Sender"
    } else if all(Action::Delayed) {
        human.push_str(
            "Your message has not been delivered yet to the following recipients. It is \
             still being retried; you do not need to send it again.",
        );
        "Delayed Mail (still being retried)"
    } else {
        human.push_str(
            "Your message was delivered to the following recipients, as you asked to be \
             told (\"relayed\": passed on to a server that sends no further reports).",
        );
        "Successful Mail Delivery Report"
    };
    human.push_str("\r\n\r\n");
    // RFC 3464 §2.2: per-message fields, then one block per recipient.
    let mut status = String::new();
    if let Some(id) = r.envid {
        status.push_str(&format!("Original-Envelope-Id: {id}\r\n"));
    }
    status.push_str(&format!(
        "Reporting-MTA: dns; {hostname}\r\nArrival-Date: {}\r\n",
        r.arrival_date
    ));
    for f in rcpts {
        human.push_str(&format!(
            "<{}>: {}: {}\r\n",
            f.rcpt,
            f.action.keyword(),
            f.diagnostic
        ));
        status.push_str("\r\n");
        if let Some(o) = &f.orcpt
            && let Some((ty, addr)) = o.split_once(';')
        {
            status.push_str(&format!("Original-Recipient: {ty}; {addr}\r\n"));
        }
        status.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\nAction: {}\r\nStatus: {}\r\n",
            f.rcpt,
            f.action.keyword(),
            f.status
        ));
        if let Some(m) = &f.remote_mta {
            status.push_str(&format!("Remote-MTA: dns; {m}\r\n"));
        }
        if !f.diagnostic.is_empty() {
            status.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", f.diagnostic));
        }
    }
    // The returned content, as is (raw: never re-encoded, which message/rfc822 forbids).
    let returned = if failed && r.full {
        MimePart::new(
            ContentType::new("message/rfc822"),
            BodyPart::Binary(original.to_vec().into()),
        )
    } else {
        MimePart::new(
            ContentType::new("text/rfc822-headers"),
            BodyPart::Binary(header_section.to_vec().into()),
        )
    };
    let returned_8bit = match &returned.contents {
        BodyPart::Binary(b) => b.iter().any(|&c| c >= 0x80),
        _ => false,
    };
    let returned = returned.transfer_encoding(if returned_8bit { "8bit" } else { "7bit" });
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        BodyPart::Multipart(vec![
            MimePart::new(
                ContentType::new("text/plain").attribute("charset", "utf-8"),
                BodyPart::Text(human.into()),
            ),
            MimePart::new(
                ContentType::new("message/delivery-status"),
                BodyPart::Text(status.into()),
            ),
            returned,
        ]),
    );
    MessageBuilder::new()
        .from((
            "Mail Delivery System",
            format!("MAILER-DAEMON@{hostname}").as_str(),
        ))
        .to(r.to)
        .subject(subject)
        .message_id(r.message_id)
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied"),
        )
        .body(report)
        .write_to_vec()
        .unwrap_or_default()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_with_a_simulated_clock() {
        let s = Schedule {
            jitter_percent: 0,
            ..Schedule::default()
        };
        let created = 1_000_000;
        let mut now = created;
        let mut delays = Vec::new();
        let mut attempts = 0;
        // Walk the clock from attempt to attempt, as the queue would.
        while let Some(at) = s.next(attempts + 1, created, now, 0) {
            delays.push(at - now);
            now = at;
            attempts += 1;
        }
        assert_eq!(&delays[..7], [300, 600, 1800, 3600, 7200, 14_400, 14_400]);
        assert!(now < created + 5 * 86_400 && now + 14_400 >= created + 5 * 86_400);
        assert_eq!(delays.len(), 34, "about five days of attempts");
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let s = Schedule::default();
        for r in [0, 1, 12345, u32::MAX / 2, u32::MAX] {
            let at = s.next(1, 0, 0, r).unwrap();
            assert!((270..=330).contains(&at), "{at}");
        }
    }

    #[test]
    fn classification() {
        assert_eq!(classify(250), Class::Success);
        assert_eq!(classify(451), Class::Temporary);
        assert_eq!(classify(421), Class::Temporary);
        assert_eq!(classify(550), Class::Permanent);
        assert_eq!(classify(0), Class::Temporary);
    }

    #[test]
    fn bounce_is_a_delivery_status_notification() {
        let dsn = bounce(
            "mx.a.test",
            "alice@a.test",
            b"From: alice@a.test\r\nSubject: hello\r\n\r\nsecret body\r\n",
            &[Failure {
                rcpt: "bob@b.test".into(),
                action: Action::Failed,
                status: "5.1.1".into(),
                diagnostic: "550 5.1.1 <bob@b.test>: user unknown".into(),
                remote_mta: Some("mx.b.test".into()),
                orcpt: None,
            }],
            "Wed, 25 Nov 2026 10:00:00 +0000",
            "bounce-1@mx.a.test",
        );
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("Content-Type: multipart/report"), "{text}");
        assert!(
            text.contains("report-type=\"delivery-status\"")
                || text.contains("report-type=delivery-status"),
            "{text}"
        );
        assert!(text.contains("Content-Type: message/delivery-status"));
        assert!(text.contains("Final-Recipient: rfc822; bob@b.test"));
        assert!(text.contains("Action: failed\r\nStatus: 5.1.1"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1"));
        assert!(text.contains("Subject: hello"), "original headers attached");
        assert!(!text.contains("secret body"), "but not the body");
        assert!(text.contains("Auto-Submitted: auto-replied"));
    }
}

#[cfg(test)]
mod delay_tests {
    #[test]
    fn delay_warning_says_delayed() {
        let dsn = super::bounce(
            "mx.a.test",
            "alice@a.test",
            b"Subject: x\r\n\r\n",
            &[super::Failure {
                rcpt: "bob@b.test".into(),
                action: super::Action::Delayed,
                status: "4.4.1".into(),
                diagnostic: "connection refused".into(),
                remote_mta: None,
                orcpt: None,
            }],
            "Wed, 25 Nov 2026 10:00:00 +0000",
            "w@mx.a.test",
        );
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("Action: delayed\r\nStatus: 4.4.1"), "{text}");
        assert!(text.contains("Subject: Delayed Mail"));
    }
}

#[cfg(test)]
mod dsn_tests {
    use super::*;

    fn rcpt(action: Action) -> Failure {
        Failure {
            rcpt: "bob@b.test".into(),
            action,
            status: "2.0.0".into(),
            diagnostic: "250 ok".into(),
            remote_mta: None,
            orcpt: Some("rfc822;Bob+x@B.test".into()),
        }
    }

    fn make(action: Action, full: bool) -> String {
        let r = Report {
            hostname: "mx.a.test",
            to: "alice@a.test",
            original: "Subject: é\r\n\r\nthe body\r\n".as_bytes(),
            arrival_date: "Wed, 25 Nov 2026 10:00:00 +0000",
            message_id: "r@mx.a.test",
            envid: Some("QQ314"),
            full,
        };
        String::from_utf8(report(&r, &[rcpt(action)])).unwrap()
    }

    #[test]
    fn envid_orcpt_and_ret() {
        // RFC 3464 §2.2.1, §2.3.1: Original-Envelope-Id and Original-Recipient.
        let t = make(Action::Failed, true);
        assert!(t.contains("Original-Envelope-Id: QQ314\r\n"), "{t}");
        assert!(t.contains("Original-Recipient: rfc822; Bob+x@B.test\r\n"));
        // RET=FULL: the whole message, unencoded, as message/rfc822.
        assert!(t.contains("Content-Type: message/rfc822"));
        assert!(t.contains("Content-Transfer-Encoding: 8bit"));
        assert!(t.contains("the body"));
        // Success reports never return the body (RFC 3461 §4.3).
        let t = make(Action::Relayed, true);
        assert!(t.contains("Action: relayed") && t.contains("text/rfc822-headers"));
        assert!(!t.contains("the body"));
        assert!(t.contains("Subject: Successful Mail Delivery Report"));
        let t = make(Action::Delivered, false);
        assert!(t.contains("Action: delivered"));
    }
}
