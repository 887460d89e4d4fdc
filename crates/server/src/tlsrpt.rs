//! SMTP TLS reporting (RFC 8460): what became of every outbound TLS session, counted per
//! recipient domain and policy, and sent once a day as a gzipped JSON report to the
//! `rua` the domain publishes in `_smtp._tls.<domain>`.
//!
//! Implementation notes:
//! - Only `mailto:` addresses are used; `https:` ones (§3) are skipped with a log line.
//! - The counts live in memory: a restart loses the part of the day before it (the report
//!   then covers less than a day and says so in its date range).
//! - At most [`MAX_DOMAINS`] domains and [`MAX_FAILURE_KINDS`] failure rows per domain are
//!   kept: a flood of distinct destinations cannot grow the table without bound.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

pub const MAX_DOMAINS: usize = 10_000;
pub const MAX_FAILURE_KINDS: usize = 100;

/// One policy's counts for one domain.
#[derive(Debug, Clone, Default)]
struct Counts {
    policy_type: &'static str,
    policy_string: Vec<String>,
    mx_host: Vec<String>,
    success: u64,
    /// (result type, sending IP, receiving MX, receiving IP) → sessions.
    failures: HashMap<(String, String, String, String), u64>,
}

#[derive(Default)]
pub struct Reports {
    counts: Mutex<(i64, HashMap<String, Counts>)>,
}

/// RFC 8460 §4.3: the result types yubin can tell apart.
pub fn result_type(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("starttls") {
        "starttls-not-supported"
    } else if e.contains("notvalidforname") || e.contains("not valid for") {
        "certificate-host-mismatch"
    } else if e.contains("expired") {
        "certificate-expired"
    } else if e.contains("unknownissuer") || e.contains("not trusted") {
        "certificate-not-trusted"
    } else {
        "validation-failure"
    }
}

/// What a session was held to, as the report names it (RFC 8460 §4.4).
pub struct Held<'a> {
    pub policy: Option<&'a crate::mta_sts::Policy>,
    pub tlsa: Option<&'a [crate::dane::Tlsa]>,
}

impl Held<'_> {
    fn describe(&self) -> (&'static str, Vec<String>, Vec<String>) {
        if let Some(t) = self.tlsa {
            // §4.4: the TLSA records as presentation text.
            let text = t
                .iter()
                .map(|r| {
                    let hex: String = r.data.iter().map(|b| format!("{b:02x}")).collect();
                    format!("{} {} {} {hex}", r.usage, r.selector, r.matching)
                })
                .collect();
            return ("tlsa", text, Vec::new());
        }
        match self.policy {
            Some(p) => (
                "sts",
                p.text.lines().map(|l| l.trim_end().to_owned()).collect(),
                p.mx.clone(),
            ),
            None => ("no-policy-found", Vec::new(), Vec::new()),
        }
    }
}

impl Reports {
    pub fn new(now: i64) -> Self {
        Reports {
            counts: Mutex::new((now, HashMap::new())),
        }
    }

    fn with(&self, domain: &str, held: &Held<'_>, f: impl FnOnce(&mut Counts)) {
        let mut g = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let map = &mut g.1;
        if !map.contains_key(domain) && map.len() >= MAX_DOMAINS {
            return;
        }
        let (ty, text, mx) = held.describe();
        let c = map.entry(domain.to_ascii_lowercase()).or_default();
        if c.policy_type != ty {
            // A policy seen (or lost) during the day: the report is of the latest.
            *c = Counts {
                policy_type: ty,
                policy_string: text,
                mx_host: mx,
                ..Default::default()
            };
        }
        f(c);
    }

    pub fn success(&self, domain: &str, held: &Held<'_>) {
        self.with(domain, held, |c| c.success += 1);
    }

    pub fn failure(
        &self,
        domain: &str,
        held: &Held<'_>,
        kind: &str,
        from: &str,
        mx: &str,
        ip: &str,
    ) {
        self.with(domain, held, |c| {
            let key = (
                kind.to_owned(),
                from.to_owned(),
                mx.to_owned(),
                ip.to_owned(),
            );
            if c.failures.contains_key(&key) || c.failures.len() < MAX_FAILURE_KINDS {
                *c.failures.entry(key).or_insert(0) += 1;
            }
        });
    }

    /// The counts since the last call (or the start), and the time they began.
    fn take(&self, now: i64) -> (i64, HashMap<String, Counts>) {
        let mut g = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let start = std::mem::replace(&mut g.0, now);
        (start, std::mem::take(&mut g.1))
    }
}

#[derive(Serialize)]
struct Report<'a> {
    #[serde(rename = "organization-name")]
    organization_name: &'a str,
    #[serde(rename = "date-range")]
    date_range: DateRange,
    #[serde(rename = "contact-info")]
    contact_info: String,
    #[serde(rename = "report-id")]
    report_id: String,
    policies: Vec<PolicyResult>,
}

#[derive(Serialize)]
struct DateRange {
    #[serde(rename = "start-datetime")]
    start: String,
    #[serde(rename = "end-datetime")]
    end: String,
}

#[derive(Serialize)]
struct PolicyResult {
    policy: PolicyDesc,
    summary: Summary,
    #[serde(rename = "failure-details", skip_serializing_if = "Vec::is_empty")]
    failure_details: Vec<FailureDetail>,
}

#[derive(Serialize)]
struct PolicyDesc {
    #[serde(rename = "policy-type")]
    policy_type: &'static str,
    #[serde(rename = "policy-string", skip_serializing_if = "Vec::is_empty")]
    policy_string: Vec<String>,
    #[serde(rename = "policy-domain")]
    policy_domain: String,
    #[serde(rename = "mx-host", skip_serializing_if = "Vec::is_empty")]
    mx_host: Vec<String>,
}

#[derive(Serialize)]
struct Summary {
    #[serde(rename = "total-successful-session-count")]
    success: u64,
    #[serde(rename = "total-failure-session-count")]
    failure: u64,
}

#[derive(Serialize)]
struct FailureDetail {
    #[serde(rename = "result-type")]
    result_type: String,
    #[serde(rename = "sending-mta-ip")]
    sending_mta_ip: String,
    #[serde(rename = "receiving-mx-hostname")]
    receiving_mx_hostname: String,
    #[serde(rename = "receiving-ip")]
    receiving_ip: String,
    #[serde(rename = "failed-session-count")]
    failed_session_count: u64,
}

/// RFC 3339 in UTC, as §4.4 wants.
fn rfc3339(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = yubin_smtp::trace::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The JSON report for one domain (RFC 8460 §4.4).
fn report_json(hostname: &str, domain: &str, start: i64, end: i64, c: &Counts, id: &str) -> String {
    let failures: u64 = c.failures.values().sum();
    let mut details: Vec<FailureDetail> = c
        .failures
        .iter()
        .map(|((kind, from, mx, ip), n)| FailureDetail {
            result_type: kind.clone(),
            sending_mta_ip: from.clone(),
            receiving_mx_hostname: mx.clone(),
            receiving_ip: ip.clone(),
            failed_session_count: *n,
        })
        .collect();
    details.sort_by(|a, b| a.result_type.cmp(&b.result_type));
    let r = Report {
        organization_name: hostname,
        date_range: DateRange {
            start: rfc3339(start),
            end: rfc3339(end),
        },
        contact_info: format!("postmaster@{hostname}"),
        report_id: id.to_owned(),
        policies: vec![PolicyResult {
            policy: PolicyDesc {
                policy_type: c.policy_type,
                policy_string: c.policy_string.clone(),
                policy_domain: domain.to_owned(),
                mx_host: c.mx_host.clone(),
            },
            summary: Summary {
                success: c.success,
                failure: failures,
            },
            failure_details: details,
        }],
    };
    serde_json::to_string(&r).unwrap_or_default()
}

/// RFC 8460 §3: `v=TLSRPTv1; rua=mailto:a@b,https://...`.
pub fn parse_record(txt: &str) -> Option<Vec<String>> {
    let mut fields = txt.split(';').map(str::trim);
    if fields.next()? != "v=TLSRPTv1" {
        return None;
    }
    let rua = fields.find_map(|f| f.strip_prefix("rua="))?;
    Some(
        rua.split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .take(10)
            .collect(),
    )
}

/// The report mail (RFC 8460 §5.3): multipart/report of type tlsrpt, the JSON gzipped.
fn report_mail(
    hostname: &str,
    domain: &str,
    to: &str,
    json: &str,
    start: i64,
    end: i64,
    id: &str,
) -> Vec<u8> {
    use mail_builder::MessageBuilder;
    use mail_builder::headers::content_type::ContentType;
    use mail_builder::headers::raw::Raw;
    use mail_builder::mime::{BodyPart, MimePart};
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = gz.write_all(json.as_bytes());
    let gz = gz.finish().unwrap_or_default();
    let name = format!("{hostname}!{domain}!{start}!{end}!{id}.json.gz");
    let body = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "tlsrpt"),
        BodyPart::Multipart(vec![
            MimePart::new(
                ContentType::new("text/plain").attribute("charset", "utf-8"),
                BodyPart::Text(
                    format!(
                        "This is an SMTP TLS report (RFC 8460) for {domain} from {hostname}, \
                         covering {} to {}.\r\n",
                        rfc3339(start),
                        rfc3339(end)
                    )
                    .into(),
                ),
            ),
            MimePart::new(
                ContentType::new("application/tlsrpt+gzip"),
                BodyPart::Binary(gz.into()),
            )
            .attachment(name),
        ]),
    );
    MessageBuilder::new()
        .from((
            "TLS reporting",
            format!("MAILER-DAEMON@{hostname}").as_str(),
        ))
        .to(to)
        .subject(format!(
            "Report Domain: {domain} Submitter: {hostname} Report-ID: <{id}>"
        ))
        .message_id(format!("{id}@{hostname}"))
        .header("TLS-Report-Domain", Raw::new(domain.to_owned()))
        .header("TLS-Report-Submitter", Raw::new(hostname.to_owned()))
        .header("Auto-Submitted", Raw::new("auto-generated"))
        .body(body)
        .write_to_vec()
        .unwrap_or_default()
}

/// Send what was counted since the last run to every domain that asks for reports.
pub async fn send_all(ob: &crate::outbound::Outbox, now: i64) {
    let (start, counts) = ob.tls_reports.take(now);
    for (domain, c) in counts {
        let txt = ob
            .resolver
            .txt_lookup(format!("_smtp._tls.{domain}.").as_str())
            .await;
        let Ok(txt) = txt else { continue };
        let rua = txt.answers().iter().find_map(|r| match &r.data {
            hickory_resolver::proto::rr::RData::TXT(t) => parse_record(
                &t.txt_data
                    .iter()
                    .map(|d| String::from_utf8_lossy(d).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        });
        let Some(rua) = rua else { continue };
        let id = crate::new_id();
        let json = report_json(&ob.hostname, &domain, start, now, &c, &id);
        for u in rua {
            match u.strip_prefix("mailto:") {
                Some(to) if to.contains('@') => {
                    let to = to.split('?').next().unwrap_or(to).to_owned();
                    tracing::info!(domain, to, "sending a TLS report");
                    let mail = report_mail(&ob.hostname, &domain, &to, &json, start, now, &id);
                    crate::outbound::submit_report(ob.store.clone(), to, mail).await;
                    ob.wake.notify_one();
                }
                _ => tracing::info!(domain, rua = u, "TLS report address not used (mailto only)"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_json() {
        assert_eq!(
            parse_record("v=TLSRPTv1; rua=mailto:r@example.com,https://x/y"),
            Some(vec!["mailto:r@example.com".into(), "https://x/y".into()])
        );
        assert_eq!(parse_record("v=TLSRPTv2; rua=mailto:x@y"), None);
        let r = Reports::new(0);
        let held = Held {
            policy: None,
            tlsa: None,
        };
        r.success("Example.com", &held);
        r.failure(
            "example.com",
            &held,
            "starttls-not-supported",
            "192.0.2.1",
            "mx.example.com",
            "192.0.2.2",
        );
        let (start, counts) = r.take(86_400);
        assert_eq!(start, 0);
        let json = report_json(
            "mx.me",
            "example.com",
            0,
            86_400,
            &counts["example.com"],
            "id1",
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["date-range"]["start-datetime"], "1970-01-01T00:00:00Z");
        assert_eq!(v["date-range"]["end-datetime"], "1970-01-02T00:00:00Z");
        let p = &v["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "no-policy-found");
        assert_eq!(p["summary"]["total-successful-session-count"], 1);
        assert_eq!(p["summary"]["total-failure-session-count"], 1);
        assert_eq!(
            p["failure-details"][0]["result-type"],
            "starttls-not-supported"
        );
        assert_eq!(
            result_type("certificate not valid: invalid peer certificate: NotValidForName"),
            "certificate-host-mismatch"
        );
    }
}
