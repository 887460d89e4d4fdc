//! The one decision step of inbound mail: after end of DATA/BDAT and before the `250`,
//! gather the evidence about a message (sender authentication with mail-auth: SPF of
//! HELO and MAIL FROM, DKIM, ARC, DMARC) within one deadline, and let
//! `yubin_filter::decide` say what happens to each recipient's copy.
//!
//! DNS goes through hickory's resolver, whose cache keeps answers for their TTL; every
//! query has `[filter] dns_timeout_seconds` (a timeout is `temperror`, RFC 7208 §2.6.6)
//! and all checks together `[filter] deadline_seconds`, past which the message is
//! answered per `[filter] on_timeout` with whatever evidence had arrived.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, MessageAuthenticator,
    SpfResult, dmarc::Policy as DmarcRecordPolicy, dmarc::verify::DmarcParameters,
    spf::verify::SpfParameters,
};
use tokio::sync::Mutex;
use tracing::warn;
use yubin_filter::bayes::Model;
use yubin_filter::content::{self, Content};
use yubin_filter::{AuthResult, Decision, Dmarc, DmarcPolicy, Evidence, RcptPolicy};

use crate::config::Config;

/// DKIM signatures verified per message: each costs a key lookup and a body hash, and a
/// message with fifty must not buy fifty (RFC 6376 §6.1 lets a verifier stop early).
pub const MAX_DKIM_SIGNATURES: usize = 10;

/// What the decision step knows of the transaction.
pub struct Inbound<'a> {
    pub peer: IpAddr,
    pub helo: &'a str,
    pub mail_from: &'a str,
    pub data: &'a [u8],
    /// The account of each local copy.
    pub accounts: &'a [yubin_store::AccountId],
}

/// What the decision reads from the store about a message: the admin's lists, each
/// copy's thresholds and whether its account knows the sender. Read in one blocking
/// task with the content rules (each hop to a blocking thread costs more than these
/// indexed reads).
#[derive(Default)]
struct Known {
    lists: Vec<(String, String)>,
    rcpts: Vec<RcptPolicy>,
}

fn read_known(
    store: &dyn yubin_store::Store,
    accounts: &[yubin_store::AccountId],
    sender: Option<&str>,
    lists: bool,
) -> Known {
    let rcpts = accounts
        .iter()
        .map(|&id| {
            let (junk, reject) = store.filter_scores(id).unwrap_or((None, None));
            RcptPolicy {
                junk,
                reject,
                // Correspondents: mail from someone the user wrote to (`correspondents`).
                known_sender: sender
                    .is_some_and(|s| store.is_correspondent(id, s).unwrap_or(false)),
            }
        })
        .collect();
    Known {
        lists: if lists {
            store.filter_list().unwrap_or_default()
        } else {
            Vec::new()
        },
        rcpts,
    }
}

pub struct Analyzer {
    auth: MessageAuthenticator,
    hostname: String,
    cfg: crate::config::Filter,
    /// Local domains, read from the store at most once per minute.
    domains: Mutex<(std::time::Instant, Arc<Vec<String>>)>,
    /// The classifier, and the last training row it learned.
    model: std::sync::RwLock<Model>,
    cursor: std::sync::Mutex<i64>,
    scanner: Option<crate::virus::Scanner>,
    pub metrics: crate::metrics::Metrics,
}

impl Analyzer {
    pub fn new(cfg: &Config) -> anyhow::Result<Self> {
        let servers = if cfg.filter.dns_servers.is_empty() {
            &cfg.queue.dns_servers
        } else {
            &cfg.filter.dns_servers
        };
        let timeout = Duration::from_secs(cfg.filter.dns_timeout_seconds.max(1));
        let resolver = crate::outbound::resolver_with(servers, Some(timeout))?;
        Ok(Analyzer {
            auth: MessageAuthenticator(resolver),
            hostname: cfg.hostname.clone(),
            cfg: cfg.filter.clone(),
            domains: Mutex::new((
                std::time::Instant::now() - Duration::from_secs(3600),
                Arc::new(Vec::new()),
            )),
            model: Default::default(),
            cursor: std::sync::Mutex::new(0),
            scanner: crate::virus::Scanner::new(&cfg.filter),
            metrics: Default::default(),
        })
    }

    /// The virus scan of a message whose content is `c`, when `[filter] clamd` is set
    /// and `[filter] clamd_scan` asks for this message.
    pub async fn scan_if(&self, data: &[u8], c: &Content) -> Option<yubin_filter::clamd::Scan> {
        if self.cfg.clamd_scan == "all" || c.has_attachments {
            self.scan(data).await
        } else {
            None
        }
    }

    /// The virus scan of a message, when `[filter] clamd` is set.
    pub async fn scan(&self, data: &[u8]) -> Option<yubin_filter::clamd::Scan> {
        let s = self.scanner.as_ref()?.scan(data).await;
        self.metrics.scan(&s);
        Some(s)
    }

    /// Read the classifier's counts from the store (at start, and after a failed save).
    pub fn load_model(&self, store: &dyn yubin_store::Store) -> anyhow::Result<()> {
        let (cursor, rows) = store.bayes_load()?;
        *self.model.write().unwrap_or_else(|e| e.into_inner()) = Model::from_counts(rows);
        *self.cursor.lock().unwrap_or_else(|e| e.into_inner()) = cursor;
        Ok(())
    }

    /// Learn the labels given since the last call (moves into and out of Junk, `$Junk`
    /// and `$NotJunk`, `yubin filter train`, sent mail) and save the counts with the
    /// cursor, so each label is learned once. Returns how many were learned.
    pub fn learn_pending(&self, store: &dyn yubin_store::Store) -> anyhow::Result<usize> {
        let mut cursor = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        let items = store.training_pending(*cursor, 200)?;
        let Some(last) = items.last().map(|i| i.id) else {
            return Ok(0);
        };
        let none: [String; 0] = [];
        let env = content::Envelope {
            mail_from: "",
            local_domains: &none,
            now: 0,
        };
        let learned: Vec<(Vec<u32>, Option<i64>, bool, bool)> = items
            .into_iter()
            .filter_map(|i| {
                let f = match (i.features, i.message) {
                    (Some(f), _) => f,
                    (None, Some(m)) => content::inspect(&m, &env).features,
                    // The message was expunged before it could be read: nothing to learn.
                    (None, None) => return None,
                };
                Some((f, i.account, i.spam, i.relabel))
            })
            .collect();
        let dirty = {
            let mut m = self.model.write().unwrap_or_else(|e| e.into_inner());
            for (f, account, spam, relabel) in &learned {
                if *relabel {
                    m.learn(f, *account, !spam, -1);
                }
                m.learn(f, *account, *spam, 1);
            }
            m.take_dirty()
        };
        match store.bayes_save(*cursor, last, &dirty) {
            Ok(true) => {
                *cursor = last;
                let spam = learned.iter().filter(|l| l.2).count() as u64;
                self.metrics.labels(spam, learned.len() as u64 - spam);
                Ok(learned.len())
            }
            other => {
                drop(cursor);
                // Memory is ahead of the store (or someone else saved): start again
                // from what the store has.
                self.load_model(store)?;
                match other {
                    Err(e) => Err(e.into()),
                    _ => Ok(0),
                }
            }
        }
    }

    /// Messages learned `(spam, ham)` and features kept, for `yubin filter status` and logs.
    pub fn model_size(&self) -> ((u32, u32), usize) {
        let m = self.model.read().unwrap_or_else(|e| e.into_inner());
        (m.totals(None), m.len())
    }

    async fn local_domains(&self, store: &Arc<dyn yubin_store::Store>) -> Arc<Vec<String>> {
        let mut g = self.domains.lock().await;
        if g.0.elapsed() > Duration::from_secs(60) {
            let store = store.clone();
            let read = tokio::task::spawn_blocking(move || store.list_domains()).await;
            if let Ok(Ok(list)) = read {
                *g = (
                    std::time::Instant::now(),
                    Arc::new(list.into_iter().map(|d| d.name.to_lowercase()).collect()),
                );
            }
        }
        g.1.clone()
    }

    /// The decision for one message from an unauthenticated client. `trusted` (a
    /// client on loopback while `[filter] check_local` is off) skips the checks.
    pub async fn analyze(
        &self,
        store: &Arc<dyn yubin_store::Store>,
        m: &Inbound<'_>,
        trusted: bool,
    ) -> Decision {
        let d = self.decide(store, m, trusted).await;
        self.metrics.verdicts(&d.rcpts);
        d
    }

    async fn decide(
        &self,
        store: &Arc<dyn yubin_store::Store>,
        m: &Inbound<'_>,
        trusted: bool,
    ) -> Decision {
        let policy = self.cfg.policy();
        let domains = self.local_domains(store).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // The content rules parse the whole message: on a blocking thread, beside the
        // DNS checks, with the store reads that depend on them.
        let inspected = {
            let (data, domains, mail_from) =
                (m.data.to_vec(), domains.clone(), m.mail_from.to_owned());
            let (store, accounts) = (store.clone(), m.accounts.to_vec());
            tokio::task::spawn_blocking(move || {
                let c = content::inspect(
                    &data,
                    &content::Envelope {
                        mail_from: &mail_from,
                        local_domains: &domains,
                        now,
                    },
                );
                // Trusted mail is not judged: no lists, no correspondents to look up.
                let sender = c.from.as_deref().filter(|_| !trusted);
                let known = read_known(&*store, &accounts, sender, !trusted);
                (c, known)
            })
        };
        if trusted {
            // Trusted clients skip the judgement, not the attachment policy and the
            // virus scan.
            let (c, known) = inspected.await.unwrap_or_default();
            let virus = self.scan_if(m.data, &c).await;
            let clean = matches!(
                virus,
                None | Some(
                    yubin_filter::clamd::Scan::Clean | yubin_filter::clamd::Scan::Skipped(_)
                )
            );
            if c.blocked.is_none() && clean {
                return Decision::deliver_all(m.accounts.len());
            }
            let e = Evidence {
                content: Content {
                    blocked: c.blocked,
                    ..Default::default()
                },
                virus,
                ..Default::default()
            };
            return yubin_filter::decide(&e, &policy, &rcpts_or_default(known, m));
        }
        let mut evidence = Evidence {
            checked: self.cfg.sender_auth,
            ..Default::default()
        };
        let deadline = Duration::from_secs(self.cfg.deadline_seconds.max(1));
        // The checks fill `evidence` (and `listings`) as they go, side by side; past the
        // deadline, what arrived counts.
        let mut listings = Vec::new();
        // One parse (headers, DKIM body hashes) for every check below.
        let parsed = AuthenticatedMessage::parse(m.data).map(|mut p| {
            p.dkim_headers.truncate(MAX_DKIM_SIGNATURES);
            p
        });
        let from = parsed
            .as_ref()
            .and_then(|p| p.from.first().cloned())
            .unwrap_or_default();
        // The content rules (bounded and linear, so awaited whatever the deadline: the
        // attachment policy is never skipped because DNS was slow), then the virus scan
        // with its own timeout, beside the DNS checks and outside their deadline.
        let (done, (inspected, virus)) = tokio::join!(
            async {
                tokio::time::timeout(deadline, async {
                    tokio::join!(
                        async {
                            if self.cfg.sender_auth {
                                self.authenticate(m, parsed.as_ref(), &domains, &mut evidence)
                                    .await
                            }
                        },
                        self.blocklists(m, &from, &mut listings)
                    )
                })
                .await
                .is_ok()
            },
            async {
                let c = inspected.await;
                let virus = match &c {
                    Ok((c, _)) => self.scan_if(m.data, c).await,
                    Err(_) => self.scan(m.data).await,
                };
                (c, virus)
            }
        );
        evidence.virus = virus;
        evidence.listings = listings;
        let (inspected, mut known) = match inspected {
            Ok((c, known)) => (Some(c), known),
            Err(_) => (None, Known::default()),
        };
        let lists = std::mem::take(&mut known.lists);
        let rcpts = rcpts_or_default(known, m);
        if let Some(mut c) = inspected {
            if self.cfg.classifier {
                let f = std::mem::take(&mut c.features);
                // One recipient account: its own features count too; several share
                // the server's view (one header for every copy).
                let account = match m.accounts {
                    [one] => Some(*one),
                    _ => None,
                };
                let model = self.model.read().unwrap_or_else(|e| e.into_inner());
                evidence.bayes = model.classify(&f, account);
            }
            if !self.cfg.content_rules {
                c.reasons.clear();
            }
            c.features = Vec::new();
            evidence.content = c;
        }
        apply_lists(&lists, m, &from, &mut evidence);
        if !done {
            evidence.timed_out = true;
            warn!(peer = %m.peer, "inbound checks past their deadline");
            if evidence.auth_results.is_none() {
                evidence.auth_results = Some(yubin_filter::partial_results(
                    &self.hostname,
                    &evidence,
                    m.mail_from,
                ));
            }
        }
        yubin_filter::decide(&evidence, &policy, &rcpts)
    }

    async fn authenticate(
        &self,
        m: &Inbound<'_>,
        msg: Option<&AuthenticatedMessage<'_>>,
        domains: &[String],
        e: &mut Evidence,
    ) {
        let Some(msg) = msg else {
            // Not even a header section mail-auth can read: no identity to check.
            e.dmarc = None;
            return;
        };
        let from_domain = msg
            .from
            .first()
            .and_then(|f| f.rsplit_once('@'))
            .map(|(_, d)| d.trim_end_matches('.').to_lowercase());
        e.from_is_local = from_domain
            .as_ref()
            .is_some_and(|d| domains.iter().any(|x| x == d));
        e.from_domain = from_domain.clone();
        let helo = m.helo;
        let host = self.hostname.as_str();
        // RFC 7208 §2.3, §2.4: HELO first; a null reverse-path is checked as
        // postmaster@HELO.
        let spf_helo = self
            .auth
            .verify_spf(SpfParameters::verify_ehlo(m.peer, helo, host))
            .await;
        e.spf_helo = Some(spf(spf_helo.result()));
        let spf_mail = if m.mail_from.is_empty() {
            spf_helo.clone()
        } else {
            self.auth
                .verify_spf(SpfParameters::verify_mail_from(
                    m.peer,
                    helo,
                    host,
                    m.mail_from,
                ))
                .await
        };
        e.spf_mail_from = Some(spf(spf_mail.result()));
        let dkim = self.auth.verify_dkim(msg).await;
        e.dkim = dkim
            .iter()
            .map(|o| {
                let d = o.signature().map_or(String::new(), |s| s.d.to_lowercase());
                (dkim_result(o.result()), d)
            })
            .collect();
        let arc = self.auth.verify_arc(msg).await;
        e.arc = (!msg.as_headers.is_empty()).then(|| dkim_result(arc.result()));
        let mail_from_domain = m
            .mail_from
            .rsplit_once('@')
            .map_or(helo, |(_, d)| d)
            .to_owned();
        let dmarc = self
            .auth
            .verify_dmarc(DmarcParameters::new(
                msg,
                &dkim,
                &mail_from_domain,
                &spf_mail,
            ))
            .await;
        let mut ar = AuthenticationResults::new(host)
            .with_spf_ehlo_result(&spf_helo, m.peer, helo)
            .with_spf_mailfrom_result(&spf_mail, m.peer, m.mail_from, helo);
        if e.arc.is_some() {
            ar = ar.with_arc_result(&arc, m.peer);
        }
        let dmarc_applies = dmarc.dmarc_record().is_some();
        if dmarc_applies || dmarc.result() != DmarcResult::None {
            ar = ar.with_dmarc_result(&dmarc);
        }
        // DKIM is written here rather than by mail-auth, which calls a body that no longer
        // matches its hash "neutral"; RFC 6376 §6.1.3 makes it a failure (PERMFAIL), and
        // so do dkimpy and OpenDKIM.
        let rest = ar.to_string();
        let rest = rest.strip_prefix(host).unwrap_or(&rest);
        e.auth_results = Some(format!(
            "Authentication-Results: {host}{}{rest}\r\n",
            dkim_results(&dkim)
        ));
        let mut dmarc_out = from_domain.map(|domain| Dmarc {
            result: match dmarc.result() {
                DmarcResult::Pass => AuthResult::Pass,
                DmarcResult::Fail(_) => AuthResult::Fail,
                DmarcResult::TempError(_) => AuthResult::TempError,
                DmarcResult::PermError(_) => AuthResult::PermError,
                DmarcResult::None => AuthResult::None,
            },
            policy: match dmarc.policy() {
                DmarcRecordPolicy::Reject => DmarcPolicy::Reject,
                DmarcRecordPolicy::Quarantine => DmarcPolicy::Quarantine,
                DmarcRecordPolicy::None | DmarcRecordPolicy::Unspecified => DmarcPolicy::None,
            },
            domain,
        });
        // mail-auth follows DMARCbis, which dropped `pct`; RFC 7489 §6.6.4 still has it.
        if let Some(d) = dmarc_out.as_mut()
            && d.result == AuthResult::Fail
            && d.policy != DmarcPolicy::None
            && let Some(pct) = self.dmarc_pct(&d.domain).await
        {
            let mut byte = [0u8; 1];
            let draw = getrandom::fill(&mut byte).map_or(0, |()| byte[0] % 100);
            d.policy = yubin_filter::apply_pct(d.policy, pct, draw);
        }
        e.dmarc = dmarc_out;
    }

    /// The `pct` of the DMARC record of `domain`, or of its parent when it has none (the
    /// organizational domain, approximated as the last two labels).
    async fn dmarc_pct(&self, domain: &str) -> Option<u8> {
        let labels: Vec<&str> = domain.split('.').collect();
        let org = labels
            .len()
            .checked_sub(2)
            .and_then(|i| labels.get(i..))
            .map(|l| l.join("."));
        for d in std::iter::once(domain.to_owned()).chain(org.filter(|o| o != domain)) {
            if let Ok(raw) = self.auth.txt_raw_lookup(format!("_dmarc.{d}.")).await {
                return yubin_filter::dmarc_pct(&String::from_utf8_lossy(&raw));
            }
        }
        None
    }
}

impl Analyzer {
    /// RFC 5782 lookups: the client IP in every `ip` list; the MAIL FROM, From: and link
    /// domains in every `domain` list. Refusals (127.255.255.x) and errors are logged,
    /// not counted.
    async fn blocklists(&self, m: &Inbound<'_>, from: &str, out: &mut Vec<yubin_filter::Listing>) {
        use yubin_filter::dnsbl;
        if self.cfg.dnsbl.is_empty() {
            return;
        }
        let mut domains: Vec<String> = Vec::new();
        if self.cfg.dnsbl.iter().any(|l| l.kind == "domain") {
            for d in [m.mail_from, from]
                .iter()
                .filter_map(|a| a.rsplit_once('@').map(|(_, d)| d.to_lowercase()))
                .chain(dnsbl::link_domains(m.data))
            {
                if !domains.contains(&d) {
                    domains.push(d);
                }
            }
        }
        // Every query of every list at once (at most 20 link domains per list, each with
        // the resolver's own timeout): one slow list does not hold up the others.
        let mut queries: Vec<(&crate::config::Dnsbl, String, String)> = Vec::new();
        for list in &self.cfg.dnsbl {
            if list.kind == "ip" {
                queries.push((list, m.peer.to_string(), dnsbl::ip_name(m.peer, &list.zone)));
            } else {
                for d in &domains {
                    if let Some(name) = dnsbl::domain_name(d, &list.zone) {
                        queries.push((list, d.clone(), name));
                    }
                }
            }
        }
        // Taken as they come, so that past the deadline the answers that arrived count.
        use futures_util::StreamExt;
        let mut answers: futures_util::stream::FuturesUnordered<_> = queries
            .iter()
            .map(|q| async move { (q, self.auth.ipv4_lookup_raw(&q.2).await) })
            .collect();
        while let Some(((list, what, name), answer)) = answers.next().await {
            let records = match answer {
                Ok(r) => r.entry,
                Err(mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(_))) => continue,
                Err(e) => {
                    warn!(zone = list.zone, name, error = %e, "blocklist lookup failed");
                    continue;
                }
            };
            match dnsbl::interpret(&records) {
                Some(dnsbl::Answer::Listed(code)) => out.push(yubin_filter::Listing {
                    zone: list.zone.clone(),
                    what: format!("{what} ({code})"),
                    weight: list.weight,
                    reject: list.reject,
                }),
                Some(dnsbl::Answer::Error(code)) => {
                    warn!(zone = list.zone, name, %code, "blocklist refused the query (not a listing)")
                }
                None => {}
            }
        }
        // The same order whichever answered first.
        out.sort_by(|a, b| a.zone.cmp(&b.zone).then_with(|| a.what.cmp(&b.what)));
    }
}

/// Each copy's policy; the defaults when the store could not be read.
fn rcpts_or_default(known: Known, m: &Inbound<'_>) -> Vec<RcptPolicy> {
    if known.rcpts.len() == m.accounts.len() {
        known.rcpts
    } else {
        vec![RcptPolicy::default(); m.accounts.len()]
    }
}

/// The admin's lists (`yubin filter allow|block`): a blocked client IP, MAIL FROM or
/// From: is refused; an allowed client IP skips scoring, and so does an allowed sender
/// once authentication ties it to the message (a From: alone is anyone's to write).
fn apply_lists(lists: &[(String, String)], m: &Inbound<'_>, from: &str, e: &mut Evidence) {
    use yubin_filter::lists::Entry;
    if lists.is_empty() {
        return;
    }
    let senders = [m.mail_from, from];
    let authenticated = e
        .dmarc
        .as_ref()
        .is_some_and(|d| d.result == AuthResult::Pass)
        || e.spf_mail_from == Some(AuthResult::Pass)
        || e.dkim.iter().any(|(r, _)| *r == AuthResult::Pass);
    for (list, value) in lists {
        let Ok(entry) = Entry::parse(value) else {
            continue;
        };
        let by_ip = entry.matches_ip(m.peer);
        let by_sender = senders
            .iter()
            .any(|s| !s.is_empty() && entry.matches_sender(s));
        if list == "block" && (by_ip || by_sender) {
            e.listings.push(yubin_filter::Listing {
                zone: "the local block list".into(),
                what: entry.text(),
                weight: 0.0,
                reject: true,
            });
        } else if list == "allow" && (by_ip || (by_sender && authenticated)) {
            e.allowed = true;
        }
    }
}

fn spf(r: SpfResult) -> AuthResult {
    match r {
        SpfResult::Pass => AuthResult::Pass,
        SpfResult::Fail => AuthResult::Fail,
        SpfResult::SoftFail => AuthResult::SoftFail,
        SpfResult::Neutral => AuthResult::Neutral,
        SpfResult::TempError => AuthResult::TempError,
        SpfResult::PermError => AuthResult::PermError,
        SpfResult::None => AuthResult::None,
    }
}

/// The `dkim=` items of Authentication-Results (RFC 8601 §2.7.1), one per signature.
fn dkim_results(outputs: &[mail_auth::DkimOutput<'_>]) -> String {
    use std::fmt::Write;
    if outputs.is_empty() {
        return ";\r\n\tdkim=none".into();
    }
    let mut out = String::new();
    for o in outputs {
        let why = match o.result() {
            DkimResult::Pass | DkimResult::None => String::new(),
            DkimResult::Neutral(e)
            | DkimResult::Fail(e)
            | DkimResult::PermError(e)
            | DkimResult::TempError(e) => {
                format!(
                    " ({})",
                    yubin_filter::headers::clean(&e.to_string(), 80).replace(['(', ')', '\\'], "")
                )
            }
        };
        let _ = write!(
            out,
            ";\r\n\tdkim={}{why}",
            dkim_result(o.result()).keyword()
        );
        if let Some(sig) = o.signature() {
            let token = |v: &str| {
                let v = yubin_filter::headers::clean(v, 255);
                if !v.is_empty()
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
                {
                    v
                } else {
                    format!("\"{}\"", v.replace(['"', '\\'], ""))
                }
            };
            let b = yubin_sasl::encode(&sig.b);
            let _ = write!(
                out,
                " header.d={} header.s={} header.b=\"{}\"",
                token(&sig.d),
                token(&sig.s),
                b.get(..8).unwrap_or(&b)
            );
        }
    }
    out
}

fn dkim_result(r: &DkimResult) -> AuthResult {
    match r {
        DkimResult::Pass => AuthResult::Pass,
        DkimResult::Neutral(mail_auth::Error::Dkim(
            mail_auth::dkim::DkimError::FailedBodyHashMatch,
        )) => AuthResult::Fail,
        DkimResult::Fail(_) => AuthResult::Fail,
        DkimResult::Neutral(_) => AuthResult::Neutral,
        DkimResult::PermError(_) => AuthResult::PermError,
        DkimResult::TempError(_) => AuthResult::TempError,
        DkimResult::None => AuthResult::None,
    }
}
