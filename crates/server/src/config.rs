//! The one TOML configuration file. `yubin.example.toml` beside this crate documents every
//! key with its default; a test keeps the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The documented example; also the template of the file written on first run.
pub const EXAMPLE: &str = include_str!("../yubin.example.toml");

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub hostname: String,
    pub data_dir: PathBuf,
    pub tls: Tls,
    pub listen: Listen,
    pub smtp: Smtp,
    pub imap: Imap,
    pub pop3: Pop3,
    pub submission: Submission,
    pub auth: Auth,
    pub queue: QueueCfg,
    pub mta_sts: MtaSts,
    pub filter: Filter,
    pub log: Log,
}

/// The judgement of inbound mail on port 25 (`server::analyze`, `yubin-filter`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    /// SPF, DKIM, ARC and DMARC of mail from other servers.
    pub sender_auth: bool,
    /// Judge clients on loopback too (they are trusted by default, like Rspamd's
    /// `check_local = false`).
    pub check_local: bool,
    /// Resolvers for the checks; empty: `[queue] dns_servers`, then the system's.
    pub dns_servers: Vec<SocketAddr>,
    /// Seconds per DNS query before it counts as `temperror`.
    pub dns_timeout_seconds: u64,
    /// Seconds for every check of one message together.
    pub deadline_seconds: u64,
    /// `accept` (decide on what arrived) or `tempfail` (451 4.7.1, the sender retries).
    pub on_timeout: String,
    /// DMARC `p=reject` failures: `reject` (550 5.7.1) or `quarantine` (Junk).
    pub dmarc_reject: String,
    /// A local domain in From: without passing authentication: `junk` or `reject`.
    pub forgery: String,
    /// Score at which a message is filed into Junk.
    pub junk_score: f32,
    /// Score at which a message is refused at SMTP time.
    pub reject_score: f32,
    /// DNS blocklists (`[[filter.dnsbl]]`).
    pub dnsbl: Vec<Dnsbl>,
    /// The fixed rules on header and body (dates, ids, links, display names...).
    pub content_rules: bool,
    /// Programs, disguised programs and password-protected archives in attachments:
    /// `reject` (554 5.7.1) or `quarantine`; checked on submission too.
    pub attachments: String,
    /// The statistical classifier, learned from users' Junk labels.
    pub classifier: bool,
    /// Mail users send counts as legitimate (ham) for the classifier, and its
    /// recipients as their correspondents.
    pub learn_from_sent: bool,
    /// ClamAV's clamd: a unix socket path or `host:port`; empty: no virus scanning.
    pub clamd: String,
    /// Seconds for one scan (connect, send, answer).
    pub clamd_timeout_seconds: u64,
    /// Larger messages are not sent to clamd (its StreamMaxLength is 25 MiB by default).
    pub clamd_max_bytes: usize,
    /// Scans at once; more wait their turn (within the deadline).
    pub clamd_max_concurrent: usize,
    /// clamd down or slow: `tempfail` (451 4.7.1) or `accept` (with a header saying so).
    pub on_scanner_failure: String,
    /// `attachments`: scan messages with a part that is an attachment or not text (as
    /// Rspamd does by default); `all`: every message.
    pub clamd_scan: String,
    /// Held messages are dropped after this many days; 0 keeps them until the admin
    /// releases or deletes them.
    pub quarantine_days: u32,
}

/// One DNS blocklist: of client IPs (RFC 5782 §2.1, IPv4 octets or IPv6 nibbles
/// reversed) or of domains (§2.2: MAIL FROM, From: and link domains).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Dnsbl {
    pub zone: String,
    /// `ip` or `domain`.
    #[serde(default = "Dnsbl::default_kind")]
    pub kind: String,
    /// Added to the score when listed.
    #[serde(default = "Dnsbl::default_weight")]
    pub weight: f32,
    /// Refuse listed mail at SMTP time (554 5.7.1) instead of scoring it.
    #[serde(default)]
    pub reject: bool,
}

impl Dnsbl {
    fn default_kind() -> String {
        "ip".into()
    }
    fn default_weight() -> f32 {
        3.0
    }
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            sender_auth: true,
            check_local: false,
            dns_servers: Vec::new(),
            dns_timeout_seconds: 5,
            deadline_seconds: 20,
            on_timeout: "accept".into(),
            dmarc_reject: "reject".into(),
            forgery: "junk".into(),
            junk_score: 5.0,
            reject_score: 15.0,
            dnsbl: Vec::new(),
            content_rules: true,
            attachments: "reject".into(),
            classifier: true,
            learn_from_sent: true,
            clamd: String::new(),
            clamd_timeout_seconds: 30,
            clamd_max_bytes: 25 << 20,
            clamd_max_concurrent: 4,
            on_scanner_failure: "tempfail".into(),
            clamd_scan: "attachments".into(),
            quarantine_days: 30,
        }
    }
}

impl Filter {
    /// The policy of `yubin-filter`; unknown words are refused when the file is loaded.
    pub fn policy(&self) -> yubin_filter::Policy {
        use yubin_filter::{
            OnAttachment, OnDmarcReject, OnForgery, OnScannerFailure, OnTimeout, Policy, Thresholds,
        };
        Policy {
            dmarc_reject: if self.dmarc_reject == "quarantine" {
                OnDmarcReject::Quarantine
            } else {
                OnDmarcReject::Reject
            },
            forgery: if self.forgery == "reject" {
                OnForgery::Reject
            } else {
                OnForgery::Junk
            },
            on_timeout: if self.on_timeout == "tempfail" {
                OnTimeout::TempFail
            } else {
                OnTimeout::Accept
            },
            thresholds: Thresholds {
                junk: self.junk_score,
                reject: self.reject_score,
            },
            attachments: if self.attachments == "quarantine" {
                OnAttachment::Quarantine
            } else {
                OnAttachment::Reject
            },
            on_scanner_failure: if self.on_scanner_failure == "accept" {
                OnScannerFailure::Accept
            } else {
                OnScannerFailure::TempFail
            },
        }
    }

    fn validate(&self) -> Result<()> {
        for (key, value, allowed) in [
            ("on_timeout", &self.on_timeout, ["accept", "tempfail"]),
            ("dmarc_reject", &self.dmarc_reject, ["reject", "quarantine"]),
            ("forgery", &self.forgery, ["junk", "reject"]),
            ("attachments", &self.attachments, ["reject", "quarantine"]),
            (
                "on_scanner_failure",
                &self.on_scanner_failure,
                ["tempfail", "accept"],
            ),
        ] {
            if !allowed.contains(&value.as_str()) {
                bail!(
                    "[filter] {key} = {value:?}: use {:?} or {:?}",
                    allowed[0],
                    allowed[1]
                );
            }
        }
        for l in &self.dnsbl {
            if !["ip", "domain"].contains(&l.kind.as_str()) {
                bail!(
                    "[[filter.dnsbl]] {}: kind must be \"ip\" or \"domain\"",
                    l.zone
                );
            }
            if l.zone.trim_matches('.').is_empty() {
                bail!("[[filter.dnsbl]] needs a zone");
            }
        }
        if self.junk_score > self.reject_score {
            bail!("[filter] junk_score must not be above reject_score");
        }
        Ok(())
    }
}

/// Our own MTA-STS policy (RFC 8461 §3.2), served on `[listen] mta_sts`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MtaSts {
    /// `testing` to start with (failures are only reported), then `enforce`.
    pub mode: String,
    pub max_age: u64,
    /// The MX hosts senders may use; empty: this server's hostname.
    pub mx: Vec<String>,
}

impl Default for MtaSts {
    fn default() -> Self {
        MtaSts {
            mode: "testing".into(),
            max_age: 604_800,
            mx: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    pub smtp: Vec<SocketAddr>,
    pub submission: Vec<SocketAddr>,
    pub submissions: Vec<SocketAddr>,
    pub imap: Vec<SocketAddr>,
    pub imaps: Vec<SocketAddr>,
    pub pop3: Vec<SocketAddr>,
    pub pop3s: Vec<SocketAddr>,
    /// HTTPS for our own MTA-STS policy (RFC 8461 §3.3): none unless set.
    pub mta_sts: Vec<SocketAddr>,
    /// Plain HTTP for Prometheus (`GET /metrics`): none unless set; keep it on loopback.
    pub metrics: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Smtp {
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_errors: u32,
    pub max_line_length: usize,
    pub idle_timeout: u64,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub auth: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Imap {
    pub append_limit: u32,
    pub idle_timeout: u64,
    pub plaintext_auth: bool,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_connections_per_account: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Pop3 {
    pub idle_timeout: u64,
    pub plaintext_auth: bool,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Submission {
    pub save_sent: bool,
    pub plaintext_auth: bool,
    pub messages_per_hour: u32,
    pub recipients_per_hour: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueueCfg {
    pub dns_servers: Vec<SocketAddr>,
    pub remote_port: u16,
    pub retry_seconds: Vec<u32>,
    pub max_days: u32,
    pub concurrency: usize,
    pub per_domain_concurrency: usize,
    pub delay_warning_seconds: u32,
    /// Local addresses outbound connections come from (one per address family is used),
    /// so that SPF and reverse DNS match on a host with several; empty: the system picks.
    pub source_addresses: Vec<std::net::IpAddr>,
    /// The same per sender domain, before `source_addresses`.
    pub source_by_domain: std::collections::BTreeMap<String, Vec<std::net::IpAddr>>,
    /// Look up and keep recipient domains' MTA-STS policies (RFC 8461).
    pub mta_sts: bool,
    /// Port of the policy hosts (443 on the internet; tests change it).
    pub mta_sts_port: u16,
    /// More CA certificates (PEM) to trust beside Mozilla's, for MTA-STS and MX hosts.
    pub tls_ca_file: Option<PathBuf>,
    /// Look up DNSSEC-validated TLSA records of MX hosts (DANE, RFC 7672).
    pub dane: bool,
    /// DNSKEY records (a file) to validate from instead of the IANA root key.
    pub dnssec_trust_anchor: Option<PathBuf>,
    /// Seconds between TLS reports to the domains that ask for them (RFC 8460: a day);
    /// 0: none.
    pub tls_report_seconds: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    pub trust_loopback: bool,
    pub max_failures_per_ip: u32,
    pub max_failures_per_account: u32,
    pub block_minutes: u64,
    pub default_domain: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    pub level: String,
}

fn both(port: u16) -> Vec<SocketAddr> {
    vec![
        SocketAddr::from(([0, 0, 0, 0], port)),
        SocketAddr::from(([0u16; 8], port)),
    ]
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: system_hostname(),
            data_dir: "data".into(),
            tls: Tls::default(),
            listen: Listen::default(),
            smtp: Smtp::default(),
            imap: Imap::default(),
            pop3: Pop3::default(),
            submission: Submission::default(),
            auth: Auth::default(),
            queue: QueueCfg::default(),
            mta_sts: MtaSts::default(),
            filter: Filter::default(),
            log: Log::default(),
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            smtp: both(25),
            submission: both(587),
            submissions: both(465),
            imap: both(143),
            imaps: both(993),
            pop3: both(110),
            pop3s: both(995),
            mta_sts: Vec::new(),
            metrics: Vec::new(),
        }
    }
}

impl Default for Smtp {
    fn default() -> Self {
        Smtp {
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 100,
            max_errors: 20,
            max_line_length: 4096,
            idle_timeout: 300,
            max_connections: 1000,
            max_connections_per_ip: 20,
            auth: false,
        }
    }
}

impl Default for Imap {
    fn default() -> Self {
        Imap {
            append_limit: 50 * 1024 * 1024,
            idle_timeout: 1800,
            plaintext_auth: false,
            max_connections: 5000,
            max_connections_per_ip: 1000,
            max_connections_per_account: 100,
        }
    }
}

impl Default for Pop3 {
    fn default() -> Self {
        Pop3 {
            idle_timeout: 600,
            plaintext_auth: false,
            max_connections: 2000,
            max_connections_per_ip: 200,
        }
    }
}

impl Default for Submission {
    fn default() -> Self {
        Submission {
            save_sent: true,
            plaintext_auth: false,
            messages_per_hour: 500,
            recipients_per_hour: 2000,
        }
    }
}

impl Default for QueueCfg {
    fn default() -> Self {
        QueueCfg {
            dns_servers: Vec::new(),
            remote_port: 25,
            retry_seconds: vec![300, 600, 1800, 3600, 7200, 14_400],
            max_days: 5,
            concurrency: 20,
            per_domain_concurrency: 5,
            delay_warning_seconds: 14_400,
            source_addresses: Vec::new(),
            source_by_domain: Default::default(),
            mta_sts: true,
            mta_sts_port: 443,
            tls_ca_file: None,
            tls_report_seconds: 86_400,
            dane: true,
            dnssec_trust_anchor: None,
        }
    }
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            trust_loopback: true,
            max_failures_per_ip: 20,
            max_failures_per_account: 20,
            block_minutes: 15,
            default_domain: None,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
        }
    }
}

/// This machine's host name, lower-cased; `localhost` when it cannot be read.
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_lowercase())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Config {
    /// Parse a file; relative paths in it become relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut cfg = Config::parse(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        cfg.data_dir = base.join(&cfg.data_dir);
        cfg.tls.cert = cfg.tls.cert.map(|p| base.join(p));
        cfg.tls.key = cfg.tls.key.map(|p| base.join(p));
        cfg.queue.tls_ca_file = cfg.queue.tls_ca_file.map(|p| base.join(p));
        cfg.queue.dnssec_trust_anchor = cfg.queue.dnssec_trust_anchor.map(|p| base.join(p));
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text)?;
        if cfg.tls.cert.is_some() != cfg.tls.key.is_some() {
            bail!("[tls] needs both `cert` and `key`, or neither");
        }
        if cfg.smtp.max_line_length < 512 {
            bail!("[smtp] max_line_length must be at least 512 (RFC 5321 §4.5.3.1.4)");
        }
        if cfg.smtp.max_recipients == 0 || cfg.smtp.max_errors == 0 {
            bail!("[smtp] max_recipients and max_errors must be at least 1");
        }
        if !["enforce", "testing", "none"].contains(&cfg.mta_sts.mode.as_str()) {
            bail!("[mta_sts] mode must be \"enforce\", \"testing\" or \"none\"");
        }
        cfg.filter.validate()?;
        Ok(cfg)
    }

    /// The text of a new config file: the documented example with the host name filled in.
    pub fn first_run_text(hostname: &str) -> String {
        EXAMPLE.replacen(
            "#hostname = \"mail.example.com\"",
            &format!("hostname = \"{hostname}\""),
            1,
        )
    }

    /// `serve --dev`: every service on loopback, at 10000 + its standard port (SMTP 10025,
    /// IMAP 10143/10993, POP3 10110/10995, submission 10587/10465), so an ordinary user can
    /// try yubin without root. Loopback counts as a protected path, so plain-text logins
    /// work there as on a real server's loopback.
    pub fn dev_listen(&mut self) {
        let lo = |port: u16| vec![SocketAddr::from(([127, 0, 0, 1], 10_000 + port))];
        self.listen = Listen {
            smtp: lo(25),
            submission: lo(587),
            submissions: lo(465),
            imap: lo(143),
            imaps: lo(993),
            pop3: lo(110),
            pop3s: lo(995),
            mta_sts: Vec::new(),
            metrics: Vec::new(),
        };
    }

    /// Every address the server would listen on, with its service's name.
    pub fn listen_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        crate::LISTENERS
            .iter()
            .flat_map(|k| k.addresses(&self.listen).iter().map(move |&a| (k.name, a)))
            .collect()
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    /// DKIM keys, one per domain (`yubin domain dkim`).
    pub fn dkim_dir(&self) -> PathBuf {
        self.data_dir.join("dkim")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every commented `#key = value` line of the example, uncommented, must parse to the
    /// defaults: the example cannot drift from the code.
    #[test]
    fn example_documents_the_defaults() {
        let mut uncommented = String::new();
        for line in EXAMPLE.lines() {
            let l = line.trim_start();
            let is_key = l.starts_with('#')
                && l[1..].split('=').next().is_some_and(|k| {
                    let k = k.trim();
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                })
                && l.contains('=');
            let skip = l.contains("letsencrypt")
                || l.starts_with("#hostname")
                || l.starts_with("#default_domain");
            if is_key && !skip {
                uncommented.push_str(&l[1..]);
            } else {
                uncommented.push_str(line);
            }
            uncommented.push('\n');
        }
        let parsed = Config::parse(&uncommented).unwrap();
        assert_eq!(parsed, Config::default());
        assert_eq!(Config::parse(EXAMPLE).unwrap(), Config::default());
    }

    #[test]
    fn first_run_text_sets_hostname() {
        let c = Config::parse(&Config::first_run_text("mx.example.org")).unwrap();
        assert_eq!(c.hostname, "mx.example.org");
    }

    #[test]
    fn clear_errors() {
        let e = Config::parse("[smtp]\nmax_mesage_size = 1\n").unwrap_err();
        assert!(
            format!("{e:#}").contains("unknown field `max_mesage_size`"),
            "{e:#}"
        );
        let e = Config::parse("[tls]\ncert = \"a.pem\"\n").unwrap_err();
        assert!(e.to_string().contains("both"));
        let e = Config::parse("[listen]\nsmtp = [\"localhost\"]\n").unwrap_err();
        assert!(format!("{e:#}").contains("invalid socket address"), "{e:#}");
    }
}
