//! Virus scanning with ClamAV's clamd over INSTREAM (the protocol is in
//! `yubin_filter::clamd`), on a unix socket or TCP, before the `250`.
//!
//! clamd is a peer like any other: the whole exchange has `[filter]
//! clamd_timeout_seconds`, the reply is read up to its NUL or 4 KiB, scans at once are
//! bounded by `[filter] clamd_max_concurrent` and messages by `clamd_max_bytes`. Whatever
//! goes wrong is [`Scan::Unavailable`], which the decision turns into 451 or delivery per
//! `[filter] on_scanner_failure`.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use yubin_filter::clamd::{self, Scan};

pub struct Scanner {
    addr: String,
    timeout: Duration,
    max_bytes: usize,
    slots: tokio::sync::Semaphore,
}

impl Scanner {
    /// `None` when `[filter] clamd` is empty.
    pub fn new(cfg: &crate::config::Filter) -> Option<Self> {
        (!cfg.clamd.trim().is_empty()).then(|| Scanner {
            addr: cfg.clamd.trim().to_owned(),
            timeout: Duration::from_secs(cfg.clamd_timeout_seconds.max(1)),
            max_bytes: cfg.clamd_max_bytes,
            slots: tokio::sync::Semaphore::new(cfg.clamd_max_concurrent.max(1)),
        })
    }

    pub async fn scan(&self, data: &[u8]) -> Scan {
        if data.len() > self.max_bytes {
            return Scan::Skipped(format!(
                "larger than [filter] clamd_max_bytes ({} bytes)",
                self.max_bytes
            ));
        }
        let run = async {
            let _slot = self.slots.acquire().await;
            if self.addr.starts_with('/') {
                let s = tokio::net::UnixStream::connect(&self.addr).await?;
                exchange(s, data).await
            } else {
                let s = tokio::net::TcpStream::connect(&self.addr).await?;
                exchange(s, data).await
            }
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(scan)) => scan,
            Ok(Err(e)) => {
                tracing::warn!(clamd = self.addr, error = %e, "virus scan failed");
                Scan::Unavailable(format!("clamd at {}: {e}", self.addr))
            }
            Err(_) => {
                tracing::warn!(clamd = self.addr, "virus scan timed out");
                Scan::Unavailable(format!("clamd at {} did not answer in time", self.addr))
            }
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    data: &[u8],
) -> std::io::Result<Scan> {
    // One write for the whole request: clamd answers as soon as it has read the
    // zero-length chunk, and a request in many small writes costs a wakeup each.
    let mut req = Vec::with_capacity(data.len() + data.len() / clamd::CHUNK * 4 + 24);
    req.extend_from_slice(clamd::COMMAND);
    for chunk in data.chunks(clamd::CHUNK) {
        req.extend_from_slice(&clamd::chunk_header(chunk.len()));
        req.extend_from_slice(chunk);
    }
    req.extend_from_slice(&clamd::END);
    s.write_all(&req).await?;
    s.flush().await?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    while reply.len() < clamd::MAX_REPLY && !reply.contains(&0) {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    Ok(clamd::parse_reply(&reply))
}
