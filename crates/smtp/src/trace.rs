//! Trace headers added on delivery (RFC 5321 §4.4): `Return-Path` and `Received`.

use std::net::IpAddr;

/// What the receiving side knows about one transaction, for its `Received` header.
#[derive(Debug, Clone)]
pub struct TraceInfo<'a> {
    /// The name the client gave in HELO/EHLO.
    pub helo: &'a str,
    pub peer_ip: IpAddr,
    /// Our own host name.
    pub hostname: &'a str,
    /// `SMTP`, `ESMTP`, `ESMTPS`, `ESMTPA`, `ESMTPSA` (RFC 3848).
    pub protocol: &'a str,
    /// TLS version and cipher, when the session was encrypted.
    pub tls: Option<&'a str>,
    pub id: &'a str,
    /// Named in the header only when the message has exactly one recipient, so that
    /// the other recipients of a message are not disclosed (Postfix does the same).
    pub single_recipient: Option<&'a str>,
    /// Seconds since the Unix epoch.
    pub unix_time: i64,
}

/// `Return-Path: <sender>` (RFC 5321 §4.4: added by the final delivery MTA).
pub fn return_path(reverse_path: &str) -> String {
    format!("Return-Path: <{}>\r\n", sanitize(reverse_path))
}

/// A `Received` header, folded, ending in CRLF (RFC 5321 §4.4, RFC 5322 §3.6.7).
pub fn received(t: &TraceInfo<'_>) -> String {
    let mut h = format!(
        "Received: from {} ([{}])\r\n\tby {} (yubin) with {}",
        sanitize(t.helo),
        t.peer_ip,
        sanitize(t.hostname),
        t.protocol
    );
    if let Some(tls) = t.tls {
        h.push_str(&format!("\r\n\t(using {})", sanitize(tls)));
    }
    h.push_str(&format!(" id {}", sanitize(t.id)));
    if let Some(rcpt) = t.single_recipient {
        h.push_str(&format!("\r\n\tfor <{}>", sanitize(rcpt)));
    }
    h.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(t.unix_time)));
    h
}

/// Peer-supplied text must not break the header: no CR, LF, or other controls.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// RFC 5322 §3.3 date-time in UTC, e.g. `Wed, 25 Nov 2026 09:00:00 +0000`.
///
/// Written by hand (a dozen lines) rather than pulling a date crate for one format.
pub fn rfc5322_date(unix_time: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_time.div_euclid(86_400);
    let secs = unix_time.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's civil_from_days.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_597_261),
            "Wed, 25 Nov 2026 09:01:01 +0000"
        );
    }

    #[test]
    fn received_header_is_folded_and_safe() {
        let h = received(&TraceInfo {
            helo: "client\r\nX-Evil: 1",
            peer_ip: "127.0.0.1".parse().unwrap(),
            hostname: "mx.example",
            protocol: "ESMTPS",
            tls: Some("TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384"),
            id: "abc",
            single_recipient: Some("a@example"),
            unix_time: 0,
        });
        assert!(h.starts_with("Received: from client??X-Evil: 1 ([127.0.0.1])\r\n\tby mx.example"));
        assert!(h.contains("\r\n\tfor <a@example>;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"));
        assert_eq!(h.matches("\r\n").count(), 5);
        assert!(!h.contains("\r\nX-Evil"));
    }
}
