//! Counters in the Prometheus text exposition format (version 0.0.4), served as plain
//! HTTP `GET /metrics` on `[listen] metrics` (none unless set; meant for loopback). One
//! deadline covers the whole connection, as for every other protocol.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::net::TcpStream;
use yubin_filter::Outcome;

use crate::Server;

const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// The outcomes of the decision step, in the order of [`Metrics::verdicts`].
const OUTCOMES: [&str; 5] = ["inbox", "junk", "quarantine", "reject", "tempfail"];

#[derive(Default)]
pub struct Metrics {
    /// Local copies per outcome of the decision step.
    verdicts: [AtomicU64; 5],
    viruses: AtomicU64,
    scan_failures: AtomicU64,
    /// Labels the classifier learned: spam, legitimate.
    labels: [AtomicU64; 2],
}

impl Metrics {
    pub fn verdicts(&self, outcomes: &[Outcome]) {
        for o in outcomes {
            let i = match o {
                Outcome::Inbox => 0,
                Outcome::Junk => 1,
                Outcome::Quarantine(_) => 2,
                Outcome::Reject { .. } => 3,
                Outcome::TempFail(_) => 4,
            };
            if let Some(c) = self.verdicts.get(i) {
                c.fetch_add(1, Relaxed);
            }
        }
    }

    pub fn scan(&self, s: &yubin_filter::clamd::Scan) {
        match s {
            yubin_filter::clamd::Scan::Infected(_) => self.viruses.fetch_add(1, Relaxed),
            yubin_filter::clamd::Scan::Unavailable(_) => self.scan_failures.fetch_add(1, Relaxed),
            _ => 0,
        };
    }

    pub fn labels(&self, spam: u64, ham: u64) {
        self.labels[0].fetch_add(spam, Relaxed);
        self.labels[1].fetch_add(ham, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP yubin_filter_verdicts_total Local copies of inbound mail by outcome of the decision step.\n\
             # TYPE yubin_filter_verdicts_total counter\n",
        );
        for (name, c) in OUTCOMES.iter().zip(&self.verdicts) {
            out.push_str(&format!(
                "yubin_filter_verdicts_total{{outcome=\"{name}\"}} {}\n",
                c.load(Relaxed)
            ));
        }
        out.push_str(&format!(
            "# HELP yubin_virus_found_total Messages the virus scanner found infected.\n\
             # TYPE yubin_virus_found_total counter\n\
             yubin_virus_found_total {}\n\
             # HELP yubin_virus_scan_failures_total Scans that could not be done (scanner down, slow, garbled).\n\
             # TYPE yubin_virus_scan_failures_total counter\n\
             yubin_virus_scan_failures_total {}\n\
             # HELP yubin_classifier_labels_total Labels the classifier learned since start.\n\
             # TYPE yubin_classifier_labels_total counter\n\
             yubin_classifier_labels_total{{kind=\"spam\"}} {}\n\
             yubin_classifier_labels_total{{kind=\"ham\"}} {}\n",
            self.viruses.load(Relaxed),
            self.scan_failures.load(Relaxed),
            self.labels[0].load(Relaxed),
            self.labels[1].load(Relaxed),
        ));
        out
    }
}

pub async fn handle(server: Arc<Server>, tcp: TcpStream, _peer: SocketAddr) {
    let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| {
        let server = server.clone();
        async move {
            let (status, body) = if req.uri().path() == "/metrics" {
                (200, server.analyzer.metrics.render())
            } else {
                (404, "not found; try /metrics\n".to_owned())
            };
            Ok::<_, std::convert::Infallible>(
                hyper::Response::builder()
                    .status(status)
                    .header(hyper::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    .unwrap_or_default(),
            )
        }
    });
    let serve = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
    let _ = tokio::time::timeout(CONNECTION_DEADLINE, serve).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render() {
        let m = Metrics::default();
        m.verdicts(&[Outcome::Inbox, Outcome::Junk, Outcome::Junk]);
        m.scan(&yubin_filter::clamd::Scan::Infected("x".into()));
        m.labels(2, 1);
        let t = m.render();
        assert!(
            t.contains("yubin_filter_verdicts_total{outcome=\"junk\"} 2\n"),
            "{t}"
        );
        assert!(t.contains("yubin_filter_verdicts_total{outcome=\"reject\"} 0\n"));
        assert!(t.contains("yubin_virus_found_total 1\n"));
        assert!(t.contains("yubin_classifier_labels_total{kind=\"ham\"} 1\n"));
    }
}
